"""Lazy imports of optional heavy dependencies with a one-line install hint."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingExtraError

# module name -> (what it is for, pip command that provides it)
HINTS: dict[str, tuple[str, str]] = {
    "torch": ("the torch backend, training and export", 'pip install "torch==2.13.0" "arssr-rt[train]"'),
    "onnx": ("ONNX export", 'pip install "arssr-rt[export]"'),
    "onnxscript": ("ONNX export", 'pip install "arssr-rt[export]"'),
    "scipy": ("tricubic interpolation and evaluation", 'pip install "arssr-rt[eval]"'),
    "matplotlib": ("figures and QC pictures", 'pip install "arssr-rt[eval]"'),
    "pydicom": ("DICOM input/output", 'pip install "arssr-rt[io]"'),
    "nrrd": ("NRRD input/output", 'pip install "arssr-rt[io]"'),
    "openvino": ("the openvino backend", 'pip install "arssr-rt[openvino]"'),
    "tensorrt": ("the tensorrt backend", "pip install tensorrt --extra-index-url https://pypi.nvidia.com"),
    "cuda": ("CUDA kernels", 'pip install "arssr-rt[gpu]"'),
    "cuda.bindings": ("CUDA kernels", 'pip install "arssr-rt[gpu]"'),
    "ray": ("--ray cluster execution", 'pip install "arssr-rt[ray]"'),
}


def require(module: str) -> ModuleType:
    """Import ``module`` or raise MissingExtraError naming the pip command."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        what, cmd = HINTS.get(module, HINTS.get(module.split(".")[0], ("this feature", f"pip install {module}")))
        raise MissingExtraError(f"{module} is needed for {what} but is not installed: {cmd}") from exc


def available(module: str) -> bool:
    try:
        importlib.import_module(module)
        return True
    except ImportError:
        return False
