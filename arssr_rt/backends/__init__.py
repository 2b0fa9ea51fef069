"""Inference backends behind one small protocol; see base.py. Heavy imports stay lazy."""

from .base import Backend, available_backends, open_backend, register_backend

__all__ = ["Backend", "available_backends", "open_backend", "register_backend"]
