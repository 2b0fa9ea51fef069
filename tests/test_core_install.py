"""The README's core install (`pip install .`: no torch, no click) gives one-line usage errors.

typer >= 0.29 vendors click, so a core install has no `click` package; the CLI once imported
it to recognise usage errors and every typo ended in a traceback. The dev install hides that
(ray pulls click in), so this builds a real core-only virtual environment once per session and
runs the installed `arssr-rt` there. pip's cache and the local wheel index make it quick; the
tests skip, saying why, where the install cannot run (no network or index).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURE_PATH, REPO_ROOT, listing

INSTALL_TIMEOUT_S = 900


@pytest.fixture(scope="session")
def core_cli(tmp_path_factory) -> Path:
    """``arssr-rt`` of a fresh venv with only the core dependencies (a copy of the source tree)."""
    root = tmp_path_factory.mktemp("core-install")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, src / name)
    shutil.copytree(REPO_ROOT / "arssr_rt", src / "arssr_rt", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    venv = root / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, text=True, timeout=300)
        pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(src)],
                             capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, env=env)
    except (subprocess.SubprocessError, OSError) as exc:
        pytest.skip(f"cannot create a core-only venv here: {exc}")
    if pip.returncode != 0:
        pytest.skip(f"`pip install .` into a fresh venv failed (no network or package index?): {pip.stderr.strip()[-400:]}")
    probe = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import importlib.util as u; print(u.find_spec('click') is None, u.find_spec('torch') is None)"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert probe.stdout.split() == ["True", "True"], f"the core install pulled in click or torch: {probe.stdout}{probe.stderr}"
    return venv / "bin" / "arssr-rt"


def run(cli: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([str(cli), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


@pytest.mark.parametrize("args,pattern", [
    (["upsample", "--bogus"], "No such option: --bogus"),
    (["upsample"], "Missing argument"),
    (["nosuchcommand"], "No such command"),
    (["upsample", str(FIXTURE_PATH), "--scale", "2", "--tile", "abc"], "--tile"),
    (["upsample", str(FIXTURE_PATH), "--scale", "2", "--max-memory", "nan"], "--max-memory"),
    (["upsample", str(FIXTURE_PATH), "--scale", "2", "--max-memory", "321M"], "leaves for the input: raise --max-memory"),
    (["upsample", str(FIXTURE_PATH), "--scale", "1_0"], "--scale"),
    (["upsample", str(FIXTURE_PATH), "--scale", "2", "--tta", "3"], "--tta must be one of 1, 2, 4, 8"),
    (["upsample", str(FIXTURE_PATH), "--scale", "2", "--ensemble", "bandlimited", "--interp", "cubic"], "does not apply to --interp cubic"),
    (["info", str(FIXTURE_PATH), "--shape", "48.9"], "--shape"),
    (["batch", str(FIXTURE_PATH)], "Missing option"),
    (["--nope"], "No such option"),
])
def test_usage_errors_are_one_line_in_a_core_install(core_cli, args, pattern, tmp_path):
    proc = run(core_cli, *args, cwd=tmp_path)
    assert proc.returncode not in (0, 70), proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("arssr-rt: error:") and pattern in lines[0], proc.stderr
    assert proc.stdout == ""
    assert listing(tmp_path) == []


def test_version_and_help_in_a_core_install(core_cli, tmp_path):
    from arssr_rt import __version__

    version = run(core_cli, "--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.strip() == f"arssr-rt {__version__}", version
    top = run(core_cli, "--help", cwd=tmp_path)
    assert top.returncode == 0 and "upsample" in top.stdout and "--version" in top.stdout, top
    commands = ("upsample", "info", "models", "export", "engines", "batch", "export-triton", "qc", "train", "evaluate", "bench")
    for command in commands:
        proc = run(core_cli, command, "--help", cwd=tmp_path)
        assert proc.returncode == 0 and "Usage:" in proc.stdout and "Traceback" not in proc.stderr, (command, proc.stderr)
    bare = run(core_cli, cwd=tmp_path)  # no_args_is_help: the help text, not a traceback
    assert "Usage:" in bare.stdout + bare.stderr and "Traceback" not in bare.stderr
