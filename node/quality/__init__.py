"""Data quality: one rule library for the province, quarantine, scores and feedback."""
