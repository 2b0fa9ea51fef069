"""Reference model layout, training data, exact resume and DDP on 2 CPU processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from arssr_rt.training.data import PatchSampler, SamplerConfig, TrainVolume  # noqa: E402
from arssr_rt.network import PUBLISHED_SPECS, build_model, count_parameters  # noqa: E402
from arssr_rt.training.train import TrainConfig, train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
from conftest import FIXTURE_PATH as FIXTURE  # noqa: E402

# (encoder params, receptive radius) from the published layout (ARSSR.md)
PUBLISHED = {"rdn": (5_918_784, 28), "rescnn": (2_214_912, 20), "srresnet": (4_317_376, 39)}
DECODER_SHAPES = {
    "decoder.stage_one.0.weight": (256, 131), "decoder.stage_one.2.weight": (256, 256),
    "decoder.stage_one.4.weight": (256, 256), "decoder.stage_one.6.weight": (131, 256),
    "decoder.stage_two.0.weight": (256, 131), "decoder.stage_two.2.weight": (256, 256),
    "decoder.stage_two.4.weight": (256, 256), "decoder.stage_two.6.weight": (1, 256),
}
ENCODER_SHAPES = {
    "rdn": {"encoder.sfe1.weight": (64, 1, 3, 3, 3), "encoder.rdbs.7.layers.2.conv.weight": (64, 192, 3, 3, 3),
            "encoder.rdbs.0.lff.weight": (64, 256, 1, 1, 1), "encoder.gff.0.weight": (64, 512, 1, 1, 1),
            "encoder.gff.1.weight": (64, 64, 3, 3, 3), "encoder.output.weight": (128, 64, 3, 3, 3)},
    "rescnn": {"encoder.conv_start.0.weight": (64, 1, 3, 3, 3), "encoder.block3.10.weight": (64, 64, 3, 3, 3),
               "encoder.conv_end.0.weight": (128, 64, 3, 3, 3)},
    "srresnet": {"encoder.features.0.0.weight": (64, 1, 3, 3, 3), "encoder.features.18.m.1.0.weight": (64, 64, 3, 3, 3),
                 "encoder.features.19.0.weight": (64, 64, 3, 3, 3), "encoder.features.20.0.weight": (128, 64, 3, 3, 3)},
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_layout_loads_strict(name):
    model = build_model(name)
    params, radius = PUBLISHED[name]
    assert count_parameters(model.encoder) == params
    assert model.receptive_radius == radius
    sd = model.state_dict()
    for key, shape in {**DECODER_SHAPES, **ENCODER_SHAPES[name]}.items():
        assert tuple(sd[key].shape) == shape, key
    # a state dict with exactly the published keys (as plain tensors) loads with strict=True
    fresh = {k: torch.randn_like(v) for k, v in sd.items()}
    other = build_model(name)
    other.load_state_dict(fresh, strict=True)
    assert torch.equal(other.state_dict()["decoder.stage_two.6.weight"], fresh["decoder.stage_two.6.weight"])
    with pytest.raises(RuntimeError):
        build_model(name).load_state_dict({k: v for k, v in fresh.items() if k != "decoder.stage_one.0.bias"}, strict=True)


def test_decoder_output_is_nonnegative_and_uses_both_stages():
    model = build_model(PUBLISHED_SPECS["rescnn"]).eval()
    x = torch.randn(100, 131)
    y = model.decoder(x)
    assert y.shape == (100, 1) and float(y.detach().min()) >= 0.0


def test_patch_sampler_geometry_is_centre_aligned():
    """LR patch and HR targets come from one FOV: a linear ramp is reproduced exactly."""
    ramp = np.broadcast_to(np.linspace(0, 1, 80, dtype=np.float32)[:, None, None], (80, 80, 80)).copy()
    from arssr_rt.training.data import TrainVolume

    vol = TrainVolume("ramp", ramp, np.flatnonzero(ramp > 0.1))
    s = PatchSampler([vol], SamplerConfig(lr_patch=10, points=64, flips=False, margin=2), seed=3)
    lr, coords, _, target, _ = s.sample()
    # HR coordinate -> LR continuous index; a ramp is linear so trilinear of LR == HR value
    p = (coords[:, 0] + 1) / 2 * 10 - 0.5
    i0 = np.floor(p).astype(int)
    f = p - i0
    interp = lr[i0, 5, 5] * (1 - f) + lr[i0 + 1, 5, 5] * f
    np.testing.assert_allclose(interp, target, atol=2e-3)



def test_intensity_augmentation_moves_lr_and_target_by_the_same_gain_and_offset():
    """On the real fixture, a gain/offset drawn for a patch applies to its LR and its targets alike."""
    from arssr_rt.training.data import load_training_volumes

    vols = load_training_volumes([FIXTURE], pyramid=0, min_size=16)
    draws = {}
    for name, gain, offset in (("plain", (1.0, 1.0), (0.0, 0.0)), ("moved", (1.08, 1.08), (0.04, 0.04))):
        cfg = SamplerConfig(lr_patch=8, points=256, scale_min=2.5, scale_max=2.5, intensity=1.0, intensity_gain=gain, intensity_offset=offset)
        draws[name] = PatchSampler(vols, cfg, seed=11).sample()
    (lr0, c0, _, t0, _), (lr1, c1, _, t1, _) = draws["plain"], draws["moved"]
    np.testing.assert_array_equal(c0, c1)  # same crop, scale and points
    assert float(np.ptp(t0)) > 0.1  # a patch with contrast, not air
    np.testing.assert_allclose(t1, 1.08 * t0 + 0.04, atol=1e-5)
    np.testing.assert_allclose(lr1, 1.08 * lr0 + 0.04, atol=1e-4)

def _tiny_config(tmp: Path, steps: int) -> TrainConfig:
    spec = {"encoder": "rescnn", "feature_dim": 4, "encoder_args": {"width": 4, "blocks": 1, "convs": 1}, "decoder_width": 8, "decoder_depth": 2}
    sampler = {"lr_patch": 6, "points": 64, "margin": 1, "scale_min": 2.0, "scale_max": 3.0, "anisotropic": 0.3,
               "degradations": {"cubic": 0.5, "kspace": 0.25, "slice": 0.25}, "noise": 0.2, "flips": True, "foreground_bias": 0.9}
    return TrainConfig(data=[str(FIXTURE)], spec=spec, sampler=sampler, batch=2, steps=steps, lr=1e-3, pyramid=0,
                       checkpoint_every=3, val_every=1000, log_every=1, threads=1, seed=7)


def test_resume_continues_exactly(tmp_path):
    straight = train(_tiny_config(tmp_path, 6), tmp_path / "a", progress=False)
    first = train(_tiny_config(tmp_path, 3), tmp_path / "b", progress=False)
    cfg = _tiny_config(tmp_path, 6)
    resumed = train(cfg, tmp_path / "b", resume=True, progress=False)
    a = torch.load(straight, weights_only=True)["model"]
    b = torch.load(resumed, weights_only=True)["model"]
    assert first.exists()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    log = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]


def test_sampler_workers_make_the_same_step_seeded_batches_whatever_their_number(tmp_path):
    """``--sampler-workers``: a step's batch depends on (seed, rank, step) only, so 2 workers, 1
    worker and a resume mid-run give the same weights, and the batches are the in-process
    sampler's drawn from that step's generator (real fixture volume)."""
    from arssr_rt.training.prefetch import BatchSource, step_batch

    def run(workers: int, out: str, steps: int, resume: bool = False) -> Path:
        cfg = _tiny_config(tmp_path, steps)
        cfg.sampler_workers = workers
        return train(cfg, tmp_path / out, resume=resume, progress=False)

    two = torch.load(run(2, "two", 6), weights_only=True)["model"]
    run(1, "one", 3)
    one = torch.load(run(1, "one", 6, resume=True), weights_only=True)["model"]
    plain = torch.load(run(0, "plain", 6), weights_only=True)["model"]
    for k in two:
        torch.testing.assert_close(two[k], one[k], rtol=0, atol=1e-6)
    assert any(not torch.allclose(two[k], plain[k]) for k in two)  # workers = 0 keeps the sampler's one stream

    cfg = _tiny_config(tmp_path, 6)
    sampler_cfg = SamplerConfig(**cfg.sampler)
    from arssr_rt.training.data import expand_data_arg, load_training_volumes

    volumes = load_training_volumes(expand_data_arg([str(FIXTURE)]), 0)
    here = PatchSampler(volumes, sampler_cfg, seed=0)
    with BatchSource(PatchSampler(volumes, sampler_cfg, seed=0), 2, seed=7, rank=0, workers=2, start=4) as source:
        for step in (4, 5, 6):
            made = source.get(step)
            for a, b in zip(made, step_batch(here, 2, 7, 0, step)):
                np.testing.assert_array_equal(a, b)
        with pytest.raises(ValueError, match="step order"):
            source.get(9)


def test_sampler_workers_below_zero_are_refused_before_any_step(tmp_path):
    cfg = _tiny_config(tmp_path, 2)
    cfg.sampler_workers = -1
    from arssr_rt.errors import InputError

    with pytest.raises(InputError, match="--sampler-workers must be a whole number >= 0"):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "log.jsonl").exists()


def test_training_reduces_loss(tmp_path):
    cfg = _tiny_config(tmp_path, 60)
    cfg.checkpoint_every = 60
    train(cfg, tmp_path / "run", progress=False)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    first = np.mean([r["loss"] for r in log[:5]])
    last = np.mean([r["loss"] for r in log[-5:]])
    assert last < first


def test_ddp_two_cpu_processes(tmp_path):
    """torchrun with 2 gloo processes trains and writes one checkpoint."""
    spec = json.dumps({"encoder": "rescnn", "feature_dim": 4, "encoder_args": {"width": 4, "blocks": 1, "convs": 1}, "decoder_width": 8, "decoder_depth": 2})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    logs = tmp_path / "rank-logs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "--log-dir", str(logs), "--redirects", "3",
           "-m", "arssr_rt", "train", "--data", str(FIXTURE), "--out", str(tmp_path / "ddp"), "--spec", spec, "--lr-patch", "6",
           "--points", "64", "--batch", "2", "--steps", "4", "--checkpoint-every", "2", "--quiet"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    rank_errors = "\n".join(f"--- {p.relative_to(logs)}\n{p.read_text()[-1500:]}" for p in sorted(logs.rglob("stderr.log")))
    assert res.returncode == 0, res.stderr[-1500:] + "\n" + rank_errors
    state = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)
    assert state["step"] == 4
    assert isinstance(state["sampler_rng"], list) and len(state["sampler_rng"]) == 2


def test_pyramid_kinds_make_distinct_coarser_levels_of_the_real_volume():
    """Point-resampled (cubic) 2 mm levels keep more high-frequency energy than anti-aliased ones."""
    from arssr_rt.training.data import load_training_volumes

    vols = load_training_volumes([FIXTURE], pyramid=1, min_size=16, kinds=["gaussian", "cubic"])
    assert [v.name for v in vols] == [f"{FIXTURE.name}@1x", f"{FIXTURE.name}@2x/gaussian", f"{FIXTURE.name}@2x/cubic"]
    assert vols[1].data.shape == vols[2].data.shape == (32, 32, 32)
    detail = [float(np.abs(np.diff(v.data, axis=0)).mean()) for v in vols[1:]]
    assert detail[1] > 1.05 * detail[0]  # measured 1.10 on this crop
    with pytest.raises(ValueError, match="pyramid kind"):
        load_training_volumes([FIXTURE], pyramid=1, min_size=16, kinds=["bicubic"])


def test_data_weights_set_how_often_each_volume_is_drawn():
    from arssr_rt.training.data import TrainVolume

    dark = np.full((40, 40, 40), 0.2, dtype=np.float32)
    bright = np.full((40, 40, 40), 0.8, dtype=np.float32)
    vols = [TrainVolume("dark", dark, np.arange(dark.size), 9.0), TrainVolume("bright", bright, np.arange(bright.size), 1.0)]
    s = PatchSampler(vols, SamplerConfig(lr_patch=6, points=8, scale_min=2.0, scale_max=2.0, flips=False), seed=0)
    drawn = [float(s.sample()[3].mean()) for _ in range(400)]
    share_dark = np.mean(np.isclose(drawn, 0.2, atol=0.05))
    assert 0.85 <= share_dark <= 0.95


def test_bf16_autocast_training_learns_and_keeps_fp32_master_weights(tmp_path):
    cfg = _tiny_config(tmp_path, 60)
    cfg.precision, cfg.checkpoint_every = "bf16", 60
    ckpt = train(cfg, tmp_path / "bf16", progress=False)
    state = torch.load(ckpt, weights_only=True)
    assert all(v.dtype == torch.float32 for v in state["model"].values() if v.is_floating_point())
    log = [json.loads(line) for line in (tmp_path / "bf16" / "log.jsonl").read_text().splitlines()]
    assert np.mean([r["loss"] for r in log[-5:]]) < np.mean([r["loss"] for r in log[:5]])


def test_bf16_on_a_cpu_without_native_bf16_warns_once(tmp_path, monkeypatch, capsys):
    """Emulated bf16 is ~30x slower than fp32 (measured on AVX2): the run says so and names the fix."""
    import arssr_rt.training.train as train_module

    for native, warned in ((False, True), (True, False)):
        monkeypatch.setattr(train_module, "cpu_has_native_bf16", lambda: native)
        cfg = _tiny_config(tmp_path, 1)
        cfg.precision = "bf16"
        train(cfg, tmp_path / f"warn{native}", progress=False)
        err = capsys.readouterr().err
        assert ("no native bf16" in err and "--precision fp32" in err) == warned, err


@pytest.mark.parametrize("field,value,reason", [("device", "cuda", "no CUDA GPU"), ("device", "tpu", "cpu or cuda"),
                                                ("precision", "fp8", "--precision")])
def test_bad_device_or_precision_is_one_line_before_any_step(tmp_path, field, value, reason):
    from arssr_rt.errors import InputError

    if value == "cuda" and torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible here")
    cfg = _tiny_config(tmp_path, 2)
    setattr(cfg, field, value)
    with pytest.raises(InputError, match=reason):
        train(cfg, tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad" / "checkpoint.pt").exists()


@pytest.mark.gpu
def test_cuda_training_resumes_on_cpu(tmp_path):
    """A GPU run's checkpoint is device-free: it resumes on the CPU and keeps training."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    cfg = _tiny_config(tmp_path, 4)
    cfg.device, cfg.precision = "cuda", "bf16"
    train(cfg, tmp_path / "gpu", progress=False)
    state = torch.load(tmp_path / "gpu" / "checkpoint.pt", weights_only=True)
    assert all(v.device.type == "cpu" for v in state["model"].values())
    cfg = _tiny_config(tmp_path, 6)
    train(cfg, tmp_path / "gpu", resume=True, progress=False)
    assert torch.load(tmp_path / "gpu" / "checkpoint.pt", weights_only=True)["step"] == 6


def test_a_real_run_exports_and_upsamples(tmp_path, capsys):
    """train (a few CPU steps) -> `arssr-rt export runs/x/checkpoint.pt` -> upsample, as the README says."""
    from arssr_rt.cli import main

    ckpt = train(_tiny_config(tmp_path, 3), tmp_path / "run", progress=False)
    bundle, out = tmp_path / "bundle", tmp_path / "up.nii.gz"
    assert main(["export", str(ckpt), "-o", str(bundle)]) == 0, capsys.readouterr().err
    meta = json.loads((bundle / "model.json").read_text())
    assert meta["training"]["step"] == 3 and meta["spec"]["feature_dim"] == 4
    assert main(["upsample", str(FIXTURE), "-o", str(out), "--scale", "2", "--model", str(bundle), "--quiet"]) == 0, capsys.readouterr().err
    import nibabel as nib

    img = nib.load(out)
    assert img.shape == (128, 128, 128)
    np.testing.assert_allclose(np.abs(np.diag(img.affine)[:3]), 0.5)
    assert np.isfinite(np.asarray(img.dataobj, dtype=np.float32)).all()


def test_hr_noise_is_rician_on_the_target_and_reaches_the_lr_through_the_degradation():
    """hr_noise adds the noise before degrading: air in the target and in the LR alike has the
    Rayleigh mean sigma * sqrt(pi / 2); without it both stay exactly 0."""
    air = np.zeros((40, 40, 40), dtype=np.float32)
    vol = TrainVolume("air", air, np.arange(0))
    cfg = dict(lr_patch=8, points=2048, scale_min=2.0, scale_max=2.0, flips=False, degradations={"cubic": 1.0}, margin=0)
    lr, _, _, target, _ = PatchSampler([vol], SamplerConfig(**cfg), seed=1).sample()
    assert not target.any() and not lr.any()
    sigma = 0.02
    lr, _, _, target, _ = PatchSampler([vol], SamplerConfig(**cfg, hr_noise=1.0, hr_noise_sigma=(sigma, sigma)), seed=1).sample()
    rayleigh_mean = sigma * np.sqrt(np.pi / 2)
    assert abs(target.mean() / rayleigh_mean - 1) < 0.05
    assert abs(lr.mean() / rayleigh_mean - 1) < 0.05  # cubic keeps the mean: the LR is made from the noisy HR
    assert lr.std() < target.std()  # and averaged over it, not noised separately


def test_init_grows_the_rescnn_encoder_by_blocks_that_start_as_identity():
    """A deeper ResCNN (blocks 2 -> 3) started from a trained one keeps every trained weight,
    predicts what it did to ~1e-3, and its new block trains (its first convolution gets gradients)."""
    from arssr_rt.training.train import load_init
    from arssr_rt.errors import InputError

    spec = {"encoder": "rescnn", "feature_dim": 8, "encoder_args": {"width": 8, "blocks": 2, "convs": 2},
            "decoder_width": 16, "decoder_depth": 2, "coords": "phase", "decoder": "modulated"}
    torch.manual_seed(0)
    base = build_model(spec).eval()
    grown = build_model({**spec, "encoder_args": {"width": 8, "blocks": 3, "convs": 2}}).eval()
    load_init(grown, base.state_dict())
    for name, value in base.state_dict().items():
        torch.testing.assert_close(grown.state_dict()[name], value, rtol=0, atol=0)
    x = torch.rand(1, 1, 12, 12, 12)
    with torch.no_grad():
        now, before = grown.encoder(x), base.encoder(x)
    assert 0 < float((now - before).abs().max()) < 1e-2 * float(before.abs().max())
    grown.train()
    grown.encoder(x).square().mean().backward()
    assert grown.encoder.block3[0].weight.grad.abs().sum() > 0
    with pytest.raises(InputError, match="does not fit"):  # a missing trained block is not "new"
        load_init(build_model({**spec, "encoder_args": {"width": 8, "blocks": 3, "convs": 2}}),
                  {k: v for k, v in base.state_dict().items() if not k.startswith("encoder.block1.")})
