"""Batch runs: discovery, sharding, sidecars, and the reliability corpus (bad inputs of every
class, symlink loops, a full disk, SIGKILL mid-run, a 50-file soak run twice).

Model-running tests use the tiny RANDOM-WEIGHT bundle: they check bookkeeping, files and
geometry, never image quality.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from arssr_rt.batch.discovery import discover, parse_shard, select_shard
from arssr_rt.batch.runner import BatchOptions, output_for, run_batch, size_label
from arssr_rt.batch.sidecar import input_sha256, sidecar_path, stale_reason, write_sidecar
from arssr_rt.cli import main
from arssr_rt.errors import InputError

from conftest import FIXTURE_PATH, listing


# ------------------------------------------------------------------ helpers


def crop(path: Path, index: int, size: int = 16) -> Path:
    """Write crop number ``index`` (a size^3 block of the real fixture) to ``path``."""
    img = nib.load(FIXTURE_PATH)
    data = np.asarray(img.dataobj)
    per_axis = data.shape[0] // size
    i, j, k = index % per_axis, (index // per_axis) % per_axis, (index // per_axis**2) % per_axis
    block = data[i * size:(i + 1) * size, j * size:(j + 1) * size, k * size:(k + 1) * size]
    affine = img.affine.copy()
    affine[:3, 3] += affine[:3, :3] @ np.array([i, j, k]) * size
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(block, affine), path)
    return path


def read_report(path: Path) -> dict:
    return json.loads(path.read_text())


def statuses(report: dict) -> dict[str, str]:
    return {Path(item["input"]).name: item["status"] for item in report["items"]}


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if ".tmp" in p.name or ".partial-" in p.name]


def assert_complete_output(path: Path, shape: tuple[int, int, int]) -> None:
    """A final-named output must load fully with the planned shape (no partial file)."""
    img = nib.load(path)
    assert img.shape == shape
    assert np.isfinite(np.asarray(img.dataobj, dtype=np.float32)).all()


def batch(*args: str) -> int:
    return main(["batch", *args, "--quiet"])


# ------------------------------------------------------------------ discovery, sharding, sidecar


def test_discovery_walks_folders_and_mirrors_them(tmp_path):
    crop(tmp_path / "in" / "a.nii.gz", 0)
    crop(tmp_path / "in" / "sub" / "b.nii", 1)
    (tmp_path / "in" / "sub" / "notes.txt").write_text("not an image")
    (tmp_path / "in" / "sub" / "c.nrrd").write_bytes(b"NRRD0004\n")
    items = discover([tmp_path / "in"])
    assert [(str(i.relative), i.kind) for i in items] == [("a.nii.gz", "nifti"), ("sub/b.nii", "nifti"), ("sub/c.nrrd", "nrrd")]
    assert all(i.error is None for i in items)
    out = output_for(items[1], tmp_path / "out", BatchOptions(scale="2"))
    assert out == tmp_path / "out" / "sub" / "b_x2.nii.gz"


def test_discovery_finds_dicom_series_folders(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from arssr_rt.geometry import plan_output_grid
    from arssr_rt.io_dicom import write_dicom_series
    from arssr_rt.readers import read_volume

    volume = read_volume(crop(tmp_path / "src.nii.gz", 0))
    (tmp_path / "in" / "patient").mkdir(parents=True)
    write_dicom_series(tmp_path / "in" / "patient" / "t1_series", volume.data, plan_output_grid(volume.shape, volume.affine, shape=volume.shape), volume)
    items = discover([tmp_path / "in"])
    assert [(str(i.relative), i.kind) for i in items] == [("patient/t1_series", "dicom")]
    assert pydicom  # the folder is found by the DICM marker, not by a suffix


def test_symlink_loops_and_broken_links_are_reported_not_followed_forever(tmp_path):
    root = tmp_path / "in"
    crop(root / "sub" / "a.nii.gz", 0)
    (root / "sub" / "up").symlink_to(root)  # directory cycle
    (root / "self.nii.gz").symlink_to(root / "self.nii.gz")  # ELOOP
    (root / "gone.nii.gz").symlink_to(root / "missing.nii.gz")
    items = {str(i.relative): i for i in discover([root])}
    assert items["sub/a.nii.gz"].error is None
    assert "symlink loop" in items["self.nii.gz"].error
    assert "broken symlink" in items["gone.nii.gz"].error
    assert len(items) == 3  # the cycle adds nothing


def test_explicit_inputs_of_the_wrong_type_are_failed_items(tmp_path):
    (tmp_path / "scan.txt").write_text("hello")
    items = discover([tmp_path / "scan.txt", tmp_path / "absent.nii.gz"])
    assert {i.input.name: i.error for i in items} == {
        "scan.txt": "not an input: expected .nii/.nii.gz/.mgz/.mgh/.nrrd/.nhdr, a DICOM file or series folder, or a .csv list",
        "absent.nii.gz": "no such file or folder",
    }


def test_csv_rows_give_inputs_outputs_and_scales(tmp_path):
    crop(tmp_path / "data" / "a.nii.gz", 0)
    crop(tmp_path / "data" / "b.nii.gz", 1)
    (tmp_path / "data" / "list.csv").write_text('input,output,scale\na.nii.gz,custom/a_sr.nii.gz,"1,1,3"\nb.nii.gz,,\n# comment\nmissing.nii.gz,,\n')
    items = {i.input.name: i for i in discover([tmp_path / "data" / "list.csv"])}
    assert items["a.nii.gz"].scale == "1,1,3" and items["a.nii.gz"].output == Path("custom/a_sr.nii.gz")
    assert items["b.nii.gz"].scale is None and items["b.nii.gz"].output is None
    assert items["missing.nii.gz"].error == "no such file or folder"
    options = BatchOptions(scale="2")
    assert output_for(items["a.nii.gz"], tmp_path / "out", options) == tmp_path / "out" / "custom" / "a_sr.nii.gz"
    assert output_for(items["b.nii.gz"], tmp_path / "out", options) == tmp_path / "out" / "b_x2.nii.gz"


def test_shards_partition_the_sorted_inputs(tmp_path):
    for n in range(11):
        (tmp_path / f"v{n:02d}.nii.gz").write_bytes(b"x")
    items = discover([tmp_path])
    shards = [select_shard(items, i, 4) for i in range(4)]
    names = [sorted(str(i.input) for i in s) for s in shards]
    assert sorted(sum(names, [])) == sorted(str(i.input) for i in items)
    assert [len(s) for s in shards] == [3, 3, 3, 2]
    assert [str(i.input) for i in select_shard(list(reversed(items)), 1, 4)] == [str(i.input) for i in shards[1]]
    assert parse_shard("3/4") == (3, 4)
    for bad in ("4/4", "-1/4", "1/0", "a/b", "1"):
        with pytest.raises(InputError):
            parse_shard(bad)


def test_size_labels():
    assert size_label("2", None, None) == "x2"
    assert size_label("1,1,3", None, None) == "x1x1x3"
    assert size_label(None, "0.5", None) == "0.5mm"
    assert size_label(None, None, "256,256,100") == "256x256x100"


def test_sidecar_says_why_an_output_is_stale(tmp_path):
    source = crop(tmp_path / "a.nii.gz", 0)
    output = tmp_path / "a_x2.nii.gz"
    output.write_bytes(b"0123456789")
    digest = input_sha256(source)
    options = {"scale": "2", "qc": False}
    assert stale_reason(output, digest, "m1", options) == "output has no valid sidecar (interrupted run?)"
    write_sidecar(sidecar_path(output), {"input_sha256": digest, "model_sha256": "m1", "options": options, "output_bytes": 10})
    assert stale_reason(output, digest, "m1", options) is None
    assert stale_reason(output, "other", "m1", options) == "input changed"
    assert stale_reason(output, digest, "m2", options) == "model changed"
    assert stale_reason(output, digest, "m1", {"scale": "3", "qc": False}) == "options changed"
    output.write_bytes(b"012")
    assert stale_reason(output, digest, "m1", options) == "output differs from its sidecar"
    assert sidecar_path(tmp_path / "s_x2") == tmp_path / "s_x2.json"


# ------------------------------------------------------------------ the reliability corpus


@pytest.fixture
def corpus(tmp_path, raw_nifti):
    """Three good crops plus one bad input of each class the foundation refuses, and more."""
    good = [crop(tmp_path / "in" / f"good{n}.nii.gz", n) for n in range(3)]
    bad = tmp_path / "in"
    rng = np.random.default_rng(0)
    (bad / "notgzip.nii.gz").write_bytes(b"this is not gzip")
    (bad / "empty.nii").write_bytes(b"")
    whole = good[0].read_bytes()
    (bad / "truncated.nii.gz").write_bytes(whole[: len(whole) // 2])
    raw_nifti(bad / "twod.nii", rng.random((16, 16)).astype(np.float32))
    raw_nifti(bad / "fived.nii", rng.random((8, 8, 8, 3, 2)).astype(np.float32))  # 4-D series are inputs; 5-D is not
    nan = rng.random((8, 8, 8)).astype(np.float32)
    nan[1, 2, 3] = np.nan
    raw_nifti(bad / "nan.nii", nan)
    raw_nifti(bad / "constant.nii", np.full((8, 8, 8), 7, np.int16))
    raw_nifti(bad / "onevoxel.nii", rng.random((8, 1, 8)).astype(np.float32))
    raw_nifti(bad / "absurd.nii", shape=(30000, 30000, 30000), dtype=np.float32, data_bytes=b"\0" * 64)
    raw_nifti(bad / "zerospacing.nii", rng.random((8, 8, 8)).astype(np.float32), affine=np.diag([1.0, 0.0, 1.0, 1.0]), pixdim=(1.0, 0.0, 1.0))
    (bad / "nifti_named.nrrd").write_bytes(good[1].read_bytes())  # wrong extension
    (bad / "loop.nii.gz").symlink_to(bad / "loop.nii.gz")
    (bad / "sub").mkdir()
    (bad / "sub" / "cycle").symlink_to(bad)
    (tmp_path / "notes.txt").write_text("a text file named on the command line")
    return tmp_path


BAD_NAMES = ["absurd.nii", "constant.nii", "empty.nii", "fived.nii", "loop.nii.gz", "nan.nii", "nifti_named.nrrd",
             "notgzip.nii.gz", "onevoxel.nii", "truncated.nii.gz", "twod.nii", "zerospacing.nii", "notes.txt"]


def test_bad_inputs_are_reported_and_good_ones_done(corpus, tiny_bundle):
    out, report_path = corpus / "out", corpus / "report.json"
    code = batch(str(corpus / "in"), str(corpus / "notes.txt"), "-o", str(out), "--scale", "2",
                 "--model", str(tiny_bundle), "--threads", "1", "--report", str(report_path))
    assert code == 1
    report = read_report(report_path)
    seen = statuses(report)
    assert {n: seen[n] for n in BAD_NAMES} == {n: "failed" for n in BAD_NAMES}
    assert [seen[f"good{n}.nii.gz"] for n in range(3)] == ["done"] * 3
    assert report["counts"] == {"done": 3, "skipped": 0, "failed": len(BAD_NAMES), "pending": 0} and report["complete"]
    failed = [i for i in report["items"] if i["status"] == "failed"]
    assert all(i["message"] and "\n" not in i["message"] for i in failed)
    for item in report["items"]:
        if item["status"] == "done":
            assert item["out_shape"] == [32, 32, 32] and item["in_shape"] == [16, 16, 16]
            assert item["out_spacing"] == pytest.approx([0.5] * 3) and item["backend"] and item["seconds"] >= 0
            assert_complete_output(Path(item["output"]), (32, 32, 32))
    # outputs only for the good inputs, nothing half-written anywhere
    assert sorted(p.name for p in out.iterdir()) == sorted([f"good{n}_x2.nii.gz" for n in range(3)] + [f"good{n}_x2.json" for n in range(3)])
    assert temp_files(out) == []
    # a rerun redoes nothing that is complete and reports the bad inputs again
    assert batch(str(corpus / "in"), "-o", str(out), "--scale", "2", "--model", str(tiny_bundle), "--report", str(report_path)) == 1
    again = statuses(read_report(report_path))
    assert [again[f"good{n}.nii.gz"] for n in range(3)] == ["skipped"] * 3


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file_is_a_failed_item(tmp_path, tiny_bundle):
    source = crop(tmp_path / "in" / "locked.nii.gz", 0)
    source.chmod(0)
    try:
        report = run_batch([tmp_path / "in"], tmp_path / "out", BatchOptions(scale="2", model=str(tiny_bundle), threads=1))
    finally:
        source.chmod(0o644)
    assert report.items[0].status == "failed" and "ermission" in report.items[0].message


def test_permission_denied_is_a_failed_item_even_as_root(tmp_path, tiny_bundle, monkeypatch):
    """Root ignores file modes, so the EACCES a normal user gets is raised by a patched open()."""
    import builtins

    crop(tmp_path / "in" / "a.nii.gz", 0)
    locked = crop(tmp_path / "in" / "locked.nii.gz", 1)
    real_open = builtins.open

    def guarded_open(file, *args, **kwargs):
        if Path(str(file)) == locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    report = run_batch([tmp_path / "in"], tmp_path / "out", BatchOptions(scale="2", model=str(tiny_bundle), threads=1))
    by_name = {Path(i.input).name: i for i in report.items}
    assert by_name["a.nii.gz"].status == "done"
    assert by_name["locked.nii.gz"].status == "failed" and "Permission denied" in by_name["locked.nii.gz"].message
    assert listing(tmp_path / "out") == ["a_x2.json", "a_x2.nii.gz"]


def test_disk_full_during_a_write_fails_that_file_only(tmp_path, tiny_bundle, monkeypatch):
    sources = [crop(tmp_path / "in" / f"v{n}.nii.gz", n) for n in range(3)]
    options = BatchOptions(scale="2", model=str(tiny_bundle), threads=1, qc=False)
    real_to_filename = nib.Nifti1Image.to_filename
    calls = {"n": 0}

    def flaky_write(self, filename, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second output: write part of it, then the disk is full
            Path(filename).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_to_filename(self, filename, *args, **kwargs)

    monkeypatch.setattr(nib.Nifti1Image, "to_filename", flaky_write)
    report = run_batch([tmp_path / "in"], tmp_path / "out", options, report_path=tmp_path / "r.json")
    by_name = {Path(i.input).name: i for i in report.items}
    assert [by_name[s.name].status for s in sources] == ["done", "failed", "done"]
    assert "No space left on device" in by_name["v1.nii.gz"].message
    assert listing(tmp_path / "out") == ["v0_x2.json", "v0_x2.nii.gz", "v2_x2.json", "v2_x2.nii.gz"]
    monkeypatch.undo()
    rerun = run_batch([tmp_path / "in"], tmp_path / "out", options)
    assert [i.status for i in rerun.items] == ["skipped", "done", "skipped"]
    assert_complete_output(tmp_path / "out" / "v1_x2.nii.gz", (32, 32, 32))


def test_sigkill_mid_batch_leaves_no_partial_output_and_a_rerun_finishes(tmp_path, tiny_bundle):
    count = 12
    for n in range(count):
        crop(tmp_path / "in" / f"v{n:02d}.nii.gz", n, size=32 if n % 2 else 16)
    out, report_path = tmp_path / "out", tmp_path / "report.json"
    argv = [sys.executable, "-m", "arssr_rt", "batch", str(tmp_path / "in"), "-o", str(out), "--scale", "2", "--model", str(tiny_bundle),
            "--threads", "1", "--report", str(report_path), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and len(list(out.glob("*.json"))) < 3:
        time.sleep(0.01)
    if proc.poll() is not None:
        pytest.fail(f"the batch ended before it could be killed: {proc.stderr.read().decode()[-500:]}")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    # every output under its final name is complete; the killed run's report is consistent
    # (hidden names are the atomic writes' temp files, possibly caught mid-write by the kill)
    finished = sorted(p for p in out.glob("*.nii.gz") if not p.name.startswith("."))
    assert 3 <= len(finished) < count
    for path in finished:
        n = int(path.name[1:3])
        assert_complete_output(path, (64, 64, 64) if n % 2 else (32, 32, 32))
    killed = read_report(report_path)
    assert len(killed["items"]) == count and not killed["complete"]
    for item in killed["items"]:
        assert item["status"] in ("done", "pending")
        if item["status"] == "done":
            assert Path(item["output"]).is_file() and sidecar_path(Path(item["output"])).is_file()
    with_sidecar = {p.name.replace(".json", ".nii.gz") for p in out.glob("*.json") if not p.name.startswith(".")}
    # the rerun skips every complete output, redoes the rest, and cleans the killed run's temp files
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    final = read_report(report_path)
    assert final["complete"] and final["counts"]["failed"] == 0 and final["counts"]["pending"] == 0
    skipped = {Path(i["output"]).name for i in final["items"] if i["status"] == "skipped"}
    assert skipped == with_sidecar
    assert final["counts"]["done"] == count - len(skipped)
    assert temp_files(out) == []
    assert len(list(out.glob("*.nii.gz"))) == count


def test_soak_50_files_with_5_broken_twice(tmp_path, tiny_bundle):
    """50 small inputs (16^3 crops of the real fixture), 5 broken, two workers, run twice."""
    folder = tmp_path / "in"
    for n in range(45):
        crop(folder / f"s{n:02d}.nii.gz", n)
    for n in range(5):
        (folder / f"broken{n}.nii.gz").write_bytes(b"\x1f\x8b" + os.urandom(40))
    out, report_path = tmp_path / "out", tmp_path / "report.json"
    args = [str(folder), "-o", str(out), "--scale", "2", "--model", str(tiny_bundle), "--threads", "1", "--jobs", "2", "--report", str(report_path)]
    t0 = time.perf_counter()
    assert batch(*args) == 1
    first_seconds = time.perf_counter() - t0
    first = read_report(report_path)
    assert first["counts"] == {"done": 45, "skipped": 0, "failed": 5, "pending": 0}
    assert {k: first["execution"][k] for k in ("runner", "jobs", "workers", "ray_address")} == {
        "runner": "process pool", "jobs": 2, "workers": 2, "ray_address": None}
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    t0 = time.perf_counter()
    assert batch(*args) == 1
    second_seconds = time.perf_counter() - t0
    second = read_report(report_path)
    assert second["counts"] == {"done": 0, "skipped": 45, "failed": 5, "pending": 0}
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != "report.json"} == stamps
    assert temp_files(out) == []
    print(f"soak: first run {first_seconds:.1f} s, second run {second_seconds:.1f} s")


# ------------------------------------------------------------------ options


def test_csv_with_per_row_scale_and_output(tmp_path, tiny_bundle):
    crop(tmp_path / "a.nii.gz", 0)
    crop(tmp_path / "b.nii.gz", 1)
    (tmp_path / "list.csv").write_text("input,output,scale\na.nii.gz,thick/a_iso.nii.gz,1x1x3\nb.nii.gz,,\n")
    assert batch(str(tmp_path / "list.csv"), "-o", str(tmp_path / "out"), "--scale", "2", "--model", str(tiny_bundle), "--threads", "1") == 0
    assert nib.load(tmp_path / "out" / "thick" / "a_iso.nii.gz").shape == (16, 16, 48)
    assert nib.load(tmp_path / "out" / "b_x2.nii.gz").shape == (32, 32, 32)


def test_shards_split_the_work_between_runs(tmp_path, tiny_bundle):
    for n in range(5):
        crop(tmp_path / "in" / f"v{n}.nii.gz", n)
    common = [str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--scale", "2", "--model", str(tiny_bundle), "--threads", "1"]
    assert batch(*common, "--shard", "0/2") == 0
    assert batch(*common, "--shard", "1/2") == 0
    r0 = read_report(tmp_path / "out" / "batch_report.shard-0-of-2.json")
    r1 = read_report(tmp_path / "out" / "batch_report.shard-1-of-2.json")
    names0, names1 = set(statuses(r0)), set(statuses(r1))
    assert names0.isdisjoint(names1) and names0 | names1 == {f"v{n}.nii.gz" for n in range(5)}
    assert r0["shard"] == "0/2" and len(list((tmp_path / "out").glob("*.nii.gz"))) == 5


def test_options_change_redoes_and_force_redoes(tmp_path, tiny_bundle):
    crop(tmp_path / "in" / "a.nii.gz", 0)
    common = [str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--scale", "2", "--model", str(tiny_bundle), "--threads", "1"]
    report = tmp_path / "out" / "batch_report.json"
    assert batch(*common) == 0
    assert batch(*common) == 0 and statuses(read_report(report)) == {"a.nii.gz": "skipped"}
    assert batch(*common, "--dtype", "float32") == 0 and statuses(read_report(report)) == {"a.nii.gz": "done"}
    assert nib.load(tmp_path / "out" / "a_x2.nii.gz").get_data_dtype() == np.float32
    assert batch(*common, "--dtype", "float32", "--force") == 0 and statuses(read_report(report)) == {"a.nii.gz": "done"}


def test_fail_fast_stops_at_the_first_failure(tmp_path, tiny_bundle):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a_broken.nii.gz").write_bytes(b"junk")
    crop(tmp_path / "in" / "b.nii.gz", 0)
    code = batch(str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--scale", "2", "--model", str(tiny_bundle), "--fail-fast")
    assert code == 1
    assert statuses(read_report(tmp_path / "out" / "batch_report.json")) == {"a_broken.nii.gz": "failed", "b.nii.gz": "pending"}
    assert not (tmp_path / "out" / "b_x2.nii.gz").exists()


def test_qc_pictures_are_written_and_linked(tmp_path, tiny_bundle):
    pytest.importorskip("matplotlib")
    crop(tmp_path / "in" / "a.nii.gz", 0)
    assert batch(str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--scale", "2", "--model", str(tiny_bundle), "--qc") == 0
    item = read_report(tmp_path / "out" / "batch_report.json")["items"][0]
    assert item["qc"] == str(tmp_path / "out" / "a_x2_qc.png") and Path(item["qc"]).stat().st_size > 10_000
    assert json.loads((tmp_path / "out" / "a_x2.json").read_text())["qc"] == "a_x2_qc.png"


def test_dicom_in_dicom_out(tmp_path, tiny_bundle):
    pydicom = pytest.importorskip("pydicom")
    from arssr_rt.geometry import plan_output_grid
    from arssr_rt.io_dicom import read_dicom_series, write_dicom_series
    from arssr_rt.readers import read_volume

    volume = read_volume(crop(tmp_path / "src.nii.gz", 0))
    volume.meta["dicom_reference"] = ref = pydicom.Dataset()
    ref.PatientName, ref.PatientID, ref.StudyInstanceUID = "Test^Batch", "B1", pydicom.uid.generate_uid()
    (tmp_path / "in").mkdir()
    write_dicom_series(tmp_path / "in" / "t1", volume.data, plan_output_grid(volume.shape, volume.affine, shape=volume.shape), volume)
    code = batch(str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--scale", "1,1,2", "--model", str(tiny_bundle), "--output-format", "dicom")
    assert code == 0
    result = read_dicom_series(tmp_path / "out" / "t1_x1x1x2")
    assert result.shape == (16, 16, 32)
    first = pydicom.dcmread(sorted((tmp_path / "out" / "t1_x1x1x2").iterdir())[0])
    assert str(first.PatientName) == "Test^Batch" and list(first.ImageType) == ["DERIVED", "SECONDARY", "OTHER"]
    assert first.SeriesDescription.endswith(" SR x1x1x2 (arssr-rt)") and "SourceImageSequence" in first
    assert float(first.SliceThickness) == pytest.approx(0.5)


def test_missing_model_is_one_line_and_exit_2(tmp_path, capsys):
    crop(tmp_path / "in" / "a.nii.gz", 0)
    assert main(["batch", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--scale", "2", "--model", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model" in err[0]


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def stale_ray_tmpdir():
    """A Ray temp dir whose ray_current_cluster names a dead cluster (a `ray start` head that
    died without `ray stop`); short, under /tmp, so Ray's socket paths stay under 108 bytes."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="arssr-ray-", dir="/tmp"))
    (folder / "ray").mkdir()
    (folder / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{_closed_port()}\n")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _ray_batch(args: list[str], tmpdir: Path, timeout: float) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=str(tmpdir), OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    # the timeout only turns a hang (today's bug) into a failure; nothing asserts on time
    return subprocess.run([sys.executable, "-m", "arssr_rt", "batch", *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_ray_local_instance_ignores_a_stale_cluster_file(tmp_path, tiny_bundle, stale_ray_tmpdir):
    pytest.importorskip("ray", reason="ray is not installed (pip install 'arssr-rt[ray]')")
    crop(tmp_path / "in" / "a.nii.gz", 0)
    crop(tmp_path / "in" / "b.nii.gz", 1)
    (tmp_path / "in" / "c.nii.gz").write_bytes(b"junk")
    proc = _ray_batch([str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--scale", "2", "--model", str(tiny_bundle), "--threads", "1",
                       "--ray", "--jobs", "2", "--report", str(tmp_path / "r.json"), "--quiet"], stale_ray_tmpdir, timeout=600)
    assert proc.returncode == 1, proc.stderr[-2000:]  # c.nii.gz is junk
    report = read_report(tmp_path / "r.json")
    assert [i["status"] for i in report["items"]] == ["done", "done", "failed"] and report["complete"]
    execution = report["execution"]
    assert (execution["runner"], execution["ray_address"], execution["jobs"], execution["workers"]) == ("ray", "local", 2, 2)
    assert execution["versions"]["ray"] == execution["ray_version"] and execution["ray_cluster"]["CPU"] >= 1
    assert_complete_output(tmp_path / "out" / "a_x2.nii.gz", (32, 32, 32))


def test_ray_dead_address_is_one_line(tmp_path, tiny_bundle, stale_ray_tmpdir):
    pytest.importorskip("ray", reason="ray is not installed (pip install 'arssr-rt[ray]')")
    crop(tmp_path / "in" / "a.nii.gz", 0)
    address = f"127.0.0.1:{_closed_port()}"
    proc = _ray_batch([str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--scale", "2", "--model", str(tiny_bundle), "--threads", "1",
                       "--ray-address", address, "--quiet"], stale_ray_tmpdir, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "cannot reach the Ray cluster" in lines[0] and address in lines[0], proc.stderr
    assert not (tmp_path / "out" / "a_x2.nii.gz").exists()


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_backend_that_cannot_open_stops_the_batch_with_one_line(tmp_path, tiny_bundle, capsys, jobs):
    crop(tmp_path / "in" / "a.nii.gz", 0)
    crop(tmp_path / "in" / "b.nii.gz", 1)
    code = main(["batch", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--scale", "2", "--model", str(tiny_bundle),
                 "--backend", "no-such-backend", "--jobs", jobs, "--quiet"])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("arssr-rt: error: unknown backend 'no-such-backend'")
    report = read_report(tmp_path / "out" / "batch_report.json")
    assert report["counts"]["pending"] == 2 and not report["complete"]
    assert listing(tmp_path / "out") == ["batch_report.json"]


# ------------------------------------------------------------------ what batch prints


def test_quiet_prints_only_errors(tmp_path, tiny_bundle, capsys):
    """-q in a SLURM log: nothing for good files, no summary; a failed input and the final error only."""
    crop(tmp_path / "in" / "good.nii.gz", 0)
    (tmp_path / "in" / "junk.nii.gz").write_bytes(b"not a volume")
    args = ["batch", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--scale", "2", "--model", str(tiny_bundle), "--threads", "1", "-q"]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 2, lines
    assert "failed" in lines[0] and "junk.nii.gz" in lines[0]
    assert lines[1].startswith("arssr-rt: error: 1 of 2 inputs failed")
    assert "good.nii.gz" not in captured.err and "inputs:" not in captured.err
    # a run with nothing wrong is silent
    (tmp_path / "in" / "junk.nii.gz").unlink()
    assert main(args) == 0
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "")


def test_install_hints_with_brackets_are_printed_verbatim(tmp_path, tiny_bundle, capsys, monkeypatch):
    """Rich markup must not eat "[eval]" from 'pip install "arssr-rt[eval]"' (nor [..] in paths)."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    source = crop(tmp_path / "in[1]" / "t1.nii.gz", 0)
    code = main(["batch", str(source), "-o", str(tmp_path / "out"), "--scale", "2", "--model", str(tiny_bundle), "--threads", "1", "--qc"])
    assert code == 1
    err = capsys.readouterr().err
    assert 'pip install "arssr-rt[eval]"' in err
    assert "in[1]" in err
