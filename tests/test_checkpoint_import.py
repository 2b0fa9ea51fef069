"""Published ArSSR checkpoints: layout, strict import into bundles, and the ONNX contract.

The expected key sets and shapes are written out here from ../shared/ARSSR.md, independent of
the model code, so a drift in either shows up. Weights are random (TEST ONLY).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from arssr_rt.bundle import load_bundle, sha256_file  # noqa: E402
from arssr_rt.cli import main  # noqa: E402
from arssr_rt.errors import InputError, ModelError  # noqa: E402
from arssr_rt.export.checkpoint_import import export_checkpoint, extract_state_dict, import_published, load_strict  # noqa: E402
from arssr_rt.network import build_model  # noqa: E402

K3 = (3, 3, 3)
K1 = (1, 1, 1)


def conv(prefix: str, cout: int, cin: int, k: tuple = K3) -> dict[str, tuple]:
    return {f"{prefix}.weight": (cout, cin, *k), f"{prefix}.bias": (cout,)}


def published_shapes(encoder: str) -> dict[str, tuple]:
    """Every tensor of a published checkpoint, from ARSSR.md."""
    s: dict[str, tuple] = {}
    if encoder == "rdn":
        s |= conv("encoder.sfe1", 64, 1) | conv("encoder.sfe2", 64, 64)
        for b in range(8):
            for layer, cin in enumerate((64, 128, 192)):
                s |= conv(f"encoder.rdbs.{b}.layers.{layer}.conv", 64, cin)
            s |= conv(f"encoder.rdbs.{b}.lff", 64, 256, K1)
        s |= conv("encoder.gff.0", 64, 512, K1) | conv("encoder.gff.1", 64, 64) | conv("encoder.output", 128, 64)
    elif encoder == "rescnn":
        s |= conv("encoder.conv_start.0", 64, 1)
        for b in (1, 2, 3):
            for i in (0, 2, 4, 6, 8, 10):
                s |= conv(f"encoder.block{b}.{i}", 64, 64)
        s |= conv("encoder.conv_end.0", 128, 64)
    else:
        s |= conv("encoder.features.0.0", 64, 1)
        for b in range(1, 19):
            s |= conv(f"encoder.features.{b}.m.0.0", 64, 64) | conv(f"encoder.features.{b}.m.1.0", 64, 64)
        s |= conv("encoder.features.19.0", 64, 64) | conv("encoder.features.20.0", 128, 64)
    for stage, sizes in (("stage_one", (256, 256, 256, 131)), ("stage_two", (256, 256, 256, 1))):
        cin = 131
        for i, cout in zip((0, 2, 4, 6), sizes):
            s[f"decoder.{stage}.{i}.weight"] = (cout, cin)
            s[f"decoder.{stage}.{i}.bias"] = (cout,)
            cin = cout
    return s


# encoder parameters from the shapes above (ARSSR.md rounds them to 5.92 M, 2.21 M, 4.32 M)
ENCODER_PARAMS = {"rdn": 5_918_784, "rescnn": 2_214_912, "srresnet": 4_317_376}
DECODER_PARAMS = 364_676


def random_published_state(encoder: str, seed: int = 0) -> dict[str, "torch.Tensor"]:
    """A state dict in the published layout with variance-preserving random weights.

    The decoder's last bias is calibrated so its final ReLU passes most values (random
    weights otherwise leave the output mostly 0 and the comparisons would compare zeros).
    """
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in published_shapes(encoder).items():
        if key.endswith(".weight"):
            fan_in = math.prod(shape[1:])
            state[key] = (torch.rand(shape, generator=gen) * 2 - 1) * math.sqrt(3.0 / fan_in)
        else:
            state[key] = (torch.rand(shape, generator=gen) * 2 - 1) * 0.05
    state["decoder.stage_two.6.bias"] = torch.zeros(1)
    model = build_model(encoder).eval()
    model.load_state_dict(state)
    with torch.inference_mode():
        lr = torch.rand(1, 1, 8, 8, 8, generator=gen)
        coords = torch.rand(1, 256, 3, generator=gen) * 2 - 1
        x = torch.cat([model.query(model.encoder(lr), coords), coords], dim=-1)
        pre = model.decoder.stage_two[:-1](x + model.decoder.stage_one(x))  # before the final ReLU
    state["decoder.stage_two.6.bias"] = (-pre.median() + pre.std()).reshape(1)
    return state


def trilinear(features: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """The contract's sampler in plain numpy: (F, D, H, W) at (N, 3) coords -> (N, F).

    Per axis of n voxels: u = ((c + 1) * n - 1) / 2; corners floor(u), floor(u) + 1 with
    weights 1 - f, f; a corner outside [0, n) contributes 0 (docs/onnx-contract.md).
    """
    feats = features.astype(np.float64)
    n = np.array(features.shape[1:])
    u = ((coords.astype(np.float64) + 1.0) * n - 1.0) / 2.0
    i0 = np.floor(u).astype(np.int64)
    f = u - i0
    out = np.zeros((coords.shape[0], features.shape[0]))
    for corner in np.ndindex(2, 2, 2):
        idx = i0 + np.array(corner)
        w = np.prod(np.where(np.array(corner) == 1, f, 1.0 - f), axis=1)
        inside = np.all((idx >= 0) & (idx < n), axis=1)
        safe = np.clip(idx, 0, n - 1)
        vals = feats[:, safe[:, 0], safe[:, 1], safe[:, 2]].T
        out += (w * inside)[:, None] * vals
    return out.astype(np.float32)


def contract_forward(bundle_dir: Path, lr: np.ndarray, coords: np.ndarray, half: bool = False) -> np.ndarray:
    """Run a bundle exactly as docs/onnx-contract.md says: encoder, sample, decoder."""
    suffix = ".fp16.onnx" if half else ".onnx"
    dtype = np.float16 if half else np.float32
    enc = ort.InferenceSession(str(bundle_dir / f"encoder{suffix}"), providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(str(bundle_dir / f"decoder{suffix}"), providers=["CPUExecutionProvider"])
    (features,) = enc.run(["features"], {"lr": lr[None, None].astype(dtype)})
    sampled = trilinear(features[0].astype(np.float32), coords)
    (out,) = dec.run(["intensity"], {"features": sampled.astype(dtype), "coords": coords.astype(dtype)})
    return out[:, 0].astype(np.float32)


@pytest.mark.parametrize("encoder", ["rdn", "rescnn", "srresnet"])
def test_published_layout_loads_strict_with_exact_shapes(encoder: str) -> None:
    model = build_model(encoder)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == published_shapes(encoder)
    assert sum(p.numel() for p in model.encoder.parameters()) == ENCODER_PARAMS[encoder]
    assert sum(p.numel() for p in model.decoder.parameters()) == DECODER_PARAMS
    load_strict(model, random_published_state(encoder), Path("published.pkl"))


@pytest.mark.parametrize("encoder", ["rdn", "rescnn", "srresnet"])
def test_import_checkpoint_full_size_reproduces_torch_through_contract(encoder: str, tmp_path: Path, capsys) -> None:
    state = random_published_state(encoder, seed=3)
    ckpt = tmp_path / f"ArSSR_{encoder}.pkl"
    torch.save(state, ckpt)
    out = tmp_path / "bundle"
    assert main(["import-checkpoint", str(ckpt), "--encoder", encoder, "-o", str(out)]) == 0
    assert "max abs diff vs torch" in capsys.readouterr().err

    bundle = load_bundle(out)
    assert bundle.axis_order == "zyx"
    assert bundle.spec["encoder"] == encoder and bundle.feature_dim == 128
    assert bundle.meta["training"]["checkpoint_sha256"] == sha256_file(ckpt)
    assert bundle.meta["parameters"]["encoder"] == ENCODER_PARAMS[encoder]
    val = bundle.meta["validation"]
    assert val["fp32"]["inputs"] == ["random", "real"]
    assert max(val["fp32"][k] for k in ("decoder_max_abs", "forward_max_abs")) <= 1e-4
    assert val["fp32"]["encoder_max_abs"] <= 1e-4 * max(1.0, val["fp32"]["features_max_abs_value"])
    assert val["fp32"]["positive_fraction"] > 0.3

    reference = build_model(encoder).eval()
    reference.load_state_dict(state, strict=True)
    rng = np.random.default_rng(7)
    lr = rng.random((9, 10, 11), dtype=np.float32)
    coords = rng.uniform(-1.05, 1.05, size=(300, 3)).astype(np.float32)  # a few outside the volume too
    with torch.inference_mode():
        expected = reference(torch.from_numpy(lr)[None, None], torch.from_numpy(coords)[None])[0, :, 0].numpy()
    got = contract_forward(out, lr, coords)
    assert np.abs(expected).max() > 0.05  # the comparison is not between zeros
    assert np.abs(got - expected).max() <= 1e-4
    got16 = contract_forward(out, lr, coords, half=True)
    assert np.abs(got16 - expected).max() <= 2e-2 * max(1.0, float(np.abs(expected).max()))


def test_wrong_key_set_is_one_line_listing_keys(tmp_path: Path) -> None:
    state = random_published_state("rescnn")
    state["encoder.block9.0.weight"] = state.pop("encoder.block3.10.weight")
    ckpt = tmp_path / "bad.pkl"
    torch.save(state, ckpt)
    with pytest.raises(ModelError) as err:
        import_published(ckpt, "rescnn", tmp_path / "out")
    msg = str(err.value)
    assert "\n" not in msg
    assert "missing 1: encoder.block3.10.weight" in msg and "unexpected 1: encoder.block9.0.weight" in msg
    assert not (tmp_path / "out").exists()


def test_checkpoint_for_another_encoder_is_refused(tmp_path: Path) -> None:
    ckpt = tmp_path / "rdn.pkl"
    torch.save(random_published_state("rdn"), ckpt)
    with pytest.raises(ModelError, match=r"does not fit the srresnet model: missing \d+: .*\(\+\d+ more\); unexpected"):
        import_published(ckpt, "srresnet", tmp_path / "out")


def test_wrong_shape_is_refused(tmp_path: Path) -> None:
    state = random_published_state("rescnn")
    state["encoder.conv_end.0.weight"] = torch.zeros(64, 64, 3, 3, 3)
    with pytest.raises(ModelError, match=r"other shapes, e.g. encoder.conv_end.0.bias|other shapes, e.g. encoder.conv_end.0.weight \(64, 64"):
        load_strict(build_model("rescnn"), state, Path("x.pkl"))


def test_data_parallel_prefix_is_stripped() -> None:
    state = {f"module.{k}": v for k, v in random_published_state("rescnn").items()}
    cleaned = extract_state_dict(state, Path("dp.pkl"))
    load_strict(build_model("rescnn"), cleaned, Path("dp.pkl"))


SMALL_SPEC = {"encoder": "srresnet", "feature_dim": 8, "encoder_args": {"width": 8, "blocks": 1}, "decoder_width": 16, "decoder_depth": 2}


def test_unsafe_pickle_needs_trust(tmp_path: Path) -> None:
    model = build_model(SMALL_SPEC)
    ckpt = tmp_path / "run.pt"
    torch.save({"spec": SMALL_SPEC, "state_dict": model.state_dict(), "args": argparse.Namespace(lr=1e-4), "step": 7}, ckpt)
    with pytest.raises(ModelError, match="--trust-checkpoint"):
        export_checkpoint(ckpt, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    out = export_checkpoint(ckpt, tmp_path / "trusted", trust=True)
    meta = json.loads((out / "model.json").read_text())
    assert meta["training"]["step"] == 7 and meta["axis_order"] == "xyz"


def test_export_command_refuses_plain_state_dict_and_missing_file(tmp_path: Path, capsys) -> None:
    ckpt = tmp_path / "plain.pkl"
    torch.save(build_model(SMALL_SPEC).state_dict(), ckpt)
    assert main(["export", str(ckpt), "-o", str(tmp_path / "b")]) == ModelError.exit_code
    err = capsys.readouterr().err
    assert "import-checkpoint" in err and len(err.strip().splitlines()) == 1
    assert main(["export", str(tmp_path / "absent.pt"), "-o", str(tmp_path / "b")]) == InputError.exit_code
    assert "does not exist" in capsys.readouterr().err


def test_unknown_encoder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="--encoder must be one of"):
        import_published(tmp_path / "x.pkl", "unet", tmp_path / "out")
