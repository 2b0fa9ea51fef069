"""Flat background stays flat: output voxels over perfectly constant minimum-valued input.

Skull-stripped, masked or defaced volumes hold exactly-constant air (often 0). Tricubic keeps it
exactly constant; a learned decoder can leave a faint texture or offset there, which SSIM's
near-constant air windows punish out of proportion. Where every input voxel within
``RADIUS`` of an output voxel's nearest input voxel equals the input minimum, that output voxel
*is* the minimum: the radius covers both trilinear corners and the 4-tap cubic support, so no
interpolant could put structure there either. Inputs with noisy air are not touched.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .geometry import input_index_of_output
from .memory import release_pages, slabs

RADIUS = 2


def _local_max(x: np.ndarray, radius: int) -> np.ndarray:
    """Separable max over a (2r+1)^3 box, edges replicated (numpy only: the runtime has no scipy)."""
    for axis in range(3):
        n = x.shape[axis]
        idx = np.arange(n)
        out = x.copy()
        for d in range(1, radius + 1):
            np.maximum(out, np.take(x, np.minimum(idx + d, n - 1), axis=axis), out=out)
            np.maximum(out, np.take(x, np.maximum(idx - d, 0), axis=axis), out=out)
        x = out
    return x


def nearest_input_index(h: int, H: int) -> np.ndarray:
    """For each output voxel j of an axis h -> H, the input voxel whose centre is nearest."""
    return np.clip(np.floor(input_index_of_output(np.arange(H), h, H) + 0.5), 0, h - 1).astype(np.int64)


def flatten_flat_background(lr: np.ndarray, out: np.ndarray) -> int:
    """Set ``out`` (the grid of ``lr`` up-sampled) to ``lr.min()`` over flat-minimum input.

    Works slab by slab, so a file-backed ``out`` is never read whole. Returns how many output
    voxels were set.
    """
    floor = lr.min()
    flat = _local_max(lr, RADIUS) <= floor
    if not flat.any():
        return 0
    idx: Sequence[np.ndarray] = [nearest_input_index(h, H) for h, H in zip(lr.shape, out.shape)]
    changed = 0
    for s in slabs(out.shape):
        rows = idx[0][s]
        mask = flat[rows][:, idx[1]][:, :, idx[2]]
        changed += int(mask.sum())
        out[s][mask] = floor
        release_pages(out)
    return changed
