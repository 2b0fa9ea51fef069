"""A residual model (spec.base = lanczos3 | lanczos8): decoder output + windowed-sinc base, in
training data, the torch model, the tiled runtime and from a warm start."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from arssr_rt import windowed_sinc  # noqa: E402
from arssr_rt.geometry import input_index_of_output  # noqa: E402
from arssr_rt.network import build_model  # noqa: E402
from arssr_rt.training.data import PatchSampler, SamplerConfig, load_training_volumes  # noqa: E402
from arssr_rt.training.train import TrainConfig, predict_volume, train  # noqa: E402
from conftest import FIXTURE_PATH  # noqa: E402

SPEC = {"encoder": "rescnn", "feature_dim": 4, "encoder_args": {"width": 4, "blocks": 1, "convs": 1},
        "decoder_width": 8, "decoder_depth": 2, "coords": "phase", "decoder": "modulated", "base": "lanczos3"}


@pytest.mark.parametrize("base_name", ["lanczos3", "lanczos8"])
def test_sampler_base_is_the_windowed_sinc_of_its_lr_at_the_targets(base_name):
    vols = load_training_volumes([FIXTURE_PATH], pyramid=0, min_size=16)
    cfg = SamplerConfig(lr_patch=8, points=64, scale_min=2.5, scale_max=2.5, base=base_name, separable=True,
                        degradations={"kspace": 1.0})
    lr, coords, _, target, base = PatchSampler(vols, cfg, seed=3).sample()
    pos = (coords.astype(np.float64) + 1) / 2 * 8 - 0.5
    lobes = windowed_sinc.lobes_of(base_name)
    assert base.shape == (64, 1)
    base = base[:, 0]
    np.testing.assert_allclose(base, windowed_sinc.sample_points(lr, pos, lobes), atol=1e-5)
    if lobes != 3:  # the sampler really uses the bundle's lobes
        assert np.abs(base - windowed_sinc.sample_points(lr, pos, 3)).max() > 1e-4
    assert np.abs(base - target).mean() < 0.1  # a sensible estimate of the HR target


@pytest.mark.parametrize("base_name", ["lanczos3", "lanczos8"])
def test_started_as_base_the_model_is_exactly_its_base(base_name):
    torch.manual_seed(0)
    model = build_model({**SPEC, "base": base_name}).eval()
    model.start_as_base()
    lobes = windowed_sinc.lobes_of(base_name)
    lr = np.random.default_rng(0).random((9, 10, 11)).astype(np.float32)
    out_shape = (20, 17, 30)
    pred = predict_volume(model, lr, out_shape)
    base = windowed_sinc.sample_grid(lr, [input_index_of_output(np.arange(H), h, H) for h, H in zip(lr.shape, out_shape)],
                                     lobes=lobes)
    np.testing.assert_allclose(pred, base, atol=1e-6)
    coords = torch.rand(1, 50, 3) * 2 - 1
    with torch.no_grad():
        direct = model(torch.from_numpy(lr)[None, None], coords)
    pos = (coords[0].double().numpy() + 1) / 2 * np.array(lr.shape) - 0.5
    np.testing.assert_allclose(direct[0, :, 0].numpy(), windowed_sinc.sample_points(lr, pos, lobes), atol=1e-6)


def test_residual_training_from_a_direct_model_starts_as_base_and_learns(tmp_path):
    sampler = {"lr_patch": 6, "points": 64, "margin": 1, "scale_min": 2.0, "scale_max": 3.0, "anisotropic": 0.3,
               "degradations": {"kspace": 0.5, "kspace-noise": 0.2, "slice": 0.3}, "separable": True, "thick_max": 6.0,
               "slice_gap": 0.3, "slice_profiles": ["box", "gaussian"], "contrast": 0.5}
    direct = {**SPEC, "base": "none"}
    first = train(TrainConfig(data=[str(FIXTURE_PATH)], spec=direct, sampler=sampler, batch=2, steps=2, pyramid=0,
                              checkpoint_every=2, val_every=1000, log_every=1, threads=1), tmp_path / "direct", progress=False)
    cfg = TrainConfig(data=[str(FIXTURE_PATH)], spec=SPEC, sampler=sampler, batch=2, steps=30, lr=3e-3, pyramid=0,
                      checkpoint_every=30, val_every=1000, log_every=1, threads=1, init=str(first), start_as_base=True)
    ckpt = train(cfg, tmp_path / "residual", progress=False)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    model = build_model(state["spec"])
    model.load_state_dict(state["model"])
    last = [m for m in model.decoder.stage_two if isinstance(m, torch.nn.Linear)][-1]
    assert float(last.weight.detach().abs().sum()) > 0  # it moved away from the pure base


@pytest.fixture(scope="module", params=["lanczos3", "lanczos8"])
def residual_model(request):
    from conftest import TINY_SPEC

    torch.manual_seed(1)
    model = build_model({**TINY_SPEC, "coords": "phase", "decoder": "modulated", "base": request.param}).eval()
    with torch.no_grad():  # random, non-trivial weights (TEST ONLY)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def residual_bundle(residual_model, tmp_path_factory):
    from arssr_rt.export.bundle_writer import write_bundle

    return write_bundle(residual_model, tmp_path_factory.mktemp("bundles") / residual_model.spec.base, name="residual-TEST",
                        validate=True)


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_tiled_residual_inference_equals_the_whole_volume_reference(residual_model, residual_bundle, fixture_image, backend):
    """Every tile adds the base of its own outputs; the sum equals decoder + base of the whole volume."""
    from arssr_rt.bundle import load_bundle
    from arssr_rt.pipeline import VolumeEngine

    data = np.asarray(fixture_image.dataobj, dtype=np.float32)[10:27, 20:35, 22:35]
    lr = (data - data.min()) / (data.max() - data.min())
    out_shape = (41, 33, 30)
    reference = predict_volume(residual_model, lr, out_shape)
    with VolumeEngine(load_bundle(residual_bundle), backend=backend, tile=5) as up:
        got = up.infer(lr, out_shape)
    np.testing.assert_allclose(got, reference, rtol=0, atol=2e-5)
    base = windowed_sinc.sample_grid(lr, [input_index_of_output(np.arange(H), h, H) for h, H in zip(lr.shape, out_shape)],
                                     lobes=windowed_sinc.lobes_of(residual_model.spec.base))
    assert np.abs(got - base).max() > 1e-3  # the decoder's residual is there too
