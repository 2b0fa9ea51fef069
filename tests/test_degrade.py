"""Degradations (arssr_rt.degrade) and the band-limited resampler (arssr_rt.fourier) on known
signals and on the shipped Colin27 fixture: geometry, exactness, noise statistics, profiles."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("scipy")

from arssr_rt.degrade import (  # noqa: E402
    DEGRADATIONS, aligned_context, degrade, degrade_context, kspace_truncate, lr_shape_for, noise_sigma, robust_max,
    slice_matrix,
)
from arssr_rt.fourier import fourier_resample, sinc_upsample  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[1] / "arssr_rt" / "data" / "colin27_t1_crop64_1mm.nii.gz"
FREQS = [(1, 0, 0), (0, 1, 1), (1, -1, 1), (0, 0, 1), (1, 1, 0)]


@pytest.fixture(scope="module")
def hr() -> np.ndarray:
    return np.asarray(nib.load(FIXTURE).get_fdata(dtype=np.float32))


def cosines(shape, positions=None, freqs=FREQS, seed=0) -> np.ndarray:
    """A sum of low-frequency cosines periodic on ``shape``, evaluated at HR indices ``positions``."""
    r = np.random.default_rng(seed)
    pos = positions or [np.arange(n, dtype=np.float64) for n in shape]
    grid = np.meshgrid(*pos, indexing="ij")
    out = np.full(grid[0].shape, 5.0)
    for f in freqs:
        amp, phase = r.uniform(0.2, 1.0), r.uniform(0, 2 * np.pi)
        out += amp * np.cos(2 * np.pi * sum(fi * g / n for fi, g, n in zip(f, grid, shape)) + phase)
    return out


def lr_positions(shape, lr_shape):
    return [(np.arange(h) + 0.5) * H / h - 0.5 for H, h in zip(shape, lr_shape)]


# ---- geometry ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", DEGRADATIONS)
@pytest.mark.parametrize("scale, lr_shape", [((2, 2, 2), (32, 32, 32)), ((6, 6, 6), (11, 11, 11)), ((1, 1, 8), (64, 64, 8)),
                                             ((2.5, 2.5, 2.5), (26, 26, 26))])
def test_every_kind_gives_the_lr_shape_in_float32(kind, scale, lr_shape, hr):
    lr = degrade(hr, scale, kind)
    assert lr.shape == lr_shape == lr_shape_for(hr.shape, scale) and lr.dtype == np.float32
    assert np.isfinite(lr).all()


# ---- k-space -----------------------------------------------------------------------------


@pytest.mark.parametrize("shape, scale", [((32, 30, 27), (2, 2, 2)), ((33, 31, 40), (3, 3, 3)), ((24, 24, 48), (1, 1, 8)),
                                          ((36, 36, 36), (6, 6, 6)), ((32, 32, 32), (2.5, 2.5, 2.5))])
def test_kspace_reproduces_a_band_limited_volume_on_the_lr_grid(shape, scale):
    hr = cosines(shape)
    lr_shape = lr_shape_for(shape, scale)
    expected = cosines(shape, lr_positions(shape, lr_shape))
    np.testing.assert_allclose(degrade(hr, scale, "kspace"), expected, atol=2e-5)
    # and the zero-filled (sinc) baseline brings it back exactly
    np.testing.assert_allclose(sinc_upsample(degrade(hr, scale, "kspace"), shape), hr, atol=2e-5)


@pytest.mark.parametrize("n_in, n_out", [(16, 8), (17, 8), (15, 6)])
def test_a_cosine_at_the_lr_nyquist_frequency_is_sampled_exactly(n_in, n_out):
    # both +-n_out/2 fold into the LR Nyquist bin: the crop samples the HR's trigonometric interpolant
    f = n_out / 2
    x = np.cos(2 * np.pi * f * np.arange(n_in) / n_in + 0.3)[:, None, None]
    pos = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    expected = np.cos(2 * np.pi * f * pos / n_in + 0.3)
    np.testing.assert_allclose(fourier_resample(x, (n_out, 1, 1))[:, 0, 0], expected, atol=1e-12)
    # the degradation uses it (before: only the +n_out/2 bin was kept, an error of 0.23 here)
    np.testing.assert_allclose(kspace_truncate(x, (n_out, 1, 1))[:, 0, 0], expected, atol=1e-6)


@pytest.mark.parametrize("n_in, n_out", [(8, 16), (8, 17), (7, 20)])
def test_sinc_upsample_is_the_real_trigonometric_interpolant(n_in, n_out):
    lr = np.random.default_rng(3).normal(size=(n_in, 1, 1))
    up = fourier_resample(lr, (n_out, 1, 1))[:, 0, 0]
    # by hand: (1/n) sum_k X_k exp(2 pi i k u / n), the Nyquist term (even n) split over +-n/2
    spec = np.fft.fft(lr[:, 0, 0])
    k = np.fft.fftfreq(n_in) * n_in
    u = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    terms = spec[None, :] * np.exp(2j * np.pi * k[None, :] * u[:, None] / n_in)
    if n_in % 2 == 0:
        nyq = n_in // 2
        terms[:, nyq] = spec[nyq] * np.cos(np.pi * u)
    np.testing.assert_allclose(up, terms.sum(axis=1).real / n_in, atol=1e-12)
    np.testing.assert_allclose(fourier_resample(fourier_resample(lr, (n_out, 1, 1)), (n_in, 1, 1)), lr, atol=1e-12)


def test_kspace_is_the_magnitude_of_the_signed_crop(hr):
    head = np.pad(hr, 8)  # the fixture (a brain crop) surrounded by air
    signed = kspace_truncate(head, (40, 40, 40))
    assert signed.min() < -1.0  # Gibbs ringing of the real crop dips below zero next to the air
    mag = degrade(head, (2, 2, 2), "kspace")
    assert mag.min() >= 0.0
    np.testing.assert_array_equal(mag, np.abs(signed))


# ---- Rician noise ------------------------------------------------------------------------


def test_snr_sets_the_noise_std_in_a_bright_flat_region():
    vol = np.zeros((48, 48, 48), np.float32)
    vol[8:40, 8:40, 8:40] = 200.0
    vol[2:6, 2:6, 2:6] = 30.0  # dim voxels above 10 % of the range must not lower the robust max
    assert robust_max(vol) == pytest.approx(200.0)
    assert noise_sigma(vol, 50) == pytest.approx(4.0)
    clean = degrade(vol, (2, 2, 2), "kspace")
    noisy = degrade(vol, (2, 2, 2), "kspace-noise", snr=50, rng=1)
    inner = (slice(8, 16),) * 3  # LR voxels well inside the block, far from the ringing edges
    diff = (noisy - clean)[inner]
    assert diff.std() == pytest.approx(4.0, rel=0.1)
    assert abs(diff.mean()) < 0.5  # at SNR 50 the Rician bias sigma^2 / 2x is ~0.04
    default = degrade(vol, (2, 2, 2), "kspace-noise", rng=1)  # snr 50 is the default
    np.testing.assert_array_equal(default, noisy)


def test_pure_noise_has_rayleigh_statistics():
    noisy = degrade(np.zeros((64, 64, 64), np.float32), (2, 2, 2), "kspace-noise", sigma=3.0, rng=7)
    assert noisy.min() >= 0.0
    assert noisy.mean() == pytest.approx(3.0 * math.sqrt(math.pi / 2), rel=0.01)
    assert np.mean(noisy.astype(np.float64) ** 2) == pytest.approx(2 * 9.0, rel=0.02)


def test_noise_is_deterministic_from_the_seed(hr):
    a = degrade(hr, (2, 2, 2), "kspace-noise", snr=20, rng=5)
    b = degrade(hr, (2, 2, 2), "kspace-noise", snr=20, rng=np.random.default_rng(5))
    c = degrade(hr, (2, 2, 2), "kspace-noise", snr=20, rng=6)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(degrade(hr, (2, 2, 2), "kspace-noise"), degrade(hr, (2, 2, 2), "kspace-noise", rng=0))


# ---- slices ------------------------------------------------------------------------------


def test_box_slices_are_the_mean_over_each_slice_and_leave_in_plane_axes_alone(hr):
    lr = degrade(hr, (1, 1, 4), "slice")
    expected = hr.astype(np.float64).reshape(64, 64, 16, 4).mean(axis=3)
    np.testing.assert_allclose(lr, expected, rtol=1e-6, atol=1e-4)
    iso = degrade(hr, (2, 2, 2), "slice")
    np.testing.assert_allclose(iso, hr.astype(np.float64).reshape(32, 2, 32, 2, 32, 2).mean(axis=(1, 3, 5)), rtol=1e-6, atol=1e-4)


def test_a_gap_thins_the_slice(hr):
    # spacing 4, gap 0.5: thickness 2 centred at 4i + 1.5 covers HR voxels 4i+1 and 4i+2 exactly
    lr = degrade(hr, (1, 1, 4), "slice", gap=0.5)
    np.testing.assert_allclose(lr, hr.astype(np.float64).reshape(64, 64, 16, 4)[..., 1:3].mean(axis=3), rtol=1e-6, atol=1e-4)
    # gap 0.25: thickness 3, the outer voxels count half
    w = slice_matrix(64, 16, "box", 0.25)
    np.testing.assert_allclose(w[5, 20:24], np.array([0.5, 1, 1, 0.5]) / 3)
    assert w[5].sum() == pytest.approx(1.0) and np.count_nonzero(w[5]) == 4


@pytest.mark.parametrize("gap", [0.0, 0.3])
def test_gaussian_slice_profile_has_the_slice_thickness_as_fwhm(gap):
    w = slice_matrix(96, 12, "gaussian", gap)  # spacing 8
    thick = 8 * (1 - gap)
    sigma = thick / (2 * math.sqrt(2 * math.log(2)))
    n = np.arange(96)
    for i in (3, 6, 8):  # interior slices: the profile is not cut by the field of view
        centre = (i + 0.5) * 8 - 0.5
        assert w[i].sum() == pytest.approx(1.0)
        assert (w[i] * n).sum() == pytest.approx(centre, abs=1e-9)
        # variance of a Gaussian integrated over unit voxels: sigma^2 + 1/12 (Sheppard)
        assert (w[i] * (n - centre) ** 2).sum() == pytest.approx(sigma**2 + 1 / 12, rel=1e-3)
    # a wider profile than the box: it reaches into the neighbouring slices
    assert np.count_nonzero(w[6] > 1e-4) > np.count_nonzero(slice_matrix(96, 12, "box", gap)[6])


def test_gaussian_slices_along_z_only(hr):
    lr = degrade(hr, (1, 1, 4), "slice", profile="gaussian")
    w = slice_matrix(64, 16, "gaussian")
    np.testing.assert_allclose(lr, np.tensordot(hr.astype(np.float64), w, axes=([2], [1])), rtol=1e-5, atol=1e-3)


# ---- context (training patches without wrap-around) ---------------------------------------


def test_context_alignment_and_less_wraparound_than_the_bare_patch(hr):
    scale = (2.0, 2.0, 2.0)
    whole = degrade(hr, scale, "kspace")
    assert aligned_context((32, 32, 32), (16, 16, 16), 4) == ((48, 48, 48), (4, 4, 4))
    patch = hr[16:48, 16:48, 16:48]
    # slice is a local operator: context-then-crop equals the patch's own LR exactly (same grid)
    ctx = hr[8:56, 8:56, 8:56]
    np.testing.assert_allclose(degrade_context(ctx, scale, "slice", (16, 16, 16)), degrade(patch, scale, "slice"), atol=1e-4)
    # k-space: the bare patch wraps its edges around; a context keeps most of the ring in the margin,
    # and a context as large as the whole volume gives the whole volume's LR exactly
    truth = whole[8:24, 8:24, 8:24]
    bare = np.abs(degrade(patch, scale, "kspace") - truth).mean()
    ctx_err = np.abs(degrade_context(ctx, scale, "kspace", (16, 16, 16)) - truth).mean()
    assert ctx_err < 0.7 * bare
    np.testing.assert_allclose(degrade_context(hr, scale, "kspace", (16, 16, 16)), truth, atol=1e-4)
    # a non-integer scale: the helper picks a margin that keeps the LR spacing exact
    ctx_shape, margin = aligned_context((40, 40, 40), (16, 16, 16), 3)  # spacing 2.5
    assert all(m >= 3 and (c - 40) == 2 * m * 2.5 for c, m in zip(ctx_shape, margin))
    with pytest.raises(ValueError, match="aligned_context"):
        degrade_context(hr[:63, :63, :63], scale, "kspace", (16, 16, 16))


# ---- refusals ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind, options, reason", [
    ("blur", {}, "unknown degradation"),
    ("cubic", {"snr": 20.0}, "kspace-noise only"),
    ("kspace", {"gap": 0.2}, "slice only"),
    ("slice", {"gap": 1.0}, r"\[0, 1\)"),
    ("slice", {"profile": "sinc"}, "profile"),
    ("kspace-noise", {"snr": 0.0}, "positive"),
    ("kspace-noise", {"sigma": -1.0}, ">= 0"),
])
def test_degrade_refuses_options_it_would_otherwise_ignore(kind, options, reason, hr):
    with pytest.raises(ValueError, match=reason):
        degrade(hr, (2, 2, 2), kind, **options)
