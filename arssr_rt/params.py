"""How a message names a setting: ``--tile`` on the command line, ``tile`` from Python.

Why: the same checks serve the CLI and the Python API, and a message that says ``--max-memory``
to someone who called ``arssr_rt.upsample(img, max_memory=...)`` names something they never
typed. Each message is written once, naming settings through ``flag(name)`` (the Python
parameter name) or ``setting(name, value)``; ``CLI_FLAGS`` is the one table from parameter
names to command-line flags. Messages name flags by default (the CLI, batch workers, internal
callers); the public Python entry points (``arssr_rt.api``) run inside ``python_names()``, so
the same messages come out with parameter names. Torch-free, import-cheap.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Any, Callable, Iterator, TypeVar

# Python parameter name -> the command-line flag of the same setting (the one place)
CLI_FLAGS: dict[str, str] = {
    "scale": "--scale",
    "voxel_size": "--voxel-size",
    "shape": "--shape",
    "model": "--model",
    "backend": "--backend",
    "device": "--device",
    "threads": "--threads",
    "precision": "--precision",
    "tile": "--tile",
    "chunk": "--chunk",
    "max_memory": "--max-memory",
    "normalization": "--normalization",
    "dtype": "--dtype",
    "max_output_voxels": "--max-output-voxels",
    "force": "--force",
    "output_format": "--output-format",
    "as_intensity": "--as-intensity",
    "keep_acquired": "--keep-acquired",
    "slice_profile": "--slice-profile",
    "slice_gap": "--slice-gap",
    "interp": "--interp",
    "clip_to_input_range": "--clip-to-input-range",
    "reference": "--reference",
    "keep_samples": "--keep-samples",
    "tta": "--tta",
    "ensemble": "--ensemble",
}

_PYTHON_NAMES: contextvars.ContextVar[bool] = contextvars.ContextVar("arssr_rt_python_names", default=False)

F = TypeVar("F", bound=Callable[..., Any])


def python_surface() -> bool:
    """True inside a public Python API call (messages name parameters, not flags)."""
    return _PYTHON_NAMES.get()


def flag(name: str) -> str:
    """``tile`` from Python, ``--tile`` on the command line (KeyError for a name not in CLI_FLAGS)."""
    cli = CLI_FLAGS[name]
    return name if _PYTHON_NAMES.get() else cli


def setting(name: str, value: Any = True) -> str:
    """A setting as the caller would write it: ``--normalization percentile`` / ``normalization='percentile'``;
    a boolean flag is ``--force`` / ``force=True``."""
    cli = CLI_FLAGS[name]
    if _PYTHON_NAMES.get():
        return f"{name}={value!r}"
    return cli if value is True else f"{cli} {value}"


def exactly_one(*names: str) -> str:
    """The message for zero or several of mutually exclusive settings."""
    spelled = [flag(n) for n in names]
    return f"give exactly one of {', '.join(spelled[:-1])} or {spelled[-1]}"


SIZE_SETTINGS = ("scale", "voxel_size", "shape")


@contextlib.contextmanager
def python_names() -> Iterator[None]:
    """Messages raised or noted inside name Python parameters (re-entrant; restored on exit)."""
    token = _PYTHON_NAMES.set(True)
    try:
        yield
    finally:
        _PYTHON_NAMES.reset(token)


def python_api(fn: F) -> F:
    """Decorator for a public Python entry point: its errors name parameters."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with python_names():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
