"""Every ```python block of README.md runs, as a user would run it.

Conventions (for whoever writes README examples):
- Each block runs on its own, in a fresh namespace, with a temporary folder as the working
  directory. That folder holds the shipped fixture at ``arssr_rt/data/colin27_t1_crop64_1mm.nii.gz``
  (the path the Quick start uses) and ``t1.nii.gz``, a 32^3 crop of it (the name the CLI
  examples use), so examples name real files and stay fast: keep each block to seconds.
- A block whose first line is ``# not run: <reason>`` (it needs a GPU, a cluster, data we do
  not ship) is reported as skipped with that reason, never silently dropped.
- A block that imports torch is skipped where torch is not installed (the core install).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import nibabel as nib
import pytest

from conftest import FIXTURE_PATH, REPO_ROOT

README = REPO_ROOT / "README.md"
BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
NOT_RUN = re.compile(r"#\s*not run\s*:?\s*(.*)")


def python_blocks() -> list[tuple[int, str]]:
    """(line number, code) of each ```python block."""
    text = README.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in BLOCK.finditer(text)]


BLOCKS = python_blocks()


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 4  # the Python API section's examples (nibabel, tensor, Upsampler, transform, errors)


@pytest.fixture
def example_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    data = tmp_path / "arssr_rt" / "data"
    data.mkdir(parents=True)
    shutil.copyfile(FIXTURE_PATH, data / FIXTURE_PATH.name)
    nib.save(nib.load(FIXTURE_PATH).slicer[16:48, 16:48, 16:48], tmp_path / "t1.nii.gz")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    return tmp_path


@pytest.mark.parametrize("line,code", BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_readme_python_block_runs(line: int, code: str, example_dir: Path):
    first = code.lstrip().splitlines()[0] if code.strip() else ""
    skip = NOT_RUN.match(first)
    if skip:
        pytest.skip(f"README.md:{line} is marked not run: {skip.group(1) or 'no reason given'}")
    if re.search(r"^\s*(import torch|from torch)", code, re.M):
        pytest.importorskip("torch", reason=f"README.md:{line} needs torch")
    exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__readme__"})
