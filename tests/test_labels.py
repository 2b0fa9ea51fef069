"""Label maps are refused, not interpolated as intensities; intensity images are never taken
for label maps. The label maps are made from the real fixture and Colin27 (mask, tissue
classes, a parcellation with FreeSurfer-like codes); the CLI runs use the embedded model."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import listing

from arssr_rt.cli import main
from arssr_rt.errors import InputError
from conftest import REAL_VOLUMES
from arssr_rt.labels import LABEL_EQUAL_NEIGHBOURS, check_intensity_image, equal_neighbour_fraction, label_map_reason
from arssr_rt.nifti_io import load_volume
from arssr_rt.pipeline import upsample



@pytest.fixture(scope="module")
def colin(fixture_image):
    return np.asarray(fixture_image.dataobj), fixture_image.affine


def label_maps(t1: np.ndarray) -> dict[str, np.ndarray]:
    """Masks and segmentations of a real T1, the way tools store them."""
    seg = np.digitize(t1, [40, 75, 100]).astype(np.uint8)  # background/CSF/GM/WM-like classes
    octant = np.zeros(t1.shape, np.int64)
    for axis in range(3):
        octant += (np.indices(t1.shape)[axis] > t1.shape[axis] // 2) << axis
    codes = np.array([0, 2, 3, 4, 41, 42, 43, 1001, 1002, 1003, 2001, 2002, 2003, 2035, 3001, 3002])
    parc = np.where(seg > 0, codes[(seg.astype(np.int64) * 8 + octant) % len(codes)], 0).astype(np.int16)
    return {"mask_uint8": (t1 > 60).astype(np.uint8), "tissue_classes": seg, "parcellation_int16": parc,
            "parcellation_float32": parc.astype(np.float32)}


@pytest.mark.parametrize("name", ["mask_uint8", "tissue_classes", "parcellation_int16", "parcellation_float32"])
def test_label_maps_are_recognised(colin, name):
    data = label_maps(colin[0])[name].astype(np.float32)
    assert equal_neighbour_fraction(data) >= LABEL_EQUAL_NEIGHBOURS
    reason = label_map_reason(data)
    assert reason is not None and "neighbouring voxels equal" in reason
    with pytest.raises(InputError, match="label map.*--as-intensity"):
        check_intensity_image("seg.nii.gz", data)


def test_the_fixture_is_an_intensity_image(colin):
    data = colin[0].astype(np.float32)
    assert label_map_reason(data) is None
    assert equal_neighbour_fraction(data) < 0.3


@pytest.mark.parametrize("name", REAL_VOLUMES)
def test_real_intensity_volumes_are_never_label_maps(name, shared):
    path = shared(name)
    if path.suffix == ".nrrd":
        pytest.importorskip("nrrd")
    from arssr_rt.readers import read_volume

    volume = read_volume(path)
    assert label_map_reason(volume.data, volume.header) is None


def test_a_nearest_neighbour_resliced_t1_is_not_a_label_map(colin):
    """Blocky (each voxel repeated 2x per axis) but still an intensity image: 50-57 % equal pairs."""
    t1 = colin[0].astype(np.float32)
    blocky = np.repeat(np.repeat(np.repeat(t1[::2, ::2, ::2], 2, 0), 2, 1), 2, 2)
    assert label_map_reason(blocky) is None


def test_intent_label_is_refused_even_for_real_intensities(colin, tmp_path):
    img = nib.Nifti1Image(colin[0], colin[1])
    img.header.set_intent("label")
    path = tmp_path / "t1_label_intent.nii.gz"
    img.to_filename(path)
    volume = load_volume(path)
    assert "NIFTI_INTENT_LABEL" in label_map_reason(volume.data, volume.header)
    img.header.set_intent("neuroname")
    assert "NEURONAME" in label_map_reason(volume.data, img.header)
    img.header.set_intent("none")
    assert label_map_reason(volume.data, img.header) is None


def test_python_api_refuses_and_the_override_runs(colin):
    seg = label_maps(colin[0])["tissue_classes"][:24, :24, :24]
    with pytest.raises(InputError, match="label map"):
        upsample(seg, colin[1], scale=2, backend="onnxruntime")
    out, _ = upsample(seg, colin[1], scale=2, backend="onnxruntime", as_intensity=True)
    assert out.shape == (48, 48, 48)


# ----- the CLI: upsample, batch and info ----------------------------------------------------------


@pytest.fixture
def label_files(colin, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    seg = folder / "seg.nii.gz"
    nib.Nifti1Image(label_maps(colin[0])["tissue_classes"], colin[1]).to_filename(seg)
    intent = folder / "t1_intent_label.nii.gz"
    img = nib.Nifti1Image(colin[0], colin[1])
    img.header.set_intent("label")
    img.to_filename(intent)
    return seg, intent


def test_upsample_refuses_label_maps_in_one_line(label_files, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    # a label intent alone now defaults to --interp nearest (tests/test_interp_cli.py); asked for the model, it is refused
    for path, extra in ((label_files[0], []), (label_files[1], ["--interp", "model"])):
        code = main(["upsample", str(path), "-s", "2", "-o", str(out / "r.nii.gz"), "-q", "-b", "onnxruntime", *extra])
        err = capsys.readouterr().err
        assert code == InputError.exit_code and "Traceback" not in err, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"arssr-rt: error: {path}: looks like a label map"), err
        assert "--as-intensity" in lines[0] and "--interp nearest" in lines[0]
        assert listing(out) == []


def test_upsample_as_intensity_overrides(label_files, tmp_path, capsys):
    seg = label_files[0]
    target = tmp_path / "r.nii.gz"
    code = main(["upsample", str(seg), "-s", "1.5", "-o", str(target), "-q", "-b", "onnxruntime", "--as-intensity"])
    assert code == 0, capsys.readouterr().err
    assert nib.load(target).shape == (96, 96, 96)


def test_batch_reports_label_maps_as_failed(label_files, tmp_path, capsys):
    """As in upsample (the same code): a label-looking image is refused; a NIfTI whose intent
    says label is resampled with nearest, said so in its report message, its label set kept."""
    out = tmp_path / "sr"
    code = main(["batch", str(label_files[0].parent), "-o", str(out), "-s", "2", "-q", "-b", "onnxruntime"])
    capsys.readouterr()
    assert code == 1
    report = {Path(i["input"]).name: i for i in json.loads((out / "batch_report.json").read_text())["items"]}
    assert report["seg.nii.gz"]["status"] == "failed" and "label map" in report["seg.nii.gz"]["message"]
    intent = report["t1_intent_label.nii.gz"]
    assert intent["status"] == "done" and "using --interp nearest" in intent["message"]
    produced = np.asarray(nib.load(intent["output"]).dataobj)
    assert set(np.unique(produced)) <= set(np.unique(np.asarray(nib.load(label_files[1]).dataobj)))
    assert sorted(p.name for p in out.rglob("*.nii.gz")) == ["t1_intent_label_x2.nii.gz"]


def test_info_says_it_is_a_label_map(label_files, capsys):
    assert main(["info", str(label_files[1]), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert "NIFTI_INTENT_LABEL" in facts["label_map"]
    assert main(["info", str(label_files[0])]) == 0
    assert "looks like a label map" in capsys.readouterr().out


@pytest.mark.parametrize("classes", [3, 4, 6, 8])
def test_fragmented_few_class_segmentations_are_label_maps(colin, classes):
    """Classes cut at intensity quantiles of the real T1 are fragmented (below the neighbour
    criterion from 4 classes on) but have only a handful of values."""
    t1 = colin[0].astype(np.float32)
    seg = np.digitize(t1, np.quantile(t1, np.linspace(0, 1, classes + 1)[1:-1])).astype(np.uint8)
    if classes >= 4:
        assert equal_neighbour_fraction(seg) < LABEL_EQUAL_NEIGHBOURS  # the old criterion alone missed these
    assert "distinct whole-number values" in label_map_reason(seg) or classes < 4


def test_a_coarsely_quantised_intensity_image_is_not_a_few_class_map(colin):
    """17+ grey levels of a real T1 stay an intensity image (the limit is 16 classes)."""
    t1 = colin[0].astype(np.float32)
    levels = np.round((t1 - t1.min()) / (t1.max() - t1.min()) * 40)
    assert len(np.unique(levels)) > 16
    assert label_map_reason(levels) is None or "neighbouring" in label_map_reason(levels)
