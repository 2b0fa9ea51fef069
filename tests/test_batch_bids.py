"""Batch on a BIDS dataset: the outputs form a BIDS derivative dataset (names with res-<label>
at the spec's entity position, mirrored sub-/ses-/anat folders, BIDS sidecars with Sources and
Resolution, dataset_description.json with GeneratedBy), checked by the official validator
(bids-validator-deno) where it is installed and against the entity rules here always.

Model-running tests use the tiny RANDOM-WEIGHT bundle: bookkeeping and files only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from arssr_rt import __version__
from arssr_rt.batch.bids import ENTITY_ORDER, bids_source, parse_name, res_label
from arssr_rt.batch.runner import BatchOptions, run_batch
from arssr_rt.batch.sidecar import read_sidecar
from arssr_rt.cli import main

from conftest import FIXTURE_PATH

BIDS_NIFTI = re.compile(r"sub-[a-zA-Z0-9]+(_[a-zA-Z]+-[a-zA-Z0-9]+)*_[a-zA-Z0-9]+\.nii\.gz")
FILES = ("sub-01/anat/sub-01_T1w.nii.gz", "sub-02/ses-1/anat/sub-02_ses-1_acq-mprage_T1w.nii.gz")


def validator() -> str | None:
    """The official validator (pip install bids-validator-deno, in the dev extra): on PATH or
    next to this Python."""
    return shutil.which("bids-validator-deno") or shutil.which("bids-validator-deno", path=str(Path(sys.executable).parent))


def make_dataset(root: Path, description: bool = True) -> Path:
    """Two subjects from crops of the real fixture (24^3, 1 mm), one with a session, each with
    the JSON sidecar a converter writes."""
    img = nib.load(FIXTURE_PATH)
    data = np.asarray(img.dataobj)
    for index, rel in enumerate(FILES):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        block = data[8 + 16 * index:32 + 16 * index, 16:40, 16:40]
        image = nib.Nifti1Image(block, img.affine)
        image.header.set_xyzt_units("mm", "sec")  # as converters write them
        nib.save(image, path)
        path.with_name(path.name.replace(".nii.gz", ".json")).write_text(json.dumps({"RepetitionTime": 2.3, "EchoTime": 0.003}))
    if description:
        (root / "dataset_description.json").write_text(json.dumps({"Name": "tiny test", "BIDSVersion": "1.10.0", "DatasetType": "raw",
                                                                    "DatasetDOI": "doi:10.0000/test"}))
        (root / "README").write_text("Crops of the colin27 fixture for tests.\n")
        (root / "participants.tsv").write_text("participant_id\nsub-01\nsub-02\n")
    return root


def check_entity_rules(name: str) -> None:
    """A BIDS NIfTI name: alphanumeric labels, known entities in the spec's order, suffix last."""
    assert BIDS_NIFTI.fullmatch(name), name
    parsed = parse_name(name)
    assert parsed is not None, name
    keys = [k for k, _ in parsed.entities]
    assert keys == sorted(keys, key=ENTITY_ORDER.index)


def test_names_follow_the_entity_order():
    source = bids_source(Path("/d/ds/sub-01/ses-1/anat/sub-01_ses-1_acq-mp_space-T1w_desc-brain_T1w.nii.gz"))
    assert source is not None and source.uri == "bids:raw:sub-01/ses-1/anat/sub-01_ses-1_acq-mp_space-T1w_desc-brain_T1w.nii.gz"
    out = source.output_relative(res_label("x2.5"))
    assert out == Path("sub-01/ses-1/anat/sub-01_ses-1_acq-mp_space-T1w_res-x2p5_desc-brain_T1w.nii.gz")
    check_entity_rules(out.name)
    # an earlier res is replaced, not repeated; labels are alphanumeric
    again = bids_source(Path("/d/sub-01_res-x2_T1w.nii.gz"))
    assert again is not None and again.output_relative("0p5mm") == Path("sub-01/anat/sub-01_res-0p5mm_T1w.nii.gz")
    assert res_label("0.5mm") == "0p5mm" and res_label("256x256x100") == "256x256x100"
    # not BIDS: unknown entity, wrong order, no sub, a sub folder that disagrees with the name
    for name in ("sub-01_foo-1_T1w.nii.gz", "sub-01_desc-a_ses-1_T1w.nii.gz", "t1.nii.gz", "sub-01_ses-1_T1w.nrrd"):
        assert parse_name(name) is None
    assert bids_source(Path("/d/sub-02/anat/sub-01_T1w.nii.gz")) is None


def test_bids_dataset_becomes_a_derivative_dataset(tmp_path, tiny_bundle):
    raw = make_dataset(tmp_path / "raw")
    (raw / "derivatives" / "other" / "sub-01" / "anat").mkdir(parents=True)  # another pipeline's outputs: not inputs
    shutil.copy(raw / FILES[0], raw / "derivatives" / "other" / "sub-01" / "anat" / "sub-01_desc-x_T1w.nii.gz")
    out = raw / "derivatives" / "arssr-rt"
    report = run_batch([raw], out, BatchOptions(scale="2", model=str(tiny_bundle), threads=1), report_path=out / "batch_report.json")
    assert report.counts()["done"] == 2 and len(report.items) == 2

    produced = sorted(str(p.relative_to(out)) for p in out.rglob("*.nii.gz"))
    assert produced == ["sub-01/anat/sub-01_res-x2_T1w.nii.gz", "sub-02/ses-1/anat/sub-02_ses-1_acq-mprage_res-x2_T1w.nii.gz"]
    for rel in produced:
        check_entity_rules(Path(rel).name)
        img = nib.load(out / rel)
        assert img.shape == (48, 48, 48)
        assert img.header["descrip"].tobytes().rstrip(b"\0").decode() == f"arssr-rt {__version__} tiny-random-test x2 model"

    side = json.loads((out / "sub-02/ses-1/anat/sub-02_ses-1_acq-mprage_res-x2_T1w.json").read_text())
    assert side["Sources"] == ["bids:raw:sub-02/ses-1/anat/sub-02_ses-1_acq-mprage_T1w.nii.gz"]
    assert side["Resolution"].startswith("x2: 0.5x0.5x0.5 mm voxels, 48x48x48 grid")
    assert side["SkullStripped"] is False and "Description" in side
    record = side["ArssrRTBatch"]  # the tool's own fields, under one key
    assert record["output"] == "sub-02_ses-1_acq-mprage_res-x2_T1w.nii.gz" and len(record["input_sha256"]) == 64

    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["BIDSVersion"]
    assert description["GeneratedBy"][0]["Name"] == "arssr-rt" and description["GeneratedBy"][0]["Version"] == __version__
    assert "tiny-random-test" in description["GeneratedBy"][0]["Description"]
    assert description["DatasetLinks"] == {"raw": "../.."}  # OUT_DIR inside the source: a relative link
    assert description["SourceDatasets"] == [{"URL": raw.resolve().as_uri(), "DOI": "doi:10.0000/test"}]

    # a rerun skips everything (the BIDS sidecar still carries the resume record) and keeps the description
    again = run_batch([raw], out, BatchOptions(scale="2", model=str(tiny_bundle), threads=1))
    assert again.counts() == {"done": 0, "skipped": 2, "failed": 0, "pending": 0}
    assert json.loads((out / "dataset_description.json").read_text())["GeneratedBy"] == description["GeneratedBy"]
    assert read_sidecar(out / "sub-01/anat/sub-01_res-x2_T1w.json")["model"] == "tiny-random-test"

    tool = validator()
    if tool is None:
        pytest.skip("bids-validator-deno is not installed (pip install bids-validator-deno): names checked against the entity rules only")
    proc = subprocess.run([tool, str(out), "--format", "json"], capture_output=True, text=True, timeout=120)
    issues = json.loads(proc.stdout)["issues"]["issues"]
    errors = [(i["code"], i.get("location"), i.get("subCode")) for i in issues if i["severity"] == "error"]
    assert errors == [], errors
    warned = {i["code"] for i in issues if i["severity"] == "warning"}
    assert not warned & {"README_FILE_MISSING", "NIFTI_UNIT", "SIDECAR_KEY_RECOMMENDED", "JSON_KEY_RECOMMENDED"}, warned


def test_foreign_description_and_out_dir_in_the_source_are_refused(tmp_path, tiny_bundle, capsys):
    raw = make_dataset(tmp_path / "raw")
    common = ["--scale", "2", "--model", str(tiny_bundle), "--threads", "1", "-q"]
    assert main(["batch", str(raw), "-o", str(raw)] + common) == 2  # the source's own description: never replaced
    assert "is the input BIDS dataset" in capsys.readouterr().err
    out = tmp_path / "out"
    out.mkdir()
    (out / "dataset_description.json").write_text('{"Name": "someone else", "BIDSVersion": "1.9.0"}')
    assert main(["batch", str(raw), "-o", str(out)] + common) == 2
    assert "not written by arssr-rt" in capsys.readouterr().err and not list(out.rglob("*.nii.gz"))
    assert main(["batch", str(raw), "-o", str(out), "--force"] + common) == 0
    assert json.loads((out / "dataset_description.json").read_text())["GeneratedBy"][0]["Name"] == "arssr-rt"


def test_loose_bids_files_without_a_dataset_and_no_bids(tmp_path, tiny_bundle):
    loose = tmp_path / "loose"
    make_dataset(tmp_path / "raw", description=False)
    loose.mkdir()
    shutil.copy(tmp_path / "raw" / FILES[0], loose / "sub-01_T1w.nii.gz")
    shutil.copy(tmp_path / "raw" / FILES[0], loose / "t1.nii.gz")  # not a BIDS name: today's naming
    out = tmp_path / "out"
    assert main(["batch", str(loose), "-o", str(out), "--voxel-size", "0.8", "--model", str(tiny_bundle), "--threads", "1", "-q"]) == 0
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.nii.gz")) == ["sub-01/anat/sub-01_res-0p8mm_T1w.nii.gz", "t1_0.8mm.nii.gz"]
    side = json.loads((out / "sub-01/anat/sub-01_res-0p8mm_T1w.json").read_text())
    assert side["Sources"] == ["bids:raw:sub-01_T1w.nii.gz"]
    assert json.loads((out / "dataset_description.json").read_text())["DatasetLinks"] == {"raw": loose.resolve().as_uri()}
    plain = json.loads((out / "t1_0.8mm.json").read_text())
    assert "Sources" not in plain and plain["output"] == "t1_0.8mm.nii.gz"  # non-BIDS sidecar as before

    flat = tmp_path / "flat"
    assert main(["batch", str(loose / "sub-01_T1w.nii.gz"), "-o", str(flat), "--scale", "2", "--model", str(tiny_bundle),
                 "--threads", "1", "--no-bids", "-q"]) == 0
    assert sorted(os.listdir(flat)) == ["batch_report.json", "sub-01_T1w_x2.json", "sub-01_T1w_x2.nii.gz"]


def test_report_records_where_and_how_it_ran(tmp_path, tiny_bundle, monkeypatch):
    import socket

    raw = make_dataset(tmp_path / "raw")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    out = tmp_path / "out"
    assert main(["batch", str(raw), "-o", str(out), "--scale", "2", "--model", str(tiny_bundle), "--threads", "1",
                 "--shard", "1/2", "-q"]) == 0
    report = json.loads((out / "batch_report.shard-1-of-2.json").read_text())
    execution = report["execution"]
    assert (execution["runner"], execution["jobs"], execution["workers"], execution["ray_address"], execution["shard"]) == (
        "in process", 1, 1, None, "1/2")
    assert execution["host"] == socket.gethostname() and execution["pid"] > 0
    assert execution["slurm"] == {"SLURM_JOB_ID": "4242", "SLURM_ARRAY_TASK_ID": "1"}
    assert execution["versions"]["arssr-rt"] == __version__ and execution["versions"]["nibabel"] == nib.__version__
    assert [Path(i["output"]).name for i in report["items"]] == ["sub-02_ses-1_acq-mprage_res-x2_T1w.nii.gz"]
