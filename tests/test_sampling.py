"""sampling.py: the output-to-input map and everything derived from it (corners, weights,
needed ranges, BoxSpec, decoder coordinates with the one phase definition), and the
separable sampler against a direct 8-corner trilinear gather."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from arssr_rt.errors import ModelError
from arssr_rt.geometry import input_index_of_output
from arssr_rt.sampling import (PHASE_EPS, BoxSpec, axis_corners, box_coords, cell_phase, decoder_axis_coords,
                               needed_input_range, sample_box)


def direct_trilinear(features_last: np.ndarray, in_shape, out_shape) -> np.ndarray:
    """Every output voxel from its 8 corners, zeros outside the volume (grid_sample's rule)."""
    out = np.zeros((*out_shape, features_last.shape[-1]), dtype=np.float64)
    p = [input_index_of_output(np.arange(H), h, H) for h, H in zip(in_shape, out_shape)]
    for j in itertools.product(*(range(H) for H in out_shape)):
        x = [p[a][j[a]] for a in range(3)]
        i0 = [int(np.floor(v)) for v in x]
        for corner in itertools.product((0, 1), repeat=3):
            idx = [i0[a] + corner[a] for a in range(3)]
            if all(0 <= idx[a] < in_shape[a] for a in range(3)):
                w = np.prod([(x[a] - i0[a]) if corner[a] else (1 - (x[a] - i0[a])) for a in range(3)])
                out[j] += w * features_last[tuple(idx)]
    return out


@pytest.mark.parametrize("in_shape,out_shape", [((4, 5, 3), (9, 7, 8)), ((3, 3, 3), (3, 8, 2))])
def test_separable_sampling_equals_the_direct_trilinear_gather(in_shape, out_shape):
    f = np.random.default_rng(0).standard_normal((*in_shape, 2)).astype(np.float32)
    got = sample_box(f, (0, 0, 0), in_shape, out_shape, (0, 0, 0), out_shape)
    np.testing.assert_allclose(got, direct_trilinear(f, in_shape, out_shape), atol=1e-5)


def test_a_sub_block_and_offset_give_the_same_samples_as_the_whole_grid():
    f = np.random.default_rng(1).standard_normal((10, 9, 8, 3)).astype(np.float32)
    whole = sample_box(f, (0, 0, 0), (10, 9, 8), (25, 20, 17), (0, 0, 0), (25, 20, 17))
    start, stop = (6, 4, 3), (15, 12, 11)
    lo = [needed_input_range(h, H, a, b)[0] for h, H, a, b in zip((10, 9, 8), (25, 20, 17), start, stop)]
    hi = [needed_input_range(h, H, a, b)[1] + 1 for h, H, a, b in zip((10, 9, 8), (25, 20, 17), start, stop)]
    block = f[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    part = sample_box(block, lo, (10, 9, 8), (25, 20, 17), start, stop)
    np.testing.assert_array_equal(part, whole[6:15, 4:12, 3:11])
    with pytest.raises(ValueError, match="cover"):  # one voxel short of the needed range
        sample_box(block[1:], (lo[0] + 1, lo[1], lo[2]), (10, 9, 8), (25, 20, 17), start, stop)


@pytest.mark.parametrize("h,H", [(7, 19), (10, 10), (12, 5), (1, 4)])
def test_needed_input_range_is_exactly_the_weighted_corners(h, H):
    for a, b in [(0, H), (H // 3, max(H // 3 + 1, 2 * H // 3))]:
        c = axis_corners(np.arange(a, b), h, H)
        used = set(c.lower[c.w_lower > 0].tolist()) | set((c.lower + 1)[c.w_upper > 0].tolist())
        assert needed_input_range(h, H, a, b) == (min(used), max(used))
        assert all(0 <= i < h for i in used)


def test_cell_phase_is_one_definition_for_numpy_and_torch():
    p = np.concatenate([np.linspace(-0.5, 7.5, 997), [3 - PHASE_EPS / 2, -PHASE_EPS / 2, 2.0]])
    want = 2.0 * (p - np.floor(p + PHASE_EPS)) - 1.0
    np.testing.assert_array_equal(cell_phase(p), want)
    assert cell_phase(p).min() >= -1.0 - 2 * PHASE_EPS and cell_phase(p).max() < 1.0
    torch = pytest.importorskip("torch")
    np.testing.assert_array_equal(cell_phase(torch.from_numpy(p)).numpy(), want)


def test_phase_coordinates_live_on_the_feature_grid():
    """feature_scale r: the phase of the r times finer grid, the same as passing r * h."""
    finer = decoder_axis_coords(9, 23, 0, 23, "phase", feature_scale=2)
    np.testing.assert_array_equal(finer, decoder_axis_coords(18, 23, 0, 23, "phase"))
    assert np.abs(finer - decoder_axis_coords(9, 23, 0, 23, "phase")).max() > 0.5
    assert finer.dtype == np.float32
    np.testing.assert_array_equal(decoder_axis_coords(9, 23, 3, 8, "global", feature_scale=2), (-1 + (2 * np.arange(3, 8) + 1) / 23).astype(np.float32))


def test_box_coords_are_c_order_products_of_the_axis_coords():
    c = box_coords((8, 6, 5), (1, 2, 0), (4, 5, 5), (4, 3, 5), "phase")
    assert c.shape == (3 * 3 * 5, 3)
    np.testing.assert_array_equal(c.reshape(3, 3, 5, 3)[:, 0, 0, 0], decoder_axis_coords(4, 8, 1, 4, "phase"))
    np.testing.assert_array_equal(c.reshape(3, 3, 5, 3)[0, 0, :, 2], decoder_axis_coords(5, 5, 0, 5, "phase"))


def test_box_spec_validates_coverage_and_mode():
    spec = BoxSpec.make((4, 4, 4), (2, 0, 0), (8, 4, 4), (16, 8, 8), (5, 0, 0), (11, 8, 8), "phase")
    assert spec.extents == (6, 8, 8) and spec.points == 384
    with pytest.raises(ValueError, match="does not cover"):
        BoxSpec.make((2, 4, 4), (2, 0, 0), (8, 4, 4), (16, 8, 8), (5, 0, 0), (11, 8, 8))
    with pytest.raises(ValueError, match="bad box"):
        BoxSpec.make((4, 4, 4), (6, 0, 0), (8, 4, 4), (16, 8, 8), (5, 0, 0), (11, 8, 8))
    with pytest.raises(ModelError, match="spec.coords"):
        BoxSpec.make((4, 4, 4), (2, 0, 0), (8, 4, 4), (16, 8, 8), (5, 0, 0), (11, 8, 8), "polar")
