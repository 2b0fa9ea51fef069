"""Every command's writers refuse to lose a file: batch (OUT_DIR files, CSV outputs, reruns,
two batches), qc -o and evaluate --csv/--json/--figure/--montage. Each case: one line on
stderr, exit != 0, and the files that were there are byte-for-byte unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from arssr_rt.cli import main

from conftest import FIXTURE_PATH, listing


def crop(path: Path, index: int = 0, size: int = 16) -> Path:
    """A size^3 block of the real fixture (crop ``index`` along the first axis)."""
    img = nib.load(FIXTURE_PATH)
    block = np.asarray(img.dataobj)[index * size:(index + 1) * size, :size, :size]
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(block, img.affine), path)
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run(capsys, *argv: str) -> tuple[int, list[str]]:
    code = main(list(argv))
    return code, capsys.readouterr().err.strip().splitlines()


def batch(tiny_bundle: Path, *args: str) -> list[str]:
    return ["batch", *args, "--scale", "2", "--model", str(tiny_bundle), "--threads", "1", "--quiet"]


def report_items(path: Path) -> dict[str, dict]:
    return {Path(i["input"]).name: i for i in json.loads(path.read_text())["items"]}


# ------------------------------------------------------------------ batch


def test_batch_does_not_overwrite_a_file_it_did_not_make(tmp_path, tiny_bundle, capsys):
    crop(tmp_path / "in" / "a.nii.gz")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a_x2.nii.gz").write_bytes(b"the user's own file")
    code, _ = run(capsys, *batch(tiny_bundle, str(tmp_path / "in"), "-o", str(tmp_path / "out")))
    assert code == 1
    assert (tmp_path / "out" / "a_x2.nii.gz").read_bytes() == b"the user's own file"
    item = report_items(tmp_path / "out" / "batch_report.json")["a.nii.gz"]
    assert item["status"] == "failed" and "already exists" in item["message"] and "--force" in item["message"]
    assert listing(tmp_path / "out") == ["a_x2.nii.gz", "batch_report.json"]
    assert run(capsys, *batch(tiny_bundle, str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--force"))[0] == 0
    assert nib.load(tmp_path / "out" / "a_x2.nii.gz").shape == (32, 32, 32)


def test_batch_csv_output_onto_an_input_is_refused(tmp_path, tiny_bundle, capsys):
    crop(tmp_path / "a.nii.gz", 0)
    crop(tmp_path / "b.nii.gz", 1)
    (tmp_path / "list.csv").write_text("input,output\na.nii.gz,../b.nii.gz\nb.nii.gz,\n")
    before = snapshot(tmp_path)
    code, _ = run(capsys, *batch(tiny_bundle, str(tmp_path / "list.csv"), "-o", str(tmp_path / "out"), "--force",
                                 "--allow-outside-output-dir"))
    assert code == 1
    assert all(snapshot(tmp_path)[name] == data for name, data in before.items())  # no input changed
    item = report_items(tmp_path / "out" / "batch_report.json")["a.nii.gz"]
    assert item["status"] == "failed" and "is the input" in item["message"]


def test_batch_csv_output_outside_out_dir_needs_a_flag(tmp_path, tiny_bundle, capsys):
    crop(tmp_path / "a.nii.gz", 0)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "list.csv").write_text(f"input,output\na.nii.gz,{tmp_path / 'elsewhere' / 'a_sr.nii.gz'}\n")
    code, _ = run(capsys, *batch(tiny_bundle, str(tmp_path / "list.csv"), "-o", str(tmp_path / "out")))
    assert code == 1 and listing(tmp_path / "elsewhere") == []
    item = report_items(tmp_path / "out" / "batch_report.json")["a.nii.gz"]
    assert "outside the output folder" in item["message"] and "--allow-outside-output-dir" in item["message"]
    assert run(capsys, *batch(tiny_bundle, str(tmp_path / "list.csv"), "-o", str(tmp_path / "out"), "--allow-outside-output-dir"))[0] == 0
    assert nib.load(tmp_path / "elsewhere" / "a_sr.nii.gz").shape == (32, 32, 32)


def test_batch_csv_rows_on_one_output_stop_before_any_work(tmp_path, tiny_bundle, capsys):
    crop(tmp_path / "a.nii.gz", 0)
    crop(tmp_path / "b.nii.gz", 1)
    (tmp_path / "list.csv").write_text("input,output\na.nii.gz,x.nii.gz\nb.nii.gz,sub/../x.nii.gz\n")
    code, err = run(capsys, *batch(tiny_bundle, str(tmp_path / "list.csv"), "-o", str(tmp_path / "out")))
    assert code == 2 and len(err) == 1
    assert "list.csv row 1" in err[0] and "list.csv row 2" in err[0] and "x.nii.gz" in err[0]
    assert not (tmp_path / "out").exists()


def test_batch_report_path_onto_an_input_is_refused(tmp_path, tiny_bundle, capsys):
    source = crop(tmp_path / "in" / "a.nii.gz")
    before = source.read_bytes()
    code, err = run(capsys, *batch(tiny_bundle, str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--report", str(source), "--force"))
    assert code == 2 and len(err) == 1 and "is the input" in err[0]
    assert source.read_bytes() == before and not (tmp_path / "out").exists()


def test_out_dir_inside_the_input_folder_is_not_walked_again(tmp_path, tiny_bundle, capsys):
    crop(tmp_path / "in" / "a.nii.gz")
    args = batch(tiny_bundle, str(tmp_path / "in"), "-o", str(tmp_path / "in" / "sr"))
    assert run(capsys, *args)[0] == 0
    assert run(capsys, *args)[0] == 0
    report = json.loads((tmp_path / "in" / "sr" / "batch_report.json").read_text())
    assert [(Path(i["input"]).name, i["status"]) for i in report["items"]] == [("a.nii.gz", "skipped")]
    assert listing(tmp_path / "in" / "sr") == ["a_x2.json", "a_x2.nii.gz", "batch_report.json"]


def test_out_dir_equal_to_the_input_folder_skips_earlier_outputs(tmp_path, tiny_bundle, capsys):
    crop(tmp_path / "in" / "a.nii.gz")
    args = batch(tiny_bundle, str(tmp_path / "in"), "-o", str(tmp_path / "in"))
    assert run(capsys, *args)[0] == 0 and run(capsys, *args)[0] == 0
    assert listing(tmp_path / "in") == ["a.nii.gz", "a_x2.json", "a_x2.nii.gz", "batch_report.json"]


def test_a_rerun_does_not_delete_another_live_batchs_temp_file(tmp_path, tiny_bundle, capsys):
    from arssr_rt.atomic import temp_path_for

    crop(tmp_path / "in" / "a.nii.gz")
    (tmp_path / "out").mkdir()
    live = temp_path_for(tmp_path / "out" / "a_x2.nii.gz")  # owned by a running process (this one)
    live.write_bytes(b"another batch is writing this")
    assert run(capsys, *batch(tiny_bundle, str(tmp_path / "in"), "-o", str(tmp_path / "out")))[0] == 0
    assert live.read_bytes() == b"another batch is writing this"


# ------------------------------------------------------------------ qc and evaluate


def _qc_pair(tmp_path: Path) -> tuple[Path, Path]:
    from arssr_rt.degrade import cubic_resample
    from arssr_rt.geometry import plan_output_grid

    img = nib.load(FIXTURE_PATH)
    data = np.asarray(img.dataobj, dtype=np.float32)[::2, ::2, ::2]
    affine = img.affine.copy()
    affine[:3, :3] = affine[:3, :3] @ np.diag([2.0, 2.0, 2.0])
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "lr.nii.gz")
    grid = plan_output_grid(data.shape, affine, shape=(64, 64, 64))
    nib.save(nib.Nifti1Image(cubic_resample(data, grid.shape), grid.affine), tmp_path / "sr.nii.gz")
    return tmp_path / "lr.nii.gz", tmp_path / "sr.nii.gz"


def test_qc_refuses_an_existing_file_and_never_writes_an_input(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    pytest.importorskip("scipy")
    lr, sr = _qc_pair(tmp_path)
    (tmp_path / "old.png").write_bytes(b"keep me")
    before = snapshot(tmp_path)
    for target, force, reason in ((tmp_path / "old.png", [], "already exists"), (lr, ["--force"], "is the input"),
                                  (sr, ["--force"], "is the input")):
        code, err = run(capsys, "qc", str(lr), str(sr), "-o", str(target), *force)
        assert code == 2 and len(err) == 1 and reason in err[0], err
    assert snapshot(tmp_path) == before
    assert run(capsys, "qc", str(lr), str(sr), "-o", str(tmp_path / "old.png"), "--force")[0] == 0
    assert (tmp_path / "old.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("flag", ["--csv", "--json", "--figure", "--montage"])
def test_evaluate_refuses_existing_files_without_force(tmp_path, capsys, flag):
    pytest.importorskip("scipy")
    if flag in ("--figure", "--montage"):
        pytest.importorskip("matplotlib")
    target = tmp_path / "existing.out"
    target.write_bytes(b"earlier results")
    argv = ["evaluate", str(FIXTURE_PATH), "-s", "2", "--baseline-only", "--quiet", flag, str(target)]
    code, err = run(capsys, *argv)
    assert code == 2 and len(err) == 1 and "already exists" in err[0] and "--force" in err[0]
    assert target.read_bytes() == b"earlier results"
    code, err = run(capsys, *argv[:-2], flag, str(FIXTURE_PATH), "--force")
    assert code == 2 and "is the input" in err[-1]
    assert run(capsys, *argv, "--force")[0] == 0 and target.read_bytes() != b"earlier results"


def test_a_kill_between_output_and_sidecar_is_redone_without_force(tmp_path, tiny_bundle, monkeypatch):
    """The output is renamed into place before its sidecar: a run killed in between leaves an
    output with no sidecar, which a rerun must redo (its claim says this batch made it)."""
    import arssr_rt.batch.runner as runner

    crop(tmp_path / "in" / "a.nii.gz")
    options = runner.BatchOptions(scale="2", model=str(tiny_bundle), threads=1)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "write_sidecar", killed)
    with pytest.raises(KeyboardInterrupt):
        runner.run_batch([tmp_path / "in"], tmp_path / "out", options)
    assert (tmp_path / "out" / "a_x2.nii.gz").is_file() and not (tmp_path / "out" / "a_x2.json").exists()
    monkeypatch.undo()
    report = runner.run_batch([tmp_path / "in"], tmp_path / "out", options)
    assert [i.status for i in report.items] == ["done"]
    assert listing(tmp_path / "out") == ["a_x2.json", "a_x2.nii.gz"]  # and the claim is gone
