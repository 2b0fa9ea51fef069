"""Classical resampling (``--interp nearest|linear|cubic``): numpy only, no model, no torch.

Why numpy and not scipy: the runtime install has no scipy (it is an eval/train extra), and
label maps and reference grids must work there. Two paths:

- the field-of-view-preserving grid of --scale/--voxel-size/--shape is separable: each axis
  is one (H, h) matrix at the positions ``geometry.input_index_of_output`` (an axis with
  H == h is left untouched, so a scale-1 axis keeps the acquired samples exactly);
- any other grid (a --reference, oblique or not) is sampled point by point in world space.

Kernels: ``nearest`` = the nearest input voxel (values only ever copied: a label set is kept
exactly); ``linear`` = trilinear with edge clamping; ``cubic`` = the interpolating cubic
B-spline with mirror boundary, i.e. scipy.ndimage.map_coordinates(order=3, mode="mirror"),
the tricubic of degrade.cubic_resample (the tests compare the two). World-space points more
than half a voxel outside the input's field of view get ``fill`` (0, as flirt and ANTs do).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .errors import InputError
from .params import flag
from .geometry import input_index_of_output

INTERPS: tuple[str, ...] = ("model", "nearest", "linear", "cubic")
CLASSICAL: tuple[str, ...] = ("nearest", "linear", "cubic")
POINTS_PER_STEP = 1 << 18  # world-space points per step: 64 taps x 2 MB of float64 at most
EDGE_TOLERANCE = 1e-6  # voxels: a reference voxel on the input's FOV edge is still inside


def parse_interp(value: str | None) -> str | None:
    """--interp text -> one of INTERPS (None = not given: the caller picks a default)."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if text not in INTERPS:
        raise InputError(f"{flag('interp')} must be one of {', '.join(INTERPS)}, got {value!r}")
    return text


def _mirror(index: np.ndarray, n: int) -> np.ndarray:
    """Whole-sample symmetric extension (-1 -> 1, n -> n-2), scipy's ``mirror`` mode."""
    if n == 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    m = np.abs(index) % period
    return np.where(m > n - 1, period - m, m)


def _bspline_weights(t: np.ndarray) -> np.ndarray:
    """Cubic B-spline weights of taps floor(p) - 1 .. floor(p) + 2 for fraction t, shape (..., 4)."""
    t2, t3 = t * t, t * t * t
    return np.stack([(1 - t) ** 3 / 6.0, (4 - 6 * t2 + 3 * t3) / 6.0, (1 + 3 * t + 3 * t2 - 3 * t3) / 6.0, t3 / 6.0], axis=-1)


def _prefilter_matrix(n: int) -> np.ndarray:
    """(n, n) inverse of the B-spline collocation matrix: samples -> spline coefficients."""
    collocation = np.zeros((n, n), dtype=np.float64)
    rows = np.arange(n)
    for d, w in ((-1, 1.0 / 6.0), (0, 4.0 / 6.0), (1, 1.0 / 6.0)):
        np.add.at(collocation, (rows, _mirror(rows + d, n)), w)
    return np.linalg.inv(collocation)


def axis_matrix(n_in: int, positions: np.ndarray, method: str) -> np.ndarray:
    """(len(positions), n_in) matrix interpolating one axis at continuous input indices."""
    pos = np.asarray(positions, dtype=np.float64)
    matrix = np.zeros((pos.size, n_in), dtype=np.float64)
    rows = np.arange(pos.size)
    if method == "nearest":
        matrix[rows, np.clip(np.floor(pos + 0.5).astype(np.int64), 0, n_in - 1)] = 1.0
    elif method == "linear":
        base = np.floor(pos)
        frac = pos - base
        for d, w in ((0, 1.0 - frac), (1, frac)):
            np.add.at(matrix, (rows, np.clip(base.astype(np.int64) + d, 0, n_in - 1)), w)
    elif method == "cubic":
        base = np.floor(pos).astype(np.int64)
        weights = _bspline_weights(pos - base)
        for d in range(4):
            np.add.at(matrix, (rows, _mirror(base + d - 1, n_in)), weights[:, d])
        matrix = matrix @ _prefilter_matrix(n_in)
    else:
        raise InputError(f"{flag('interp')} must be one of {', '.join(CLASSICAL)} here, got {method!r}")
    return matrix


def _along(volume: np.ndarray, axis: int, matrix: np.ndarray) -> np.ndarray:
    return np.moveaxis(np.tensordot(matrix, volume, axes=([1], [axis])), 0, axis)


def resample_fov(data: np.ndarray, out_shape: Sequence[int], method: str) -> np.ndarray:
    """``data`` onto the FOV-preserving grid of ``out_shape`` (float32); H == h axes untouched."""
    out: np.ndarray = np.asarray(data, dtype=np.float64 if method != "nearest" else data.dtype)
    for axis, (h, H) in enumerate(zip(data.shape, out_shape)):
        if int(H) == int(h):
            continue
        positions = input_index_of_output(np.arange(int(H)), int(h), int(H))
        if method == "nearest":  # a gather: values are copied, never blended
            out = np.take(out, np.clip(np.floor(positions + 0.5).astype(np.int64), 0, h - 1), axis=axis)
        else:
            out = _along(out, axis, axis_matrix(int(h), positions, method))
    return np.asarray(out, dtype=np.float32)


def spline_coefficients(data: np.ndarray) -> np.ndarray:
    """Cubic B-spline coefficients of ``data`` (mirror boundary), separably per axis."""
    out = np.asarray(data, dtype=np.float64)
    for axis, n in enumerate(data.shape):
        out = _along(out, axis, _prefilter_matrix(int(n)))
    return out


def _sample_points(source: np.ndarray, points: np.ndarray, method: str) -> np.ndarray:
    """Values at continuous indices ``points`` (N, 3); ``source`` is the coefficients for cubic."""
    shape = source.shape
    if method == "nearest":
        idx = [np.clip(np.floor(points[:, a] + 0.5).astype(np.int64), 0, shape[a] - 1) for a in range(3)]
        return source[idx[0], idx[1], idx[2]].astype(np.float64)
    base = np.floor(points).astype(np.int64)
    frac = points - base
    if method == "linear":
        taps = [[(np.clip(base[:, a] + d, 0, shape[a] - 1), w) for d, w in ((0, 1.0 - frac[:, a]), (1, frac[:, a]))] for a in range(3)]
    else:
        weights = _bspline_weights(frac)
        taps = [[(_mirror(base[:, a] + d - 1, shape[a]), weights[:, a, d]) for d in range(4)] for a in range(3)]
    value = np.zeros(points.shape[0], dtype=np.float64)
    for i, wi in taps[0]:
        for j, wj in taps[1]:
            wij = wi * wj
            for k, wk in taps[2]:
                value += wij * wk * source[i, j, k]
    return value


def prefilter_in_place(data: np.ndarray, slab_bytes: int = 64 * 1024**2) -> np.ndarray:
    """Replace float32 ``data`` by its cubic B-spline coefficients (mirror boundary), axis by
    axis and slab by slab (slabs across another axis): no full-size float64 copy, so a large,
    file-backed intermediate stays within the memory budget."""
    from .memory import release_pages

    shape = data.shape
    for axis, n in enumerate(shape):
        matrix = _prefilter_matrix(int(n))
        other = 1 if axis == 0 else 0
        per_row = 8 * int(np.prod(shape)) // max(1, int(shape[other]))
        rows = max(1, slab_bytes // max(1, per_row))
        for start in range(0, int(shape[other]), rows):
            index = [slice(None)] * 3
            index[other] = slice(start, start + rows)
            block = np.asarray(data[tuple(index)], dtype=np.float64)
            data[tuple(index)] = _along(block, axis, matrix)
            release_pages(data)
    return data


def resample_world(data: np.ndarray, in_affine: np.ndarray, out_shape: Sequence[int], out_affine: np.ndarray,
                   method: str, fill: float = 0.0, *, out: np.ndarray | None = None, prefiltered: bool = False) -> np.ndarray:
    """``data`` (on ``in_affine``) sampled at the world positions of every voxel centre of
    the grid (``out_shape``, ``out_affine``): any orientation, any field of view (float32).

    ``out``: a float32 array of ``out_shape`` to fill (e.g. file-backed), else a new one;
    ``prefiltered``: ``data`` already holds cubic spline coefficients (``prefilter_in_place``).
    """
    from .memory import release_pages

    if method not in CLASSICAL:
        raise InputError(f"world-space resampling takes {flag('interp')} {', '.join(CLASSICAL)}, got {method!r}")
    source = spline_coefficients(data) if method == "cubic" and not prefiltered else np.asarray(data)
    voxel_map = np.linalg.solve(np.asarray(in_affine, dtype=np.float64), np.asarray(out_affine, dtype=np.float64))
    shape = tuple(int(n) for n in out_shape)
    total = int(np.prod(shape))
    result = np.empty(shape, dtype=np.float32) if out is None else out
    flat_out = result.reshape(-1)
    low = -0.5 - EDGE_TOLERANCE
    high = np.array(data.shape[:3], dtype=np.float64) - 0.5 + EDGE_TOLERANCE
    for start in range(0, total, POINTS_PER_STEP):
        flat = np.arange(start, min(total, start + POINTS_PER_STEP))
        ijk = np.stack(np.unravel_index(flat, shape), axis=1).astype(np.float64)
        points = ijk @ voxel_map[:3, :3].T + voxel_map[:3, 3]
        inside = np.all((points >= low) & (points <= high), axis=1)
        values = np.full(flat.size, fill, dtype=np.float64)
        if inside.any():
            values[inside] = _sample_points(source, points[inside], method)
        flat_out[start:start + flat.size] = values
        release_pages(result)  # file-backed arrays: drop their pages after each step
        release_pages(source)
    return result
