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
from .params import SIZE_SETTINGS, exactly_one, flag

Triplet = tuple[float, float, float]
Shape3 = tuple[int, int, int]

# Per-axis scale (output / input voxels) a request may ask for. Above 32 no model was trained
# for it and even a 32^3 input becomes 1024^3 voxels (the default --max-output-voxels); below
# 1/16 more than 4,000 input voxels fall into each output voxel with no anti-aliasing, which is
# not super-resolution (use a resampling tool). Each output axis needs 2 voxels, as each input
# axis does: -s 1e-9 would otherwise write a 1x1x1 image.
MAX_SCALE = 32.0
MIN_SCALE = 1.0 / 16.0
MIN_OUTPUT_AXIS = 2


@dataclass(frozen=True)
class OutputGrid:
    """The output voxel grid: its shape, affine and spacing (mm)."""

    shape: Shape3
    affine: np.ndarray
    spacing: Triplet
    # (qform, qform_code, sform, sform_code) a NIfTI output carries instead of the input's forms
    # carried through the voxel map: a --reference's own header geometry (None: derive them)
    forms: tuple[np.ndarray, int, np.ndarray, int] | None = None

    @property
    def voxels(self) -> int:
        return math.prod(int(n) for n in self.shape)  # Python ints: no int64 overflow


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
    """Resolve exactly one of scale / voxel_size / shape into an OutputGrid.

    The per-axis scale is checked against [MIN_SCALE, MAX_SCALE] in Python floats before any
    shape is rounded (a voxel size of 1e-12 mm is a clear error, not an overflow), and every
    output axis must have MIN_OUTPUT_AXIS voxels.
    """
    given = [x is not None for x in (scale, voxel_size, shape)]
    if sum(given) != 1:
        raise InputError(exactly_one(*SIZE_SETTINGS))
    in_shape = tuple(int(n) for n in in_shape[:3])
    if scale is not None:
        what, ratios = flag("scale"), [float(s) for s in scale]
    elif voxel_size is not None:
        what, ratios = flag("voxel_size"), [sp / float(v) for sp, v in zip(spacing_of(in_affine), voxel_size)]
    else:
        assert shape is not None
        if len(shape) != 3 or any(int(n) != n or n < 1 for n in shape):
            raise InputError(f"{flag('shape')} needs three positive integers, got {list(shape)}")
        what, ratios = flag("shape"), [int(n) / h for n, h in zip(shape, in_shape)]
    for axis, r in enumerate(ratios):
        if not (math.isfinite(r) and MIN_SCALE <= r <= MAX_SCALE):
            raise InputError(f"{what} asks for a scale of {r:.3g} on axis {axis} (output/input voxels); "
                             f"the supported range is 1/{1 / MIN_SCALE:g} to {MAX_SCALE:g} per axis")
    if scale is not None:
        out_shape = shape_for_scale(in_shape, scale)
    elif voxel_size is not None:
        out_shape = shape_for_voxel_size(in_shape, spacing_of(in_affine), voxel_size)
    else:
        out_shape = tuple(int(n) for n in shape)  # type: ignore[union-attr,assignment]
    if min(out_shape) < MIN_OUTPUT_AXIS:
        raise InputError(f"{what} gives an output of shape {tuple(out_shape)} from {in_shape}; every output axis "
                         f"needs at least {MIN_OUTPUT_AXIS} voxels")
    affine = output_affine(in_affine, in_shape, out_shape)
    return OutputGrid(shape=out_shape, affine=affine, spacing=spacing_of(affine))  # type: ignore[arg-type]


def normalized_centres(n: int) -> np.ndarray:
    """Network coordinates of the voxel centres of an axis of n voxels: -1 + (2j+1)/n."""
    return (-1.0 + (2.0 * np.arange(n, dtype=np.float64) + 1.0) / n).astype(np.float32)


def input_index_of_output(j: np.ndarray | int, h: int, H: int) -> np.ndarray:
    """Continuous input index of output voxel centre j: (j + 0.5) * h / H - 0.5."""
    return (np.asarray(j, dtype=np.float64) + 0.5) * h / H - 0.5


