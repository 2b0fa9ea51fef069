"""Exactly-constant minimum-valued air stays exactly constant in the output; nothing else moves."""

from __future__ import annotations

import numpy as np
import pytest

from arssr_rt.background import RADIUS, _local_max, flatten_flat_background, nearest_input_index


def test_local_max_equals_a_brute_force_box_max():
    rng = np.random.default_rng(0)
    x = rng.random((7, 9, 8)).astype(np.float32)
    got = _local_max(x, 2)
    for i, j, k in [(0, 0, 0), (3, 4, 5), (6, 8, 7), (1, 7, 2)]:
        box = x[max(0, i - 2):i + 3, max(0, j - 2):j + 3, max(0, k - 2):k + 3]
        assert got[i, j, k] == box.max()


def test_nearest_input_index_follows_the_centre_aligned_grid():
    np.testing.assert_array_equal(nearest_input_index(4, 8), [0, 0, 1, 1, 2, 2, 3, 3])
    np.testing.assert_array_equal(nearest_input_index(3, 3), [0, 1, 2])
    np.testing.assert_array_equal(nearest_input_index(6, 2), [1, 4])  # (0.5*3-0.5)=1, (1.5*3-0.5)=4


def test_only_output_over_flat_minimum_input_is_set(fixture_image):
    brain = np.asarray(fixture_image.dataobj, dtype=np.float32)[20:40, 20:40, 20:40]
    lr = np.pad((brain - brain.min() + 1) / (brain.max() - brain.min() + 1), 8)  # air = 0 around it
    out_shape = tuple(2 * n for n in lr.shape)
    model_like = np.full(out_shape, 0.01, dtype=np.float32)  # a faint veil everywhere
    changed = flatten_flat_background(lr, model_like)
    assert changed > 0
    idx = [nearest_input_index(h, H) for h, H in zip(lr.shape, out_shape)]
    inside = lr > 0
    reach = _local_max(inside.astype(np.float32), RADIUS) > 0
    near_input = reach[idx[0]][:, idx[1]][:, :, idx[2]]
    assert np.all(model_like[~near_input] == 0.0)  # far air: exactly the input minimum
    assert np.all(model_like[near_input] == 0.01)  # within reach of tissue: untouched
    assert changed == int((~near_input).sum())


def test_noisy_air_is_left_alone(fixture_image):
    rng = np.random.default_rng(1)
    lr = rng.random((12, 12, 12)).astype(np.float32) * 0.02  # air with noise: no flat region
    out = np.full((24, 24, 24), 0.5, dtype=np.float32)
    assert flatten_flat_background(lr, out) == 0 and np.all(out == 0.5)


def test_the_pipeline_keeps_zero_air_zero_in_the_written_units(fixture_image, tiny_bundle):
    pytest.importorskip("onnxruntime")
    from arssr_rt.geometry import plan_output_grid
    from arssr_rt.pipeline import VolumeEngine
    from arssr_rt.volume import Volume

    data = np.pad(np.asarray(fixture_image.dataobj, dtype=np.float32)[24:40, 24:40, 24:40], 7)  # 0 = air
    grid = plan_output_grid(data.shape, fixture_image.affine, scale=(2.0, 2.0, 3.0))
    with VolumeEngine(tiny_bundle, backend="onnxruntime") as up:
        out = up.run(Volume(data=data, affine=fixture_image.affine), grid)
    assert np.all(out[:4] == 0.0) and np.all(out[:, :, -6:] == 0.0)  # far air: exactly 0
    assert np.abs(out[14:50, 14:50, 21:75]).max() > 0  # tissue was decoded, not blanked
