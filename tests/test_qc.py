"""QC montage: panels are world-consistent, the PNG is real, a foreign grid is refused."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("scipy")

from arssr_rt.degrade import cubic_resample  # noqa: E402
from arssr_rt.errors import InputError  # noqa: E402
from arssr_rt.geometry import plan_output_grid  # noqa: E402
from arssr_rt.options import parse_triplet  # noqa: E402
from arssr_rt.qc import COLUMNS, DIFFERENCE, VIEWS, draw_montage, montage_layout, montage_panels, nearest_upsample, write_qc_montage  # noqa: E402

from conftest import FIXTURE_PATH as FIXTURE  # noqa: E402


@pytest.fixture(scope="module")
def lr():
    """A 32x32x16 LR crop of the fixture with 2x2x4 mm voxels."""
    img = nib.load(FIXTURE)
    data = np.asarray(img.dataobj, dtype=np.float32)[::2, ::2, ::4]
    affine = img.affine.copy()
    affine[:3, :3] = affine[:3, :3] @ np.diag([2.0, 2.0, 4.0])
    return data, affine


def _model_stand_in(data, affine, scale):
    grid = plan_output_grid(data.shape, affine, scale=parse_triplet(scale, "scale"))
    return cubic_resample(data, grid.shape) + 1.0, grid


def test_nearest_upsample_preserves_the_field_of_view():
    data = np.arange(4, dtype=np.float32).reshape(4, 1, 1) * np.ones((4, 2, 2))
    up = nearest_upsample(data, (8, 2, 2))
    np.testing.assert_array_equal(up[:, 0, 0], [0, 0, 1, 1, 2, 2, 3, 3])
    # output centres at input index -0.17, 0.5 (a tie: the upper cell), 1.17, 1.83, 2.5, 3.17
    up3 = nearest_upsample(data, (6, 2, 2))
    np.testing.assert_array_equal(up3[:, 0, 0], [0, 1, 1, 2, 3, 3])


def test_panels_show_the_same_world_plane_in_every_column(lr):
    data, affine = lr
    out, grid = _model_stand_in(data, affine, (2.0, 2.0, 4.0))
    panels, aspects = montage_panels(data, affine, out, grid.affine)
    assert set(panels) == {(v, c) for v in VIEWS for c in COLUMNS}
    for view in VIEWS:
        shapes = {panels[(view, c)].shape for c in COLUMNS}
        assert len(shapes) == 1
    # the axial centre plane of a 64-slice output (index 32) lies in input slice 8 (32.5 / 4)
    np.testing.assert_array_equal(panels[("axial", COLUMNS[0])], nearest_upsample(data[:, :, 8:9], (64, 64, 1))[:, :, 0].T)
    # model stand-in = tricubic + 1: same plane, so the difference is exactly 1
    np.testing.assert_allclose(panels[("coronal", COLUMNS[2])] - panels[("coronal", COLUMNS[1])], 1.0, atol=1e-5)
    assert aspects == {"sagittal": 1.0, "coronal": 1.0, "axial": 1.0}


def test_panels_do_not_depend_on_how_the_file_stores_its_axes(lr):
    data, affine = lr
    out, grid = _model_stand_in(data, affine, 2.0)
    reference, _ = montage_panels(data, affine, out, grid.affine)
    # the same image stored with the first axis flipped and the last two swapped
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1, data.shape[0] - 1
    swap = np.eye(4)[[0, 2, 1, 3]]
    idx_map = flip @ swap  # new index -> old index
    new_data = np.flip(data, 0).transpose(0, 2, 1)
    new_affine = affine @ idx_map
    new_out, new_grid = _model_stand_in(new_data, new_affine, 2.0)
    moved, aspects = montage_panels(new_data, new_affine, new_out, new_grid.affine)
    for key in reference:
        np.testing.assert_allclose(moved[key], reference[key], atol=1e-4)
    assert aspects["sagittal"] == pytest.approx(2.0)  # 4 mm slices over 2 mm rows


def test_montage_png_is_written(lr, tmp_path):
    matplotlib_image = pytest.importorskip("matplotlib.image")
    data, affine = lr
    out, grid = _model_stand_in(data, affine, 2.0)
    path = write_qc_montage(tmp_path / "qc.png", data, affine, out, grid.affine, title="fixture x2")
    image = matplotlib_image.imread(path)
    assert image.shape[0] > 500 and image.shape[1] > 500
    assert image[..., :3].std() > 0.05  # not a blank canvas
    assert [p.name for p in tmp_path.iterdir()] == ["qc.png"]


def test_output_from_another_input_is_refused(lr, tmp_path):
    data, affine = lr
    out, grid = _model_stand_in(data, affine, 2.0)
    shifted = grid.affine.copy()
    shifted[:3, 3] += 3.0
    with pytest.raises(InputError, match="not a field-of-view-preserving"):
        write_qc_montage(tmp_path / "qc.png", data, affine, out, shifted)
    assert not (tmp_path / "qc.png").exists()


def test_qc_command_on_files(tmp_path, lr):
    from arssr_rt.cli import main

    data, affine = lr
    out, grid = _model_stand_in(data, affine, (2.0, 2.0, 4.0))
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "lr.nii.gz")
    nib.save(nib.Nifti1Image(out, grid.affine), tmp_path / "lr_x2.nii.gz")
    assert main(["qc", str(tmp_path / "lr.nii.gz"), str(tmp_path / "lr_x2.nii.gz")]) == 0
    assert (tmp_path / "lr_x2_qc.png").stat().st_size > 10_000
    # the 1 mm original is on a corner-aligned grid, not the FOV-preserving one: refused
    assert main(["qc", str(tmp_path / "lr.nii.gz"), str(FIXTURE), "-o", str(tmp_path / "bad.png")]) == 2
    assert not (tmp_path / "bad.png").exists()


# ------------------------------------------------------------------ difference, labels, positions

ANATOMY = {"sagittal": ("P", "A", "I", "S"), "coronal": ("L", "R", "I", "S"), "axial": ("L", "R", "P", "A")}


@pytest.fixture(scope="module")
def real_output(lr):
    """The embedded default model's x2 output of the LR crop (the real thing, not a stand-in)."""
    import arssr_rt

    data, affine = lr
    out, out_affine = arssr_rt.upsample(data, affine, scale=2.0)
    return np.asarray(out, np.float32), out_affine


def _orientation_texts(fig) -> list[list[str]]:
    """The orientation labels drawn on each panel (left, right, bottom, top), row by row."""
    panels = [ax for ax in fig.axes if any(t.get_gid() == "orientation" for t in ax.texts)]
    return [[t.get_text() for t in ax.texts if t.get_gid() == "orientation"] for ax in panels]


def test_difference_panel_is_model_minus_tricubic(lr, real_output):
    data, affine = lr
    out, out_affine = real_output
    panels, _ = montage_panels(data, affine, out, out_affine)
    tricubic = cubic_resample(data, out.shape)
    # the fixture is RAS-stored: the centre slices are plain index slices of model - tricubic
    diff = out - tricubic
    cx, cy, cz = (n // 2 for n in out.shape)
    expected = {"sagittal": diff[cx, :, :].T, "coronal": diff[:, cy, :].T, "axial": diff[:, :, cz].T}
    for view in VIEWS:
        np.testing.assert_allclose(panels[(view, DIFFERENCE)], expected[view], atol=1e-4)
        assert np.abs(panels[(view, DIFFERENCE)]).max() > 0.1  # the model does differ from tricubic
    fig = draw_montage(data, affine, out, out_affine)
    difference_images = [ax.images[0] for ax in fig.axes if ax.get_title() == DIFFERENCE]
    assert len(difference_images) == 1  # the title is on the first row; the column has one image per row
    image = difference_images[0]
    np.testing.assert_allclose(np.asarray(image.get_array()), expected["sagittal"], atol=1e-4)
    low, high = image.get_clim()
    assert low == -high and high > 0 and image.get_cmap().name == "RdBu_r"
    # one colour bar for the intensity columns, one for the difference
    bars = sorted(ax.get_xlabel() for ax in fig.axes if ax.get_xlabel())
    assert bars == ["intensity", "model - tricubic"]


def test_orientation_labels_name_the_anatomy_whatever_the_stored_order(lr):
    data, affine = lr
    out, grid = _model_stand_in(data, affine, 2.0)
    layout = montage_layout(grid.affine, out.shape)
    assert {v: (layout[v].left, layout[v].right, layout[v].bottom, layout[v].top) for v in VIEWS} == ANATOMY
    fig = draw_montage(data, affine, out, grid.affine)
    assert _orientation_texts(fig) == [list(ANATOMY[v]) for v in VIEWS for _ in COLUMNS]

    # the same voxels with an LPS affine (i runs to the Left, j to Posterior): the labels still
    # name the anatomy, so relative to the stored array they swap: stored i = 0 is now shown at
    # the edge labelled R, not L (and j = 0 at A, not P)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    out_lps, grid_lps = _model_stand_in(data, lps, 2.0)
    lps_layout = montage_layout(grid_lps.affine, out_lps.shape)
    assert {v: (lps_layout[v].left, lps_layout[v].right, lps_layout[v].bottom, lps_layout[v].top) for v in VIEWS} == ANATOMY
    ras_panels, _ = montage_panels(data, affine, out, grid.affine)
    lps_panels, _ = montage_panels(data, lps, out_lps, grid_lps.affine)
    stored = nearest_upsample(data, out.shape)[:, :, out.shape[2] // 2]  # the axial plane, stored (i, j)
    axial_ras, axial_lps = ras_panels[("axial", COLUMNS[0])], lps_panels[("axial", COLUMNS[0])]  # rows = display up, columns = left -> right
    np.testing.assert_array_equal(axial_ras[:, 0], stored[0, :])  # RAS: stored i = 0 at the left edge, labelled L
    np.testing.assert_array_equal(axial_lps[:, -1], stored[0, ::-1])  # LPS: stored i = 0 at the right edge, labelled R
    fig_lps = draw_montage(data, lps, out_lps, grid_lps.affine)
    assert _orientation_texts(fig_lps) == [list(ANATOMY[v]) for v in VIEWS for _ in COLUMNS]


def test_labels_of_permuted_and_oblique_storage(lr):
    """LIA storage (permuted + flipped) and an oblique one: labels from aff2axcodes of what is
    displayed; an oblique grid says that labels are along the closest axes."""
    from conftest import lia_affine, oblique_affine

    data, _ = lr
    for affine, oblique in ((lia_affine(), False), (oblique_affine(lia_affine()), True)):
        out, grid = _model_stand_in(data, affine, 2.0)
        layout = montage_layout(grid.affine, out.shape)
        assert {v: (layout[v].left, layout[v].right, layout[v].bottom, layout[v].top) for v in VIEWS} == ANATOMY
        fig = draw_montage(data, affine, out, grid.affine)
        assert _orientation_texts(fig) == [list(ANATOMY[v]) for v in VIEWS for _ in COLUMNS]
        assert ("oblique" in fig.get_suptitle()) is oblique


def test_slice_positions_in_mm_match_the_affine(lr):
    data, affine = lr
    out, grid = _model_stand_in(data, affine, 2.0)
    n = out.shape
    layout = montage_layout(grid.affine, n)
    # RAS-stored, axis-aligned: the centre slice k of axis a lies at origin + spacing * k
    for view, axis in (("sagittal", 0), ("coronal", 1), ("axial", 2)):
        assert layout[view].slice_axis == "xyz"[axis]
        assert layout[view].slice_mm == pytest.approx(grid.affine[axis, 3] + grid.affine[axis, axis] * (n[axis] // 2))
    # the same anatomy stored flipped along i: the shown plane is stored index n - 1 - n // 2
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1, data.shape[0] - 1
    flipped_affine = affine @ flip
    out_f, grid_f = _model_stand_in(np.flip(data, 0).copy(), flipped_affine, 2.0)
    sagittal = montage_layout(grid_f.affine, out_f.shape)["sagittal"]
    stored = out_f.shape[0] - 1 - out_f.shape[0] // 2
    assert sagittal.slice_mm == pytest.approx((grid_f.affine @ [stored, 0, 0, 1])[0])
    assert sagittal.slice_mm == pytest.approx(layout["sagittal"].slice_mm)
    # each row says where it is
    fig = draw_montage(data, affine, out, grid.affine)
    row_labels = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    assert row_labels == [f"{v}\n{layout[v].position}" for v in VIEWS]
    assert layout["axial"].position == f"z = {grid.affine[2, 3] + grid.affine[2, 2] * (n[2] // 2):+.1f} mm"
