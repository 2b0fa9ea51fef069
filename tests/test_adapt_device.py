"""--adapt on a device: the rule (``--backend`` decides, adapt/device.py), the CPU path unchanged,
the one-line error for a GPU that is not there, and (marker ``gpu``) fine-tuning on CUDA.

GPU tolerance: the fixture acquired as 1 x 1 x 4 mm slices, adapted for 3 fp32 steps on the GPU
and on the CPU (same seed, so the same pairs), both run on the GPU: max |gpu - cpu| <= 1e-2 and
mean <= 1e-3 of the output range, and the mean difference under a tenth of what the adaptation
changed. Calibrated on the CPU: a 1e-6 relative change of the base weights (float rounding's
size) moves the 3-step result by 1.2e-4 (max) and 4e-6 (mean) of the range, 2e-4 of the change.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest

from arssr_rt.adapt.plan import AdaptOptions, check_adapt_options
from arssr_rt.backends.base import BackendOptions
from arssr_rt.degrade import degrade
from arssr_rt.errors import BackendError, InputError
from arssr_rt.geometry import output_affine
from arssr_rt.volume import Volume

from conftest import FIXTURE_PATH

torch = pytest.importorskip("torch")

GPU = torch.cuda.is_available()


@pytest.fixture(scope="module")
def thick(tmp_path_factory):
    """The shipped 64^3 fixture acquired as 1 x 1 x 4 mm box-profile slices: a file and a Volume."""
    img = nib.load(str(FIXTURE_PATH))
    hr = np.asarray(img.get_fdata(dtype=np.float32))
    lr = degrade(hr, (1, 1, 4), "slice").astype(np.float32)
    affine = output_affine(img.affine, hr.shape, lr.shape)
    path = tmp_path_factory.mktemp("thick") / "thick.nii.gz"
    nib.Nifti1Image(lr, affine).to_filename(path)
    return path, Volume(data=lr, affine=affine)


@pytest.fixture(scope="module")
def bundle():
    from arssr_rt.bundle import resolve_model

    return resolve_model(None)


@pytest.fixture
def no_gpu(monkeypatch):
    """torch sees no CUDA GPU, even on a machine with one (the error paths run everywhere)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _state(model) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def _run(bundle, backend, volume):
    from arssr_rt.pipeline import VolumeEngine, plan_grid

    with VolumeEngine(bundle, backend) as up:
        return up.run(volume, plan_grid(volume, voxel_size=[1, 1, 1]))


# ------------------------------------------------------------------ the rule


def test_the_backend_decides_the_device(monkeypatch):
    import arssr_rt.backends.torch_cuda_backend as tcb
    from arssr_rt.adapt.device import adapt_device

    monkeypatch.setattr(tcb, "nvidia_driver_absent", lambda: False)  # reach the torch question on any machine
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert adapt_device("auto", 0) == "cuda:0" and adapt_device("auto", 1) == "cuda:1"
    assert adapt_device("auto", 2) == "cpu"  # auto falls back, as it does choosing a backend
    assert adapt_device("torch-cuda", 1) == "cuda:1"
    assert adapt_device("torch", 1) == "cpu"
    with pytest.raises(BackendError, match="no such GPU; torch sees 2"):
        adapt_device("torch-cuda", 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert adapt_device("auto", 0) == "cpu"
    with pytest.raises(BackendError, match="needs a CUDA GPU visible to torch"):
        adapt_device("torch-cuda", 0)
    monkeypatch.setattr(tcb, "nvidia_driver_absent", lambda: True)
    assert adapt_device("auto", 0) == "cpu"


@pytest.mark.parametrize("device, precision, match", [("gpu", "auto", "cpu, cuda or cuda:N"), ("cuda:x", "auto", "cuda:N"),
                                                      ("cpu", "fp16", "fp16 is for a CUDA device"),
                                                      ("cuda", "int8", "auto, fp32, bf16 or fp16")])
def test_bad_device_or_precision_is_one_line(device, precision, match):
    with pytest.raises(InputError, match=match):
        check_adapt_options(AdaptOptions(device=device, precision=precision))
    check_adapt_options(AdaptOptions(device="cuda:1", precision="fp16"))  # valid whatever the machine


# ------------------------------------------------------------------ CPU unchanged


def test_cpu_device_is_the_old_loop_bit_for_bit(thick, bundle):
    """finetune(device="cpu") is the pre-device loop (mirrored here: deep copy in the training layout, Adam, cosine rate,
    CPU autocast, dense query on CPU tensors, L1) bit for bit, in fp32 and bf16; adapt_volume's
    default device is the CPU and runs the adapted model on the CPU torch backend."""
    import math

    import torch.nn.functional as F

    from arssr_rt.adapt.finetune import dense_forward, finetune, trainable
    from arssr_rt.adapt.pairs import PairConfig, ScanPairSampler
    from arssr_rt.adapt.plan import plan_adaptation
    from arssr_rt.adapt.session import adapt_volume
    from arssr_rt.backends.torch_backend import load_bundle_model
    from arssr_rt.network.memory_format import training_layout

    _, volume = thick
    data = volume.data / volume.data.max()
    plan = plan_adaptation((1.0, 1.0, 4.0), volume.shape, AdaptOptions())
    base = load_bundle_model(bundle)
    cfg = PairConfig(points=256, coords=base.spec.coords, feature_scale=base.spec.feature_scale, base=base.spec.base)
    torch.set_num_threads(1)
    for precision in ("fp32", "bf16"):
        got = finetune(base, ScanPairSampler(data, plan, cfg, seed=3), steps=3, budget_seconds=None, batch=2, seed=3,
                       precision=precision, device="cpu")
        torch.manual_seed(3)
        model = training_layout(copy.deepcopy(base).float(), "cpu", precision).train()  # channels-last in fp32
        opt = torch.optim.Adam(trainable(model, "all"), lr=5e-4)
        sampler = ScanPairSampler(data, plan, cfg, seed=3)
        for step in range(3):
            for g in opt.param_groups:
                g["lr"] = 5e-4 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / 2)))
            pairs = sampler.batch(2)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                pred = dense_forward(model, pairs)
            error = F.l1_loss(pred.float(), torch.from_numpy(pairs.target))
            opt.zero_grad(set_to_none=True)
            error.backward()
            opt.step()
        want, have = _state(model), _state(got.model)
        assert all(np.array_equal(want[k], have[k]) for k in want), precision
        assert got.precision == precision and next(got.model.parameters()).device.type == "cpu"
    adapted = adapt_volume(volume, bundle, AdaptOptions(steps=2), threads=1, base_model=base)
    again = adapt_volume(volume, bundle, AdaptOptions(steps=2, device="cpu"), threads=1, base_model=base)
    a, b = _state(adapted.model), _state(again.model)
    assert adapted.device == "cpu" and all(np.array_equal(a[k], b[k]) for k in a)
    runner = adapted.backend(bundle, BackendOptions())
    assert runner.name == "torch" and not runner.decodes_boxes_on_device
    assert adapted.summary()["device"] == "cpu"


def test_the_gpu_inference_path_runs_the_adapted_weights(thick, bundle):
    """Adapted.cuda_backend (the GPU run's backend) opened on torch's "cpu" device gives the CPU
    torch backend's output for the adapted weights, not the bundle's: the same path on a GPU."""
    from arssr_rt.adapt.session import adapt_volume

    _, volume = thick
    adapted = adapt_volume(volume, bundle, AdaptOptions(steps=2, precision="fp32"), threads=1)
    on_cpu = _run(bundle, adapted.backend, volume)
    cuda_logic = _run(bundle, adapted.cuda_backend, volume)
    shipped = _run(bundle, "torch", volume)
    span = float(np.ptp(on_cpu))
    assert np.abs(cuda_logic - on_cpu).max() <= 1e-5 * span
    assert np.abs(shipped - on_cpu).mean() > 1e-3 * span  # the adapted weights, not the bundle's


# ------------------------------------------------------------------ no GPU: one line


@pytest.mark.parametrize("command", ["upsample", "batch", "evaluate"])
def test_torch_cuda_without_a_gpu_is_one_line_before_any_work(cli, thick, tmp_path, no_gpu, command):
    src, _ = thick
    out = tmp_path / "out"
    args = {"upsample": ("upsample", src, "--voxel-size", "1", "-o", tmp_path / "o.nii.gz"),
            "batch": ("batch", src.parent, "-o", out, "--voxel-size", "1"),
            "evaluate": ("evaluate", FIXTURE_PATH, "-s", "1,1,4", "-d", "slice", "--json", tmp_path / "e.json")}[command]
    code, err = cli(*args, "--adapt", "--adapt-steps", "2", "--backend", "torch-cuda", "--device", "0")
    assert code == 2 and err.count("\n") == 1, err
    assert "needs a CUDA GPU visible to torch" in err and "--backend torch" in err and "Traceback" not in err
    assert not (tmp_path / "o.nii.gz").exists() and not out.exists() and not (tmp_path / "e.json").exists()


def test_other_backends_are_still_refused_with_adapt(cli, thick, tmp_path):
    src, _ = thick
    code, err = cli("upsample", src, "--voxel-size", "1", "--adapt", "--backend", "onnxruntime", "-o", tmp_path / "o.nii.gz")
    assert code == 2 and err.count("\n") == 1 and "torch or torch-cuda backend, not onnxruntime" in err


def test_api_request_for_a_missing_gpu_is_one_line(thick, bundle, no_gpu):
    from arssr_rt.adapt.session import adapt_volume

    _, volume = thick
    with pytest.raises(BackendError, match=r"--adapt on cuda needs a CUDA GPU") as info:
        adapt_volume(volume, bundle, AdaptOptions(steps=2, device="cuda"))
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------ on a GPU


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="torch sees no CUDA GPU")
def test_gpu_adaptation_matches_the_cpu_one_and_changes_the_weights(thick, bundle, tmp_path):
    from arssr_rt.adapt.session import adapt_volume
    from arssr_rt.backends.torch_backend import load_bundle_model

    _, volume = thick
    base = load_bundle_model(bundle)
    before = _state(base)
    opts = AdaptOptions(steps=3, precision="fp32")
    gpu = adapt_volume(volume, bundle, replace(opts, device="cuda:0"), base_model=base)
    cpu = adapt_volume(volume, bundle, opts, base_model=base)
    assert gpu.device == "cuda:0" and all(p.device.type == "cuda" for p in gpu.model.parameters())
    assert all(np.array_equal(v, _state(base)[k]) for k, v in before.items())  # the base is left untouched
    after = _state(gpu.model)
    assert all(np.isfinite(v).all() for v in after.values()) and np.isfinite(gpu.loss_last)
    assert max(float(np.abs(after[k] - before[k]).max()) for k in before) > 0
    # both adapted models run on the GPU (the CPU one moved there); and the shipped one, for scale
    cpu_on_gpu = replace(cpu, model=copy.deepcopy(cpu.model).to("cuda:0"), device="cuda:0")
    out_gpu = _run(bundle, gpu.backend, volume)
    out_cpu = _run(bundle, cpu_on_gpu.backend, volume)
    shipped = _run(bundle, "torch-cuda", volume)
    span = float(np.ptp(out_cpu))
    diff = np.abs(out_gpu - out_cpu)
    assert np.isfinite(out_gpu).all() and diff.max() <= 1e-2 * span and diff.mean() <= 1e-3 * span
    assert diff.mean() <= 0.1 * float(np.abs(out_cpu - shipped).mean())
    # export takes a CPU copy and leaves the run's model on the GPU
    assert next(gpu.cpu_model().parameters()).device.type == "cpu" and next(gpu.model.parameters()).device.type == "cuda"
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    import json

    saved = gpu.save(tmp_path / "adapted", real_input=volume.data)
    assert json.loads((saved / "model.json").read_text())["training"]["device"] == "cuda"


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="torch sees no CUDA GPU")
def test_gpu_auto_precision_and_time_budget(thick, bundle):
    """auto is bf16 (or fp16 + GradScaler) on a GPU and still learns; a 2 s budget is kept with
    a planned step count past the timed warm-up steps (the clock reads synchronised time)."""
    from arssr_rt.adapt.finetune import WARMUP_STEPS
    from arssr_rt.adapt.session import adapt_volume
    from arssr_rt.backends.torch_backend import load_bundle_model

    _, volume = thick
    base = load_bundle_model(bundle)
    before = _state(base)
    quick = adapt_volume(volume, bundle, AdaptOptions(steps=4, device="cuda"), base_model=base)
    assert quick.precision in ("bf16", "fp16") and quick.steps == 4
    after = _state(quick.model)
    assert all(np.isfinite(v).all() for v in after.values()) and max(float(np.abs(after[k] - before[k]).max()) for k in before) > 0
    totals: list = []
    timed = adapt_volume(volume, bundle, AdaptOptions(minutes=2 / 60, device="cuda"), base_model=base,
                         on_step=lambda step, total, loss: totals.append(total))
    planned = [t for t in totals if t is not None]
    assert timed.steps > WARMUP_STEPS and planned
    # synchronised timing plans what fits: the run does most of its planned steps within the budget
    assert planned[0] // 2 <= timed.steps <= planned[0] and timed.seconds < 2 + 5  # + one step and the copy
