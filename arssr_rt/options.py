"""One parser for the options that size a run: --scale, --voxel-size, --shape, --max-memory, --tile.

upsample, info, batch (and evaluate's --scale) all parse through here, so the same text means
the same grid everywhere (``--shape 10.7,20,30`` used to give 10 in upsample and 11 in info).
Numbers are plain decimal or scientific notation only: Python's float() also takes ``1_0``
(= 10), ``nan``, ``inf`` and non-ASCII digits, none of which a user means as a size.
Whether a parsed request makes a sensible output grid is geometry.plan_output_grid's check.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .errors import InputError
from .params import SIZE_SETTINGS, exactly_one, flag
from .geometry import OutputGrid, Shape3, Triplet, plan_output_grid

NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
INTEGER = re.compile(r"\+?[0-9]+")

# Every tile re-encodes a halo of receptive radius + 1 voxels per side (11 for the default model).
# Counted with tiling.plan_tiles for that model, the encoder does 9,200x (64^3) to 11,100x
# (181x217x181) the work of one pass at tile 1, 200-260x at tile 4, 36-49x at 8, 8-13x at 16;
# below 8 (the auto-tiler's own floor) the halo is the whole run, for at most ~2x less memory
MIN_TILE = 8
MAX_MEMORY_GIB = 2.0**20  # 1 PiB: more than any machine; a typo, not a budget


def parse_number(text: str, what: str) -> float:
    """A plain decimal or scientific number (``2``, ``0.5``, ``1e-1``), as a float."""
    if not NUMBER.fullmatch(text):
        raise InputError(f"{what} takes plain numbers such as 2, 0.5 or 1e-1, got {text!r}")
    return float(text)


def _parse_integer(text: str, what: str) -> float:
    if not INTEGER.fullmatch(text):
        raise InputError(f"{what} takes whole numbers of voxels such as 256,256,120, got {text!r}")
    return float(int(text))


def _values(value: Any, what: str, parse: Callable[[str, str], float]) -> list[float]:
    """1 or 3 values from ``"2.5"``, ``"2,2,3"``, ``"2x2x3"``, a number or a sequence of numbers."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.replace("x", ",").split(",")]
        if any(not p for p in parts):
            raise InputError(f"{what} must be a number or three comma-separated numbers, got {value!r}")
        values = [parse(p, what) for p in parts]
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        values = [float(value)]
    elif isinstance(value, (Sequence, np.ndarray)) and not isinstance(value, bytes):
        items = list(np.asarray(value).ravel().tolist()) if isinstance(value, np.ndarray) else list(value)
        if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in items):
            raise InputError(f"{what} must be numbers, got {value!r}")
        values = [float(v) for v in items]
    else:
        raise InputError(f"{what} must be a number or three numbers, got {value!r}")
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise InputError(f"{what} needs 1 or 3 values, got {len(values)}")
    return values


def parse_triplet(value: Any, what: str) -> Triplet:
    """Three finite numbers > 0 (a scale or a voxel size in mm) from text or numbers."""
    values = _values(value, what, parse_number)
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise InputError(f"{what} values must be finite and > 0, got {values}")
    return (values[0], values[1], values[2])


def parse_shape(value: Any, what: str | None = None) -> Shape3:
    """Three positive whole numbers (``48.9`` is refused, not truncated or rounded)."""
    what = what or flag("shape")
    values = _values(value, what, _parse_integer)
    if not all(math.isfinite(v) and v == int(v) and v >= 1 for v in values):
        raise InputError(f"{what} needs three positive whole numbers, got {values}")
    return (int(values[0]), int(values[1]), int(values[2]))


@dataclass(frozen=True)
class SizeRequest:
    """Exactly one of scale (per axis), voxel size (mm) or output shape, parsed."""

    scale: Triplet | None = None
    voxel_size: Triplet | None = None
    shape: Shape3 | None = None


def parse_size_options(scale: Any = None, voxel_size: Any = None, shape: Any = None) -> SizeRequest:
    """Parse --scale / --voxel-size / --shape (text or numbers); exactly one must be given."""
    if sum(x is not None for x in (scale, voxel_size, shape)) != 1:
        raise InputError(exactly_one(*SIZE_SETTINGS))
    return SizeRequest(
        scale=parse_triplet(scale, flag("scale")) if scale is not None else None,
        voxel_size=parse_triplet(voxel_size, flag("voxel_size")) if voxel_size is not None else None,
        shape=parse_shape(shape) if shape is not None else None,
    )


def check_grid_options(scale: Any = None, voxel_size: Any = None, shape: Any = None, reference: Any = None) -> SizeRequest | None:
    """--scale / --voxel-size / --shape, or --reference (which gives the whole grid: the others
    are refused with it); None for a reference."""
    if reference is None:
        if all(x is None for x in (scale, voxel_size, shape)):
            raise InputError(f"give exactly one of {flag('scale')}, {flag('voxel_size')}, {flag('shape')} or {flag('reference')}")
        return parse_size_options(scale, voxel_size, shape)
    given = [flag(name) for name, v in (("scale", scale), ("voxel_size", voxel_size), ("shape", shape)) if v is not None]
    if given:
        raise InputError(f"{flag('reference')} gives the output grid (shape and affine); drop {' and '.join(given)}")
    return None


def output_grid(in_shape: Sequence[int], affine: np.ndarray, scale: Any = None, voxel_size: Any = None, shape: Any = None) -> OutputGrid:
    """The output grid the size options ask for, checked (see geometry.plan_output_grid)."""
    request = parse_size_options(scale, voxel_size, shape)
    return plan_output_grid(in_shape, affine, scale=request.scale, voxel_size=request.voxel_size, shape=request.shape)


MEMORY_UNITS = {"": 2**30, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}  # a bare number is GiB (the CLI's unit)
MEMORY_TEXT = re.compile(r"(?P<number>[^a-zA-Z\s]+)\s*(?:(?P<unit>[kKmMgGtT])(?:i?[bB])?)?")


def parse_max_memory(value: str | float) -> int:
    """--max-memory -> bytes: GiB as a number or text (``2``, ``0.5``), or text with a binary
    unit (``512M``, ``2G``, ``1.5GiB``); at least the runtime's own fixed share (see memory.py)."""
    if isinstance(value, str):
        match = MEMORY_TEXT.fullmatch(value.strip())
        number = parse_number(match["number"] if match else value.strip(), flag("max_memory"))
        unit = MEMORY_UNITS[(match["unit"] or "").lower()] if match else 2**30
        return check_max_memory(number * unit, value)
    return check_max_memory(float(value) * 2**30, value)


def max_memory_bytes(value: str | int) -> int:
    """The Python API's ``max_memory``: an int is bytes, text is as on the command line (``2G``)."""
    if isinstance(value, str):
        return parse_max_memory(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(f"{flag('max_memory')} must be a number of bytes or text such as '2G', got {value!r}")
    return check_max_memory(float(value), value)


def check_max_memory(nbytes: float, given: Any) -> int:
    """Bytes within [the runtime's fixed share, 1 PiB]; the message names the setting as given."""
    from .memory import RUNTIME_BASE_BYTES

    floor = RUNTIME_BASE_BYTES / 2**30
    if not math.isfinite(nbytes) or nbytes < RUNTIME_BASE_BYTES or nbytes > MAX_MEMORY_GIB * 2**30:
        raise InputError(f"{flag('max_memory')} must be from {floor:.2g} GiB (what the runtime itself takes) "
                         f"to {MAX_MEMORY_GIB:.0f} GiB, got {given!r}")
    return int(nbytes)


def check_tile(tile: int | None) -> None:
    """--tile must be at least MIN_TILE (below it the tile halo makes a run take many minutes)."""
    if tile is not None and (isinstance(tile, bool) or not isinstance(tile, numbers.Integral)):
        raise InputError(f"{flag('tile')} must be a whole number of voxels, got {tile!r}")
    if tile is not None and tile < MIN_TILE:
        raise InputError(f"{flag('tile')} must be at least {MIN_TILE} voxels, got {tile}: every tile re-encodes a halo of "
                         "the model's receptive radius on each side, so tiny tiles multiply the work (tile 1: ~10,000x); "
                         f"omit {flag('tile')} to size it from {flag('max_memory')}")
