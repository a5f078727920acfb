"""Preference data: one schema, readers for each on-disk format, synthetic data, partitions."""
