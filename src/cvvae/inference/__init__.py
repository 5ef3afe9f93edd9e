"""Memory-bounded inference: plans, the chunk loop with exact convolution caches, GroupNorm
statistics and spatial tiles (see engine.py)."""
