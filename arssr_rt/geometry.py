"""Output-grid geometry: pure functions for shape, spacing, affine and network coordinates.

Convention (field of view preserved exactly, as TorchIO does): an axis of ``h`` input voxels
resampled to ``H`` output voxels keeps its outer edges; output voxel ``j``'s centre sits at
continuous input index ``(j + 0.5) * h / H - 0.5``; the new spacing is ``old * h / H``.
The network sees voxel centres of an axis of ``n`` voxels as ``c = -1 + (2j + 1) / n``.
What samples where (corners, weights, decoder coordinates) is derived in sampling.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .errors import InputError

Triplet = tuple[float, float, float]
Shape3 = tuple[int, int, int]


@dataclass(frozen=True)
class OutputGrid:
    """The output voxel grid: its shape, affine and spacing (mm)."""

    shape: Shape3
    affine: np.ndarray
    spacing: Triplet

    @property
    def voxels(self) -> int:
        return int(np.prod(self.shape))


def parse_triplet(text: str | float | Sequence[float], what: str) -> Triplet:
    """Parse ``"2.5"`` or ``"2,2,3"`` (or numbers) into three positive finite floats."""
    if isinstance(text, str):
        parts = [p for p in text.replace("x", ",").split(",") if p.strip()]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise InputError(f"{what} must be a number or three comma-separated numbers, got {text!r}") from None
    elif isinstance(text, (int, float)):
        values = [float(text)]
    else:
        values = [float(v) for v in text]
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise InputError(f"{what} needs 1 or 3 values, got {len(values)}")
    for v in values:
        if not math.isfinite(v) or v <= 0:
            raise InputError(f"{what} values must be finite and > 0, got {values}")
    return (values[0], values[1], values[2])


def spacing_of(affine: np.ndarray) -> Triplet:
    """Voxel spacing (mm) per array axis: the length of each affine column (any orientation)."""
    norms = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    return (float(norms[0]), float(norms[1]), float(norms[2]))


def shape_for_scale(in_shape: Sequence[int], scale: Triplet) -> Shape3:
    """H = round(h * s) per axis, at least 1."""
    return tuple(max(1, int(round(h * s))) for h, s in zip(in_shape, scale))  # type: ignore[return-value]


def shape_for_voxel_size(in_shape: Sequence[int], in_spacing: Triplet, voxel_size: Triplet) -> Shape3:
    """The output shape whose spacing is closest to ``voxel_size`` with the FOV preserved."""
    return tuple(max(1, int(round(h * sp / v))) for h, sp, v in zip(in_shape, in_spacing, voxel_size))  # type: ignore[return-value]


def output_affine(in_affine: np.ndarray, in_shape: Sequence[int], out_shape: Sequence[int]) -> np.ndarray:
    """Input affine with columns scaled by h/H and the origin moved to output voxel 0's centre."""
    a = np.asarray(in_affine, dtype=np.float64)
    ratio = np.array([h / H for h, H in zip(in_shape, out_shape)], dtype=np.float64)
    out = a.copy()
    out[:3, :3] = a[:3, :3] * ratio[None, :]
    # output voxel 0 sits at continuous input index 0.5 * h / H - 0.5 on each axis
    origin_index = 0.5 * ratio - 0.5
    out[:3, 3] = a[:3, :3] @ origin_index + a[:3, 3]
    return out


def plan_output_grid(
    in_shape: Sequence[int],
    in_affine: np.ndarray,
    *,
    scale: Triplet | None = None,
    voxel_size: Triplet | None = None,
    shape: Sequence[int] | None = None,
) -> OutputGrid:
    """Resolve exactly one of scale / voxel_size / shape into an OutputGrid."""
    given = [x is not None for x in (scale, voxel_size, shape)]
    if sum(given) != 1:
        raise InputError("give exactly one of --scale, --voxel-size or --shape")
    in_shape = tuple(int(n) for n in in_shape[:3])
    if scale is not None:
        out_shape = shape_for_scale(in_shape, scale)
    elif voxel_size is not None:
        out_shape = shape_for_voxel_size(in_shape, spacing_of(in_affine), voxel_size)
    else:
        assert shape is not None
        if len(shape) != 3 or any(int(n) != n or n < 1 for n in shape):
            raise InputError(f"--shape needs three positive integers, got {list(shape)}")
        out_shape = tuple(int(n) for n in shape)  # type: ignore[assignment]
    affine = output_affine(in_affine, in_shape, out_shape)
    return OutputGrid(shape=out_shape, affine=affine, spacing=spacing_of(affine))  # type: ignore[arg-type]


def normalized_centres(n: int) -> np.ndarray:
    """Network coordinates of the voxel centres of an axis of n voxels: -1 + (2j+1)/n."""
    return (-1.0 + (2.0 * np.arange(n, dtype=np.float64) + 1.0) / n).astype(np.float32)


def input_index_of_output(j: np.ndarray | int, h: int, H: int) -> np.ndarray:
    """Continuous input index of output voxel centre j: (j + 0.5) * h / H - 0.5."""
    return (np.asarray(j, dtype=np.float64) + 0.5) * h / H - 0.5


