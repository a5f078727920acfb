"""Frozen backbones, the embedding cache, and tensors of embedded pairs."""
