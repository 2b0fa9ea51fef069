"""Every unpickling goes through safe_load: a crafted checkpoint is data, never code.

The malicious files are real pickles whose loading would create a marker file (``open(path,
"w")``); each test asserts the refusal and that the marker never appears.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from arssr_rt.errors import ModelError  # noqa: E402
from arssr_rt.safe_load import load_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "arssr_rt" / "data" / "colin27_t1_crop64_1mm.nii.gz"
COMMITTED_RUN = ROOT / "training-runs" / "default" / "checkpoint.pt"
TINY = {"encoder": "rescnn", "feature_dim": 4, "encoder_args": {"width": 4, "blocks": 1, "convs": 1}, "decoder_width": 8, "decoder_depth": 2}


class _RunsCode:
    """Unpickling this calls open(marker, "w"): proof that code from the file ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _malicious(path: Path, marker: Path) -> Path:
    torch.save({"model": _RunsCode(marker), "optimizer": {}, "step": 1, "sampler_rng": {}, "torch_rng": torch.get_rng_state()}, path)
    return path


def test_safe_loader_refuses_code_and_names_the_opt_in(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with pytest.raises(ModelError, match="--trust-checkpoint") as err:
        load_checkpoint(_malicious(tmp_path / "evil.pt", marker))
    assert "\n" not in str(err.value)
    assert not marker.exists()


def _tiny_run(run: Path) -> None:
    from arssr_rt.training.train import TrainConfig

    run.mkdir()
    cfg = TrainConfig(data=[str(FIXTURE)], spec=TINY, sampler={"lr_patch": 6, "points": 64}, batch=1, steps=2, pyramid=0, threads=1)
    from dataclasses import asdict

    (run / "config.json").write_text(json.dumps(asdict(cfg)))


def test_train_resume_does_not_run_code_from_the_checkpoint(tmp_path: Path, capsys) -> None:
    from arssr_rt.cli import main

    run, marker = tmp_path / "run", tmp_path / "pwned"
    _tiny_run(run)
    _malicious(run / "checkpoint.pt", marker)
    code = main(["train", "--out", str(run), "--resume", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "--trust-checkpoint" in err[0], err
    assert not marker.exists()


def test_train_init_does_not_run_code_from_the_checkpoint(tmp_path: Path) -> None:
    from arssr_rt.training.train import TrainConfig, train

    marker = tmp_path / "pwned"
    evil = _malicious(tmp_path / "evil.pt", marker)
    cfg = TrainConfig(data=[str(FIXTURE)], spec=TINY, sampler={"lr_patch": 6, "points": 64}, batch=1, steps=1, pyramid=0, threads=1, init=str(evil))
    with pytest.raises(ModelError, match="weights_only=True"):
        train(cfg, tmp_path / "run", progress=False)
    assert not marker.exists()


def test_trust_flag_is_the_explicit_opt_in(tmp_path: Path, capsys) -> None:
    marker = tmp_path / "trusted"
    payload = load_checkpoint(_malicious(tmp_path / "evil.pt", marker), trust=True)
    payload["model"].close()
    assert marker.exists()  # the user vouched for the file, so its code ran (and a warning said so)
    assert "needs full unpickling" in capsys.readouterr().err


@pytest.mark.skipif(not COMMITTED_RUN.is_file(), reason="training-runs/default/checkpoint.pt not in this checkout")
def test_the_committed_run_checkpoint_loads_weights_only() -> None:
    from arssr_rt.network import build_model

    state = load_checkpoint(COMMITTED_RUN)
    build_model(state["spec"]).load_state_dict(state["model"], strict=True)
    assert state["sampler_rng"]["bit_generator"] == "PCG64" and int(state["step"]) > 0
