"""training/acquisition.py: MR-like training degradations as separable operators."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from arssr_rt.training.acquisition import acquire, axis_operator, gamma_and_bias
from conftest import FIXTURE_PATH


@pytest.fixture(scope="module")
def hr() -> np.ndarray:
    return np.asarray(nib.load(str(FIXTURE_PATH)).get_fdata(dtype=np.float32)) / 255.0


def test_kspace_operator_keeps_a_band_limited_signal_and_removes_higher_frequencies():
    H, h = 96, 32
    j = np.arange(H)
    centres = (np.arange(h) + 0.5) * H / h - 0.5
    low = lambda x: np.cos(2 * np.pi * 4 * x / H)  # noqa: E731  (LR Nyquist is 16 cycles)
    high = lambda x: np.cos(2 * np.pi * 30 * x / H)  # noqa: E731
    m = axis_operator("kspace", H, h)
    inner = slice(6, -6)
    assert np.abs(m @ low(j) - low(centres))[inner].max() < 0.01
    assert np.abs(m @ high(j))[inner].max() < 0.05  # above the LR Nyquist: gone
    np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-12)


def test_box_slice_profile_is_the_mean_over_the_slice_and_a_gap_thins_it():
    m = axis_operator("slice", 12, 3, 1.0, "box")
    np.testing.assert_allclose(m[1, 4:8], 0.25)
    assert np.count_nonzero(m[1]) == 4
    thin = axis_operator("slice", 12, 3, 0.5, "box")
    np.testing.assert_allclose(thin[1, 5:7], 0.5)
    assert np.count_nonzero(thin[1]) == 2
    gauss = axis_operator("slice", 12, 3, 1.0, "gaussian")
    assert gauss[1].argmax() in (5, 6) and np.isclose(gauss[1].sum(), 1.0)


def test_thick_slice_acquisition_leaves_in_plane_axes_as_acquired(hr):
    lr = acquire(hr, (64, 64, 16), "slice", np.random.default_rng(0))
    np.testing.assert_allclose(lr[:, :, 3], hr[:, :, 12:16].mean(axis=2), atol=1e-6)


def test_kspace_noise_is_rician(hr):
    rng = np.random.default_rng(3)
    air = acquire(np.zeros((32, 32, 32), np.float32), (16, 16, 16), "kspace-noise", rng, noise_sigma=0.05)
    assert abs(air.mean() - 0.05 * np.sqrt(np.pi / 2)) < 0.003  # Rayleigh mean of pure noise
    clean = acquire(hr, (32, 32, 32), "kspace", rng)
    noisy = acquire(hr, (32, 32, 32), "kspace-noise", np.random.default_rng(4), noise_sigma=0.02)
    assert clean.min() >= 0 and noisy.min() >= 0
    assert 0.015 < np.std(noisy - clean) < 0.025


def test_cubic_matches_the_whole_volume_degradation(hr):
    from arssr_rt.degrade import degrade

    np.testing.assert_array_equal(acquire(hr, (32, 32, 32), "cubic", np.random.default_rng(0)), degrade(hr, (2, 2, 2), "cubic"))


@pytest.mark.parametrize("scale", [(1, 1, 4), (1, 1, 6), (1, 1, 3.5)])
@pytest.mark.parametrize("profile", ["box", "gaussian"])
def test_thick_slices_match_evaluates_slice_degradation_away_from_the_edges(hr, scale, profile):
    """Training learns the slices evaluate scores: same profile weights and slice positions
    (only the outermost slices differ, mirrored edges vs zero outside the FOV)."""
    from arssr_rt.degrade import degrade, lr_shape_for

    trained = acquire(hr, lr_shape_for(hr.shape, scale), "slice", np.random.default_rng(0), profile=profile)
    scored = degrade(hr, scale, "slice", profile=profile)
    np.testing.assert_allclose(trained[:, :, 2:-2], scored[:, :, 2:-2], rtol=0, atol=1e-6)


def test_gamma_and_bias_change_contrast_smoothly(hr):
    out = gamma_and_bias(hr, np.random.default_rng(5), gamma=0.2, bias=0.1)
    assert out.shape == hr.shape and out.dtype == np.float32
    ratio = out[hr > 0.3] / hr[hr > 0.3]
    assert 0.6 < ratio.min() and ratio.max() < 1.6 and ratio.std() > 1e-3
