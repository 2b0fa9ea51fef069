"""GPU backends (tensorrt, torch-cuda) against onnxruntime on the CPU.

GPU tests (marker ``gpu``, skipped with the reason when there is no usable GPU) run the whole
pipeline on the real Colin27 fixture with each GPU backend and compare the restored output
with the onnxruntime CPU backend's: max |gpu - cpu| / (input range) <= 1e-3 for fp32 and
<= 1e-2 for fp16. They also run decode_box on the GPU against the CPU sampler + decoder.

The torch-cuda backend's logic (separable sampling in torch, view reuse, chunking) is also
checked on the CPU by opening it on torch's "cpu" device, so CI covers it without a GPU.
"""

from __future__ import annotations

import numpy as np
import pytest

from arssr_rt.backends.base import BackendOptions, open_backend
from arssr_rt.bundle import load_bundle
from arssr_rt.engines.gpu_probe import gpu_unavailable_reason
from arssr_rt.extras import available
from arssr_rt.sampling import box_coords, sample_box

TOLERANCE = {"fp32": 1e-3, "fp16": 1e-2}


def gpu_skip_reason(backend: str) -> str:
    """Why ``backend`` cannot run here ('' when it can)."""
    if backend == "torch-cuda":
        if not available("torch"):
            return "torch is not installed"
        import torch

        return "" if torch.cuda.is_available() else "torch sees no CUDA GPU"
    reason = gpu_unavailable_reason()
    if reason:
        return reason
    return "" if available("tensorrt") else "tensorrt is not installed (NVIDIA's package index is needed)"


def gpu_params():
    return [
        pytest.param(backend, precision, marks=[pytest.mark.gpu, pytest.mark.skipif(bool(gpu_skip_reason(backend)), reason=gpu_skip_reason(backend) or "-")])
        for backend in ("tensorrt", "torch-cuda")
        for precision in ("fp32", "fp16")
    ]


@pytest.fixture(scope="module")
def model_bundle(request):
    """The embedded default model when the package ships one, else the tiny random-weight bundle."""
    from arssr_rt.bundle import resolve_model
    from arssr_rt.errors import ModelError

    try:
        return resolve_model(None)
    except ModelError:
        return load_bundle(request.getfixturevalue("tiny_bundle"))


@pytest.fixture(scope="module")
def fixture_volume(fixture_image):
    return np.asarray(fixture_image.dataobj, dtype=np.float32), fixture_image.affine


def run_pipeline(bundle, volume, backend: str, precision: str) -> np.ndarray:
    from arssr_rt.geometry import plan_output_grid
    from arssr_rt.pipeline import VolumeEngine
    from arssr_rt.volume import Volume

    data, affine = volume
    grid = plan_output_grid(data.shape, affine, scale=(2.0, 2.0, 2.0))
    with VolumeEngine(bundle, backend, BackendOptions(precision=precision)) as up:
        return up.run(Volume(data=data, affine=affine), grid)


@pytest.mark.parametrize("backend, precision", gpu_params())
def test_gpu_backend_matches_onnxruntime_on_a_real_volume(model_bundle, fixture_volume, backend, precision):
    cpu = run_pipeline(model_bundle, fixture_volume, "onnxruntime", "fp32")
    gpu = run_pipeline(model_bundle, fixture_volume, backend, precision)
    data = fixture_volume[0]
    err = float(np.abs(gpu - cpu).max() / (data.max() - data.min()))
    assert err <= TOLERANCE[precision], f"{backend} {precision}: max error {err:.2e} of the input range"


@pytest.mark.parametrize("backend, precision", gpu_params())
def test_gpu_decode_box_matches_cpu_sampling(model_bundle, fixture_volume, backend, precision):
    lr = (fixture_volume[0] - fixture_volume[0].min()) / np.ptp(fixture_volume[0])
    lr = np.ascontiguousarray(lr[:24, :20, :22])
    gpu = open_backend(backend, model_bundle, BackendOptions(precision=precision))
    cpu = open_backend("onnxruntime", model_bundle, BackendOptions())
    try:
        features = gpu.encode(lr)
        out_shape, start, stop = (48, 41, 44), (3, 0, 10), (40, 41, 30)
        got = gpu.decode_box(features[:, 1:23, :, 4:20], (1, 0, 4), lr.shape, out_shape, start, stop)
        block = np.moveaxis(np.asarray(features[:, 1:23, :, 4:20]), 0, -1).copy()
        sampled = sample_box(block, (1, 0, 4), lr.shape, out_shape, start, stop)
        coords = box_coords(out_shape, start, stop, lr.shape, model_bundle.coords_mode)  # the bundle's mode, as the pipeline
        want = cpu.decode(sampled.reshape(-1, sampled.shape[-1]), coords).reshape(sampled.shape[:3])
        assert float(np.abs(got - want).max()) <= TOLERANCE[precision]
    finally:
        gpu.close()
        cpu.close()


# ---------------------------------------------------------------- torch-cuda logic on the CPU


@pytest.fixture(scope="module")
def torch_on_cpu(tiny_bundle):
    pytest.importorskip("torch")
    from arssr_rt.backends.torch_cuda_backend import TorchCudaBackend

    bundle = load_bundle(tiny_bundle)
    backend = TorchCudaBackend(bundle, BackendOptions(chunk=500), torch_device="cpu")
    yield bundle, backend
    backend.close()


def test_torch_cuda_logic_encode_and_decode_equal_the_torch_backend(torch_on_cpu):
    bundle, backend = torch_on_cpu
    reference = open_backend("torch", bundle)
    rng = np.random.default_rng(0)
    lr = rng.random((9, 10, 11), dtype=np.float32)
    feats = backend.encode(lr)
    assert not feats.flags.writeable
    np.testing.assert_array_equal(feats, reference.encode(lr))
    f, c = rng.standard_normal((70, bundle.feature_dim)).astype(np.float32), rng.random((70, 3), dtype=np.float32)
    np.testing.assert_allclose(backend.decode(f, c), reference.decode(f, c), rtol=1e-6, atol=1e-6)
    reference.close()


def test_torch_cuda_logic_decode_box_equals_the_cpu_pipeline(torch_on_cpu, fixture_volume):
    bundle, backend = torch_on_cpu
    lr = np.ascontiguousarray(fixture_volume[0][20:32, 25:35, 30:41] / 255.0)
    features = backend.encode(lr)
    keep = (slice(None), slice(2, 10), slice(0, 10), slice(3, 11))
    offset, out_shape, start, stop = (2, 0, 3), (25, 21, 23), (5, 0, 7), (20, 21, 22)
    got = backend.decode_box(features[keep], offset, lr.shape, out_shape, start, stop)  # view: reuses the tensor
    sampled = sample_box(np.moveaxis(np.asarray(features[keep]), 0, -1).copy(), offset, lr.shape, out_shape, start, stop)
    want = backend.decode(sampled.reshape(-1, sampled.shape[-1]), box_coords(out_shape, start, stop)).reshape(sampled.shape[:3])
    assert got.shape == (15, 21, 15)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(backend.decode_box(np.array(features[keep]), offset, lr.shape, out_shape, start, stop), got)


def test_torch_cuda_logic_decode_box_feeds_a_phase_bundle_the_cpu_pipelines_coords(phase_bundle, fixture_volume):
    """decode_box of a "phase" bundle: the decoder gets box_coords(..., "phase") exactly, as the CPU path."""
    from arssr_rt.backends.torch_cuda_backend import TorchCudaBackend

    backend = TorchCudaBackend(load_bundle(phase_bundle), BackendOptions(chunk=700), torch_device="cpu")
    assert backend.coords_mode == "phase"
    lr = np.ascontiguousarray(fixture_volume[0][20:32, 25:35, 30:41] / 255.0)
    features = backend.encode(lr)
    keep = (slice(None), slice(2, 10), slice(0, 10), slice(3, 11))
    offset, out_shape, start, stop = (2, 0, 3), (25, 10, 23), (5, 0, 7), (20, 10, 22)  # x2.08, x1, x2.09
    seen = []
    hook = backend.model.decoder.register_forward_pre_hook(lambda module, args: seen.append(args[0][:, -3:].numpy().copy()))
    try:
        got = backend.decode_box(features[keep], offset, lr.shape, out_shape, start, stop)
    finally:
        hook.remove()
    coords = box_coords(out_shape, start, stop, lr.shape, "phase")
    np.testing.assert_array_equal(np.concatenate(seen), coords)
    assert np.all(coords[:, 1] == -1.0)  # the x1 axis
    sampled = sample_box(np.moveaxis(np.asarray(features[keep]), 0, -1).copy(), offset, lr.shape, out_shape, start, stop)
    want = backend.decode(sampled.reshape(-1, sampled.shape[-1]), coords).reshape(sampled.shape[:3])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    as_global = backend.decode(sampled.reshape(-1, sampled.shape[-1]), box_coords(out_shape, start, stop)).reshape(sampled.shape[:3])
    assert np.abs(got - as_global).max() > 1e-3  # the mode changes what the decoder computes
    backend.close()


def test_torch_cuda_refuses_without_a_cuda_gpu(tiny_bundle):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("torch sees a CUDA GPU")
    from arssr_rt.errors import BackendError

    with pytest.raises(BackendError, match="CUDA"):
        open_backend("torch-cuda", load_bundle(tiny_bundle))
