"""windowed_sinc: the Lanczos-3 base a residual bundle adds (one implementation for training,
the torch reference and the runtime tiles)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from arssr_rt import windowed_sinc
from arssr_rt.geometry import input_index_of_output
from conftest import FIXTURE_PATH


@pytest.fixture(scope="module")
def lr() -> np.ndarray:
    hr = np.asarray(nib.load(str(FIXTURE_PATH)).get_fdata(dtype=np.float32))
    return hr[::2, ::2, ::2] / 255.0  # a real 32^3 volume


def test_reproduces_the_samples_at_integer_positions(lr):
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in lr.shape], indexing="ij"), -1).reshape(-1, 3)
    np.testing.assert_allclose(windowed_sinc.sample_points(lr, idx), lr.reshape(-1), atol=1e-6)


def test_grid_equals_points_for_anisotropic_non_integer_scales(lr):
    out_shape = (47, 80, 32)
    pos = [input_index_of_output(np.arange(H), h, H) for h, H in zip(lr.shape, out_shape)]
    grid = windowed_sinc.sample_grid(lr, pos)
    points = np.stack(np.meshgrid(*pos, indexing="ij"), -1).reshape(-1, 3)
    np.testing.assert_allclose(grid.reshape(-1), windowed_sinc.sample_points(lr, points), atol=1e-6)


def test_a_tile_with_its_halo_equals_the_whole_volume(lr):
    """Taps clamp at the volume, not at the tile, so tiled bases have no seams."""
    out_shape = tuple(int(round(n * 2.5)) for n in lr.shape)
    pos = [input_index_of_output(np.arange(H), h, H) for h, H in zip(lr.shape, out_shape)]
    whole = windowed_sinc.sample_grid(lr, pos)
    for lo, hi, olo, ohi in ((0, 14, 0, 25), (8, 32, 30, 80)):  # a border tile and an inner one
        sel = [p[olo:ohi] for p in pos]
        tile = windowed_sinc.sample_grid(lr[lo:hi, lo:hi, lo:hi], sel, origin=(lo, lo, lo), volume_shape=lr.shape)
        np.testing.assert_allclose(tile, whole[olo:ohi, olo:ohi, olo:ohi], atol=1e-6)
    with pytest.raises(ValueError, match="outside the window"):
        windowed_sinc.sample_grid(lr[10:20, 10:20, 10:20], [p[:40] for p in pos], origin=(10, 10, 10), volume_shape=lr.shape)


def test_band_limited_signal_is_interpolated_like_sinc():
    """A low-frequency cosine (what a k-space crop leaves) comes back to < 2 % inside the volume,
    where linear interpolation is off by 10 %."""
    h, H = 32, 96
    x_lr = np.arange(h)
    signal = lambda x: np.cos(2 * np.pi * 5 * x / h)  # noqa: E731
    lr = np.tile(signal(x_lr)[:, None, None], (1, 2, 2))
    pos = input_index_of_output(np.arange(H), h, H)
    up = windowed_sinc.sample_grid(lr, [pos, np.zeros(1), np.zeros(1)])[:, 0, 0]
    inner = (pos > 3) & (pos < h - 4)
    err = np.abs(up - signal(pos))[inner].max()
    linear = np.abs(np.interp(pos, x_lr, signal(x_lr)) - signal(pos))[inner].max()
    assert err < 0.02 and linear > 0.05, (err, linear)


def test_lanczos8_passes_more_of_the_band_than_lanczos3():
    """Near the LR Nyquist (0.4 cycles/voxel) Lanczos-3 attenuates and rings; Lanczos-8 is
    several times closer to the band-limited signal: why a lanczos8 residual starts at sinc's level."""
    h, H = 64, 128
    signal = lambda x: np.cos(2 * np.pi * 0.4 * x)  # noqa: E731
    lr = np.tile(signal(np.arange(h))[:, None, None], (1, 2, 2))
    pos = input_index_of_output(np.arange(H), h, H)
    inner = (pos > 10) & (pos < h - 11)
    err = {a: np.abs(windowed_sinc.sample_grid(lr, [pos, np.zeros(1), np.zeros(1)], lobes=a)[:, 0, 0]
                     - signal(pos))[inner].max() for a in (3, 8)}
    assert err[8] < 0.5 * err[3], err


def test_picks_equal_points_and_lanczos8_tiles_have_no_seams(lr):
    out_shape = (47, 80, 40)
    rng = np.random.default_rng(0)
    picks = [rng.integers(0, H, 300) for H in out_shape]
    pos = np.stack([input_index_of_output(picks[a], lr.shape[a], H) for a, H in enumerate(out_shape)], axis=1)
    np.testing.assert_allclose(windowed_sinc.sample_picks(lr, out_shape, picks, 8),
                               windowed_sinc.sample_points(lr, pos, 8), atol=1e-5)
    whole = np.zeros(out_shape, np.float32)
    windowed_sinc.add_base(whole, lr, [(0, H) for H in out_shape], 8)
    tiled = np.zeros(out_shape, np.float32)
    for a0, a1 in ((0, 20), (20, 47)):
        for b0, b1 in ((0, 33), (33, 80)):
            windowed_sinc.add_base(tiled, lr, [(a0, a1), (b0, b1), (0, 40)], 8)
    np.testing.assert_allclose(tiled, whole, atol=1e-6)


def test_base_names_give_their_lobes():
    assert windowed_sinc.lobes_of("lanczos3") == 3 and windowed_sinc.lobes_of("lanczos8") == 8
    for bad in ("none", "lanczos5", "lanczos"):
        with pytest.raises(ValueError, match="not a windowed-sinc base"):
            windowed_sinc.lobes_of(bad)
