"""--interp / --clip-to-input-range / the down-sampling warning through the CLI, on the shipped volume."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

FIXTURE = Path(__file__).resolve().parents[1] / "arssr_rt" / "data" / "colin27_t1_crop64_1mm.nii.gz"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "arssr_rt", *args], capture_output=True, text=True)


def _label_map(path: Path, intent: bool) -> np.ndarray:
    img = nib.load(FIXTURE)
    data = img.get_fdata()
    labels = np.digitize(data, np.quantile(data[data > data.min()], [0.25, 0.5, 0.75])).astype(np.int16)
    out = nib.Nifti1Image(labels, img.affine)
    if intent:
        out.header.set_intent("label")
    nib.save(out, path)
    return labels


def test_label_intent_defaults_to_nearest_and_keeps_label_set(tmp_path):
    labels = _label_map(tmp_path / "seg.nii.gz", intent=True)
    r = _cli("upsample", str(tmp_path / "seg.nii.gz"), "-s", "2", "-o", str(tmp_path / "o.nii.gz"))
    assert r.returncode == 0, r.stderr
    assert "using --interp nearest" in r.stderr
    out = np.asarray(nib.load(tmp_path / "o.nii.gz").dataobj)
    assert out.dtype == np.int16 and set(np.unique(out)) == set(np.unique(labels))
    idx = np.floor((np.arange(128) + 0.5) / 2).astype(int)  # the input voxel holding each output centre
    assert np.array_equal(out, labels[np.ix_(idx, idx, idx)])


def test_model_on_label_intent_is_refused_pointing_to_nearest(tmp_path):
    _label_map(tmp_path / "seg.nii.gz", intent=True)
    r = _cli("upsample", str(tmp_path / "seg.nii.gz"), "-s", "2", "--interp", "model", "-o", str(tmp_path / "o.nii.gz"))
    assert r.returncode != 0 and "--interp nearest" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o.nii.gz").exists()


def test_scale_one_cubic_is_identity_and_clip_keeps_range(tmp_path):
    src = np.asarray(nib.load(FIXTURE).get_fdata(), dtype=np.float32)
    r = _cli("upsample", str(FIXTURE), "-s", "1", "--interp", "cubic", "--dtype", "float32", "-o", str(tmp_path / "id.nii.gz"))
    assert r.returncode == 0, r.stderr
    assert np.array_equal(nib.load(tmp_path / "id.nii.gz").get_fdata(dtype=np.float32), src)
    r = _cli("upsample", str(FIXTURE), "-s", "3", "--interp", "cubic", "--dtype", "float32", "--clip-to-input-range",
             "-o", str(tmp_path / "c.nii.gz"))
    assert r.returncode == 0, r.stderr
    out = nib.load(tmp_path / "c.nii.gz").get_fdata()
    assert out.min() >= src.min() and out.max() <= src.max()


def test_downsampling_warns(tmp_path):
    r = _cli("upsample", str(FIXTURE), "-s", "2,2,0.5", "--interp", "linear", "-o", str(tmp_path / "d.nii.gz"))
    assert r.returncode == 0, r.stderr
    assert "warning: this request down-samples axis 2 (64 -> 32 voxels)" in r.stderr
