"""Output-grid geometry: shapes, spacing, preserved field of view and the affine of the new grid,
checked in world coordinates on the real fixture, an oblique copy and an LIA-flipped image."""

from __future__ import annotations

import itertools
import math

import nibabel as nib
import numpy as np
import pytest
from conftest import lia_affine, oblique_affine

from arssr_rt.errors import InputError
from arssr_rt.geometry import (
    input_index_of_output,
    normalized_centres,
    output_affine,
    plan_output_grid,
    spacing_of,
)
from arssr_rt.nifti_io import load_volume
from arssr_rt.nifti_write import save_volume


def world(affine: np.ndarray, index: np.ndarray) -> np.ndarray:
    """World mm of continuous voxel indices (N, 3) through a 4x4 affine."""
    index = np.atleast_2d(np.asarray(index, dtype=np.float64))
    return index @ affine[:3, :3].T + affine[:3, 3]


def expected_world(in_affine: np.ndarray, in_shape, out_shape, out_index: np.ndarray) -> np.ndarray:
    """The convention written out independently: input index (j + 0.5) * h / H - 0.5."""
    h = np.asarray(in_shape, dtype=np.float64)
    H = np.asarray(out_shape, dtype=np.float64)
    return world(in_affine, (np.atleast_2d(out_index) + 0.5) * h / H - 0.5)


def affines(fixture_affine: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "fixture": fixture_affine,
        "oblique": oblique_affine(fixture_affine),
        "lia": lia_affine(),
        "oblique_lia": oblique_affine(lia_affine()),
    }


@pytest.fixture(scope="module")
def fixture_affine(fixture_path) -> np.ndarray:
    return nib.load(fixture_path).affine


# ----- shapes and spacing -------------------------------------------------------------------


def test_scale_gives_rounded_shape_and_spacing(fixture_affine):
    grid = plan_output_grid((64, 64, 64), fixture_affine, scale=(2.0, 2.0, 2.0))
    assert grid.shape == (128, 128, 128)
    assert grid.spacing == pytest.approx((0.5, 0.5, 0.5), abs=1e-12)


def test_non_integer_per_axis_scale(fixture_affine):
    grid = plan_output_grid((64, 50, 31), fixture_affine, scale=(1.7, 1.0, 3.3))
    assert grid.shape == (round(64 * 1.7), 50, round(31 * 3.3))  # 109, 50, 102
    expected = [1.0 * h / H for h, H in zip((64, 50, 31), grid.shape)]
    assert grid.spacing == pytest.approx(expected, abs=1e-12)


def test_voxel_size_target(fixture_affine):
    grid = plan_output_grid((64, 64, 64), fixture_affine, voxel_size=(0.7, 0.5, 1.0))
    assert grid.shape == (round(64 / 0.7), 128, 64)
    assert grid.spacing[0] == pytest.approx(64 / round(64 / 0.7), abs=1e-12)
    assert grid.spacing[1:] == pytest.approx((0.5, 1.0), abs=1e-12)


def test_voxel_size_on_anisotropic_lia():
    a = lia_affine(spacing=(0.9, 1.2, 2.5))
    grid = plan_output_grid((40, 30, 12), a, voxel_size=(0.9, 0.6, 0.5))
    assert grid.shape == (40, 60, 60)
    assert grid.spacing == pytest.approx((0.9, 0.6, 0.5), abs=1e-12)


def test_explicit_shape(fixture_affine):
    grid = plan_output_grid((64, 64, 64), fixture_affine, shape=(100, 90, 80))
    assert grid.shape == (100, 90, 80)
    assert grid.voxels == 100 * 90 * 80
    assert grid.spacing == pytest.approx((0.64, 64 / 90, 0.8), abs=1e-12)


@pytest.mark.parametrize("name", ["fixture", "oblique", "lia", "oblique_lia"])
def test_spacing_is_old_times_h_over_H_in_any_orientation(fixture_affine, name):
    a = affines(fixture_affine)[name]
    in_shape, out_shape = (64, 48, 20), (150, 77, 61)
    grid = plan_output_grid(in_shape, a, shape=out_shape)
    old = spacing_of(a)
    assert grid.spacing == pytest.approx([s * h / H for s, h, H in zip(old, in_shape, out_shape)], abs=1e-12)


def test_exactly_one_of_scale_voxel_size_shape(fixture_affine):
    with pytest.raises(InputError):
        plan_output_grid((64, 64, 64), fixture_affine)
    with pytest.raises(InputError):
        plan_output_grid((64, 64, 64), fixture_affine, scale=(2, 2, 2), shape=(10, 10, 10))


@pytest.mark.parametrize("bad", [(0, 10, 10), (10, 10), (10.5, 10, 10), (-3, 10, 10)])
def test_bad_explicit_shape(fixture_affine, bad):
    with pytest.raises(InputError):
        plan_output_grid((64, 64, 64), fixture_affine, shape=bad)


# ----- the field of view and the affine ---------------------------------------------------


@pytest.mark.parametrize("name", ["fixture", "oblique", "lia", "oblique_lia"])
@pytest.mark.parametrize("scale", [(2.0, 2.0, 2.0), (2.5, 1.0, 3.7), (0.5, 1.3, 1.0)])
def test_fov_corners_preserved(fixture_affine, name, scale):
    """The 8 outer corners of the output grid (index -0.5 and H - 0.5) are the input's."""
    a = affines(fixture_affine)[name]
    in_shape = (64, 40, 22)
    grid = plan_output_grid(in_shape, a, scale=scale)
    for corner in itertools.product((0, 1), repeat=3):
        in_corner = [(-0.5 if c == 0 else h - 0.5) for c, h in zip(corner, in_shape)]
        out_corner = [(-0.5 if c == 0 else H - 0.5) for c, H in zip(corner, grid.shape)]
        np.testing.assert_allclose(world(grid.affine, out_corner), world(a, in_corner), rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", ["fixture", "oblique", "lia", "oblique_lia"])
@pytest.mark.parametrize("scale", [(2.0, 2.0, 2.0), (2.5, 1.0, 3.7), (1.3, 0.6, 4.0)])
def test_output_voxel_centres_in_world_match_formula(fixture_affine, name, scale):
    """THE affine test: world(out_affine, j) == world(in_affine, (j + 0.5) * h / H - 0.5)."""
    a = affines(fixture_affine)[name]
    in_shape = (64, 40, 22)
    grid = plan_output_grid(in_shape, a, scale=scale)
    H = np.asarray(grid.shape)
    corners = np.array(list(itertools.product(*[(0, n - 1) for n in grid.shape])), dtype=np.float64)
    rng = np.random.default_rng(7)
    inner = np.floor(rng.random((20, 3)) * H)
    centre = (H - 1) // 2
    points = np.vstack([corners, inner, centre[None, :]])
    got = world(grid.affine, points)
    want = expected_world(a, in_shape, grid.shape, points)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)


def test_origin_moves_by_half_ratio_minus_one_input_voxels(fixture_affine):
    """Output voxel 0 sits 0.5 * (new/old - 1) input voxels from input voxel 0, along each column."""
    a = oblique_affine(fixture_affine)
    grid = plan_output_grid((64, 64, 64), a, scale=(2.0, 4.0, 1.0))
    shift_in_voxels = np.array([0.5 * (0.5 - 1), 0.5 * (0.25 - 1), 0.0])
    np.testing.assert_allclose(grid.affine[:3, 3], a[:3, :3] @ shift_in_voxels + a[:3, 3], rtol=0, atol=1e-9)
    # the direction cosines are unchanged: columns keep their direction, only their length scales
    for col in range(3):
        cos = grid.affine[:3, col] @ a[:3, col] / (np.linalg.norm(grid.affine[:3, col]) * np.linalg.norm(a[:3, col]))
        assert cos == pytest.approx(1.0, abs=1e-12)


def test_identity_grid_is_the_input(fixture_affine):
    a = oblique_affine(fixture_affine)
    np.testing.assert_allclose(output_affine(a, (64, 40, 22), (64, 40, 22)), a, rtol=0, atol=1e-12)


def test_written_file_carries_the_oblique_geometry(oblique_fixture, tmp_path):
    """Through load_volume/save_volume and back: the file's qform and sform both hold the grid."""
    vol = load_volume(oblique_fixture)
    grid = plan_output_grid(vol.shape, vol.affine, scale=(2.0, 1.5, 3.0))
    out = save_volume(tmp_path / "out.nii.gz", np.zeros(grid.shape, np.float32) + 50, grid, vol)
    header = nib.load(out).header
    points = np.array([[0, 0, 0], [grid.shape[0] - 1, grid.shape[1] - 1, grid.shape[2] - 1], [17, 40, 101]], float)
    want = expected_world(vol.affine, vol.shape, grid.shape, points)
    # the file stores the affine in float32: micrometre agreement is what NIfTI can hold
    np.testing.assert_allclose(world(header.get_sform(), points), want, rtol=0, atol=1e-4)
    np.testing.assert_allclose(world(header.get_qform(), points), want, rtol=0, atol=1e-4)


# ----- network coordinates -----------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 7, 64, 109])
def test_normalized_centres(n):
    c = normalized_centres(n)
    assert c.dtype == np.float32 and c.shape == (n,)
    np.testing.assert_allclose(c, [-1 + (2 * j + 1) / n for j in range(n)], atol=1e-7)
    np.testing.assert_allclose(c, -c[::-1], atol=1e-7)  # symmetric about the FOV centre
    assert c.min() > -1 and c.max() < 1  # centres, not edges (align_corners=False)


@pytest.mark.parametrize("h,H", [(64, 128), (64, 109), (31, 102), (50, 50), (40, 17)])
def test_network_coordinates_land_on_the_geometric_input_index(h, H):
    """grid_sample(align_corners=False) reads coordinate c at input index ((c + 1) * h - 1) / 2;
    for the output centres that must be the geometric (j + 0.5) * h / H - 0.5."""
    c = normalized_centres(H).astype(np.float64)
    j = np.arange(H)
    np.testing.assert_allclose(((c + 1) * h - 1) / 2, input_index_of_output(j, h, H), atol=1e-4)
    np.testing.assert_allclose(input_index_of_output(j, h, H), (j + 0.5) * h / H - 0.5, rtol=0, atol=1e-12)
