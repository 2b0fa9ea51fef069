"""Separable Lanczos (windowed-sinc) interpolation of the LR volume: the residual model's base.

Why: on band-limited input (an MR acquisition is a central crop of k-space) the band-limited
estimate, zero-filled k-space / sinc interpolation, is what to beat, and a network that has to
rebuild it from trilinearly blended features stays a local interpolant (measured in issue 14).
A bundle with ``spec.base == "lanczos3"`` or ``"lanczos8"`` predicts the residual over this
local approximation of sinc interpolation instead, so it starts where the scanner's own
interpolation is. Lanczos-3 is tricubic-level on a k-space crop (MyConnectome x2: 30.78 dB
against sinc's 31.27, head mask); Lanczos-8 is within 0.05 dB of sinc (31.22) and above it at
x3 (27.64 vs 27.63), so a lanczos8 residual starts at the scanner's level.

Definition (the ONNX contract, docs/onnx-contract.md), with ``a`` the base's lobes (3 or 8):
along each axis the point at continuous LR index ``p`` takes the ``2a`` samples
``floor(p) - a + 1 .. floor(p) + a``, indices clamped to the volume (edge samples repeat), with
weights ``L(p - i)``, ``L(t) = sinc(t) sinc(t / a)`` for ``|t| < a``, normalised to sum 1 per
axis; the 3-D weight is the product of the three axes'.
One implementation (numpy) serves training data, the torch reference and the runtime tiles.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .geometry import input_index_of_output

GATED = "gated-lanczos3-8"
BASES = ("none", "lanczos3", "lanczos8", GATED)
# The gated base (a training experiment; the runtime refuses it until it decodes two channels):
# the decoder returns (r, g) and the output is r + l3 + sigmoid(g) (l8 - l3), so the network
# chooses per point between the Lanczos-3 base (aliased / blurred input) and the sinc-level
# Lanczos-8 base (band-limited input), which no single base serves (issue 14, stages 13-18).
RUNTIME_BASES = ("none", "lanczos3", "lanczos8")  # bundle_format.RUNTIME_BASES
LOBES = 3  # the default, lanczos3's
POINT_CHUNK = 4096  # sample_points gathers (2a)^3 taps a point: bounded working memory


def lobes_of(base: str) -> int:
    """Lobes ``a`` of a single residual base name ("lanczos3" -> 3); ValueError otherwise."""
    if base not in RUNTIME_BASES or base == "none":
        raise ValueError(f"not a windowed-sinc base: {base!r}; known: {', '.join(b for b in RUNTIME_BASES if b != 'none')}")
    return int(base[len("lanczos"):])


def base_lobes(base: str) -> tuple[int, ...]:
    """Lobes of every base channel a model adds: () for "none", (3, 8) for the gated base."""
    if base == "none":
        return ()
    if base == GATED:
        return (3, 8)
    return (lobes_of(base),)


def decoder_outputs(base: str) -> int:
    """Channels the decoder returns: 2 for the gated base (residual, gate logit), else 1."""
    return 2 if base == GATED else 1


def bases_at_picks(lr: np.ndarray, out_shape: Sequence[int], picks: Sequence[np.ndarray], base: str) -> np.ndarray:
    """Every base channel of ``base`` at output voxels ``picks`` (training pairs): (K, C) float32,
    C >= 1 (zeros for "none", so batches keep one layout)."""
    lobes = base_lobes(base)
    if not lobes:
        return np.zeros((len(picks[0]), 1), dtype=np.float32)
    return np.stack([sample_picks(lr, out_shape, picks, a) for a in lobes], axis=-1).astype(np.float32)


def bases_on_grid(lr: np.ndarray, out_shape: Sequence[int], base: str) -> list[np.ndarray]:
    """Every base channel of ``base`` on the whole output grid of ``out_shape`` (centre-aligned),
    one float32 array of that shape per channel; [] for "none". For whole-volume references
    (training's predict_volume, the benchmark's published-way pipeline)."""
    positions = [input_index_of_output(np.arange(n), h, n) for h, n in zip(lr.shape, out_shape)]
    return [sample_grid(lr, positions, lobes=a) for a in base_lobes(base)]


def lanczos_taps(pos: np.ndarray, n: int, lobes: int = LOBES) -> tuple[np.ndarray, np.ndarray]:
    """Tap indices (P, 2a), clamped to [0, n), and normalised weights (P, 2a) for positions ``pos``."""
    pos = np.asarray(pos, dtype=np.float64).reshape(-1)
    first = np.floor(pos).astype(np.int64) - (lobes - 1)
    taps = first[:, None] + np.arange(2 * lobes, dtype=np.int64)[None, :]
    t = pos[:, None] - taps
    weights = np.sinc(t) * np.sinc(t / lobes)
    weights[np.abs(t) >= lobes] = 0.0
    weights /= weights.sum(axis=1, keepdims=True)
    return np.clip(taps, 0, n - 1), weights


def axis_matrix(pos: np.ndarray, n: int, lo: int = 0, hi: int | None = None, lobes: int = LOBES) -> np.ndarray:
    """Dense (P, hi - lo) interpolation matrix over input samples [lo, hi) of an axis of ``n``.

    The taps are clamped at the *volume* (0, n), not at the window, so a tile's matrix equals
    the whole volume's restricted to the tile; every tap must lie inside [lo, hi).
    """
    hi = n if hi is None else hi
    taps, weights = lanczos_taps(pos, n, lobes)
    if taps.size and (taps.min() < lo or taps.max() >= hi):
        raise ValueError(f"Lanczos taps [{taps.min()}, {taps.max()}] outside the window [{lo}, {hi})")
    out = np.zeros((taps.shape[0], hi - lo), dtype=np.float64)
    rows = np.repeat(np.arange(taps.shape[0]), taps.shape[1])
    np.add.at(out, (rows, (taps - lo).reshape(-1)), weights.reshape(-1))
    return out


def sample_grid(lr: np.ndarray, positions: Sequence[np.ndarray], origin: Sequence[int] = (0, 0, 0),
                volume_shape: Sequence[int] | None = None, lobes: int = LOBES) -> np.ndarray:
    """Base on the regular grid ``positions[0] x positions[1] x positions[2]`` (continuous indices
    of the whole volume), from ``lr``, the volume's samples starting at ``origin`` (a tile with
    its halo). Returns float32 of shape (len(p0), len(p1), len(p2))."""
    shape = lr.shape if volume_shape is None else tuple(volume_shape)
    out = np.asarray(lr, dtype=np.float64)
    for axis in range(3):
        m = axis_matrix(positions[axis], shape[axis], origin[axis], origin[axis] + lr.shape[axis], lobes)
        out = np.moveaxis(np.tensordot(m, out, axes=([1], [axis])), 0, axis)
    return out.astype(np.float32)


def sample_points(lr: np.ndarray, positions: np.ndarray, lobes: int = LOBES) -> np.ndarray:
    """Base at scattered points: ``positions`` (K, 3) continuous indices of ``lr`` -> (K,) float32."""
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    flat = np.asarray(lr, dtype=np.float64).reshape(-1)
    n1, n2 = lr.shape[1], lr.shape[2]
    out = np.empty(positions.shape[0], dtype=np.float32)
    for a in range(0, positions.shape[0], POINT_CHUNK):
        part = positions[a:a + POINT_CHUNK]
        (i0, w0), (i1, w1), (i2, w2) = (lanczos_taps(part[:, k], lr.shape[k], lobes) for k in range(3))
        index = (i0[:, :, None, None] * n1 + i1[:, None, :, None]) * n2 + i2[:, None, None, :]
        weight = w0[:, :, None, None] * w1[:, None, :, None] * w2[:, None, None, :]
        out[a:a + POINT_CHUNK] = (flat[index] * weight).sum(axis=(1, 2, 3))
    return out


def sample_picks(lr: np.ndarray, out_shape: Sequence[int], picks: Sequence[np.ndarray], lobes: int = LOBES) -> np.ndarray:
    """Base at output voxels ``(picks[0][k], picks[1][k], picks[2][k])`` of the centre-aligned
    ``out_shape`` grid over ``lr``: the separable grid base, then gathered. Equals
    ``sample_points`` at those points, at a small fraction of its cost when the points are many
    and the grid small (training patches: 4,096 points on a grid of at most 128^3)."""
    grid = sample_grid(lr, [input_index_of_output(np.arange(H), h, H) for h, H in zip(lr.shape, out_shape)],
                       lobes=lobes)
    return grid[tuple(np.asarray(p) for p in picks)]


def add_base(out: np.ndarray, lr: np.ndarray, box: Sequence[tuple[int, int]], lobes: int = LOBES) -> None:
    """Add the base to output voxels ``box`` ((start, stop) per axis) of ``out`` in place.

    Reads only the LR samples the box's taps touch, so a tile costs its own size (the
    pipeline calls this per encoder tile, after the decoder filled the box).
    """
    positions, window = [], []
    for (a, b), h, H in zip(box, lr.shape, out.shape):
        p = input_index_of_output(np.arange(a, b), h, H)
        positions.append(p)
        lo = max(0, int(np.floor(p.min())) - (lobes - 1)) if b > a else 0
        hi = min(h, int(np.floor(p.max())) + lobes + 1) if b > a else 0
        window.append((lo, hi))
    if any(b <= a for a, b in box):
        return
    tile = lr[tuple(slice(lo, hi) for lo, hi in window)]
    sel = tuple(slice(a, b) for a, b in box)
    out[sel] += sample_grid(tile, positions, origin=[lo for lo, _ in window], volume_shape=lr.shape, lobes=lobes)
