"""Runtime backends: onnxruntime (default) and torch (reference) behind the backend protocol.

Random-weight shrunk models (TEST ONLY); the published sizes are covered by
test_checkpoint_import.py.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

from arssr_rt.backends.base import BackendOptions, open_backend  # noqa: E402
from arssr_rt.bundle import load_bundle  # noqa: E402
from arssr_rt.errors import BackendError, MissingExtraError, ModelError  # noqa: E402
from arssr_rt.export.bundle_writer import write_bundle  # noqa: E402
from arssr_rt.network import build_model  # noqa: E402

SHRUNK = {
    "rdn": {"encoder": "rdn", "feature_dim": 8, "encoder_args": {"width": 8, "growth": 8, "blocks": 2, "layers": 2}, "decoder_width": 16},
    "rescnn": {"encoder": "rescnn", "feature_dim": 8, "encoder_args": {"width": 8, "blocks": 2, "convs": 2}, "decoder_width": 16},
    "srresnet": {"encoder": "srresnet", "feature_dim": 8, "encoder_args": {"width": 8, "blocks": 2}, "decoder_width": 16},
}


def lively(model):
    """Calibrate the last decoder bias so the final ReLU passes most outputs (random weights)."""
    model.eval()
    gen = torch.Generator().manual_seed(5)
    last = model.decoder.stage_two[-2]
    with torch.no_grad():
        last.bias.zero_()
        lr = torch.rand(1, 1, 8, 8, 8, generator=gen)
        coords = torch.rand(1, 256, 3, generator=gen) * 2 - 1
        x = torch.cat([model.query(model.encoder(lr), coords), coords], dim=-1)
        pre = model.decoder.stage_two[:-1](x + model.decoder.stage_one(x))
        last.bias.fill_(float(-pre.median() + pre.std()))
    return model


@pytest.fixture(scope="module", params=sorted(SHRUNK))
def bundle(request, tmp_path_factory):
    torch.manual_seed(1)
    model = lively(build_model(dict(SHRUNK[request.param])))
    return load_bundle(write_bundle(model, tmp_path_factory.mktemp("be") / request.param, name=f"{request.param}-TEST", validate=False))


@pytest.fixture(scope="module")
def fixture_lr(fixture_path: Path) -> np.ndarray:
    data = np.asarray(nib.load(fixture_path).dataobj, dtype=np.float32)[10:30, 12:28, 8:30]
    return (data - data.min()) / (data.max() - data.min())


def test_onnxruntime_matches_torch_on_encode_and_decode(bundle, fixture_lr) -> None:
    rng = np.random.default_rng(0)
    with open_backend("onnxruntime", bundle) as ort_be, open_backend("torch", bundle) as torch_be:
        assert (ort_be.name, torch_be.name) == ("onnxruntime", "torch")
        f_ort, f_torch = ort_be.encode(fixture_lr), torch_be.encode(fixture_lr)
        assert f_ort.shape == (8, *fixture_lr.shape) and f_ort.dtype == np.float32
        assert np.abs(f_ort - f_torch).max() <= 1e-4
        feats = rng.normal(size=(3000, 8)).astype(np.float32)
        coords = rng.uniform(-1, 1, size=(3000, 3)).astype(np.float32)
        d_ort, d_torch = ort_be.decode(feats, coords), torch_be.decode(feats, coords)
        assert d_ort.shape == (3000,) and d_ort.dtype == np.float32
        assert (d_torch > 0).mean() > 0.3  # not a comparison of zeros
        assert np.abs(d_ort - d_torch).max() <= 1e-4


def test_onnxruntime_fp16_is_close_and_returns_float32(bundle, fixture_lr) -> None:
    with open_backend("onnxruntime", bundle) as fp32, open_backend("onnxruntime", bundle, BackendOptions(precision="fp16")) as fp16:
        a, b = fp32.encode(fixture_lr), fp16.encode(fixture_lr)
        assert b.dtype == np.float32
        assert np.abs(a - b).max() <= 1e-2 * max(1.0, float(np.abs(a).max()))


def test_onnxruntime_session_options(bundle) -> None:
    be = open_backend("onnxruntime", bundle, BackendOptions(threads=1))
    ort = pytest.importorskip("onnxruntime")
    for session in (be._encoder, be._decoder):
        opts = session.get_session_options()
        assert opts.intra_op_num_threads == 1
        assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        assert session.get_providers() == ["CPUExecutionProvider"]
    be.close()


def test_bad_tiles_and_chunks_are_refused(bundle) -> None:
    for name in ("onnxruntime", "torch"):
        with open_backend(name, bundle) as be:
            with pytest.raises(BackendError, match=r"\(D, H, W\)"):
                be.encode(np.zeros((1, 4, 4, 4), np.float32))
            with pytest.raises(BackendError, match=r"\(N, 8\) features"):
                be.decode(np.zeros((5, 7), np.float32), np.zeros((5, 3), np.float32))


def test_unsupported_precisions_are_backend_errors(bundle) -> None:
    with pytest.raises(BackendError, match="onnxruntime backend supports precision fp32, fp16"):
        open_backend("onnxruntime", bundle, BackendOptions(precision="fp8"))
    with pytest.raises(BackendError, match="torch backend supports precision fp32, not"):
        open_backend("torch", bundle, BackendOptions(precision="fp16"))


def test_torch_backend_without_torch_is_a_missing_extra(bundle, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    with pytest.raises(MissingExtraError, match=r"pip install"):
        open_backend("torch", bundle)


def test_onnxruntime_without_onnxruntime_is_a_missing_extra(bundle, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingExtraError, match="onnxruntime"):
        open_backend("onnxruntime", bundle)


def test_graph_that_breaks_the_contract_is_named(bundle, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(bundle.path, tmp_path / "renamed"))
    model = onnx.load(str(copy / "decoder.onnx"))
    old = model.graph.input[1].name
    model.graph.input[1].name = "xyz"
    for node in model.graph.node:
        node.input[:] = ["xyz" if i == old else i for i in node.input]
    onnx.save(model, str(copy / "decoder.onnx"))
    with pytest.raises(ModelError, match=r"decoder\.onnx breaks the ONNX contract: inputs \['features', 'xyz'\]"):
        open_backend("onnxruntime", load_bundle(copy, verify=False))


def test_unloadable_graph_is_named(bundle, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(bundle.path, tmp_path / "garbage"))
    (copy / "encoder.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(ModelError, match=r"onnxruntime cannot load .*encoder\.onnx"):
        open_backend("onnxruntime", load_bundle(copy, verify=False))


def test_torch_backend_refuses_weights_that_do_not_fit(bundle, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(bundle.path, tmp_path / "wrongweights"))
    payload = torch.load(copy / "weights.pt", weights_only=True)
    payload["state_dict"].pop(next(iter(payload["state_dict"])))
    torch.save(payload, copy / "weights.pt")
    with pytest.raises(ModelError, match=r"weights\.pt does not match its spec"):
        open_backend("torch", load_bundle(copy, verify=False))


def test_full_volume_onnxruntime_equals_torch_tiled(bundle, fixture_path: Path) -> None:
    """The whole pipeline, tiled, on a real crop: onnxruntime == torch after intensity restore."""
    pipeline = pytest.importorskip("arssr_rt.pipeline")
    from arssr_rt.geometry import plan_output_grid
    from arssr_rt.volume import Volume

    img = nib.load(fixture_path)
    data = np.asarray(img.dataobj, dtype=np.float32)[8:40, 10:34, 12:40]
    volume = Volume(data=data, affine=img.affine)
    grid = plan_output_grid(volume.shape, volume.affine, scale=(1.7, 2.0, 1.3))
    with pipeline.VolumeEngine(bundle, backend="onnxruntime", tile=12, chunk=5000) as up:
        assert up.backend.name == "onnxruntime"
        a = up.run(volume, grid)
    with pipeline.VolumeEngine(bundle, backend="torch", tile=12, chunk=5000) as up:
        b = up.run(volume, grid)
    assert a.shape == grid.shape and a.dtype == np.float32
    assert a.std() > 0.2  # the output varies (intensity units), it is not a constant
    assert np.abs(a - b).max() <= 1e-4
