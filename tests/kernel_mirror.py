"""The CUDA sampler's per-point math (arssr_rt/engines/sampler.cu) in numpy, for the tests.

Same steps as the kernel, so a float32 kernel run equals ``reference_sample_rows`` bit for
bit; the corners, weights and decoder coordinates come from ``arssr_rt.sampling`` (the one
definition of the output-to-input map and of the phase coordinate), so pinning the kernel to
this mirror pins it to the CPU sampler too.
"""

from __future__ import annotations

import numpy as np

from arssr_rt.geometry import input_index_of_output, normalized_centres
from arssr_rt.sampling import BoxSpec, axis_corners, cell_phase, check_coords_mode


def _axis_corners(g: np.ndarray, h: int, H: int, off: int, blen: int):
    c = axis_corners(g, h, H)
    w_lo, w_hi = c.w_lower.astype(np.float32), c.w_upper.astype(np.float32)
    l0, l1 = c.lower - off, c.lower + 1 - off
    bad = ((w_lo != 0) & ((l0 < 0) | (l0 >= blen))) | ((w_hi != 0) & ((l1 < 0) | (l1 >= blen)))
    return np.clip(l0, 0, blen - 1), np.clip(l1, 0, blen - 1), w_lo, w_hi, bad


def _decoder_coords(g: np.ndarray, h: int, H: int, mode: str) -> np.ndarray:
    """The kernel's decoder_coord in float64, rounded once to float32."""
    if check_coords_mode(mode) == "phase":
        return cell_phase(input_index_of_output(g, h, H)).astype(np.float32)
    return normalized_centres(H)[g]


def _blend(w_lo: np.ndarray, a: np.ndarray, w_hi: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * w_lo) + (b * w_hi)  # float32 products then sum: the kernel's _rn ops


def reference_sample_rows(features: np.ndarray, spec: BoxSpec, first: int = 0, count: int | None = None) -> tuple[np.ndarray, np.ndarray, bool]:
    """The kernel in numpy: (rows (count, F) float32, coords (count, 3) float32, bad flag).

    ``features`` is the (F, b0, b1, b2) block.
    """
    count = spec.points - first if count is None else count
    n0, n1, n2 = spec.extents
    q = np.arange(first, first + count, dtype=np.int64)
    g = [spec.out_start[0] + q // (n1 * n2), spec.out_start[1] + (q // n2) % n1, spec.out_start[2] + q % n2]
    c = [_axis_corners(g[a], spec.in_shape[a], spec.out_shape[a], spec.in_offset[a], spec.block_shape[a]) for a in range(3)]
    f = np.moveaxis(np.asarray(features, dtype=np.float32), 0, -1)  # (b0, b1, b2, F): gathers give (count, F)
    (lo0, hi0, wl0, wh0, _), (lo1, hi1, wl1, wh1, _), (lo2, hi2, wl2, wh2, _) = c
    col = lambda w: w[:, None]  # noqa: E731
    t = {}
    for name1, i1 in (("0", lo1), ("1", hi1)):
        for name2, i2 in (("0", lo2), ("1", hi2)):
            t[name1 + name2] = _blend(col(wl0), f[lo0, i1, i2], col(wh0), f[hi0, i1, i2])
    u0 = _blend(col(wl1), t["00"], col(wh1), t["10"])
    u1 = _blend(col(wl1), t["01"], col(wh1), t["11"])
    rows = _blend(col(wl2), u0, col(wh2), u1).astype(np.float32)
    coords = np.stack([_decoder_coords(g[a], spec.in_shape[a], spec.out_shape[a], spec.coords_mode) for a in range(3)], axis=1)
    bad = bool(np.any(c[0][4] | c[1][4] | c[2][4]))
    return rows, coords, bad
