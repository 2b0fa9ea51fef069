"""MR-like acquisitions of a training patch, as separable per-axis operators (no wrap-around).

Why separate from ``degrade.py`` (whole volumes, used by ``evaluate``): a k-space crop of a
*patch* by FFT treats the patch as periodic, so its cut edges ring through the LR patch, which
no whole-head acquisition shows. Here every degradation is a linear (h, H) matrix per axis that
low-passes / profiles with a mirrored (symmetric) extension of the patch and samples the
centre-aligned LR grid (LR voxel i at HR index (i + 0.5) H / h - 0.5, as everywhere):

- ``kspace``: ideal low-pass at the LR Nyquist frequency (the sinc kernel of a central k-space
  crop), then the magnitude, as scanners store it; ``kspace-noise`` adds complex Gaussian noise
  before the magnitude (Rician);
- ``gaussian``: Gaussian PSF with FWHM = the LR spacing;
- ``slice``: a box or Gaussian slice profile of thickness spacing * (1 - gap) on every axis that
  is down-sampled (thick-slice scans: only the through-plane axis);
- ``cubic``: the centre-aligned cubic B-spline point sampling the default model began with.
Matrices are cached per (kind, H, h, thickness), so a patch costs three small matrix products.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np

from ..degrade import add_rician_noise, cubic_resample, slice_matrix

KINDS = ("cubic", "kspace", "kspace-noise", "gaussian", "slice")
SINC_REACH = 8  # LR voxels of sinc kernel kept either side (tails beyond are < 2 % of the peak)


def _mirror(index: np.ndarray, n: int) -> np.ndarray:
    """Symmetric (half-sample) extension: ... 1 0 | 0 1 .. n-1 | n-1 n-2 ..."""
    period = 2 * n
    m = np.mod(index, period)
    return np.where(m < n, m, period - 1 - m)


def _rows(centres: np.ndarray, reach: float, kernel, n: int) -> np.ndarray:
    """(len(centres), n) matrix of ``kernel(centre, j_lo, j_hi)`` over HR voxels j (extents
    [j - 0.5, j + 0.5]) within ``reach`` of each centre, mirrored into the patch, rows sum 1."""
    out = np.zeros((len(centres), n), dtype=np.float64)
    for i, c in enumerate(centres):
        j = np.arange(int(np.floor(c - reach)), int(np.ceil(c + reach)) + 1)
        w = kernel(c, j - 0.5, j + 0.5)
        np.add.at(out[i], _mirror(j, n), w)
        out[i] /= out[i].sum()
    return out


def _mirrored_profile(H: int, h: int, profile: str, gap: float) -> np.ndarray:
    """``degrade.slice_matrix`` (the evaluate/runtime profile weights) on the patch mirrored by
    its own length either side (the same centre-aligned grid, 3h over 3H), folded back."""
    rows = slice_matrix(3 * H, 3 * h, profile, gap)[h:2 * h]
    out = np.zeros((h, H), dtype=np.float64)
    np.add.at(out.T, _mirror(np.arange(3 * H) - H, H), rows.T)
    return out


@lru_cache(maxsize=4096)
def axis_operator(kind: str, H: int, h: int, thickness: float = 1.0, profile: str = "box") -> np.ndarray:
    """(h, H) operator of one axis; ``thickness`` is the slice thickness as a fraction of the
    LR spacing (1 = contiguous slices, 1 - gap otherwise)."""
    if h == H:
        return np.eye(H)
    spacing = H / h
    centres = (np.arange(h) + 0.5) * spacing - 0.5
    if kind == "kspace":
        cut = 1.0 / spacing  # kernel (1/s) sinc(t/s): the low-pass of a k-space crop to h samples

        def sinc_area(c, a, b):  # sinc sampled at the HR voxel centre (the data are samples)
            return cut * np.sinc(cut * ((a + b) / 2 - c))

        return _rows(centres, SINC_REACH * spacing, sinc_area, H)
    if kind in ("gaussian", "slice"):  # a Gaussian PSF is the Gaussian profile of a contiguous slice
        return _mirrored_profile(H, h, profile if kind == "slice" else "gaussian", 1.0 - thickness if kind == "slice" else 0.0)
    raise ValueError(f"unknown acquisition {kind!r}; known: {', '.join(KINDS)}")


def acquire(hr: np.ndarray, lr_shape: Sequence[int], kind: str, rng: np.random.Generator,
            noise_sigma: float = 0.0, thickness: float = 1.0, profile: str = "box") -> np.ndarray:
    """LR patch of ``lr_shape`` from the HR patch with acquisition ``kind`` (float32)."""
    if kind == "cubic":
        return cubic_resample(hr, lr_shape)
    base = "kspace" if kind == "kspace-noise" else kind
    out = np.asarray(hr, dtype=np.float64)
    for axis, h in enumerate(lr_shape):
        H = out.shape[axis]
        if h == H:  # in-plane axes of a thick-slice scan are left as acquired
            continue
        m = axis_operator(base, H, int(h), float(thickness), profile)
        out = np.moveaxis(np.tensordot(m, out, axes=([1], [axis])), 0, axis)
    if base == "kspace":
        if kind == "kspace-noise" and noise_sigma > 0:
            out = add_rician_noise(out, noise_sigma, rng)
        else:
            out = np.abs(out)
    return out.astype(np.float32)


def gamma_and_bias(hr: np.ndarray, rng: np.random.Generator, gamma: float, bias: float) -> np.ndarray:
    """Contrast (gamma ``exp(U(-gamma, gamma))``) and a smooth multiplicative bias field
    ``exp(sum_k c_k u_k)``, ``c_k ~ U(-bias, bias)``, u_k in [-1, 1] across the patch: other T1
    sequences and coil profiles, applied to the HR patch so the LR and the target agree."""
    out = np.asarray(hr, dtype=np.float32)
    if gamma > 0:
        out = np.power(np.clip(out, 0.0, None), np.float32(np.exp(rng.uniform(-gamma, gamma))))
    if bias > 0:
        field = np.zeros(out.shape, dtype=np.float32)
        for axis, n in enumerate(out.shape):
            shape = [1, 1, 1]
            shape[axis] = n
            u = np.linspace(-1.0, 1.0, n, dtype=np.float32).reshape(shape)
            field = field + np.float32(rng.uniform(-bias, bias)) * u + np.float32(rng.uniform(-bias, bias) / 2) * (u * u - 0.33)
        out = out * np.exp(field)
    return out.astype(np.float32)
