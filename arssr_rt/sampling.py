"""Where output voxels read the feature grid, and the separable trilinear sampler on it.

Everything here derives from one map, ``geometry.input_index_of_output`` (output voxel j of an
axis h -> H sits at continuous input index (j + 0.5) * h / H - 0.5): the two trilinear corners
and weights of a voxel (``axis_corners``), the input range a box of outputs needs
(``needed_input_range``), the geometry of one sample-and-decode call (``BoxSpec``) and the
decoder's coordinates (``decoder_axis_coords``, phase coordinates defined by ``cell_phase``).
Training, the CPU and GPU backends, the CUDA kernel's test mirror and the benchmark use these.

On a regular grid, ``grid_sample(bilinear, zeros, align_corners=False)`` factorises into three
1-D blends with two non-zero weights per output row, so a box of output points costs three
gathers + multiply-adds instead of a scattered 8-corner gather per point. A corner outside
the *volume* gets weight 0 (zeros padding), exactly as the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .errors import ModelError
from .geometry import input_index_of_output, normalized_centres

# Decoder coordinate modes. "global": the published ArSSR input, the output voxel centre in
# [-1, 1] over the whole grid. "phase": where the point sits inside its trilinear cell of the
# feature grid, 2 * (p - floor(p + PHASE_EPS)) - 1 per axis with p its continuous index on
# that grid; it tells the decoder the sub-voxel phase that blended features alone cannot.
COORD_MODES = ("global", "phase")
PHASE_EPS = 1e-4


def check_coords_mode(mode: str) -> str:
    """``mode`` itself, or ModelError: the coordinate mode comes from a bundle's spec.coords."""
    if mode not in COORD_MODES:
        raise ModelError(f"unknown decoder coordinate mode {mode!r} (model.json spec.coords); known: {', '.join(COORD_MODES)}")
    return mode


@dataclass(frozen=True)
class AxisCorners:
    """Trilinear corners of output voxels along one axis, in global input indices."""

    lower: np.ndarray  # int64, may be -1 or h - 1 at the edges
    w_lower: np.ndarray  # float64; 0 where the lower corner is outside [0, h) (zeros padding)
    w_upper: np.ndarray  # float64; 0 where lower + 1 is outside [0, h)


def axis_corners(j: np.ndarray, h: int, H: int) -> AxisCorners:
    """Corners and weights of output voxels ``j`` of an axis h -> H (zeros padding)."""
    p = input_index_of_output(j, h, H)
    fl = np.floor(p)
    t = p - fl
    i0 = fl.astype(np.int64)
    w0 = np.where((i0 >= 0) & (i0 < h), 1.0 - t, 0.0)
    w1 = np.where((i0 + 1 >= 0) & (i0 + 1 < h), t, 0.0)
    return AxisCorners(i0, w0, w1)


def lower_corner(j: np.ndarray | int, h: int, H: int) -> np.ndarray:
    """floor of output voxel j's continuous input index (may be -1 at the first voxel)."""
    return np.floor(input_index_of_output(j, h, H)).astype(np.int64)


def needed_input_range(h: int, H: int, start: int, stop: int) -> tuple[int, int]:
    """First and last input voxel with a non-zero weight for output voxels [start, stop)."""
    c = axis_corners(np.arange(start, stop), h, H)
    used = np.concatenate([c.lower[c.w_lower != 0], (c.lower + 1)[c.w_upper != 0]])
    return int(used.min()), int(used.max())


def cell_phase(p: Any) -> Any:
    """Phase coordinate in [-1, 1) of continuous feature-grid indices ``p``.

    The one definition, for numpy arrays and torch tensors alike (``// 1`` is floor in both),
    used by training, the runtime, the torch model and the CUDA kernel's mirror.
    """
    return 2.0 * (p - (p + PHASE_EPS) // 1) - 1.0


def decoder_axis_coords(h: int, H: int, start: int, stop: int, mode: str, feature_scale: int = 1) -> np.ndarray:
    """Decoder coordinates (float32) of output voxels [start, stop) of an axis h -> H.

    "global": voxel centres -1 + (2j + 1) / H. "phase": the cell phase on the feature grid,
    which is ``feature_scale`` times finer than the h input voxels (same field of view).
    Computed in float64 and rounded once to float32, as the CUDA kernel does.
    """
    if mode == "global":
        return normalized_centres(H)[start:stop]
    if mode == "phase":
        p = input_index_of_output(np.arange(start, stop), h * feature_scale, H)
        return cell_phase(p).astype(np.float32)
    raise ValueError(f"unknown coordinate mode {mode!r}; known: {', '.join(COORD_MODES)}")


def _triplet(v: Sequence[int], what: str) -> tuple[int, int, int]:
    t = tuple(int(x) for x in v)
    if len(t) != 3:
        raise ValueError(f"{what} needs 3 values, got {list(v)}")
    return t  # type: ignore[return-value]


@dataclass(frozen=True)
class BoxSpec:
    """One sample-and-decode call: a feature block, where it sits, and the output box.

    The block (F, b0, b1, b2) has its voxel 0 at global index ``in_offset`` of a feature grid
    ``in_shape``; the box is output voxels [out_start, out_stop) of the grid ``out_shape``; the
    decoder's coords are in ``coords_mode``. ``make`` validates that the block covers the box.
    """

    block_shape: tuple[int, int, int]
    in_offset: tuple[int, int, int]
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    out_start: tuple[int, int, int]
    out_stop: tuple[int, int, int]
    coords_mode: str = "global"

    @classmethod
    def make(cls, block_shape, in_offset, in_shape, out_shape, out_start, out_stop, coords_mode: str = "global") -> "BoxSpec":
        spec = cls(*(_triplet(v, n) for v, n in zip(
            (block_shape, in_offset, in_shape, out_shape, out_start, out_stop),
            ("block_shape", "in_offset", "in_shape", "out_shape", "out_start", "out_stop"))), coords_mode=coords_mode)
        spec.validate()
        return spec

    @property
    def extents(self) -> tuple[int, int, int]:
        return tuple(b - a for a, b in zip(self.out_start, self.out_stop))  # type: ignore[return-value]

    @property
    def points(self) -> int:
        n = self.extents
        return n[0] * n[1] * n[2]

    def validate(self) -> None:
        """ValueError unless the block covers every weighted corner of the box; ModelError for an unknown coords mode."""
        check_coords_mode(self.coords_mode)
        for a in range(3):
            h, H, b = self.in_shape[a], self.out_shape[a], self.block_shape[a]
            s, e, o = self.out_start[a], self.out_stop[a], self.in_offset[a]
            if min(h, H, b) < 1 or not 0 <= s < e <= H or not 0 <= o <= o + b <= h:
                raise ValueError(f"bad box on axis {a}: block {o}+{b} of {h} input voxels, output [{s}, {e}) of {H}")
            lo, hi = needed_input_range(h, H, s, e)
            if lo < o or hi >= o + b:
                raise ValueError(f"feature block [{o}, {o + b}) on axis {a} does not cover input voxels [{lo}, {hi}] needed by output [{s}, {e})")


@dataclass(frozen=True)
class AxisWeights:
    """For output indices [start, stop): block indices of both corners and their weights."""

    lower: np.ndarray  # int64 index into the feature block
    upper: np.ndarray  # int64 index into the feature block
    w_lower: np.ndarray  # float32
    w_upper: np.ndarray  # float32


def axis_weights(h: int, H: int, start: int, stop: int, block_offset: int, block_len: int) -> AxisWeights:
    """1-D trilinear weights of output voxels [start, stop) of an axis h -> H, in block indices.

    ``block_offset`` is the global input index of the feature block's first voxel and
    ``block_len`` its length. A corner with weight must lie inside the block (the tiling
    guarantees it; violated -> ValueError). Zero-weight corners are clipped into the block so
    the gathers stay in bounds.
    """
    c = axis_corners(np.arange(start, stop), h, H)
    lo, hi = c.lower - block_offset, c.lower + 1 - block_offset
    outside = lambda k: (k < 0) | (k >= block_len)  # noqa: E731
    if np.any((c.w_lower != 0) & outside(lo)) or np.any((c.w_upper != 0) & outside(hi)):
        raise ValueError("feature block does not cover the requested output range")
    return AxisWeights(
        np.clip(lo, 0, block_len - 1), np.clip(hi, 0, block_len - 1), c.w_lower.astype(np.float32), c.w_upper.astype(np.float32)
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
    cell phase on the feature grid ``in_shape`` (needed then), see ``decoder_axis_coords``.
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
