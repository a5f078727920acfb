"""Optimisation loops shared by every runtime: local steps and pooled-data references."""
