"""Distillation (``train --teacher ... --distill W``): the teachers see the student's exact batch,
pull the student towards their mean, and cannot change silently across a resume."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from arssr_rt.errors import InputError  # noqa: E402
from arssr_rt.network import ModelSpec  # noqa: E402
from arssr_rt.training.distill import check_fits, load_teachers  # noqa: E402
from arssr_rt.training.train import TrainConfig, train  # noqa: E402

from conftest import FIXTURE_PATH as FIXTURE  # noqa: E402

SPEC = {"encoder": "rescnn", "feature_dim": 4, "encoder_args": {"width": 4, "blocks": 1, "convs": 1}, "decoder_width": 8,
        "decoder_depth": 2, "coords": "phase", "decoder": "modulated"}


def _config(steps: int, seed: int = 7, **kw) -> TrainConfig:
    sampler = {"lr_patch": 6, "points": 64, "margin": 1, "scale_min": 2.0, "scale_max": 3.0, "anisotropic": 0.3,
               "degradations": {"cubic": 0.5, "kspace": 0.25, "slice": 0.25}, "noise": 0.2, "flips": True, "foreground_bias": 0.9}
    return TrainConfig(data=[str(FIXTURE)], spec=dict(SPEC), sampler=sampler, batch=2, steps=steps, lr=1e-3, pyramid=0,
                       checkpoint_every=1000, val_every=1000, log_every=1, threads=1, seed=seed, **kw)


def _exported(tmp: Path, name: str, steps: int, seed: int) -> tuple[Path, Path]:
    """(checkpoint, bundle folder) of a tiny model trained ``steps`` steps on the real fixture."""
    from arssr_rt.cli import main

    ckpt = train(_config(steps, seed=seed), tmp / f"run-{name}", progress=False)
    bundle = tmp / f"bundle-{name}"
    assert main(["export", str(ckpt), "-o", str(bundle), "--force"]) == 0
    return ckpt, bundle


def _weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)["model"]


def test_a_student_taught_only_by_its_own_copy_does_not_move(tmp_path):
    """At distill 1 with the student's own exported weights as the teacher, the teacher's target
    equals the prediction on every batch (same patch, points, decoder coordinates), so the loss
    and every gradient are exactly 0 and 4 Adam steps leave every weight where it was. A teacher
    fed anything else than the student's batch would move it."""
    ckpt, bundle = _exported(tmp_path, "a", 3, seed=7)
    cfg = _config(4, init=str(ckpt), teachers=[str(bundle)], distill=1.0)
    after = _weights(train(cfg, tmp_path / "self", progress=False))
    before = _weights(ckpt)
    for k in before:
        torch.testing.assert_close(after[k], before[k], rtol=0, atol=0)
    moved = _weights(train(replace(cfg, distill=0.5), tmp_path / "half", progress=False))
    assert any(not torch.equal(moved[k], before[k]) for k in before)


def test_distillation_pulls_a_fresh_student_towards_its_teacher(tmp_path):
    """A fresh student trained only towards a trained teacher ends closer to the teacher's
    predictions on held-aside batches of the real volume than it started."""
    from arssr_rt.network import build_model
    from arssr_rt.training.data import PatchSampler, SamplerConfig, expand_data_arg, load_training_volumes

    _, bundle = _exported(tmp_path, "teacher", 30, seed=3)
    student_ckpt = train(_config(40, teachers=[str(bundle)], distill=1.0, seed=11), tmp_path / "student", progress=False)
    teachers = load_teachers([str(bundle)], ModelSpec.from_dict(SPEC), torch.device("cpu"))
    cfg = _config(1)
    sampler = PatchSampler(load_training_volumes(expand_data_arg(cfg.data), 0), replace(SamplerConfig(**cfg.sampler), coords="phase"), seed=99)

    def gap(state: dict | None) -> float:
        torch.manual_seed(11)
        model = build_model(SPEC)  # the student's seed-11 initialisation when state is None
        if state is not None:
            model.load_state_dict(state)
        model.eval()
        gaps = []
        for _ in range(4):
            lr, coords, dec, _, base = (torch.from_numpy(a) for a in sampler.batch(2))
            with torch.no_grad():
                gaps.append(float((model(lr, coords, dec, base) - teachers.predictions(lr, coords, dec, base, bf16=False)[0]).abs().mean()))
        return float(np.mean(gaps))

    start, end = gap(None), gap(_weights(student_ckpt))
    assert end < 0.7 * start, (start, end)


def test_teachers_the_batches_cannot_serve_are_refused():
    student = ModelSpec.from_dict(SPEC)
    check_fits(student, ModelSpec.from_dict({**SPEC, "decoder_width": 16}), "wider")  # another size is fine
    with pytest.raises(InputError, match="global coordinates"):
        check_fits(student, ModelSpec.from_dict({**SPEC, "coords": "global", "decoder": "arssr"}), "t")
    with pytest.raises(InputError, match="lanczos8 base"):
        check_fits(student, ModelSpec.from_dict({**SPEC, "base": "lanczos8"}), "t")
    check_fits(ModelSpec.from_dict({**SPEC, "base": "lanczos8"}), student, "t")  # a base-free teacher serves a residual student


@pytest.mark.parametrize("distill, teachers", [(0.5, []), (0.0, ["default"]), (1.5, ["default"])])
def test_distill_without_teachers_or_out_of_range_is_one_line_before_any_step(tmp_path, distill, teachers):
    with pytest.raises(InputError, match="distill must be in"):
        train(_config(2, teachers=teachers, distill=distill), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "log.jsonl").exists()


def test_a_resumed_run_refuses_teachers_whose_weights_changed(tmp_path):
    _, bundle = _exported(tmp_path, "t", 3, seed=7)
    cfg = _config(6, teachers=[str(bundle)], distill=0.5, stop_at=2)
    train(cfg, tmp_path / "run", progress=False)
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["teachers"]
    assert saved[0]["name"] == str(bundle) and len(saved[0]["weights_sha256"]) == 64
    _, other = _exported(tmp_path, "other", 5, seed=8)
    shutil.rmtree(bundle)
    shutil.copytree(other, bundle)  # same folder, other weights
    with pytest.raises(InputError, match="the run was distilled from"):
        train(replace(cfg, stop_at=None), tmp_path / "run", resume=True, progress=False)


def test_best_mode_takes_per_patch_the_teacher_closest_to_the_truth():
    """Two fixed teachers, one exact on patch 0 and one on patch 1: "best" returns each patch's
    exact teacher, "mean" their average."""
    from arssr_rt.training.distill import Teachers

    class Fixed(torch.nn.Module):
        def __init__(self, values):
            super().__init__()
            self.values = values

        def forward(self, lr, coords, dec, base):
            return self.values

    truth = torch.tensor([[[1.0], [2.0]], [[3.0], [4.0]]])  # (B=2, K=2, 1)
    good_on_0 = truth.clone()
    good_on_0[1] += 0.5
    good_on_1 = truth.clone()
    good_on_1[0] -= 0.25
    t = Teachers([Fixed(good_on_0), Fixed(good_on_1)], [{}, {}])
    x = torch.zeros(2, 1, 2, 2, 2)
    best = t.target("best", x, x, x, x, truth, bf16=False)
    torch.testing.assert_close(best, truth)
    torch.testing.assert_close(t.target("mean", x, x, x, x, truth, bf16=False), (good_on_0 + good_on_1) / 2)


def test_a_base_free_student_gets_the_batches_its_residual_teacher_needs(tmp_path):
    """A base-free student taught by a Lanczos-8 residual model: the batches carry that base (the
    student ignores it), so the teacher predicts what it does at run time, and training runs."""
    from arssr_rt.cli import main
    from arssr_rt.training.distill import batch_base

    residual = {**SPEC, "base": "lanczos8"}
    assert batch_base(ModelSpec.from_dict(SPEC), [ModelSpec.from_dict(residual), ModelSpec.from_dict(SPEC)]) == "lanczos8"
    assert batch_base(ModelSpec.from_dict(residual), [ModelSpec.from_dict(SPEC)]) == "lanczos8"
    with pytest.raises(InputError, match="lanczos3 base"):
        check_fits(ModelSpec.from_dict(SPEC), ModelSpec.from_dict({**SPEC, "base": "lanczos3"}), "t", "lanczos8")
    cfg = replace(_config(3), spec=residual)
    bundle = tmp_path / "residual"
    assert main(["export", str(train(cfg, tmp_path / "r", progress=False)), "-o", str(bundle)]) == 0
    teachers = load_teachers([str(bundle)], ModelSpec.from_dict(SPEC), torch.device("cpu"))
    assert teachers.base == "lanczos8"
    from arssr_rt.training.data import PatchSampler, SamplerConfig, expand_data_arg, load_training_volumes

    sampler = PatchSampler(load_training_volumes(expand_data_arg([str(FIXTURE)]), 0),
                           replace(SamplerConfig(**_config(1).sampler), coords="phase", base=teachers.base), seed=5)
    lr, coords, dec, _, base = (torch.from_numpy(a) for a in sampler.batch(2))
    with torch.no_grad():  # the batch's base channels = what the teacher derives itself at those points
        torch.testing.assert_close(teachers.predictions(lr, coords, dec, base, bf16=False)[0],
                                   teachers.models[0](lr, coords), rtol=0, atol=1e-4)
    out = train(_config(4, teachers=[str(bundle)], distill=0.5, distill_mode="best"), tmp_path / "student", progress=False)
    assert torch.load(out, weights_only=True)["step"] == 4


def test_an_unknown_distill_mode_is_one_line_before_any_step(tmp_path):
    with pytest.raises(InputError, match="distill_mode must be one of mean, best"):
        train(_config(2, teachers=["default"], distill=0.5, distill_mode="median"), tmp_path / "run", progress=False)
