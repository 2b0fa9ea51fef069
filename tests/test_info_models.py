"""`arssr-rt models` (bundle listing + verification) and `arssr-rt info` (volume facts + plan)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from arssr_rt.cli import main
from arssr_rt.errors import InputError, ModelError


def run_json(capsys, args: list[str]) -> tuple[int, object]:
    code = main(args + ["--json"])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else None


def test_models_lists_and_verifies_bundles(tiny_bundle: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    users = tmp_path / "user-models"
    shutil.copytree(tiny_bundle, users / "mine")
    monkeypatch.setenv("ARSSR_RT_MODELS", str(users))
    code, rows = run_json(capsys, ["models", "--model", str(tiny_bundle)])
    assert code == 0
    by_source = {r["source"]: r for r in rows}
    assert by_source["user"]["name"] == by_source["--model"]["name"] == "tiny-random-test"
    row = by_source["--model"]
    assert (row["encoder"], row["feature_dim"], row["axis_order"], row["status"]) == ("rescnn", 8, "xyz", "ok")
    meta = json.loads((tiny_bundle / "model.json").read_text())
    assert row["receptive_radius"] == meta["receptive_radius"]
    assert len(row["sha256"]) == 12


def test_models_json_gives_numbers_as_json_numbers(capsys, monkeypatch, tmp_path: Path) -> None:
    """Scripts read counts with json.loads; strings like "8" or "0.27 M" would need parsing."""
    monkeypatch.setenv("ARSSR_RT_MODELS", str(tmp_path / "none"))
    code, rows = run_json(capsys, ["models"])
    assert code == 0
    (row,) = [r for r in rows if r["source"] == "embedded" and Path(r["path"]).name == "default"]
    from arssr_rt.bundle import resolve_model

    meta = resolve_model(None).meta
    for key in ("feature_dim", "receptive_radius", "params"):
        assert type(row[key]) is int, (key, row[key])
    assert row["feature_dim"] == meta["spec"]["feature_dim"]
    assert row["receptive_radius"] == meta["receptive_radius"]
    assert row["params"] == meta["parameters"]["total"]
    # a bundle that fails verification has null numbers, not "?"
    bad = Path(tmp_path / "bad")
    bad.mkdir()
    code, rows = run_json(capsys, ["models", "--model", str(bad)])
    assert code == ModelError.exit_code
    broken = next(r for r in rows if r["path"] == str(bad))
    assert broken["feature_dim"] is None and broken["params"] is None and broken["status"].startswith("error:")


def test_models_reports_a_corrupt_bundle_and_fails(tiny_bundle: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("ARSSR_RT_MODELS", str(tmp_path / "none"))
    bad = Path(shutil.copytree(tiny_bundle, tmp_path / "bad"))
    blob = bytearray((bad / "decoder.onnx").read_bytes())
    blob[100] ^= 0x01
    (bad / "decoder.onnx").write_bytes(bytes(blob))
    code, rows = run_json(capsys, ["models", "--model", str(tiny_bundle), "--model", str(bad)])
    assert code == ModelError.exit_code
    status = {r["path"]: r["status"] for r in rows}
    assert status[str(tiny_bundle)] == "ok"
    assert "decoder.onnx fails its sha256 check" in status[str(bad)]


def test_models_table(tiny_bundle: Path, capsys, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ARSSR_RT_MODELS", str(tmp_path / "none"))
    assert main(["models", "--model", str(tiny_bundle)]) == 0
    out = capsys.readouterr().out
    assert "tiny-random-test" in out and "rescnn" in out and " ok " in out


def test_info_reports_facts_and_plan(fixture_path: Path, capsys) -> None:
    code, facts = run_json(capsys, ["info", str(fixture_path), "--voxel-size", "0.7,0.7,1"])
    assert code == 0
    assert facts["shape"] == [64, 64, 64] and facts["spacing_mm"] == [1.0, 1.0, 1.0]
    assert facts["orientation"] == "RAS" and facts["dtype"] == "uint8"
    assert (facts["qform_code"], facts["sform_code"]) == (1, 1)
    data = np.asarray(nib.load(fixture_path).dataobj)
    assert (facts["intensity_min"], facts["intensity_max"]) == (float(data.min()), float(data.max()))
    out = facts["output"]
    assert out["shape"] == [91, 91, 64]  # round(64 / 0.7) = 91
    assert out["spacing_mm"][0] == pytest.approx(64 / 91) and out["voxels"] == 91 * 91 * 64
    assert out["dtype"] == "uint8" and out["size_mib_uncompressed"] == pytest.approx(91 * 91 * 64 / 2**20, abs=0.01)


def test_info_text_defaults_to_scale_2(fixture_path: Path, capsys) -> None:
    assert main(["info", str(fixture_path)]) == 0
    out = capsys.readouterr().out
    assert "orientation  RAS" in out and "qform 1, sform 1" in out
    assert "--scale 2 -> 128 x 128 x 128 at 0.5 x 0.5 x 0.5 mm" in out


def test_info_on_a_flipped_anisotropic_float_volume(tmp_path: Path, capsys, fixture_image) -> None:
    from conftest import lia_affine

    img = nib.Nifti1Image(np.asarray(fixture_image.dataobj, dtype=np.float32)[:, :40, :20], lia_affine())
    img.header.set_qform(img.affine, code=1)
    img.header.set_sform(img.affine, code=2)
    path = tmp_path / "lia.nii.gz"
    img.to_filename(path)
    code, facts = run_json(capsys, ["info", str(path), "--shape", "70,50,60", "--dtype", "float32"])
    assert code == 0
    assert facts["orientation"] == "LIA" and (facts["qform_code"], facts["sform_code"]) == (1, 2)
    assert facts["spacing_mm"] == pytest.approx([0.9, 1.2, 2.5])
    assert facts["output"]["shape"] == [70, 50, 60]
    assert facts["output"]["spacing_mm"] == pytest.approx([0.9 * 64 / 70, 1.2 * 40 / 50, 2.5 * 20 / 60], abs=1e-5)
    assert facts["output"]["size_mib_uncompressed"] == pytest.approx(70 * 50 * 60 * 4 / 2**20, abs=0.01)


def test_info_refuses_bad_options_and_files(fixture_path: Path, tmp_path: Path, capsys) -> None:
    assert main(["info", str(fixture_path), "--scale", "0"]) == InputError.exit_code
    assert main(["info", str(fixture_path), "--scale", "2", "--shape", "9,9,9"]) == InputError.exit_code
    assert main(["info", str(tmp_path / "absent.nii.gz")]) == InputError.exit_code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("arssr-rt: error:") for line in err)
