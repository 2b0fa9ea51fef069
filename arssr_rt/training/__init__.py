"""Torch side: the reference ArSSR model, data on the fly, and training (extra: train)."""
