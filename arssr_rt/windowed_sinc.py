"""Separable Lanczos-3 (windowed-sinc) interpolation of the LR volume: the residual model's base.

Why: on band-limited input (an MR acquisition is a central crop of k-space) the band-limited
estimate, zero-filled k-space / sinc interpolation, is what to beat, and a network that has to
rebuild it from trilinearly blended features stays a local interpolant (measured in issue 14).
A bundle with ``spec.base == "lanczos3"`` predicts the residual over this local approximation
of sinc interpolation instead, so it starts where the scanner's own interpolation is.

Definition (the ONNX contract, docs/onnx-contract.md): along each axis the point at continuous
LR index ``p`` takes the 6 samples ``floor(p) - 2 .. floor(p) + 3``, indices clamped to the
volume (edge samples repeat), with weights ``L(p - i)``, ``L(t) = sinc(t) sinc(t / 3)`` for
``|t| < 3``, normalised to sum 1 per axis; the 3-D weight is the product of the three axes'.
One implementation (numpy) serves training data, the torch reference and the runtime tiles.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .geometry import input_index_of_output

BASES = ("none", "lanczos3")
LOBES = 3


def lanczos_taps(pos: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Tap indices (P, 6), clamped to [0, n), and normalised weights (P, 6) for positions ``pos``."""
    pos = np.asarray(pos, dtype=np.float64).reshape(-1)
    first = np.floor(pos).astype(np.int64) - (LOBES - 1)
    taps = first[:, None] + np.arange(2 * LOBES, dtype=np.int64)[None, :]
    t = pos[:, None] - taps
    weights = np.sinc(t) * np.sinc(t / LOBES)
    weights[np.abs(t) >= LOBES] = 0.0
    weights /= weights.sum(axis=1, keepdims=True)
    return np.clip(taps, 0, n - 1), weights


def axis_matrix(pos: np.ndarray, n: int, lo: int = 0, hi: int | None = None) -> np.ndarray:
    """Dense (P, hi - lo) interpolation matrix over input samples [lo, hi) of an axis of ``n``.

    The taps are clamped at the *volume* (0, n), not at the window, so a tile's matrix equals
    the whole volume's restricted to the tile; every tap must lie inside [lo, hi).
    """
    hi = n if hi is None else hi
    taps, weights = lanczos_taps(pos, n)
    if taps.size and (taps.min() < lo or taps.max() >= hi):
        raise ValueError(f"Lanczos taps [{taps.min()}, {taps.max()}] outside the window [{lo}, {hi})")
    out = np.zeros((taps.shape[0], hi - lo), dtype=np.float64)
    rows = np.repeat(np.arange(taps.shape[0]), taps.shape[1])
    np.add.at(out, (rows, (taps - lo).reshape(-1)), weights.reshape(-1))
    return out


def sample_grid(lr: np.ndarray, positions: Sequence[np.ndarray], origin: Sequence[int] = (0, 0, 0),
                volume_shape: Sequence[int] | None = None) -> np.ndarray:
    """Base on the regular grid ``positions[0] x positions[1] x positions[2]`` (continuous indices
    of the whole volume), from ``lr``, the volume's samples starting at ``origin`` (a tile with
    its halo). Returns float32 of shape (len(p0), len(p1), len(p2))."""
    shape = lr.shape if volume_shape is None else tuple(volume_shape)
    out = np.asarray(lr, dtype=np.float64)
    for axis in range(3):
        m = axis_matrix(positions[axis], shape[axis], origin[axis], origin[axis] + lr.shape[axis])
        out = np.moveaxis(np.tensordot(m, out, axes=([1], [axis])), 0, axis)
    return out.astype(np.float32)


def sample_points(lr: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Base at scattered points: ``positions`` (K, 3) continuous indices of ``lr`` -> (K,) float32."""
    positions = np.asarray(positions, dtype=np.float64)
    (i0, w0), (i1, w1), (i2, w2) = (lanczos_taps(positions[:, a], lr.shape[a]) for a in range(3))
    flat = np.asarray(lr, dtype=np.float64).reshape(-1)
    n1, n2 = lr.shape[1], lr.shape[2]
    index = (i0[:, :, None, None] * n1 + i1[:, None, :, None]) * n2 + i2[:, None, None, :]
    weight = w0[:, :, None, None] * w1[:, None, :, None] * w2[:, None, None, :]
    return (flat[index] * weight).sum(axis=(1, 2, 3)).astype(np.float32)


def add_base(out: np.ndarray, lr: np.ndarray, box: Sequence[tuple[int, int]]) -> None:
    """Add the base to output voxels ``box`` ((start, stop) per axis) of ``out`` in place.

    Reads only the LR samples the box's taps touch, so a tile costs its own size (the
    pipeline calls this per encoder tile, after the decoder filled the box).
    """
    positions, window = [], []
    for (a, b), h, H in zip(box, lr.shape, out.shape):
        p = input_index_of_output(np.arange(a, b), h, H)
        positions.append(p)
        lo = max(0, int(np.floor(p.min())) - (LOBES - 1)) if b > a else 0
        hi = min(h, int(np.floor(p.max())) + LOBES + 1) if b > a else 0
        window.append((lo, hi))
    if any(b <= a for a, b in box):
        return
    tile = lr[tuple(slice(lo, hi) for lo, hi in window)]
    sel = tuple(slice(a, b) for a, b in box)
    out[sel] += sample_grid(tile, positions, origin=[lo for lo, _ in window], volume_shape=lr.shape)
