"""The tiled, chunked runtime pipeline against the whole-volume torch reference."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from arssr_rt.backends.base import BackendOptions  # noqa: E402
from arssr_rt.geometry import plan_output_grid  # noqa: E402
from arssr_rt.pipeline import VolumeEngine, upsample  # noqa: E402
from arssr_rt.sampling import box_coords, sample_box  # noqa: E402
from arssr_rt.tiling import plan_tiles  # noqa: E402
from arssr_rt.network import build_model  # noqa: E402
from arssr_rt.training.train import predict_volume  # noqa: E402

from conftest import FIXTURE_PATH as FIXTURE  # noqa: E402
# random weights: TEST ONLY (geometry and tiling do not need a trained model)
SPEC = {"encoder": "rescnn", "feature_dim": 8, "encoder_args": {"width": 8, "blocks": 2, "convs": 2}, "decoder_width": 16, "decoder_depth": 2}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model(SPEC).eval()
    # the random init gives tiny outputs; shift the last bias so values are O(1) and ReLU is active
    with torch.no_grad():
        m.decoder.stage_two[-2].bias.fill_(0.3)
    return m


@pytest.fixture(scope="module")
def bundle(model, tmp_path_factory):
    from arssr_rt.bundle import load_bundle
    from arssr_rt.export.bundle_writer import write_bundle

    return load_bundle(write_bundle(model, tmp_path_factory.mktemp("b") / "tiny", name="tiny-random-TEST"))


@pytest.fixture(scope="module")
def lr() -> np.ndarray:
    data = np.asarray(nib.load(FIXTURE).get_fdata(dtype=np.float32))[:40, :36, :44]
    return (data - data.min()) / (data.max() - data.min())


def test_sampling_matches_grid_sample_on_anisotropic_noninteger_grid():
    rng = np.random.default_rng(1)
    h, H = (6, 9, 5), (15, 13, 16)
    feat = rng.normal(size=(5,) + h).astype(np.float32)
    coords = box_coords(H, (0, 0, 0), H)
    grid = torch.from_numpy(coords).flip(-1).view(1, 1, 1, -1, 3)
    ref = torch.nn.functional.grid_sample(torch.from_numpy(feat)[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    ours = sample_box(np.moveaxis(feat, 0, -1), (0, 0, 0), h, H, (0, 0, 0), H).reshape(-1, 5)
    np.testing.assert_allclose(ours, ref[0, :, 0, 0].T.numpy(), atol=1e-5)


def test_tiles_own_every_output_voxel_exactly_once():
    for in_shape, out_shape, tile in [((40, 36, 44), (100, 72, 57), 12), ((7, 9, 30), (7, 9, 90), 5), ((13, 13, 13), (8, 8, 8), 4)]:
        count = np.zeros(out_shape, dtype=np.int32)
        for t in plan_tiles(in_shape, out_shape, tile, receptive_radius=3):
            count[tuple(slice(a, b) for a, b in t.output)] += 1
        assert count.min() == 1 and count.max() == 1


def test_pipeline_equals_whole_volume_torch_reference(model, bundle, lr):
    out_shape = (80, 90, 66)  # x2, x2.5, x1.5
    ref = predict_volume(model, lr, out_shape)
    with VolumeEngine(bundle, backend="torch", tile=1000) as up:
        ours = up.infer(lr, out_shape)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    assert ref.std() > 1e-3  # not a trivially constant output


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_tiled_equals_untiled(bundle, lr, backend):
    out_shape = (80, 90, 66)
    with VolumeEngine(bundle, backend=backend, tile=1000, chunk=50_000) as up:
        whole = up.infer(lr, out_shape)
    with VolumeEngine(bundle, backend=backend, tile=11, chunk=777) as up:
        tiles = plan_tiles(lr.shape, out_shape, 11, bundle.receptive_radius)
        assert len(tiles) > 8  # the volume really is larger than one tile
        tiled = up.infer(lr, out_shape)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)


def test_onnxruntime_equals_torch_after_restore(bundle):
    img = nib.load(FIXTURE)
    data = np.asarray(img.get_fdata(dtype=np.float32))
    a, _ = upsample(data, img.affine, scale=(2, 2, 1.5), model=bundle, backend="torch", tile=24)
    b, aff = upsample(data, img.affine, scale=(2, 2, 1.5), model=bundle, backend="onnxruntime", tile=24)
    assert a.shape == (128, 128, 96)
    np.testing.assert_allclose(b, a, atol=1e-4 * (data.max() - data.min()))
    np.testing.assert_allclose(aff, plan_output_grid(data.shape, img.affine, scale=(2, 2, 1.5)).affine)


def test_zyx_bundle_sees_transposed_array(model, bundle, lr, tmp_path):
    """A bundle declaring zyx (published weights) gets the array transposed, output transposed back."""
    import json
    import shutil

    from arssr_rt.bundle import load_bundle, write_model_json
    from arssr_rt.volume import Volume

    zyx_dir = tmp_path / "zyx"
    shutil.copytree(bundle.path, zyx_dir)
    meta = json.loads((zyx_dir / "model.json").read_text())
    meta["axis_order"] = "zyx"
    write_model_json(zyx_dir, meta)
    vol = Volume(data=lr * 100 + 5, affine=np.eye(4))
    grid = plan_output_grid(lr.shape, np.eye(4), scale=(2.0, 1.5, 1.0))
    with VolumeEngine(load_bundle(zyx_dir), backend="onnxruntime") as up:
        out = up.run(vol, grid)
    ref = predict_volume(model, np.ascontiguousarray(lr.transpose(2, 1, 0)), grid.shape[::-1]).transpose(2, 1, 0)
    np.testing.assert_allclose(out, ref * 100 + 5, atol=1e-3)


def test_chunk_size_does_not_change_result(bundle, lr):
    with VolumeEngine(bundle, backend="onnxruntime", chunk=1 << 20) as up:
        big = up.infer(lr, (60, 54, 66))
    with VolumeEngine(bundle, backend="onnxruntime", chunk=1000, options=BackendOptions(threads=1)) as up:
        small = up.infer(lr, (60, 54, 66))
    np.testing.assert_allclose(small, big, atol=1e-6)


@pytest.mark.parametrize("decoder", ["arssr", "modulated"])
def test_phase_coordinate_bundle_matches_torch_reference(tmp_path, lr, decoder):
    """A 'phase' bundle: the runtime feeds the decoder the sub-voxel cell phase, like training."""
    from arssr_rt.bundle import load_bundle
    from arssr_rt.export.bundle_writer import write_bundle

    torch.manual_seed(1)
    model = build_model({**SPEC, "coords": "phase", "decoder": decoder}).eval()
    with torch.no_grad():
        if decoder == "modulated":  # the modulator starts at zero: give it weight to test
            model.decoder.modulator[-1].weight.normal_(0, 0.3)
        else:
            model.decoder.stage_two[-2].bias.fill_(0.3)
    bundle = load_bundle(write_bundle(model, tmp_path / "phase", name="tiny-phase-TEST"))
    assert bundle.coords_mode == "phase"
    out_shape = (80, 90, 44)  # x2, x2.5, x1
    ref = predict_volume(model, lr, out_shape)
    with VolumeEngine(bundle, backend="onnxruntime", tile=13, chunk=5000) as up:
        ours = up.infer(lr, out_shape)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    # the phase really reaches the decoder: a global-coordinate run of the same weights differs
    model.spec.coords = "global"
    assert np.abs(predict_volume(model, lr, out_shape) - ref).max() > 1e-4
