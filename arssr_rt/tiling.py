"""Exact tiling of the encoder and chunking of the decoder, as pure index arithmetic.

The input is cut into cores of ``tile`` voxels per axis. Each core's encoder input carries a
halo of ``receptive_radius + 1`` voxels (clipped at the volume, where the whole-volume
encoder zero-pads the same way), so the features kept for ``core ± 1`` equal the
whole-volume encoder's. Every output voxel belongs to the core holding its lower trilinear
corner, so each output voxel is decoded exactly once.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from .errors import BackendError
from .params import flag
from .sampling import lower_corner

Range = tuple[int, int]


@dataclass(frozen=True)
class Tile:
    """One encoder tile: where to encode, which features to keep, which outputs it owns."""

    encode: tuple[Range, Range, Range]  # encoder input region (global input indices)
    keep: tuple[Range, Range, Range]  # feature block kept for sampling (global input indices)
    output: tuple[Range, Range, Range]  # output voxels it owns (global output indices)

    @property
    def output_voxels(self) -> int:
        return int(np.prod([b - a for a, b in self.output]))


def _owned_outputs(c0: int, c1: int, h: int, H: int) -> Range:
    """Output range whose lower corner lies in [c0, c1); the first core also owns corner -1."""
    corners = lower_corner(np.arange(H), h, H)
    lo = 0 if c0 == 0 else int(np.searchsorted(corners, c0, side="left"))
    hi = H if c1 >= h else int(np.searchsorted(corners, c1, side="left"))
    return lo, hi


def axis_cores(h: int, tile: int) -> list[Range]:
    """Split an axis of h voxels into near-equal cores of at most ``tile`` voxels."""
    n = max(1, math.ceil(h / max(1, tile)))
    edges = [round(k * h / n) for k in range(n + 1)]
    return [(edges[k], edges[k + 1]) for k in range(n)]


def plan_tiles(in_shape: Sequence[int], out_shape: Sequence[int], tile: int | Sequence[int], receptive_radius: int) -> list[Tile]:
    """All tiles covering the volume, in C order; tiles owning no output are dropped."""
    tiles_per_axis = [tile] * 3 if isinstance(tile, int) else list(tile)
    halo = receptive_radius + 1
    per_axis = []
    for h, H, t in zip(in_shape, out_shape, tiles_per_axis):
        entries = []
        for c0, c1 in axis_cores(h, t):
            out = _owned_outputs(c0, c1, h, H)
            if out[1] <= out[0]:
                continue
            entries.append(((max(0, c0 - halo), min(h, c1 + halo)), (c0, min(h, c1 + 1)), out))
        per_axis.append(entries)
    tiles = []
    for combo in itertools.product(*per_axis):
        tiles.append(Tile(tuple(e[0] for e in combo), tuple(e[1] for e in combo), tuple(e[2] for e in combo)))  # type: ignore[arg-type]
    return tiles


def cap_tile(tile: int, in_shape: Sequence[int], receptive_radius: int, max_input: Sequence[int] | None) -> list[int]:
    """Per-axis cores no bigger than ``tile`` whose encoder input fits ``max_input``.

    ``max_input`` is a backend's largest encoder input (an engine profile; None: any size).
    An axis that fits whole keeps ``tile``; a longer one gets cores of ``max - 2 * halo``.
    """
    if max_input is None:
        return [int(tile)] * 3
    halo = receptive_radius + 1
    cores = []
    for h, m in zip(in_shape, max_input):
        if h <= m:
            cores.append(int(tile))
            continue
        if m - 2 * halo < 1:
            raise BackendError(f"the encoder's largest input {tuple(max_input)} leaves no core inside a halo of {halo} voxels; rebuild the engines with a larger {flag('tile')}")
        cores.append(min(int(tile), m - 2 * halo))
    return cores


def output_chunks(output: Sequence[Range], chunk: int) -> Iterator[tuple[tuple[int, int, int], tuple[int, int, int]]]:
    """Split an output box into boxes of at most ``chunk`` points (slabs along axis 0, then 1)."""
    (a0, b0), (a1, b1), (a2, b2) = output
    plane = (b1 - a1) * (b2 - a2)
    if plane <= chunk:
        rows = max(1, chunk // max(1, plane))
        for s in range(a0, b0, rows):
            yield (s, a1, a2), (min(b0, s + rows), b1, b2)
        return
    lines = max(1, chunk // max(1, b2 - a2))
    for s in range(a0, b0):
        for t in range(a1, b1, lines):
            yield (s, t, a2), (s + 1, min(b1, t + lines), b2)


def auto_tile(in_shape: Sequence[int], receptive_radius: int, bytes_per_voxel: float, budget_bytes: float) -> int:
    """Largest cubic core whose encoder input (core + 2 halos) fits ``budget_bytes``."""
    halo = receptive_radius + 1
    biggest = max(in_shape)
    full = np.prod([n + 0 for n in in_shape]) * bytes_per_voxel
    if full <= budget_bytes:
        return int(biggest)
    side = int((budget_bytes / bytes_per_voxel) ** (1 / 3)) - 2 * halo
    return int(max(8, min(biggest, side)))
