"""QC montage: panels are world-consistent, the PNG is real, a foreign grid is refused."""

from __future__ import annotations

from importlib import resources
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
from arssr_rt.qc import COLUMNS, VIEWS, montage_panels, nearest_upsample, write_qc_montage  # noqa: E402

FIXTURE = Path(str(resources.files("arssr_rt") / "data" / "colin27_t1_crop64_1mm.nii.gz"))


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
