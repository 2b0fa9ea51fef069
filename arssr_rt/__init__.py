"""arssr-rt: arbitrary-scale super-resolution of 3-D MR volumes with a torch-free runtime."""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import ArssrError, InputError, ModelError, OutputError  # noqa: E402

__all__ = ["ArssrError", "InputError", "ModelError", "OutputError", "__version__", "upsample", "upsample_file"]


def __getattr__(name: str):  # lazy: importing arssr_rt must stay cheap
    if name in ("upsample", "upsample_file"):
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(name)
