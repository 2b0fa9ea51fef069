"""Sub-voxel feature grids (spec.feature_scale = r): the encoder's feature map is r times finer.

The runtime treats such a map as an input grid r times finer over the same field of view, so
tiled inference on every CPU backend, and the GPU backends' decode_box path, must equal the
whole-volume torch reference; the training sampler must feed the decoder the coordinates the
runtime will; and a bundle whose files disagree with its spec is refused, not run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from arssr_rt.backends.base import BackendOptions
from arssr_rt.bundle import load_bundle
from arssr_rt.errors import BackendError, InputError, ModelError

torch = pytest.importorskip("torch")

from conftest import TINY_SPEC  # noqa: E402

from arssr_rt.network import build_model  # noqa: E402
from arssr_rt.training.train import predict_volume  # noqa: E402

SUBVOXEL_SPEC = {**TINY_SPEC, "coords": "phase", "decoder": "modulated", "feature_scale": 2}


@pytest.fixture(scope="module")
def subvoxel_model():
    torch.manual_seed(0)
    model = build_model(dict(SUBVOXEL_SPEC)).eval()
    with torch.no_grad():  # random, non-trivial weights everywhere (TEST ONLY)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def subvoxel_bundle(subvoxel_model, tmp_path_factory) -> Path:
    from arssr_rt.export.bundle_writer import write_bundle

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # validate=True: the export's own torch-vs-ONNX check runs on the finer map too
        return Path(write_bundle(subvoxel_model, tmp_path_factory.mktemp("bundles") / "subvoxel", name="subvoxel-TEST", validate=True))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def real_lr(fixture_image) -> np.ndarray:
    data = np.asarray(fixture_image.dataobj, dtype=np.float32)[10:27, 20:35, 22:35]
    return (data - data.min()) / (data.max() - data.min())


def test_encoder_output_is_r_times_finer_and_starts_as_nearest_copies(subvoxel_model, real_lr):
    fresh = build_model(dict(SUBVOXEL_SPEC))
    x = torch.from_numpy(real_lr)[None, None]
    with torch.no_grad():
        fine, coarse = fresh.encoder(x), fresh.encoder.body(x)
    assert fine.shape[2:] == tuple(2 * n for n in real_lr.shape)
    for a, b, c in [(0, 0, 0), (1, 0, 1), (1, 1, 1)]:  # every sub-site copies its voxel at init
        torch.testing.assert_close(fine[:, :, a::2, b::2, c::2], coarse, rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_tiled_subvoxel_inference_equals_whole_volume_reference(subvoxel_model, subvoxel_bundle, real_lr, backend):
    from arssr_rt.pipeline import VolumeEngine

    out_shape = (41, 33, 30)  # x2.4, x2.2, x2.3: no scale lines up with the finer grid
    reference = predict_volume(subvoxel_model, real_lr, out_shape)
    with VolumeEngine(load_bundle(subvoxel_bundle), backend=backend, tile=5) as up:  # many tiles, clipped halos
        got = up.infer(real_lr, out_shape)
    np.testing.assert_allclose(got, reference, rtol=0, atol=2e-5)
    assert float(np.abs(reference).max()) > 0.05  # a real signal was compared, not zeros


def test_benchmark_reference_feeds_a_finer_feature_grid_the_runtime_phase(subvoxel_model, real_lr):
    """The benchmark's authors'-style reference (phase coords, feature_scale 2) equals the
    training reference and the runtime; it used the LR grid's phase before."""
    from arssr_rt.bench.reference import reference_upsample

    out_shape = (41, 33, 30)
    want = predict_volume(subvoxel_model, real_lr, out_shape)
    np.testing.assert_allclose(reference_upsample(subvoxel_model, real_lr, out_shape, chunk=5000), want, rtol=0, atol=2e-5)


def test_decode_box_path_equals_the_cpu_sampler_path(subvoxel_bundle, real_lr):
    """GPU backends sample + decode whole tiles (decode_box); torch-cuda's logic runs on CPU here."""
    from arssr_rt.backends.torch_cuda_backend import TorchCudaBackend
    from arssr_rt.pipeline import VolumeEngine

    bundle = load_bundle(subvoxel_bundle)
    out_shape = (34, 31, 39)
    with VolumeEngine(bundle, backend="onnxruntime", tile=6) as up:
        want = up.infer(real_lr, out_shape)
    with VolumeEngine(bundle, backend="onnxruntime", tile=6) as up:
        up.backend.close()
        up.backend = TorchCudaBackend(bundle, BackendOptions(chunk=1000), torch_device="cpu")
        got = up.infer(real_lr, out_shape)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)


def test_training_sampler_feeds_the_decoder_the_runtime_coordinates():
    """Decoder coords from the sampler == the model's own derivation on the finer grid."""
    from arssr_rt.training.data import PatchSampler, SamplerConfig, TrainVolume

    rng = np.random.default_rng(1)
    vol = rng.random((70, 70, 70), dtype=np.float32)
    model = build_model(dict(SUBVOXEL_SPEC))
    s = PatchSampler([TrainVolume("noise", vol, np.arange(vol.size))], SamplerConfig(
        lr_patch=8, points=200, margin=0, scale_min=2.2, scale_max=3.7, coords="phase", feature_scale=2), seed=4)
    for _ in range(3):
        lr, coords, dec, _, _ = s.sample()
        derived = model.decoder_coords(torch.from_numpy(coords)[None], lr.shape)[0].numpy()
        np.testing.assert_allclose(dec, derived, atol=1e-5)


def test_init_from_a_published_grid_checkpoint_keeps_the_trained_model(real_lr):
    """Growing a trained r=1 model to r=2 keeps its encoder, decoder and modulator weights."""
    from arssr_rt.training.train import load_init

    torch.manual_seed(3)
    base = build_model({**TINY_SPEC, "coords": "phase", "decoder": "modulated"})
    grown = build_model(dict(SUBVOXEL_SPEC))
    load_init(grown, base.state_dict())
    x = torch.from_numpy(real_lr)[None, None]
    with torch.no_grad():
        fine, coarse = grown.encoder(x), base.encoder(x)
    torch.testing.assert_close(fine[:, :, 1::2, 0::2, 1::2], coarse, rtol=0, atol=0)
    for name, value in base.decoder.state_dict().items():
        torch.testing.assert_close(grown.decoder.state_dict()[name], value, rtol=0, atol=0)
    with pytest.raises(InputError, match="does not fit"):
        load_init(build_model(dict(SUBVOXEL_SPEC)), {k: v for k, v in base.state_dict().items() if "stage_two" not in k})


@pytest.mark.parametrize("bad", [0, 9, "2", 1.5, True])
def test_bundle_with_an_invalid_feature_scale_is_refused_at_load(tiny_bundle, tmp_path, bad):
    copy = tmp_path / "bad"
    shutil.copytree(tiny_bundle, copy)
    meta = json.loads((copy / "model.json").read_text())
    meta["spec"]["feature_scale"] = bad
    (copy / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="feature_scale"):
        load_bundle(copy)


def test_bundle_whose_encoder_disagrees_with_its_feature_scale_is_refused(tiny_bundle, tmp_path, real_lr):
    """A spec claiming a finer grid than the ONNX encoder makes: one-line error, no image."""
    from arssr_rt.pipeline import VolumeEngine

    copy = tmp_path / "lying"
    shutil.copytree(tiny_bundle, copy)
    meta = json.loads((copy / "model.json").read_text())
    meta["spec"]["feature_scale"] = 2
    (copy / "model.json").write_text(json.dumps(meta))
    with VolumeEngine(load_bundle(copy), backend="onnxruntime") as up:
        with pytest.raises(BackendError, match="feature_scale 2"):
            up.infer(real_lr, (30, 30, 30))
