"""Data consistency (``--keep-acquired``): the output, averaged over each acquired voxel's
profile, gives back exactly the acquired value.

Why: super-resolution should add detail between and within the acquired samples, never change
what the scanner measured. With the acquisition written as a separable linear operator
``A = A0 (x) A1 (x) A2`` (per axis, ``Ai`` is (h, H): slice profile of input voxel i over the
output voxels; identity on axes that are not up-sampled), the closest output (least squares)
that reproduces the input is ``Y + pinv(A) (X - A Y)``, and ``pinv(A)`` is separable too:
``pinv(A0) (x) pinv(A1) (x) pinv(A2)``. Each factor is a small dense matrix: ``degrade.slice_matrix``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .degrade import slice_matrix  # the acquisition's own profile weights, shared with evaluate


def check_slice_profile(profile: str, gap: float) -> None:
    """InputError (one line, before any work) for an unknown profile or a gap outside [0, 1)."""
    from .errors import InputError
    from .params import flag

    try:
        slice_matrix(8, 4, profile, gap)
    except ValueError as exc:
        raise InputError(f"{flag('keep_acquired')}: {exc}") from None


def check_up_sampled(in_shape: Sequence[int], out_shape: Sequence[int]) -> None:
    """InputError (before any work) when a resized axis gets fewer voxels: there are no
    acquired slices to reproduce by averaging over a coarser output."""
    from .errors import InputError
    from .params import flag

    down = [f"axis {a} ({h} -> {H})" for a, (h, H) in enumerate(zip(in_shape, out_shape)) if H < h]
    if down:
        raise InputError(f"{flag('keep_acquired')} needs every resized axis up-sampled, but this request down-samples "
                         f"{', '.join(down)}")


def _apply(matrix: np.ndarray, data: np.ndarray, axis: int) -> np.ndarray:
    return np.moveaxis(np.tensordot(matrix, data, axes=([1], [axis])), 0, axis)


def keep_acquired(out: np.ndarray, acquired: np.ndarray, profile: str = "box", gap: float = 0.0,
                  axes: Sequence[int] | None = None) -> np.ndarray:
    """Project ``out`` in place so that its profile averages equal ``acquired`` (float output).

    ``axes``: the axes the acquisition averaged over (default: every up-sampled axis). Other
    axes must match in size (in-plane samples stay as they are modulo the correction of the
    through-plane residual, which is exact for separable acquisitions).
    """
    if out.ndim != 3 or acquired.ndim != 3:
        raise ValueError("keep_acquired needs 3-D arrays")
    axes = [a for a in range(3) if out.shape[a] != acquired.shape[a]] if axes is None else list(axes)
    for a in range(3):
        if a not in axes and out.shape[a] != acquired.shape[a]:
            raise ValueError(f"axis {a}: output {out.shape[a]} vs input {acquired.shape[a]} voxels, but it is not a profiled axis")
        if a in axes and out.shape[a] < acquired.shape[a]:
            raise ValueError(f"axis {a}: keep_acquired needs an up-sampled axis, got {acquired.shape[a]} -> {out.shape[a]}")
    mats = {a: slice_matrix(out.shape[a], acquired.shape[a], profile, gap) for a in axes}
    residual = np.asarray(out, dtype=np.float64)
    for a, m in mats.items():
        residual = _apply(m, residual, a)
    residual = np.asarray(acquired, dtype=np.float64) - residual
    for a, m in mats.items():
        residual = _apply(np.linalg.pinv(m), residual, a)
    out += residual.astype(out.dtype)
    return out
