"""batch takes upsample's --interp, --clip-to-input-range and --reference with the same meaning
(the same code: each batch output equals the upsample output of the same options, byte for
byte in its voxels and geometry), and finds MGZ/MGH and 4-D NIfTI inputs in folders (a 4-D
series is done volume by volume into one 4-D output, as upsample does). Files are made from
the shipped real fixture."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import FIXTURE_PATH, rotation

from arssr_rt.cli import main

TR = 2.0


@pytest.fixture
def folder(tmp_path) -> Path:
    """in/: a 3-D NIfTI crop, the same crop as MGZ, and a 3-volume 4-D series of it."""
    img = nib.load(FIXTURE_PATH)
    data = np.asarray(img.dataobj)[16:48, 16:48, 16:48]
    affine = img.affine.copy()
    affine[:3, 3] += 16.0
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    nib.save(nib.Nifti1Image(data, affine), root / "t1.nii.gz")
    nib.save(nib.MGHImage(data, affine), root / "sub" / "t1_fs.mgz")
    series = np.stack([data.astype(np.float32), data * 0.5 + 3.0, data[::-1].astype(np.float32)], axis=-1)
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(series.shape)
    hdr.set_xyzt_units("mm", "sec")
    hdr["pixdim"][4] = TR
    nib.save(nib.Nifti1Image(series, affine, header=hdr), root / "bold.nii.gz")
    return tmp_path


def _batch(*args: str) -> int:
    return main(["batch", *args, "--quiet"])


def _upsample(*args: str) -> int:
    return main(["upsample", *args, "--quiet"])


def _report(path: Path) -> dict:
    return {Path(i["input"]).name: i for i in json.loads(path.read_text())["items"]}


def _same(a: Path, b: Path) -> None:
    x, y = nib.load(a), nib.load(b)
    assert x.shape == y.shape and np.array_equal(x.affine, y.affine)
    assert np.array_equal(np.asarray(x.dataobj), np.asarray(y.dataobj)), (a, b)


def test_batch_finds_mgz_and_4d_and_equals_upsample(folder, tiny_bundle):
    out = folder / "out"
    model = ("--model", str(tiny_bundle), "--backend", "onnxruntime", "--threads", "1")
    assert _batch(str(folder / "in"), "-o", str(out), "--scale", "1.5", *model) == 0
    report = _report(out / "batch_report.json")
    assert {k: v["status"] for k, v in report.items()} == {"t1.nii.gz": "done", "t1_fs.mgz": "done", "bold.nii.gz": "done"}
    bold = nib.load(out / "bold_x1.5.nii.gz")
    assert bold.shape == (48, 48, 48, 3) and bold.header["pixdim"][4] == pytest.approx(TR)
    for name, produced in (("t1.nii.gz", out / "t1_x1.5.nii.gz"), ("sub/t1_fs.mgz", out / "sub" / "t1_fs_x1.5.nii.gz"),
                           ("bold.nii.gz", out / "bold_x1.5.nii.gz")):
        single = folder / f"single_{Path(name).name}.nii.gz"
        assert _upsample(str(folder / "in" / name), "--scale", "1.5", *model, "-o", str(single)) == 0
        _same(produced, single)
    # the NIfTI and the MGZ copy of one volume give the same voxels
    assert np.array_equal(np.asarray(nib.load(out / "t1_x1.5.nii.gz").dataobj), np.asarray(nib.load(out / "sub" / "t1_fs_x1.5.nii.gz").dataobj))


def test_batch_interp_clip_and_reference_equal_upsample(folder):
    img = nib.load(folder / "in" / "t1.nii.gz")
    ref_affine = np.eye(4)
    ref_affine[:3, :3] = rotation((1, 0, 0), 15) @ rotation((0, 0, 1), 15) * 0.8
    centre = img.affine[:3, :3] @ ((np.array(img.shape) - 1) / 2) + img.affine[:3, 3]
    ref_affine[:3, 3] = centre - ref_affine[:3, :3] @ np.full(3, 19.5)
    ref = folder / "ref.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((40, 40, 40), np.int16), ref_affine), ref)
    out = folder / "out"
    opts = ("--interp", "cubic", "--clip-to-input-range", "--dtype", "float32")
    assert _batch(str(folder / "in" / "t1.nii.gz"), str(folder / "in" / "bold.nii.gz"), "-o", str(out), "--reference", str(ref), *opts) == 0
    single = folder / "single.nii.gz"
    assert _upsample(str(folder / "in" / "t1.nii.gz"), "--reference", str(ref), *opts, "-o", str(single)) == 0
    produced = out / "t1_ref-ref.nii.gz"
    _same(produced, single)
    result = nib.load(produced)
    assert result.shape == (40, 40, 40) and np.array_equal(result.affine, nib.load(ref).affine)  # as stored (float32 sform)
    data, src = result.get_fdata(), img.get_fdata()
    assert data.min() >= src.min() and data.max() <= src.max()  # clipped
    bold = nib.load(out / "bold_ref-ref.nii.gz")
    assert bold.shape == (40, 40, 40, 3)
    assert np.array_equal(np.asarray(bold.dataobj)[..., 0], np.asarray(result.dataobj))  # volume 0 = the 3-D crop
    sidecar = json.loads((out / "t1_ref-ref.json").read_text())
    assert sidecar["options"]["interp"] == "cubic" and sidecar["options"]["reference_sha256"]
    # the reference is part of what the output depends on: a changed reference redoes the outputs
    nib.save(nib.Nifti1Image(np.zeros((40, 40, 41), np.int16), ref_affine), ref)
    assert _batch(str(folder / "in" / "t1.nii.gz"), "-o", str(out), "--reference", str(ref), *opts) == 0
    assert nib.load(produced).shape == (40, 40, 41)


def test_batch_refuses_reference_with_scale_and_bad_interp(folder, capsys):
    ref = folder / "in" / "t1.nii.gz"
    assert _batch(str(folder / "in"), "-o", str(folder / "out"), "--reference", str(ref), "--scale", "2") == 2
    assert _batch(str(folder / "in"), "-o", str(folder / "out"), "--scale", "2", "--interp", "sinc") == 2
    garbage = folder / "bad.nii"
    garbage.write_bytes(b"no image" * 50)
    assert _batch(str(folder / "in"), "-o", str(folder / "out"), "--reference", str(garbage)) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 3 and all("Traceback" not in line for line in lines)
    assert "--reference" in lines[0] and "--interp" in lines[1] and "--reference" in lines[2]
    assert not (folder / "out").exists()


def test_batch_csv_output_on_the_reference_is_refused(folder):
    """A CSV row whose output is the --reference used to overwrite it (with --force)."""
    out = folder / "out"
    out.mkdir()
    ref = out / "ref.nii.gz"
    ref.write_bytes((folder / "in" / "t1.nii.gz").read_bytes())
    before = ref.read_bytes()
    csv = folder / "list.csv"
    csv.write_text(f"input,output\n{folder / 'in' / 't1.nii.gz'},ref.nii.gz\n")
    assert _batch(str(csv), "-o", str(out), "--reference", str(ref), "--interp", "linear", "--force") == 1
    assert ref.read_bytes() == before
    item = _report(out / "batch_report.json")["t1.nii.gz"]
    assert item["status"] == "failed" and "is the input" in item["message"]
