"""Classical resampling kernels (arssr_rt/resample.py) on the shipped real volume."""

from __future__ import annotations

import numpy as np
import pytest

from arssr_rt.geometry import output_affine
from arssr_rt.readers import read_volume
from arssr_rt.resample import parse_interp, resample_fov, resample_world
from arssr_rt.errors import InputError

from pathlib import Path

FIXTURE = Path(__file__).resolve().parents[1] / "arssr_rt" / "data" / "colin27_t1_crop64_1mm.nii.gz"


def _labels() -> tuple[np.ndarray, np.ndarray]:
    volume = read_volume(FIXTURE)
    data = volume.data
    edges = np.quantile(data[data > data.min()], [0.25, 0.5, 0.75])
    return np.digitize(data, edges).astype(np.float32), volume.affine  # 4 classes 0..3


def test_cubic_equals_scipy_tricubic():
    degrade = pytest.importorskip("arssr_rt.degrade")
    pytest.importorskip("scipy.ndimage")
    data = read_volume(FIXTURE).data[:24, :20, :16]
    np.testing.assert_allclose(resample_fov(data, (48, 30, 16), "cubic"), degrade.cubic_resample(data, (48, 30, 16)), atol=1e-3)


def test_scale_one_axis_keeps_acquired_samples():
    data = read_volume(FIXTURE).data
    for method in ("nearest", "linear", "cubic"):
        out = resample_fov(data, (64, 64, 64), method)
        assert np.array_equal(out, data)


def test_nearest_keeps_label_set_and_boundaries():
    labels, affine = _labels()
    out = resample_fov(labels, (128, 128, 128), "nearest")
    assert set(np.unique(out)) <= set(np.unique(labels))
    # each output voxel's label is that of the input voxel containing its centre (< 1 voxel shift)
    idx = np.clip(np.floor((np.arange(128) + 0.5) / 2), 0, 63).astype(int)
    assert np.array_equal(out, labels[np.ix_(idx, idx, idx)])


def test_world_path_equals_fov_path_on_fov_grid():
    data = read_volume(FIXTURE).data[:20, :18, :16]
    affine = np.diag([1.0, 1.2, 0.9, 1.0])
    out_shape = (40, 36, 16)
    grid_affine = output_affine(affine, data.shape, out_shape)
    for method in ("nearest", "linear", "cubic"):
        np.testing.assert_allclose(resample_world(data, affine, out_shape, grid_affine, method),
                                   resample_fov(data, out_shape, method), atol=1e-3)


def _rotation(deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    return np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1.0]])


def test_cubic_onto_oblique_grid_matches_analytic_function():
    """A smooth world-space function sampled on the input, resampled onto a rotated grid with
    another FOV, equals the function at the new voxel centres (interior)."""
    def f(xyz):
        return (np.cos(2 * np.pi * xyz[..., 0] / 40.0) + np.cos(2 * np.pi * xyz[..., 1] / 50.0 + 0.3)
                + np.cos(2 * np.pi * xyz[..., 2] / 45.0 + 1.0))

    in_affine = np.eye(4)
    in_affine[:3, :3] = np.diag([1.5, 1.5, 2.0])
    in_affine[:3, 3] = [-24, -24, -20]
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in (32, 32, 20)], indexing="ij"), -1).astype(float)
    data = f(ijk @ in_affine[:3, :3].T + in_affine[:3, 3]).astype(np.float32)
    ref = np.eye(4)
    ref[:3, :3] = _rotation(20) @ np.diag([1.0, 1.1, 1.3])
    ref[:3, 3] = [-12, -14, -10]
    shape = (20, 22, 14)
    out = resample_world(data, in_affine, shape, ref, "cubic")
    rijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(float)
    world = rijk @ ref[:3, :3].T + ref[:3, 3]
    p = (world - in_affine[:3, 3]) @ np.linalg.inv(in_affine[:3, :3]).T
    interior = np.all((p > 3) & (p < np.array([32, 32, 20]) - 4), axis=-1)
    assert interior.sum() > 1000
    assert np.abs(out - f(world))[interior].max() < 2e-3
    # outside the input's field of view: 0
    far = ~np.all((p >= -0.5) & (p <= np.array([32, 32, 20]) - 0.5), axis=-1)
    assert np.all(out[far] == 0)


def test_parse_interp():
    assert parse_interp(None) is None and parse_interp("Nearest") == "nearest"
    with pytest.raises(InputError, match="--interp must be one of"):
        parse_interp("bilinear")
