"""Simulated MR acquisitions: make an LR volume from an HR one on a centre-aligned grid.

Shared by training (LR made on the fly) and ``evaluate`` so both see the same degradation.
The LR grid of ``h`` voxels covers exactly the HR field of view of ``H`` voxels: LR voxel
``i`` sits at HR continuous index ``(i + 0.5) * H / h - 0.5`` (the published pipeline used a
corner-aligned zoom here, a half-voxel error we do not repeat).

Kinds (``DEGRADATIONS``):

- ``cubic``: B-spline point sampling (aliased; what the shipped model was trained on).
- ``kspace``: the magnitude of the central k-space crop: a smaller acquisition matrix as a
  scanner stores it (band-limited, Gibbs ringing folded positive by the magnitude).
- ``kspace-noise``: the same crop, then i.i.d. complex Gaussian noise in the LR image (real
  and imaginary parts each of std ``sigma``), then the magnitude: Rician statistics.
  ``sigma = robust_max(HR) / snr`` (default snr 50, i.e. noise of 2 % of the bright tissue).
- ``gaussian``: Gaussian PSF with FWHM = the LR spacing, then cubic sampling.
- ``slice``: thick slices along every axis whose scale is > 1: each LR voxel is the
  ``profile``-weighted mean of the HR over its slice, thickness = spacing * (1 - gap)
  (``gap`` is the fraction of the slice spacing left unsampled between slices); ``box``
  integrates the HR voxels' overlap with the slice, ``gaussian`` has FWHM = the thickness.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import numpy as np

from .extras import require
from .fourier import fourier_resample

Degradation = Literal["cubic", "kspace", "slice", "gaussian", "kspace-noise"]
DEGRADATIONS: tuple[str, ...] = ("cubic", "kspace", "slice", "gaussian", "kspace-noise")
SLICE_PROFILES: tuple[str, ...] = ("box", "gaussian")
DEFAULT_SNR = 50.0
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))  # 2.3548
_erf = np.vectorize(math.erf, otypes=[np.float64])


def lr_shape_for(hr_shape: Sequence[int], scale: Sequence[float]) -> tuple[int, int, int]:
    """h = round(H / s), at least 1, per axis."""
    return tuple(max(1, int(round(H / s))) for H, s in zip(hr_shape, scale))  # type: ignore[return-value]


def _centre_positions(H: int, h: int) -> np.ndarray:
    return (np.arange(h, dtype=np.float64) + 0.5) * H / h - 0.5


def _apply_matrices(volume: np.ndarray, matrices: dict[int, np.ndarray]) -> np.ndarray:
    out = np.asarray(volume, dtype=np.float64)
    for axis, matrix in matrices.items():
        out = np.moveaxis(np.tensordot(matrix, out, axes=([1], [axis])), 0, axis)
    return out


def cubic_resample(volume: np.ndarray, out_shape: Sequence[int], order: int = 3) -> np.ndarray:
    """B-spline (order 3 = tricubic) resampling onto a centre-aligned grid of ``out_shape``.

    A tensor-product spline interpolates separably, so each axis is one small matrix product
    (the matrix is scipy's 1-D spline interpolation applied to unit vectors, mirror boundary).
    Used both to down-sample and as the tricubic baseline.
    """
    shape = np.shape(volume)
    matrices = {a: interpolation_matrix(shape[a], int(n), order) for a, n in enumerate(out_shape) if int(n) != shape[a]}
    return _apply_matrices(volume, matrices).astype(np.float32)


def interpolation_matrix(n_in: int, n_out: int, order: int = 3) -> np.ndarray:
    """(n_out, n_in) matrix of 1-D spline interpolation at centre-aligned output positions."""
    ndimage = require("scipy.ndimage")
    pos = _centre_positions(n_in, n_out)
    eye = np.eye(n_in, dtype=np.float64)
    cols = [ndimage.map_coordinates(eye[:, k], [pos], order=order, mode="mirror") for k in range(n_in)]
    return np.stack(cols, axis=1)


def kspace_truncate(volume: np.ndarray, out_shape: Sequence[int]) -> np.ndarray:
    """Central k-space crop as a real (signed) image: the band-limited LR, before any magnitude.

    Exact samples of the HR's trigonometric interpolant on the centre-aligned LR grid
    (``fourier.fourier_resample``), so a band-limited HR is reproduced on the LR grid.
    """
    return fourier_resample(volume, out_shape).astype(np.float32)


def robust_max(volume: np.ndarray) -> float:
    """The bright-tissue level that ``snr`` refers to: 99.5th percentile of the voxels above 10 % of the range.

    Robust to a few hot voxels and independent of how much air surrounds the head; a constant
    volume falls back to its largest absolute value (1.0 when that is 0).
    """
    data = np.asarray(volume, dtype=np.float64)
    lo, hi = float(data.min()), float(data.max())
    fg = data[data > lo + 0.1 * (hi - lo)]
    if fg.size == 0:
        return max(abs(lo), abs(hi)) or 1.0
    return float(np.percentile(fg, 99.5))


def noise_sigma(volume: np.ndarray, snr: float = DEFAULT_SNR) -> float:
    """Per-channel (real and imaginary) noise std for ``snr``: ``robust_max(volume) / snr``."""
    if not snr > 0 or not math.isfinite(snr):
        raise ValueError(f"snr must be a positive number, got {snr}")
    return robust_max(volume) / float(snr)


def _generator(rng: np.random.Generator | int | None) -> np.random.Generator:
    """A Generator from a Generator or a seed; None means seed 0, so a result is reproducible by default."""
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(0 if rng is None else rng)


def add_rician_noise(image: np.ndarray, sigma: float, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """``|image + n_re + i n_im|`` with n ~ N(0, sigma^2) i.i.d.: a real image's magnitude under complex noise."""
    if not sigma >= 0 or not math.isfinite(sigma):
        raise ValueError(f"noise sigma must be >= 0, got {sigma}")
    gen = _generator(rng)
    x = np.asarray(image, dtype=np.float64)
    re = x + gen.normal(0.0, sigma, x.shape)
    im = gen.normal(0.0, sigma, x.shape)
    return np.hypot(re, im).astype(np.float32)


def slice_matrix(n_in: int, n_out: int, profile: str = "box", gap: float = 0.0) -> np.ndarray:
    """(n_out, n_in) weights of each LR slice over the HR voxels; rows sum to 1.

    HR voxel ``n`` covers ``[n - 0.5, n + 0.5]``; slice ``i`` is centred at the LR position
    with thickness ``T = (n_in / n_out) * (1 - gap)``. ``box``: weight = overlap of the voxel
    with the slice. ``gaussian``: the Gaussian of FWHM ``T`` integrated over each voxel (erf),
    renormalised where it reaches past the field of view.
    """
    if profile not in SLICE_PROFILES:
        raise ValueError(f"slice profile must be one of {', '.join(SLICE_PROFILES)}, got {profile!r}")
    if not 0.0 <= gap < 1.0:
        raise ValueError(f"slice gap is a fraction of the slice spacing in [0, 1), got {gap}")
    thick = n_in / n_out * (1.0 - gap)
    centres = _centre_positions(n_in, n_out)[:, None]
    edges = np.arange(n_in + 1, dtype=np.float64)[None, :] - 0.5
    if profile == "box":
        w = np.minimum(centres + thick / 2, edges[:, 1:]) - np.maximum(centres - thick / 2, edges[:, :-1])
        w = np.clip(w, 0.0, None)
    else:  # the normal CDF via math.erf: the runtime's --keep-acquired uses this too, without scipy
        sigma = thick / FWHM_PER_SIGMA
        w = np.diff(0.5 * (1.0 + _erf((edges - centres) / (sigma * math.sqrt(2.0)))), axis=1)
    return w / w.sum(axis=1, keepdims=True)


def slice_profile(volume: np.ndarray, out_shape: Sequence[int], profile: str = "box", gap: float = 0.0) -> np.ndarray:
    """Thick-slice acquisition along every reduced axis; enlarged axes are linearly interpolated."""
    shape = np.shape(volume)
    matrices = {}
    for axis, h in enumerate(out_shape):
        H = shape[axis]
        if h < H:
            matrices[axis] = slice_matrix(H, int(h), profile, gap)
        elif h > H:
            matrices[axis] = interpolation_matrix(H, int(h), order=1)
    return _apply_matrices(volume, matrices).astype(np.float32)


def gaussian_blur_down(volume: np.ndarray, out_shape: Sequence[int]) -> np.ndarray:
    """Anti-aliased down-sampling: Gaussian with FWHM = the LR spacing, then cubic sampling."""
    ndimage = require("scipy.ndimage")
    sigmas = [max(0.0, (H / h) / 2.355 if H > h else 0.0) for H, h in zip(volume.shape, out_shape)]
    blurred = ndimage.gaussian_filter(volume.astype(np.float64), sigma=sigmas, mode="mirror")
    return cubic_resample(blurred, out_shape)


def degrade(
    volume: np.ndarray,
    scale: Sequence[float],
    kind: str = "cubic",
    *,
    rng: np.random.Generator | int | None = None,
    snr: float | None = None,
    sigma: float | None = None,
    profile: str = "box",
    gap: float = 0.0,
) -> np.ndarray:
    """LR volume (float32) of shape round(H / s) from ``volume`` with the named degradation.

    ``snr`` (default 50) or an explicit noise ``sigma`` apply to ``kspace-noise`` only: give
    ``sigma`` when ``volume`` is a patch whose own bright level is not the subject's
    (``noise_sigma(whole_volume, snr)``). ``rng`` is a Generator or a seed (None: seed 0).
    ``profile`` and ``gap`` apply to ``slice`` only. An option the kind does not use is
    refused, never silently dropped.
    """
    if kind not in DEGRADATIONS:
        raise ValueError(f"unknown degradation {kind!r}; choose from {', '.join(DEGRADATIONS)}")
    if kind != "kspace-noise" and (snr is not None or sigma is not None):
        raise ValueError(f"snr/sigma apply to kspace-noise only, not to {kind!r}")
    if kind != "slice" and (profile != "box" or gap != 0.0):
        raise ValueError(f"slice profile/gap apply to slice only, not to {kind!r}")
    out_shape = lr_shape_for(np.shape(volume), scale)
    if kind == "cubic":
        return cubic_resample(volume, out_shape)
    if kind == "kspace":
        return np.abs(kspace_truncate(volume, out_shape))
    if kind == "kspace-noise":
        noise = sigma if sigma is not None else noise_sigma(volume, DEFAULT_SNR if snr is None else snr)
        return add_rician_noise(fourier_resample(volume, out_shape), noise, rng)
    if kind == "slice":
        return slice_profile(volume, out_shape, profile, gap)
    return gaussian_blur_down(volume, out_shape)


def aligned_context(hr_shape: Sequence[int], lr_shape: Sequence[int], margin: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """HR context shape and LR margin (per axis) for ``degrade_context`` around an HR patch.

    A patch of ``H`` HR voxels with an LR patch of ``h`` voxels has spacing ``s = H / h``; a
    context of ``m`` extra LR voxels each side needs ``H + 2 m s`` HR voxels, an integer. The
    smallest ``m >= margin`` that makes it one is chosen (at most ``h`` more).
    """
    ctx, margins = [], []
    for H, h in zip(hr_shape, lr_shape):
        for m in range(int(margin), int(margin) + int(h) + 1):
            size = H + 2 * m * H / h
            if abs(size - round(size)) < 1e-9:
                ctx.append(int(round(size)))
                margins.append(m)
                break
    return tuple(ctx), tuple(margins)


def degrade_context(context: np.ndarray, scale: Sequence[float], kind: str, crop: Sequence[int], **options: object) -> np.ndarray:
    """Degrade a larger HR ``context`` and keep the central ``crop`` LR voxels (training patches).

    A k-space crop of a patch wraps the patch's opposite edges into each other (a ring no
    whole-volume acquisition shows); degrading a context that extends the patch and then
    cropping the LR centre keeps that ring in the discarded margin. The crop is the LR of the
    context's central ``crop * scale`` HR voxels when the context's LR grid has spacing exactly
    ``scale`` and an even margin: use ``aligned_context`` for the sizes (a mirror-padded patch
    is a valid context too). ``options`` go to ``degrade``.
    """
    lr = degrade(context, scale, kind, **options)  # type: ignore[arg-type]
    index = []
    for axis, (n, c, s) in enumerate(zip(lr.shape, crop, scale)):
        H = context.shape[axis]
        if c > n or (n - c) % 2 or abs(H / n - s) > 1e-6 * s:
            raise ValueError(
                f"context axis {axis}: {H} HR voxels give {n} LR voxels at scale {s:g}, which do not centre a crop "
                f"of {c}; size the context with aligned_context()"
            )
        index.append(slice((n - c) // 2, (n - c) // 2 + c))
    return np.ascontiguousarray(lr[tuple(index)])
