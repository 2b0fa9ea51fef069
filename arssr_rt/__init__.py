"""arssr-rt: arbitrary-scale super-resolution of 3-D MR volumes with a torch-free runtime.

The Python API (``api.py``, imported on first use so ``import arssr_rt`` stays cheap):
``upsample`` (a nibabel image, an array + affine, or a channel-first array/tensor in, the same
kind out), ``Upsampler`` (a model loaded once for many volumes), ``upsample_file`` (file in,
file out, as the CLI), and ``transforms.ArssrUpsampled`` (a MONAI-style dict transform).
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import ArssrError, InputError, ModelError, OutputError  # noqa: E402

__all__ = ["ArssrError", "InputError", "ModelError", "OutputError", "Upsampler", "__version__", "transforms", "upsample",
           "upsample_file"]


def __getattr__(name: str):  # lazy: importing arssr_rt must stay cheap
    if name in ("upsample", "upsample_file", "Upsampler"):
        from . import api

        return getattr(api, name)
    if name == "transforms":
        import importlib

        return importlib.import_module(".transforms", __name__)
    raise AttributeError(name)
