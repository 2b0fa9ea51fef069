"""A run's config.json is data: a mistyped or unknown setting is one line naming it, before any
volume loads or step runs (it used to be a TypeError from deep inside torch)."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import pytest

pytest.importorskip("torch")

from arssr_rt.cli import main  # noqa: E402
from arssr_rt.errors import InputError  # noqa: E402
from arssr_rt.training.config_check import checked_dataclass  # noqa: E402
from arssr_rt.training.data import SamplerConfig  # noqa: E402
from arssr_rt.training.train import TrainConfig, train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = sorted(p for p in (ROOT / "training-runs").rglob("config*.json"))


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_committed_run_config_passes_the_check_unchanged(path):
    values = json.loads(path.read_text())
    cfg = checked_dataclass(TrainConfig, values, str(path))
    written = json.loads(json.dumps(asdict(cfg)))
    assert {k: written[k] for k in values} == values  # nothing renamed, dropped or re-typed (older runs lack newer keys)
    checked_dataclass(SamplerConfig, cfg.sampler, "sampler")


def _run_dir(tmp_path: Path, **changes) -> Path:
    values = json.loads((ROOT / "training-runs/session10/config-stage19-gated.json").read_text())
    for key, value in changes.items():
        if "." in key:
            outer, inner = key.split(".")
            values[outer][inner] = value
        else:
            values[key] = value
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(values))
    return run


@pytest.mark.parametrize("changes,reason", [
    ({"gate_logit": "-3"}, r"gate_logit must be a number, got '-3'"),
    ({"steps": 3.5}, r"steps must be an integer, got 3.5"),
    ({"threads": True}, r"threads must be an integer or null, got True"),
    ({"lr": float("nan")}, r"lr must be a finite number"),
    ({"data": "colin.nii.gz"}, r"data must be a list of strings"),
    ({"gate_logti": 0.0}, r"unknown keys 'gate_logti'"),
    ({"sampler.lr_patch": "16"}, r"sampler.lr_patch must be an integer"),
    ({"sampler.noise_sigma": [0.01]}, r"noise_sigma must hold 2 values"),
    ({"sampler.degradations": {"kspace": "high"}}, r"degradations\['kspace'\] must be a number"),
    ({"sampler.colour": 1}, r"unknown sampler keys 'colour'"),
])
def test_resume_with_a_mistyped_config_is_one_line_and_touches_nothing(tmp_path, capsys, changes, reason):
    run = _run_dir(tmp_path, **changes)
    before = sorted(p.name for p in run.iterdir())
    code = main(["train", "--out", str(run), "--resume", "--quiet"])
    err = capsys.readouterr().err
    assert code != 0 and len(err.strip().splitlines()) == 1, err
    assert re.search(reason, err), err
    assert sorted(p.name for p in run.iterdir()) == before  # no checkpoint, log or rewritten config


@pytest.mark.parametrize("text,reason", [("{", "not valid JSON"), ("[1, 2]", "expected a JSON object")])
def test_resume_with_a_broken_config_file_is_one_line(tmp_path, capsys, text, reason):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(text)
    code = main(["train", "--out", str(run), "--resume", "--quiet"])
    err = capsys.readouterr().err
    assert code != 0 and reason in err and len(err.strip().splitlines()) == 1, err


def test_the_python_entry_point_checks_the_same_way(tmp_path):
    cfg = TrainConfig(data=["x.nii.gz"], gate_logit="0")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="gate_logit must be a number"):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("extra,flag", [(["--teacher", "default", "--distill", "0.5"], "--teacher, --distill"),
                                        (["--data", "other.nii.gz"], "--data"), (["--distill-mode", "best"], "--distill-mode")])
def test_resume_refuses_settings_its_config_fixes(tmp_path, capsys, extra, flag):
    """--resume trains on config.json; a --data or --teacher given with it would otherwise be
    dropped without a word."""
    run = _run_dir(tmp_path)
    before = sorted(p.name for p in run.iterdir())
    code = main(["train", "--out", str(run), "--resume", "--quiet", *extra])
    err = capsys.readouterr().err
    assert code != 0 and len(err.strip().splitlines()) == 1 and f"{flag} cannot change a resumed run" in err, err
    assert sorted(p.name for p in run.iterdir()) == before
