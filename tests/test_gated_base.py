"""The gated base (spec.base = gated-lanczos3-8, a training experiment): the decoder returns
(r, g) and the model is r + l3 + sigmoid(g) (l8 - l3). Checks the sampler's two base channels,
that the grid and point paths agree with that formula, the warm start from a one-channel
residual model, and that no runtime path accepts it (it is outside the ONNX contract)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from arssr_rt import windowed_sinc  # noqa: E402
from arssr_rt.errors import ModelError  # noqa: E402
from arssr_rt.geometry import input_index_of_output  # noqa: E402
from arssr_rt.network import build_model  # noqa: E402
from arssr_rt.training.data import PatchSampler, SamplerConfig, load_training_volumes  # noqa: E402
from arssr_rt.training.train import TrainConfig, load_init, predict_volume, train  # noqa: E402
from conftest import FIXTURE_PATH  # noqa: E402

SPEC = {"encoder": "rescnn", "feature_dim": 4, "encoder_args": {"width": 4, "blocks": 1, "convs": 1},
        "decoder_width": 8, "decoder_depth": 2, "coords": "phase", "decoder": "modulated", "base": windowed_sinc.GATED}


def grid_bases(lr: np.ndarray, out_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    positions = [input_index_of_output(np.arange(H), h, H) for h, H in zip(lr.shape, out_shape)]
    return tuple(windowed_sinc.sample_grid(lr, positions, lobes=a) for a in (3, 8))  # type: ignore[return-value]


def test_sampler_gives_both_bases_at_the_targets():
    vols = load_training_volumes([FIXTURE_PATH], pyramid=0, min_size=16)
    cfg = SamplerConfig(lr_patch=8, points=64, scale_min=2.5, scale_max=2.5, base=windowed_sinc.GATED, separable=True,
                        degradations={"kspace": 1.0})
    lr, coords, _, _, base = PatchSampler(vols, cfg, seed=3).sample()
    assert base.shape == (64, 2)
    pos = (coords.astype(np.float64) + 1) / 2 * 8 - 0.5
    np.testing.assert_allclose(base[:, 0], windowed_sinc.sample_points(lr, pos, 3), atol=1e-5)
    np.testing.assert_allclose(base[:, 1], windowed_sinc.sample_points(lr, pos, 8), atol=1e-5)
    assert np.abs(base[:, 0] - base[:, 1]).max() > 1e-4  # two different bases, not one twice


def test_grid_and_point_paths_follow_the_gate_formula():
    torch.manual_seed(0)
    model = build_model(SPEC).eval()
    lr = np.random.default_rng(1).random((9, 10, 11)).astype(np.float32)
    out_shape = (18, 15, 22)
    pred = predict_volume(model, lr, out_shape)
    l3, l8 = grid_bases(lr, out_shape)
    feats = model.encoder(torch.from_numpy(lr)[None, None])
    axes = [(np.arange(H) + 0.5) / H * 2 - 1 for H in out_shape]
    pick = (np.array([0, 5, 17]), np.array([3, 0, 14]), np.array([21, 7, 0]))
    coords = torch.tensor(np.stack([axes[k][pick[k]] for k in range(3)], axis=1)[None], dtype=torch.float32)
    with torch.no_grad():
        rg = model.decode(model.query(feats, coords), model.decoder_coords(coords, lr.shape))[0].numpy()
        point = model(torch.from_numpy(lr)[None, None], coords)[0, :, 0].numpy()
    gate = 1 / (1 + np.exp(-rg[:, 1]))
    expected = rg[:, 0] + l3[pick] + gate * (l8[pick] - l3[pick])
    np.testing.assert_allclose(pred[pick], expected, atol=1e-5)
    np.testing.assert_allclose(point, expected, atol=1e-5)


@pytest.mark.parametrize("source_base,logit", [("lanczos8", 3.0), ("lanczos3", -3.0), ("lanczos3", 0.0)])
def test_grown_from_a_residual_model_it_starts_from_its_source(source_base, logit):
    """Residual row kept, gate constant at ``logit``: the difference from the source is exactly
    the move from the source's base to l3 + sigmoid(logit) (l8 - l3)."""
    torch.manual_seed(2)
    source = build_model({**SPEC, "base": source_base}).eval()
    grown = build_model(SPEC).eval()
    load_init(grown, source.state_dict(), logit)
    lr = np.random.default_rng(3).random((8, 9, 10)).astype(np.float32)
    out_shape = (16, 18, 20)
    l3, l8 = grid_bases(lr, out_shape)
    mixed = l3 + 1 / (1 + np.exp(-logit)) * (l8 - l3)
    own = l8 if source_base == "lanczos8" else l3
    np.testing.assert_allclose(predict_volume(grown, lr, out_shape), predict_volume(source, lr, out_shape) - own + mixed, atol=1e-5)


def test_gated_training_runs_and_moves_the_gate(tmp_path):
    sampler = {"lr_patch": 6, "points": 64, "margin": 1, "scale_min": 2.0, "scale_max": 3.0,
               "degradations": {"kspace": 0.5, "cubic": 0.5}, "separable": True}
    cfg = TrainConfig(data=[str(FIXTURE_PATH)], spec=SPEC, sampler=sampler, batch=2, steps=20, lr=3e-3, pyramid=0,
                      checkpoint_every=20, val_every=1000, log_every=1, threads=1)
    state = torch.load(train(cfg, tmp_path / "gated", progress=False), map_location="cpu", weights_only=True)
    model = build_model(state["spec"])
    model.load_state_dict(state["model"])
    last = [m for m in model.decoder.stage_two if isinstance(m, torch.nn.Linear)][-1]
    assert last.weight.shape[0] == 2
    assert float(last.weight[1].detach().abs().sum()) > 0  # the gate row learned


def test_no_runtime_path_accepts_the_gated_base(tmp_path):
    from arssr_rt.export.bundle_writer import write_bundle

    with pytest.raises(ModelError, match="training-only"):
        write_bundle(build_model(SPEC), tmp_path / "bundle", name="gated-TEST")
    assert not (tmp_path / "bundle").exists()
    with pytest.raises(ValueError):
        windowed_sinc.lobes_of(windowed_sinc.GATED)


def test_a_bundle_that_claims_the_gated_base_is_refused_at_load(tmp_path):
    """A hand-edited model.json naming the gated base is refused by load_bundle (one line),
    before any volume is read; the embedded bundle with its base as shipped still loads."""
    import json
    import shutil

    from arssr_rt.bundle import embedded_models_dir, load_bundle

    bundle = shutil.copytree(embedded_models_dir() / "default", tmp_path / "edited")
    load_bundle(bundle)
    meta = json.loads((bundle / "model.json").read_text())
    meta["spec"]["base"] = windowed_sinc.GATED
    (bundle / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="training-only"):
        load_bundle(bundle)
