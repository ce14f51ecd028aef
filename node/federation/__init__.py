"""Federation between tiers: the servicer a parent calls, and the links a parent pulls through."""
