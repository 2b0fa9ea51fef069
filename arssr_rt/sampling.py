"""Trilinear feature sampling on the regular output grid, done separably in numpy.

On a regular grid, ``grid_sample(bilinear, zeros, align_corners=False)`` factorises into three
1-D blends with two non-zero weights per output row, so a box of output points costs three
gathers + multiply-adds instead of a scattered 8-corner gather per point. A corner outside
the *volume* gets weight 0 (zeros padding), exactly as the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .geometry import decoder_axis_coords


@dataclass(frozen=True)
class AxisWeights:
    """For output indices [start, stop): block indices of both corners and their weights."""

    lower: np.ndarray  # int64 index into the feature block
    upper: np.ndarray  # int64 index into the feature block
    w_lower: np.ndarray  # float32
    w_upper: np.ndarray  # float32


def axis_weights(h: int, H: int, start: int, stop: int, block_offset: int, block_len: int) -> AxisWeights:
    """1-D trilinear weights of output voxels [start, stop) of an axis h -> H.

    ``block_offset`` is the global input index of the feature block's first voxel and
    ``block_len`` its length. Corners outside [0, h) weigh 0 (zeros padding); a corner with
    weight must lie inside the block (the tiling guarantees it; violated -> ValueError).
    Zero-weight corners are clipped into the block so the gathers stay in bounds.
    """
    j = np.arange(start, stop, dtype=np.float64)
    p = (j + 0.5) * h / H - 0.5
    i0 = np.floor(p)
    f = p - i0
    i0 = i0.astype(np.int64)
    w0 = np.where((i0 >= 0) & (i0 < h), 1.0 - f, 0.0)
    w1 = np.where((i0 + 1 >= 0) & (i0 + 1 < h), f, 0.0)
    lo, hi = i0 - block_offset, i0 + 1 - block_offset
    outside = lambda k: (k < 0) | (k >= block_len)  # noqa: E731
    if np.any((w0 != 0) & outside(lo)) or np.any((w1 != 0) & outside(hi)):
        raise ValueError("feature block does not cover the requested output range")
    return AxisWeights(
        np.clip(lo, 0, block_len - 1), np.clip(hi, 0, block_len - 1), w0.astype(np.float32), w1.astype(np.float32)
    )


def _blend_axis(x: np.ndarray, axis: int, w: AxisWeights) -> np.ndarray:
    shape = [1] * x.ndim
    shape[axis] = -1
    a = np.take(x, w.lower, axis=axis)
    a *= w.w_lower.reshape(shape)
    b = np.take(x, w.upper, axis=axis)
    b *= w.w_upper.reshape(shape)
    a += b
    return a


def sample_box(
    features_last: np.ndarray,
    block_offset: Sequence[int],
    in_shape: Sequence[int],
    out_shape: Sequence[int],
    start: Sequence[int],
    stop: Sequence[int],
) -> np.ndarray:
    """Trilinear samples of a channel-last feature block (d0,d1,d2,F) at output box points.

    Returns (n0, n1, n2, F) float32 for output indices [start, stop) of the whole output grid.
    The blend order puts the biggest expansion last, so intermediates stay small.
    """
    x = features_last
    for axis in range(3):
        w = axis_weights(in_shape[axis], out_shape[axis], start[axis], stop[axis], block_offset[axis], x.shape[axis])
        x = _blend_axis(x, axis, w)
    return x


def box_coords(
    out_shape: Sequence[int],
    start: Sequence[int],
    stop: Sequence[int],
    in_shape: Sequence[int] | None = None,
    mode: str = "global",
) -> np.ndarray:
    """Decoder coordinates (N, 3) of output box points in C order, array axis order.

    ``mode`` "global": voxel centres -1 + (2j+1)/H (published ArSSR); "phase": the sub-voxel
    cell phase (needs ``in_shape``), see geometry.cell_phase.
    """
    shapes = in_shape if in_shape is not None else out_shape
    if mode != "global" and in_shape is None:
        raise ValueError("phase coordinates need the input shape")
    axes = [decoder_axis_coords(h, n, a, b, mode) for h, n, a, b in zip(shapes, out_shape, start, stop)]
    n = [len(a) for a in axes]
    out = np.empty((n[0], n[1], n[2], 3), dtype=np.float32)
    out[..., 0] = axes[0][:, None, None]
    out[..., 1] = axes[1][None, :, None]
    out[..., 2] = axes[2][None, None, :]
    return out.reshape(-1, 3)
