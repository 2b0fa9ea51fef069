"""--adapt: scan-specific fine-tuning for thick-slice scans (plan, determinism, saved bundle,
--keep-acquired, batch, the missing-torch line). Real data: the shipped Colin27 fixture acquired
as 4 mm box-profile slices; a few steps each, so the file stays well under a minute and a half."""

from __future__ import annotations

import json
import sys

import nibabel as nib
import numpy as np
import pytest

from arssr_rt.adapt.plan import AdaptOptions, plan_adaptation
from arssr_rt.degrade import degrade
from arssr_rt.errors import InputError
from arssr_rt.geometry import output_affine

from conftest import FIXTURE_PATH

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def thick(tmp_path_factory):
    """The fixture as a 64x64x16 scan of 1 x 1 x 4 mm box-profile slices (float32), and its slices."""
    img = nib.load(str(FIXTURE_PATH))
    hr = np.asarray(img.get_fdata(dtype=np.float32))
    lr = degrade(hr, (1, 1, 4), "slice")
    path = tmp_path_factory.mktemp("thick") / "thick.nii.gz"
    nib.Nifti1Image(lr.astype(np.float32), output_affine(img.affine, hr.shape, lr.shape)).to_filename(path)
    return path, lr


def _load(path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj, dtype=np.float64)


# ------------------------------------------------------------------ plan


def test_thick_axis_ratios_and_profiles():
    plan = plan_adaptation((0.78125, 0.78125, 6.5), (256, 256, 25), AdaptOptions())
    assert plan.thick_axis == 2 and plan.in_plane == (0, 1)
    assert plan.ratios[0] == pytest.approx(6.5 / 0.78125) and plan.profile == "box" and plan.gap == 0
    plan = plan_adaptation((0.9, 3.75, 0.9375), (192, 64, 256), AdaptOptions(profile="3"))
    assert plan.thick_axis == 1 and plan.ratios == {0: pytest.approx(3.75 / 0.9), 2: pytest.approx(4.0)}
    assert plan.profile == "gaussian" and plan.gap == pytest.approx(1 - 3 / 3.75)  # FWHM 3 mm of a 3.75 mm spacing
    with pytest.raises(InputError, match="thick-slice scan"):
        plan_adaptation((1.0, 1.0, 1.2), (64, 64, 64), AdaptOptions())
    assert plan_adaptation((1.0, 1.0, 1.2), (64, 64, 64), AdaptOptions(thick_axis=2)).ratios[0] == pytest.approx(1.2)
    with pytest.raises(InputError, match="not larger"):
        plan_adaptation((1.0, 1.0, 4.0), (64, 64, 16), AdaptOptions(thick_axis=0))
    with pytest.raises(InputError, match="overlapping"):
        plan_adaptation((1.0, 1.0, 4.0), (64, 64, 16), AdaptOptions(profile="5"))
    with pytest.raises(InputError, match="drop --slice-gap"):
        plan_adaptation((1.0, 1.0, 4.0), (64, 64, 16), AdaptOptions(profile="3", gap=0.2))
    with pytest.raises(InputError, match="--slice-profile"):
        plan_adaptation((1.0, 1.0, 4.0), (64, 64, 16), AdaptOptions(profile="triangle"))


def test_pairs_put_the_degraded_axis_where_the_thick_axis_is(thick):
    """Every LR patch is short (acquired) along the volume's thick-axis position only, and its
    targets are the HR crop's voxels: the model learns the mapping in the array position it uses."""
    from arssr_rt.adapt.pairs import PairConfig, ScanPairSampler

    _, lr = thick
    plan = plan_adaptation((1.0, 1.0, 4.0), lr.shape, AdaptOptions())
    sampler = ScanPairSampler(lr / lr.max(), plan, PairConfig(lr_thick=6, fine=20, native=6, points=64), seed=1)
    for _ in range(4):
        b = sampler.batch(2)
        assert b.lr.shape[2:][2] == 6 and sorted(b.lr.shape[2:4]) == [6, 20] and b.hr_shape[2] == 24
        assert b.coords.shape == (2, 64, 3) and b.target.shape == (2, 64, 1) and np.all(np.abs(b.coords) < 1)
        hr_of = [b.hr_shape[k] for k in range(3)]
        assert np.all(b.picks < np.array(hr_of)) and np.all(b.picks >= 0)


def test_cli_refuses_an_isotropic_scan_before_any_work(cli, tmp_path):
    out = tmp_path / "o.nii.gz"
    code, err = cli("upsample", FIXTURE_PATH, "--scale", "1,1,2", "--adapt", "-o", out)
    assert code == 2 and err.count("\n") == 1 and "thick-slice" in err and not out.exists()
    code, err = cli("upsample", FIXTURE_PATH, "--scale", "2", "--adapt-steps", "3", "-o", out)
    assert code == 2 and "--adapt only" in err
    code, err = cli("upsample", FIXTURE_PATH, "--scale", "2", "--adapt", "--adapt-steps", "0", "-o", out)
    assert code == 2 and "--adapt-steps must be >= 1" in err and not out.exists()


# ------------------------------------------------------------------ end to end


def test_seed_makes_it_deterministic_and_the_saved_bundle_reproduces_it(cli, thick, tmp_path):
    src, _ = thick
    common = ("--voxel-size", "1", "--adapt", "--adapt-steps", "3", "--threads", "1", "--dtype", "float32", "-q")
    a, b, c = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz", tmp_path / "c.nii.gz"
    bundle = tmp_path / "adapted_model"
    assert cli("upsample", src, *common, "-o", a, "--save-adapted", bundle)[0] == 0
    assert cli("upsample", src, *common, "-o", b)[0] == 0
    assert cli("upsample", src, *common, "--seed", "1", "-o", c)[0] == 0
    first, second, other = _load(a), _load(b), _load(c)
    assert first.shape == (64, 64, 64)
    assert np.array_equal(first, second)  # same seed, same steps, same threads: bit-identical
    assert not np.array_equal(first, other)
    # the saved bundle is a normal bundle: --model loads it and, with the adapted run's 2 passes
    # (its default --adapt-tta; the thick-axis flip is plain --tta 2's too), gives its output again
    meta = json.loads((bundle / "model.json").read_text())
    assert meta["training"]["steps"] == 3 and meta["training"]["thick_axis"] == 2 and meta["name"].endswith("-adapted-thick")
    d = tmp_path / "d.nii.gz"
    assert cli("upsample", src, "--voxel-size", "1", "--model", bundle, "--backend", "torch", "--dtype", "float32",
               "--threads", "1", "--tta", "2", "-q", "-o", d)[0] == 0
    np.testing.assert_allclose(_load(d), first, atol=1e-5 * float(np.ptp(first)))
    e = tmp_path / "e.nii.gz"
    assert cli("upsample", src, "--voxel-size", "1", "--model", bundle, "--backend", "onnxruntime", "--dtype", "float32",
               "--tta", "2", "-q", "-o", e)[0] == 0
    np.testing.assert_allclose(_load(e), first, atol=1e-4 * float(np.ptp(first)))
    # no overwrite of the bundle without --force, refused before the adaptation runs
    code, err = cli("upsample", src, *common, "-o", tmp_path / "f.nii.gz", "--save-adapted", bundle)
    assert code == 2 and "--force" in err and not (tmp_path / "f.nii.gz").exists()


def test_adapt_with_keep_acquired_gives_back_each_slice(cli, thick, tmp_path):
    src, lr = thick
    out = tmp_path / "k.nii.gz"
    code, err = cli("upsample", src, "--scale", "1,1,4", "--adapt", "--adapt-steps", "2", "--keep-acquired",
                    "--dtype", "float32", "--threads", "1", "-q", "-o", out)
    assert code == 0, err
    means = _load(out).reshape(64, 64, 16, 4).mean(axis=3)
    assert np.abs(means - lr).max() < 1e-4 * float(lr.max() - lr.min())


def test_missing_torch_is_one_line(cli, thick, tmp_path, monkeypatch):
    src, _ = thick
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    code, err = cli("upsample", src, "--voxel-size", "1", "--adapt", "-o", tmp_path / "t.nii.gz")
    assert code != 0 and err.count("\n") == 1
    assert "arssr-rt upsample --adapt needs the train extra: pip install 'arssr-rt[train]'" in err
    assert not (tmp_path / "t.nii.gz").exists()


def test_batch_adapts_each_input(cli, thick, tmp_path):
    src, _ = thick
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    img = nib.load(str(src))
    nib.Nifti1Image(np.asarray(img.dataobj), img.affine).to_filename(in_dir / "one.nii.gz")
    nib.Nifti1Image(np.asarray(img.dataobj)[::-1].copy(), img.affine).to_filename(in_dir / "two.nii.gz")  # another scan
    out = tmp_path / "out"
    code, err = cli("batch", in_dir, "-o", out, "--voxel-size", "1", "--adapt", "--adapt-steps", "2", "--threads", "1",
                    "--dtype", "float32", "-q")
    assert code == 0, err
    report = json.loads((out / "batch_report.json").read_text())
    assert [i["status"] for i in report["items"]] == ["done", "done"]
    one, two = _load(out / "one_1mm.nii.gz"), _load(out / "two_1mm.nii.gz")
    assert one.shape == two.shape == (64, 64, 64)
    assert json.loads((out / "one_1mm.json").read_text())["options"]["adapt"]["steps"] == 2


def test_dense_query_equals_the_models_trilinear_query(thick):
    """The fine-tuning's matrix-per-axis feature query gives what model.forward (grid_sample) gives."""
    import torch

    from arssr_rt.adapt.finetune import dense_forward
    from arssr_rt.adapt.pairs import PairConfig, ScanPairSampler
    from arssr_rt.backends.torch_backend import load_bundle_model
    from arssr_rt.bundle import resolve_model

    _, lr = thick
    plan = plan_adaptation((1.0, 1.0, 4.0), lr.shape, AdaptOptions())
    pairs = ScanPairSampler(lr / lr.max(), plan, PairConfig(points=256), seed=2).batch(2)
    model = load_bundle_model(resolve_model(None)).eval()
    with torch.no_grad():
        ref = model(*(torch.from_numpy(a) for a in (pairs.lr, pairs.coords, pairs.dec, pairs.base)))
        got = dense_forward(model, pairs)
    assert float((ref - got).abs().max()) < 1e-5


def test_evaluate_adapt_usage_errors_come_before_any_work(cli, tmp_path):
    code, err = cli("evaluate", FIXTURE_PATH, "-s", "1,1,4", "-d", "cubic", "--adapt")
    assert code == 2 and err.count("\n") == 1 and "--degradation slice" in err
    code, err = cli("evaluate", FIXTURE_PATH, "-s", "1,1,4", "-d", "slice", "--adapt-steps", "3")
    assert code == 2 and "--adapt only" in err
    code, err = cli("evaluate", FIXTURE_PATH, "-s", "1,1,4", "-d", "slice", "--adapt", "--baseline-only")
    assert code == 2 and "--baseline-only" in err


def test_adapt_mix_interpolates_the_weights_and_the_saved_bundle_reproduces_it(cli, thick, tmp_path):
    """--adapt-mix a: a * adapted + (1 - a) * start (WiSE-FT), exactly; the mix is written into
    the saved bundle, whose output is the mixed run's."""
    import torch

    from arssr_rt.adapt.session import adapt_volume
    from arssr_rt.backends.torch_backend import load_bundle_model
    from arssr_rt.bundle import resolve_model
    from arssr_rt.readers import read_volume

    src, _ = thick
    volume, bundle = read_volume(src), resolve_model("default")
    start = load_bundle_model(bundle).state_dict()
    full = adapt_volume(volume, bundle, AdaptOptions(steps=3), threads=1).model.state_dict()
    half = adapt_volume(volume, bundle, AdaptOptions(steps=3, mix=0.25), threads=1).model.state_dict()
    moved = [k for k in start if not torch.equal(start[k], full[k])]
    assert moved  # three steps moved the weights, so the mix is not trivially equal
    for k in start:
        torch.testing.assert_close(half[k], 0.25 * full[k] + 0.75 * start[k], rtol=1e-6, atol=1e-7)  # float32 rounding

    common = ("--voxel-size", "1", "--dtype", "float32", "--threads", "1", "--backend", "torch", "-q")
    plain, mixed, reused, bundle_dir = (tmp_path / "plain.nii.gz", tmp_path / "mix.nii.gz", tmp_path / "reused.nii.gz",
                                        tmp_path / "mixed_model")
    assert cli("upsample", src, *common, "-o", plain)[0] == 0
    assert cli("upsample", src, *common, "--adapt", "--adapt-steps", "3", "--adapt-mix", "0.25", "-o", mixed,
               "--save-adapted", bundle_dir)[0] == 0
    assert json.loads((bundle_dir / "model.json").read_text())["training"]["mix"] == 0.25
    assert cli("upsample", src, *common, "--model", bundle_dir, "--tta", "2", "-o", reused)[0] == 0  # the adapted run's passes
    span = float(np.ptp(_load(plain)))
    np.testing.assert_allclose(_load(reused), _load(mixed), atol=1e-5 * span)
    assert np.abs(_load(mixed) - _load(plain)).max() > 1e-4 * span  # the quarter of the adaptation shows


def test_adapt_mix_zero_is_refused_before_any_work(cli, thick, tmp_path):
    """A mix of 0 is the starting model: the fine-tuning would run only to be discarded."""
    src, _ = thick
    out = tmp_path / "o.nii.gz"
    code, err = cli("upsample", src, "--voxel-size", "1", "--adapt", "--adapt-mix", "0", "-o", out)
    assert code == 2 and err.count("\n") == 1 and "without --adapt" in err and not out.exists()


@pytest.mark.parametrize("value", ["1.5", "-0.1", "nan"])
def test_adapt_mix_outside_zero_one_is_one_line_before_any_work(cli, thick, tmp_path, value):
    src, _ = thick
    out = tmp_path / "o.nii.gz"
    code, err = cli("upsample", src, "--voxel-size", "1", "--adapt", "--adapt-mix", value, "-o", out)
    assert code == 2 and err.count("\n") == 1 and "--adapt-mix" in err and not out.exists()
    code, err = cli("upsample", src, "--voxel-size", "1", "--adapt-mix", "0.5", "-o", out)
    assert code == 2 and "--adapt only" in err and not out.exists()


@pytest.mark.parametrize("value", [True, False, "0.5", None])
def test_adapt_mix_from_the_api_must_be_a_number(value):
    """A bool is an int to Python: True would have passed as a mix of 1 and False as 0."""
    from arssr_rt.adapt.plan import AdaptOptions, check_adapt_options

    with pytest.raises(InputError, match="--adapt-mix"):
        check_adapt_options(AdaptOptions(mix=value))
    check_adapt_options(AdaptOptions(mix=0.5))
