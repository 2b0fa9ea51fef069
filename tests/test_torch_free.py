"""The runtime path never needs torch: `arssr-rt upsample` and friends run in a subprocess where
`import torch` fails (as if torch were not installed), and torch never enters sys.modules.

The blocker is a sitecustomize on PYTHONPATH: a meta-path finder that raises
ModuleNotFoundError for torch and torch.*, plus an atexit hook that writes what ended up in
sys.modules and which torch imports were attempted (attempts are allowed: ``--backend auto``
may probe GPU backends, which then report torch as a missing extra).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

SITECUSTOMIZE = r'''
import atexit, json, os, sys

_attempts = []


class _NoTorch:
    """Behave as if torch were not installed."""

    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            _attempts.append(name)
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the torch-free test)", name=name)
        return None


sys.meta_path.insert(0, _NoTorch())


@atexit.register
def _report():
    loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
    with open(os.environ["ARSSR_TORCH_REPORT"], "w") as f:
        ours = sorted(m for m in sys.modules if m == "arssr_rt" or m.startswith("arssr_rt."))
        json.dump({"loaded": loaded, "attempts": sorted(set(_attempts)), "arssr_rt": ours}, f)
'''


def run_without_torch(args: list[str], tmp_path: Path, *, module: bool = True) -> tuple[subprocess.CompletedProcess, dict]:
    """Run ``python -m arssr_rt ARGS`` (or ``python -c ARGS[0]``) with torch blocked."""
    site = tmp_path / "no_torch_site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    report = tmp_path / f"torch_report_{len(list(tmp_path.glob('torch_report_*')))}.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["ARSSR_TORCH_REPORT"] = str(report)
    env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [sys.executable, "-m", "arssr_rt", *args] if module else [sys.executable, "-c", args[0]]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert report.is_file(), f"the torch blocker did not load: {proc.stderr[-1500:]}"
    data = json.loads(report.read_text())
    ours = data.pop("arssr_rt")
    torch_side = [m for m in ours if m.split(".")[1:2] in (["network"], ["training"], ["bench"]) or (m.startswith("arssr_rt.export.") and m != "arssr_rt.export.contract")]
    assert not torch_side, f"the runtime imported torch-side modules: {torch_side}"
    return proc, data


@pytest.fixture(scope="module")
def runtime_bundle(tmp_path_factory) -> Path:
    """A small random-weight bundle (TEST ONLY), made here with torch; used without it below."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    from arssr_rt.export.bundle_writer import write_bundle
    from arssr_rt.network import build_model

    torch.manual_seed(0)
    spec = {"encoder": "rescnn", "feature_dim": 8, "encoder_args": {"width": 8, "blocks": 1, "convs": 2}, "decoder_width": 16, "decoder_depth": 2}
    model = build_model(spec)
    with torch.no_grad():
        model.decoder.stage_two[-2].bias.fill_(0.3)  # keep the final ReLU open
    return write_bundle(model, tmp_path_factory.mktemp("torchfree") / "bundle", name="torch-free-TEST", validate=False)


def test_blocker_really_blocks_torch(tmp_path: Path) -> None:
    proc, report = run_without_torch(["import torch"], tmp_path, module=False)
    assert proc.returncode != 0 and "blocked by the torch-free test" in proc.stderr
    assert report == {"loaded": [], "attempts": ["torch"]}


def test_the_check_names_a_torch_side_module_that_the_runtime_imported(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match=r"torch-side modules: \['arssr_rt.bench'\]"):
        run_without_torch(["import arssr_rt.bench"], tmp_path, module=False)


def test_importing_the_runtime_does_not_import_torch(tmp_path: Path) -> None:
    code = (
        "import arssr_rt, arssr_rt.cli, arssr_rt.bundle, arssr_rt.backends.onnxruntime_backend, arssr_rt.bundle_format\n"
        "import arssr_rt.pipeline, arssr_rt.sampling, arssr_rt.tiling, arssr_rt.memory, arssr_rt.backends.openvino_backend\n"
        "import arssr_rt.backends.tensorrt_backend, arssr_rt.backends.torch_backend, arssr_rt.backends.torch_cuda_backend\n"
        "import arssr_rt.windowed_sinc, arssr_rt.consistency, arssr_rt.outputs, arssr_rt.writers\n"
        "from arssr_rt.backends.base import available_backends; print(available_backends())"
    )
    proc, report = run_without_torch([code], tmp_path, module=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "onnxruntime" in proc.stdout
    assert report == {"loaded": [], "attempts": []}


@pytest.mark.parametrize("backend", ["auto", "onnxruntime"])
def test_upsample_runs_without_torch(runtime_bundle: Path, fixture_path: Path, tmp_path: Path, backend: str) -> None:
    if not (REPO / "arssr_rt" / "commands" / "upsample.py").is_file():
        pytest.skip("the upsample command does not exist yet")
    out = tmp_path / "out.nii.gz"
    args = ["upsample", str(fixture_path), "--scale", "2", "--model", str(runtime_bundle), "--backend", backend, "-o", str(out)]
    proc, report = run_without_torch(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert report["loaded"] == [], f"torch entered sys.modules: {report}"
    picked = [line for line in proc.stderr.splitlines() if line.startswith("backend: ")]
    assert picked, proc.stderr  # the CLI says which backend it uses
    if backend == "onnxruntime":  # the core-dependency path (no openvino, no GPU)
        assert picked[0] == "backend: onnxruntime"
    else:
        assert "torch" not in picked[0]
    img = nib.load(out)
    assert img.shape == (128, 128, 128)
    assert np.allclose(np.linalg.norm(img.affine[:3, :3], axis=0), 0.5)
    data = np.asarray(img.dataobj)
    assert np.isfinite(data).all() and data.std() > 0


def test_torch_backend_without_torch_names_the_install(runtime_bundle: Path, fixture_path: Path, tmp_path: Path) -> None:
    if not (REPO / "arssr_rt" / "commands" / "upsample.py").is_file():
        pytest.skip("the upsample command does not exist yet")
    out = tmp_path / "never.nii.gz"
    proc, report = run_without_torch(
        ["upsample", str(fixture_path), "--scale", "2", "--model", str(runtime_bundle), "--backend", "torch", "-o", str(out)], tmp_path
    )
    assert proc.returncode == 3, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert "pip install" in lines[-1] and "torch" in lines[-1]
    assert not out.exists()
    assert report["loaded"] == []


def test_models_and_info_run_without_torch(runtime_bundle: Path, fixture_path: Path, tmp_path: Path) -> None:
    proc, report = run_without_torch(["models", "--model", str(runtime_bundle), "--json"], tmp_path)
    rows = json.loads(proc.stdout)
    assert any(r["name"] == "torch-free-TEST" and r["status"] == "ok" for r in rows)
    assert report["loaded"] == []
    proc, report = run_without_torch(["info", str(fixture_path), "--scale", "2", "--json"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["output"]["shape"] == [128, 128, 128]
    assert report == {"loaded": [], "attempts": []}


def test_python_api_runs_without_torch(fixture_path: Path, tmp_path: Path) -> None:
    """arssr_rt.upsample on a nibabel image and a channel-first array, and the transform, with
    torch blocked: only a tensor input may import torch."""
    code = (
        "import arssr_rt, nibabel as nib, numpy as np\n"
        "from arssr_rt.transforms import ArssrUpsampled\n"
        f"img = nib.load({str(fixture_path)!r}).slicer[:24, :24, :24]\n"
        "out = arssr_rt.upsample(img, scale=1.5, threads=1)\n"
        "x = np.stack([img.get_fdata(dtype=np.float32)] * 2)\n"
        "d = ArssrUpsampled('image', scale=1.5, threads=1)({'image': x, 'image_meta_dict': {'affine': img.affine}})\n"
        "print(out.shape, d['image'].shape)"
    )
    proc, report = run_without_torch([code], tmp_path, module=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "(36, 36, 36) (2, 36, 36, 36)" in proc.stdout
    assert report["loaded"] == [], f"torch entered sys.modules: {report}"
