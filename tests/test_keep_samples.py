"""The model path keeps acquired samples where an output voxel centre is an input voxel centre
(real fixture, embedded model): --scale 1,1,1 gives the input back exactly (same voxel type),
--scale 1,1,3 reproduces every acquired slice at its coinciding output slice, and --scale
1,1,2 (centre-aligned, even: no coinciding centres) is what it was without the step."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from conftest import FIXTURE_PATH

from arssr_rt.cli import main
from arssr_rt.consistency import coinciding


def _run(tmp_path, name: str, *args: str) -> nib.Nifti1Image:
    out = tmp_path / name
    assert main(["upsample", str(FIXTURE_PATH), "--quiet", "-o", str(out), *args]) == 0
    return nib.load(out)


def test_coinciding_centres_per_axis():
    out, src = coinciding(5, 15)  # x3: output 3i + 1 sits on input i
    assert out.tolist() == [1, 4, 7, 10, 13] and src.tolist() == [0, 1, 2, 3, 4]
    assert coinciding(21, 64)[0].size == 0  # 64/21 is not odd/odd: no centre coincides
    assert coinciding(32, 64)[0].size == 0  # every even integer scale
    assert coinciding(7, 7)[0].tolist() == list(range(7))


def test_scale_one_is_the_identity(tmp_path):
    src = nib.load(FIXTURE_PATH)
    out = _run(tmp_path, "id.nii.gz", "--scale", "1,1,1")
    assert out.get_data_dtype() == src.get_data_dtype()
    assert np.array_equal(np.asarray(out.dataobj), np.asarray(src.dataobj))
    off = _run(tmp_path, "id_off.nii.gz", "--scale", "1,1,1", "--no-keep-samples")
    assert not np.array_equal(np.asarray(off.dataobj), np.asarray(src.dataobj))  # the network alone is not exact


def test_odd_scale_reproduces_acquired_slices(tmp_path):
    src = nib.load(FIXTURE_PATH).get_fdata(dtype=np.float32)
    out = _run(tmp_path, "t3.nii.gz", "--scale", "1,1,3", "--dtype", "float32").get_fdata(dtype=np.float32)
    assert out.shape == (64, 64, 192)
    assert np.array_equal(out[:, :, 1::3], src)
    off = _run(tmp_path, "t3_off.nii.gz", "--scale", "1,1,3", "--dtype", "float32", "--no-keep-samples").get_fdata(dtype=np.float32)
    between = np.ones(192, bool)
    between[1::3] = False
    assert np.array_equal(out[:, :, between], off[:, :, between])  # only the coinciding slices changed
    assert not np.array_equal(out[:, :, 1::3], off[:, :, 1::3])


def test_even_scale_unchanged(tmp_path):
    on = _run(tmp_path, "t2.nii.gz", "--scale", "1,1,2", "--dtype", "float32")
    off = _run(tmp_path, "t2_off.nii.gz", "--scale", "1,1,2", "--dtype", "float32", "--no-keep-samples")
    assert np.array_equal(np.asarray(on.dataobj), np.asarray(off.dataobj))


@pytest.mark.parametrize("keep_acquired", [None, "box"])
def test_upsampler_keep_samples_off_with_keep_acquired(keep_acquired):
    """--keep-acquired's thick-slice averages are not point samples: with it the projection
    alone decides (the coinciding output slice is not overwritten by the slab average)."""
    from arssr_rt.geometry import plan_output_grid
    from arssr_rt.nifti_io import load_volume
    from arssr_rt.pipeline import VolumeEngine

    volume = load_volume(FIXTURE_PATH)
    volume.data = np.ascontiguousarray(volume.data[:, :, 20:36])  # a 16-slice slab keeps this fast
    grid = plan_output_grid(volume.shape, volume.affine, scale=(1, 1, 3))
    with VolumeEngine(keep_acquired=keep_acquired, backend="onnxruntime") as up:
        out = up.run(volume, grid)
    kept = np.array_equal(out[:, :, 1::3], volume.data)
    assert kept == (keep_acquired is None)
