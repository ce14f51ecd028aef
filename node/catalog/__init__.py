"""The resource catalogue: entries and their vocabulary, freshness, interchange formats."""
