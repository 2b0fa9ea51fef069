"""Data consistency (``--keep-acquired``): the output, averaged over each acquired voxel's
profile, gives back exactly the acquired value.

Why: super-resolution should add detail between and within the acquired samples, never change
what the scanner measured. With the acquisition written as a separable linear operator
``A = A0 (x) A1 (x) A2`` (per axis, ``Ai`` is (h, H): slice profile of input voxel i over the
output voxels; identity on axes that are not up-sampled), the closest output (least squares)
that reproduces the input is ``Y + pinv(A) (X - A Y)``, and ``pinv(A)`` is separable too:
``pinv(A0) (x) pinv(A1) (x) pinv(A2)``. Each factor is a small dense matrix.
"""

from __future__ import annotations

from typing import Sequence

from math import erf as _erf

import numpy as np

erf = np.vectorize(_erf, otypes=[np.float64])  # no scipy in the core install

PROFILES = ("box", "gaussian")


def profile_matrix(h: int, H: int, profile: str = "box", gap: float = 0.0) -> np.ndarray:
    """(h, H) rows: input voxel i's slice profile integrated over output voxels j, rows sum 1.

    Coordinates in input-voxel units: output voxel j spans ``[j h/H - 0.5, (j+1) h/H - 0.5]``;
    input voxel i is a slice of thickness ``1 - gap`` centred on i (box), or a Gaussian of that
    FWHM. Profile tails outside the field of view are dropped and the row renormalised.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown slice profile {profile!r}; choose from {', '.join(PROFILES)}")
    if not 0.0 <= gap < 1.0:
        raise ValueError(f"slice gap must be in [0, 1) of the slice spacing, got {gap}")
    edges = np.arange(H + 1, dtype=np.float64) * h / H - 0.5
    lo, hi = edges[:-1][None, :], edges[1:][None, :]
    centre = np.arange(h, dtype=np.float64)[:, None]
    width = 1.0 - gap
    if profile == "box":
        weights = np.clip(np.minimum(hi, centre + width / 2) - np.maximum(lo, centre - width / 2), 0.0, None)
    else:
        sigma = width / 2.3548
        weights = erf((hi - centre) / (np.sqrt(2) * sigma)) - erf((lo - centre) / (np.sqrt(2) * sigma))
    weights[weights < 1e-12] = 0.0
    sums = weights.sum(axis=1, keepdims=True)
    if np.any(sums <= 0):
        raise ValueError("a slice profile covers no output voxel: the output grid is coarser than the slices")
    return weights / sums


def check_slice_profile(profile: str, gap: float) -> None:
    """InputError (one line, before any work) for an unknown profile or a gap outside [0, 1)."""
    from .errors import InputError

    try:
        profile_matrix(4, 8, profile, gap)
    except ValueError as exc:
        raise InputError(f"--keep-acquired: {exc}") from None


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
            raise ValueError(f"axis {a}: --keep-acquired needs an up-sampled axis, got {acquired.shape[a]} -> {out.shape[a]}")
    mats = {a: profile_matrix(acquired.shape[a], out.shape[a], profile, gap) for a in axes}
    residual = np.asarray(out, dtype=np.float64)
    for a, m in mats.items():
        residual = _apply(m, residual, a)
    residual = np.asarray(acquired, dtype=np.float64) - residual
    for a, m in mats.items():
        residual = _apply(np.linalg.pinv(m), residual, a)
    out += residual.astype(out.dtype)
    return out
