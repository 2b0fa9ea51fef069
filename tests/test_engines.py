"""TensorRT engine logic on the CPU, against a fake ``tensorrt`` of the 10.x and 11.x APIs.

What is pinned here: the profiles given to the builder, FP16 by flag on 10.x but by the fp16
ONNX on 11.x, TF32 off for fp32, the cache key and its sidecar, a mismatching or corrupt
engine never reaching deserialisation, bindings by tensor name, the two device-memory-size
properties, exact encoder tiling beyond the profile, and the two-stream device decode loop
(buffer reuse ordering, view reuse of the encoder output, results equal to the CPU path).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from arssr_rt.backends.base import BackendOptions, open_backend
from arssr_rt.backends.tensorrt_backend import TensorRTBackend
from arssr_rt.engines import builder
from arssr_rt.engines.cache import EngineCache, EngineKey, key_mismatch
from arssr_rt.engines.device_decode import view_in
from arssr_rt.engines.gpu_probe import GpuInfo, gpu_unavailable_reason
from arssr_rt.engines.runner import TrtEngine, device_memory_size
from arssr_rt.errors import BackendError, MissingExtraError, ModelError
from arssr_rt.sampling import box_coords, sample_box

from fake_tensorrt import FakeDevice, NumpySampler, fake_decoder, fake_encoder, make_fake_bundle, make_fake_tensorrt

TRT10, TRT11, TRT10_0 = "10.13.0.35", "11.0.0.9", "10.0.1.6"
GPU = GpuInfo(0, "NVIDIA H100 80GB HBM3", 9, 0, 80 << 30)
F = 4


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_fake_bundle(tmp_path_factory.mktemp("bundle") / "fake", feature_dim=F, receptive_radius=1)


@pytest.fixture
def cache(tmp_path) -> EngineCache:
    return EngineCache(tmp_path / "engines")


def open_fake(bundle, cache, version=TRT10, precision="fp32", chunk=262144, trt=None, device=None):
    device = device or FakeDevice()
    trt = trt or make_fake_tensorrt(version, device)
    trt.device = device
    backend = TensorRTBackend(bundle, BackendOptions(precision=precision, chunk=chunk), trt=trt, device=device, gpu=GPU,
                              cache=cache, sampler=NumpySampler(device))
    return backend, trt, device


def builds(trt) -> list[dict]:
    return [detail for what, detail in trt.calls if what == "build"]


# ---------------------------------------------------------------- import hygiene and probing


def test_importing_engines_and_backend_loads_no_gpu_library():
    code = (
        "import sys, arssr_rt.engines, arssr_rt.engines.builder, arssr_rt.engines.runner, arssr_rt.engines.cache, "
        "arssr_rt.engines.sampler, arssr_rt.engines.device_decode, arssr_rt.engines.gpu_probe, arssr_rt.backends.tensorrt_backend, "
        "arssr_rt.backends.torch_cuda_backend\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorrt', 'cuda', 'torch', 'cupy')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(not gpu_unavailable_reason(), reason="a GPU is present: the no-GPU refusal cannot be observed")
def test_tensorrt_backend_refuses_without_gpu_before_importing_tensorrt(bundle):
    code = (
        "import sys\nfrom arssr_rt.bundle import load_bundle\nfrom arssr_rt.backends.base import open_backend\n"
        "from arssr_rt.errors import BackendError\n"
        f"b = load_bundle({str(bundle.path)!r})\n"
        "try:\n    open_backend('tensorrt', b)\nexcept BackendError as e:\n    print('refused:', e)\n"
        "else:\n    raise SystemExit('opened without a GPU')\n"
        "assert 'tensorrt' not in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.startswith("refused:") and ("GPU" in out or "arssr-rt[gpu]" in out)


# ---------------------------------------------------------------- builder: profiles and precision


@pytest.mark.parametrize("version", [TRT10, TRT11])
def test_profiles_cover_a_tile_with_halo_and_max_points(bundle, cache, version):
    trt = make_fake_tensorrt(version)
    settings = builder.BuildSettings(precision="fp32", max_points=4096, tile=16)
    entries = builder.ensure_engines(trt, bundle, settings, GPU, cache, exact=True)
    enc, dec = entries["encoder"][0], entries["decoder"][0]
    edge = 16 + 2 * (bundle.receptive_radius + 1)
    assert enc.key.profiles == {"lr": [[1, 1, 1, 1, 1], [1, 1, edge, edge, edge], [1, 1, edge, edge, edge]]}
    assert dec.key.profiles == {"features": [[1, F], [4096, F], [4096, F]], "coords": [[1, 3], [4096, 3], [4096, 3]]}
    plan = json.loads(cache.load(dec, dec.key))
    assert {t["name"]: t.get("profile") for t in plan["io"] if t["mode"] == "INPUT"} == dec.key.profiles


def test_trt10_fp16_sets_the_flag_on_the_fp32_onnx(bundle, cache):
    trt = make_fake_tensorrt(TRT10)
    builder.ensure_engines(trt, bundle, builder.BuildSettings(precision="fp16"), GPU, cache)
    for b in builds(trt):
        assert "FP16" in b["flags"]
        assert not b["onnx"].endswith(".fp16.onnx")
    assert all(flags == 0 for what, flags in trt.calls if what == "create_network")  # weakly typed


def test_trt11_fp16_builds_from_the_fp16_onnx_without_any_flag(bundle, cache):
    trt = make_fake_tensorrt(TRT11)
    assert not hasattr(trt.BuilderFlag, "FP16")  # the real 11.x raises on BuilderFlag.FP16
    entries = builder.ensure_engines(trt, bundle, builder.BuildSettings(precision="fp16"), GPU, cache)
    assert all(b["onnx"].endswith(".fp16.onnx") for b in builds(trt))
    plan = json.loads(cache.load(entries["decoder"][0], entries["decoder"][0].key))
    assert {t["dtype"] for t in plan["io"]} == {"HALF"}  # strongly typed: fp16 I/O
    assert entries["encoder"][0].key.onnx_sha256 == json.loads((bundle.path / "model.json").read_text())["files"]["encoder.fp16.onnx"]


@pytest.mark.parametrize("version", [TRT10, TRT11])
def test_fp32_switches_tf32_off(bundle, cache, version):
    trt = make_fake_tensorrt(version)
    builder.ensure_engines(trt, bundle, builder.BuildSettings(precision="fp32"), GPU, cache)
    assert all("TF32" not in b["flags"] and "FP16" not in b["flags"] for b in builds(trt))


def test_trt11_fp16_needs_the_fp16_onnx(tmp_path, cache):
    no_fp16 = make_fake_bundle(tmp_path / "nofp16", feature_dim=F, with_fp16=False)
    with pytest.raises(ModelError, match=r"encoder\.fp16\.onnx"):
        builder.ensure_engines(make_fake_tensorrt(TRT11), no_fp16, builder.BuildSettings(precision="fp16"), GPU, cache)
    builder.ensure_engines(make_fake_tensorrt(TRT10), no_fp16, builder.BuildSettings(precision="fp16"), GPU, cache)  # 10.x: flag


def test_engines_are_built_once_and_the_timing_cache_is_kept(bundle, cache):
    trt = make_fake_tensorrt(TRT10)
    settings = builder.BuildSettings()
    first = builder.ensure_engines(trt, bundle, settings, GPU, cache)
    again = builder.ensure_engines(trt, bundle, settings, GPU, cache)
    assert [b for _, b in first.values()] == [True, True] and [b for _, b in again.values()] == [False, False]
    assert len(builds(trt)) == 2
    timing = cache.timing_cache_path(TRT10, GPU.name, GPU.sm)
    assert json.loads(timing.read_bytes())["builds"] == 2


@pytest.mark.parametrize("bad", [{"tile": 0}, {"max_points": 0}, {"max_points": 255}, {"precision": "int8"}])
def test_bad_build_settings_are_refused(bad):
    from arssr_rt.errors import InputError

    with pytest.raises(InputError):
        builder.BuildSettings(**bad)


# ---------------------------------------------------------------- cache key and refusal


def a_key(**change) -> EngineKey:
    base = dict(role="decoder", onnx_sha256="a" * 64, trt_version=TRT10, gpu_name=GPU.name, gpu_sm="sm_90", precision="fp16",
                profiles={"features": [[1, 4], [8, 4], [8, 4]]})
    base.update(change)
    return EngineKey(**base)


@pytest.mark.parametrize("field, value", [
    ("onnx_sha256", "b" * 64), ("trt_version", TRT11), ("gpu_name", "NVIDIA A100-SXM4-80GB"), ("gpu_sm", "sm_80"),
    ("precision", "fp32"), ("profiles", {"features": [[1, 4], [16, 4], [16, 4]]}), ("role", "encoder"),
])
def test_every_key_field_changes_the_digest_and_is_named_in_the_mismatch(field, value):
    assert a_key().digest == a_key().digest
    other = a_key(**{field: value})
    assert other.digest != a_key().digest
    assert key_mismatch(a_key(), other).startswith(field)


def test_sidecar_records_the_key_and_the_engine_checksum(cache):
    entry = cache.store(a_key(), b"engine-bytes", {"model": "fake"})
    meta = json.loads(entry.sidecar_path.read_text())
    assert EngineKey.from_dict(meta["key"]) == a_key()
    assert meta["engine_bytes"] == len(b"engine-bytes") and meta["model"] == "fake"
    assert entry.engine_path.name == f"decoder-{a_key().digest}.engine"
    assert cache.load(entry, a_key()) == b"engine-bytes"


@pytest.mark.parametrize("field, value", [("trt_version", TRT11), ("gpu_sm", "sm_89"), ("onnx_sha256", "c" * 64), ("precision", "fp32")])
def test_a_mismatching_engine_is_refused_before_reading_it(cache, field, value):
    entry = cache.store(a_key(), b"engine-bytes")
    with pytest.raises(BackendError, match=field):
        cache.load(entry, a_key(**{field: value}))


def test_profiles_may_differ_only_when_the_caller_allows_it(cache):
    entry = cache.store(a_key(), b"x")
    other = a_key(profiles={"features": [[1, 4], [64, 4], [64, 4]]})
    with pytest.raises(BackendError, match="profiles"):
        cache.load(entry, other)
    assert cache.load(entry, other, require_profiles=False) == b"x"


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_a_damaged_engine_file_is_refused(cache, damage):
    entry = cache.store(a_key(), b"engine-bytes-0123456789")
    if damage == "truncate":
        entry.engine_path.write_bytes(b"engine")
    elif damage == "flip":
        entry.engine_path.write_bytes(b"engine-bytes-0123456780")
    else:
        entry.engine_path.unlink()
    with pytest.raises(BackendError):
        cache.load(entry, a_key())


def test_an_engine_from_another_tensorrt_version_is_never_deserialised(bundle, cache):
    backend, trt10, _ = open_fake(bundle, cache, TRT10)
    backend.close()
    # the same cache, now under TensorRT 11: the 10.x engines must not reach the runtime
    device = FakeDevice()
    trt11 = make_fake_tensorrt(TRT11, device)
    backend, _, _ = open_fake(bundle, cache, trt=trt11, device=device)
    assert trt11.deserialized == 2 and len(builds(trt11)) == 2  # built its own, loaded only those
    assert {e.key.trt_version for e in cache.entries()} == {TRT10, TRT11}
    backend.close()


def test_a_tampered_sidecar_key_makes_a_rebuild_not_a_load(bundle, cache):
    trt = make_fake_tensorrt(TRT10)
    entries = builder.ensure_engines(trt, bundle, builder.BuildSettings(), GPU, cache)
    sidecar = entries["decoder"][0].sidecar_path
    meta = json.loads(sidecar.read_text())
    meta["key"]["gpu_sm"] = "sm_75"
    sidecar.write_text(json.dumps(meta))
    again = builder.ensure_engines(trt, bundle, builder.BuildSettings(), GPU, cache)
    assert again["decoder"][1] is True and again["encoder"][1] is False


# ---------------------------------------------------------------- runner: names and versions


@pytest.mark.parametrize("version, has_v1, has_v2", [(TRT10_0, True, False), (TRT10, True, True), (TRT11, False, True)])
def test_device_memory_size_uses_v2_where_it_exists(bundle, cache, version, has_v1, has_v2):
    trt = make_fake_tensorrt(version)
    entries = builder.ensure_engines(trt, bundle, builder.BuildSettings(), GPU, cache)
    engine = TrtEngine(trt, cache.load(entries["decoder"][0], entries["decoder"][0].key), FakeDevice(), "decoder")
    assert hasattr(engine.engine, "device_memory_size") == has_v1
    assert hasattr(engine.engine, "device_memory_size_v2") == has_v2
    assert device_memory_size(engine.engine) == engine.device_memory_size == 1 << 20


@pytest.mark.parametrize("version", [TRT10, TRT11])
def test_decode_binds_by_name_whatever_the_engine_order(bundle, cache, version):
    backend, trt, _ = open_fake(bundle, cache, version)
    names = [backend.decoder.engine.get_tensor_name(i) for i in range(backend.decoder.engine.num_io_tensors)]
    assert names != ["features", "coords", "intensity"]  # the fake lists them in another order
    rng = np.random.default_rng(1)
    feats, coords = rng.random((100, F), dtype=np.float32), rng.random((100, 3), dtype=np.float32) * 2 - 1
    np.testing.assert_allclose(backend.decode(feats, coords), fake_decoder(feats, coords), rtol=1e-6)
    backend.close()


def test_trt11_fp16_engine_gets_fp16_inputs_and_returns_float32(bundle, cache):
    backend, _, _ = open_fake(bundle, cache, TRT11, precision="fp16")
    assert backend.decoder.tensor("features").dtype == np.float16
    rng = np.random.default_rng(2)
    feats, coords = rng.random((64, F), dtype=np.float32), rng.random((64, 3), dtype=np.float32)
    out = backend.decode(feats, coords)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, fake_decoder(feats.astype(np.float16), coords.astype(np.float16)), rtol=2e-3)
    backend.close()


def test_decode_splits_batches_larger_than_the_profile(bundle, cache):
    trt = make_fake_tensorrt(TRT10)
    builder.ensure_engines(trt, bundle, builder.BuildSettings(max_points=256), GPU, cache, exact=True)
    backend, trt, _ = open_fake(bundle, cache, trt=trt)
    rng = np.random.default_rng(3)
    feats, coords = rng.random((1000, F), dtype=np.float32), rng.random((1000, 3), dtype=np.float32)
    np.testing.assert_allclose(backend.decode(feats, coords), fake_decoder(feats, coords), rtol=1e-6)
    shapes = [s["features"][0] for what, s in trt.calls if what == "execute" and "features" in s]
    assert shapes == [256, 256, 256, 232]
    backend.close()


def test_shapes_outside_the_profile_are_refused(bundle, cache):
    backend, _, _ = open_fake(bundle, cache)
    with pytest.raises(BackendError, match="profile"):
        backend.decoder.infer({"features": np.zeros((10, F + 1), np.float32), "coords": np.zeros((10, 3), np.float32)}, backend.stream)
    backend.close()


# ---------------------------------------------------------------- encoder and device decode


def test_declared_precisions_are_the_builders():
    assert TensorRTBackend.precisions == builder.PRECISIONS
    with pytest.raises(BackendError, match="tensorrt backend supports precision fp32, fp16, not 'int8'"):
        TensorRTBackend.check_precision("int8")


def test_encode_matches_and_declares_the_profile_it_refuses_beyond(bundle, cache):
    trt = make_fake_tensorrt(TRT10)
    builder.ensure_engines(trt, bundle, builder.BuildSettings(tile=4), GPU, cache, exact=True)  # max edge 8
    backend, _, _ = open_fake(bundle, cache, trt=trt)
    assert backend.max_encode_tile == (8, 8, 8)
    rng = np.random.default_rng(4)
    small = rng.random((6, 7, 8), dtype=np.float32)
    np.testing.assert_allclose(backend.encode(small), fake_encoder(small, F), rtol=1e-6)
    with pytest.raises(BackendError, match="profile"):  # tiling is the pipeline's job, not the backend's
        backend.encode(rng.random((13, 9, 17), dtype=np.float32))
    backend.close()


def whole_volume(lr, out_shape, mode="global"):
    """The untiled result: the fake encoder on the whole volume, sampled and decoded at once."""
    return cpu_box(fake_encoder(lr, F), (0, 0, 0), lr.shape, out_shape, (0, 0, 0), out_shape, mode)


@pytest.mark.parametrize("sampler_loads", [True, False])
def test_the_pipeline_tiles_below_the_engine_profile_exactly(bundle, cache, sampler_loads):
    """A volume bigger than the encoder profile: the pipeline (the only tiler) cuts it so each
    encoder input fits, and the result equals the untiled one, with and without the CUDA sampler."""
    from arssr_rt.pipeline import VolumeEngine

    trt = make_fake_tensorrt(TRT10)
    builder.ensure_engines(trt, bundle, builder.BuildSettings(tile=4), GPU, cache, exact=True)  # max edge 8
    backend, _, _ = open_fake(bundle, cache, trt=trt, chunk=300)
    if not sampler_loads:
        backend._box_decoder = lambda: (_ for _ in ()).throw(MissingExtraError("no NVRTC"))
    assert backend.decodes_boxes_on_device is sampler_loads
    lr = np.random.default_rng(4).random((13, 9, 17), dtype=np.float32)
    with VolumeEngine(bundle, backend=backend, chunk=300) as up:
        got = up.infer(lr, (27, 17, 35))
        calls = backend.timings()
    np.testing.assert_allclose(got, whole_volume(lr, (27, 17, 35)), rtol=0, atol=1e-5)
    assert calls["encode"]["calls"] > 1  # it was tiled
    assert ("decode_box" in calls) is sampler_loads and ("decode" in calls) is not sampler_loads


def cpu_box(features, offset, in_shape, out_shape, start, stop, mode="global"):
    """The CPU pipeline's result for a box: numpy sampler + the fake decoder."""
    sampled = sample_box(np.moveaxis(features, 0, -1).copy(), offset, in_shape, out_shape, start, stop)
    n = sampled.shape[:3]
    return fake_decoder(sampled.reshape(-1, sampled.shape[-1]), box_coords(out_shape, start, stop, in_shape, mode)).reshape(n)


@pytest.fixture(scope="module")
def phase_bundle(tmp_path_factory):
    return make_fake_bundle(tmp_path_factory.mktemp("bundle") / "fake-phase", feature_dim=F, receptive_radius=1, coords="phase")


@pytest.mark.parametrize("version, precision", [(TRT10, "fp32"), (TRT11, "fp32"), (TRT11, "fp16")])
def test_decode_box_equals_the_cpu_path(bundle, cache, version, precision):
    backend, trt, device = open_fake(bundle, cache, version, precision, chunk=256)
    rng = np.random.default_rng(5)
    in_shape, out_shape = (10, 12, 9), (23, 25, 20)
    block_offset, block_shape = (2, 3, 0), (7, 8, 9)
    features = rng.standard_normal((F, *block_shape)).astype(np.float32)
    start, stop = (6, 8, 0), (15, 17, 20)
    got = backend.decode_box(features, block_offset, in_shape, out_shape, start, stop)
    want = cpu_box(features, block_offset, in_shape, out_shape, start, stop)
    assert got.shape == want.shape == (9, 9, 20) and got.dtype == np.float32
    tol = 1e-5 if precision == "fp32" else 5e-3 * np.abs(want).max()
    np.testing.assert_allclose(got, want, atol=tol, rtol=0)
    backend.close()


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_decode_box_feeds_a_phase_bundle_the_cell_phase(bundle, phase_bundle, cache, precision):
    """spec.coords = "phase" reaches the sampler: the decoder sees the CPU pipeline's phase coords."""
    backend, _, _ = open_fake(phase_bundle, cache, TRT11, precision, chunk=256)
    assert backend.coords_mode == "phase"
    rng = np.random.default_rng(9)
    in_shape, out_shape = (10, 12, 9), (23, 12, 20)  # x2.3, x1 (phase -1 exactly), x2.22
    block_offset, block_shape = (2, 0, 0), (7, 12, 9)
    features = rng.standard_normal((F, *block_shape)).astype(np.float32)
    start, stop = (6, 0, 0), (15, 12, 20)
    got = backend.decode_box(features, block_offset, in_shape, out_shape, start, stop)
    want = cpu_box(features, block_offset, in_shape, out_shape, start, stop, "phase")
    tol = 1e-5 if precision == "fp32" else 5e-3 * np.abs(want).max()
    np.testing.assert_allclose(got, want, atol=tol, rtol=0)
    global_coords = cpu_box(features, block_offset, in_shape, out_shape, start, stop, "global")
    assert np.abs(got - global_coords).max() > 1.0  # the fake decoder adds coords @ (1, 2, 3): the modes differ
    backend.close()
    # the same bundle without spec.coords decodes with the published global coords
    backend, _, _ = open_fake(bundle, cache, TRT11, precision, chunk=256)
    np.testing.assert_allclose(backend.decode_box(features, block_offset, in_shape, out_shape, start, stop), global_coords, atol=tol, rtol=0)
    backend.close()


def test_a_bundle_with_an_unknown_coords_mode_is_refused_before_the_gpu(tmp_path, cache):
    trt = make_fake_tensorrt(TRT10)
    with pytest.raises(ModelError, match="spec.coords"):  # load_bundle already refuses it
        odd = make_fake_bundle(tmp_path / "odd", feature_dim=F, coords="local")
        TensorRTBackend(odd, BackendOptions(), trt=trt, device=FakeDevice(), gpu=GPU, cache=cache)
    assert not builds(trt)


def test_decode_box_double_buffers_and_orders_the_streams(bundle, cache):
    backend, trt, device = open_fake(bundle, cache, chunk=256)
    features = np.random.default_rng(6).standard_normal((F, 5, 5, 5)).astype(np.float32)
    backend.decode_box(features, (0, 0, 0), (5, 5, 5), (10, 10, 12), (0, 0, 0), (10, 10, 12))  # 1200 points: 5 chunks
    box = backend._box
    log = device.log[device.log.index(next(e for e in device.log if e[0] == "memset")):]
    samples = [e for e in log if e[0] == "sample"]
    assert [s[2] for s in samples] == [256, 256, 256, 256, 176]
    assert [s[3] for s in samples] == [box.rows[k].ptr for k in (0, 1, 0, 1, 0)]  # two sets, alternating
    for i, entry in enumerate(samples):
        pos = log.index(entry)
        k = i % 2
        if i >= 2:  # set k is refilled only after the decode that read it
            waits = [e for e in log[:pos] if e[0] == "wait" and e[1] == box.sample_stream]
            assert waits and waits[-1][2] == box.decoded[k]
        after = log[pos + 1:pos + 4]
        assert after[0] == ("record", box.sampled[k], box.sample_stream)
        assert after[1] == ("wait", box.decode_stream, box.sampled[k])
        assert after[2][0] == "execute"
    assert sum(1 for e in log if e[0] == "sync") == 1  # the host waits once per box
    backend.close()
    assert device.live_allocations() == 0


def test_decode_box_reuses_the_device_copy_of_the_encoder_output(bundle, cache):
    backend, trt, device = open_fake(bundle, cache, chunk=512)
    lr = np.random.default_rng(7).random((9, 10, 11), dtype=np.float32)
    features = backend.encode(lr)
    assert not features.flags.writeable
    keep = (slice(None), slice(2, 8), slice(1, 10), slice(0, 11))  # core +- 1 of a tile, as the pipeline keeps
    n_uploads = sum(1 for e in device.log if e[0] == "upload")
    got = backend.decode_box(features[keep], (2, 1, 0), lr.shape, (18, 20, 22), (5, 3, 0), (13, 17, 22))
    assert sum(1 for e in device.log if e[0] == "upload") == n_uploads  # nothing uploaded
    want = cpu_box(np.ascontiguousarray(features[keep]), (2, 1, 0), lr.shape, (18, 20, 22), (5, 3, 0), (13, 17, 22))
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    # a copy is not a view: it is uploaded, with the same result
    got_copy = backend.decode_box(np.ascontiguousarray(features[keep]), (2, 1, 0), lr.shape, (18, 20, 22), (5, 3, 0), (13, 17, 22))
    assert sum(1 for e in device.log if e[0] == "upload") == n_uploads + 1
    np.testing.assert_array_equal(got, got_copy)
    backend.close()


def test_decode_box_refuses_a_block_that_misses_needed_voxels(bundle, cache):
    backend, _, _ = open_fake(bundle, cache)
    features = np.zeros((F, 4, 4, 4), np.float32)
    with pytest.raises(ValueError, match="does not cover"):
        backend.decode_box(features, (0, 0, 0), (8, 8, 8), (16, 16, 16), (0, 0, 0), (16, 16, 16))
    backend.close()


def test_view_in_maps_views_and_rejects_foreign_arrays():
    base = np.arange(2 * 5 * 6 * 7, dtype=np.float32).reshape(2, 5, 6, 7)
    view = base[:, 1:4, 2:6, ::2]
    offset, strides = view_in(base, view)
    flat = base.reshape(-1)
    rebuilt = np.lib.stride_tricks.as_strided(flat[offset:], view.shape, tuple(s * 4 for s in strides))
    np.testing.assert_array_equal(rebuilt, view)
    assert view_in(base, view.copy()) is None
    assert view_in(base, base.astype(np.float64)) is None


@pytest.mark.skipif(not gpu_unavailable_reason(), reason="a GPU is present: auto may rightly pick a GPU backend")
def test_auto_falls_through_the_gpu_backends_without_a_gpu(bundle):
    backend = open_backend("auto", bundle)
    try:
        assert backend.name not in ("tensorrt", "torch-cuda")
    finally:
        backend.close()


# ---------------------------------------------------------------- the engines command


def test_engines_list_shows_the_cached_keys(bundle, cache, capsys):
    from arssr_rt.cli import main

    assert main(["engines", "list", "--cache-dir", str(cache.root)]) == 0
    assert "no cached engines" in capsys.readouterr().out
    builder.ensure_engines(make_fake_tensorrt(TRT11), bundle, builder.BuildSettings(precision="fp16", tile=8), GPU, cache)
    assert main(["engines", "list", "--cache-dir", str(cache.root)]) == 0
    out = capsys.readouterr().out
    assert out.count("fp16") >= 2 and TRT11 in out and "sm_90" in out and "tile <= 12x12x12" in out and "N <= 262144" in out
    assert main(["engines", "list", "--cache-dir", str(cache.root), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert sorted(e["key"]["role"] for e in listed) == ["decoder", "encoder"]


@pytest.mark.skipif(not gpu_unavailable_reason(), reason="a GPU is present")
def test_engines_build_without_a_gpu_is_one_line_and_exit_2(bundle, tmp_path, capsys):
    from arssr_rt.cli import main

    assert main(["engines", "build", "--model", str(bundle.path), "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("arssr-rt: error:") and ("GPU" in err or "arssr-rt[gpu]" in err) and "\n" not in err
    assert not any(tmp_path.iterdir())


def test_engines_build_refuses_a_bad_precision_before_touching_the_gpu(bundle, tmp_path, capsys):
    from arssr_rt.cli import main

    assert main(["engines", "build", "--model", str(bundle.path), "--precision", "int8", "--cache-dir", str(tmp_path)]) == 2
    assert "--precision" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["global", "phase"])
def test_decode_box_falls_back_to_cpu_sampling_without_the_cuda_sampler(bundle, phase_bundle, cache, mode):
    device = FakeDevice()
    trt = make_fake_tensorrt(TRT10, device)
    chosen = phase_bundle if mode == "phase" else bundle
    backend = TensorRTBackend(chosen, BackendOptions(chunk=300), trt=trt, device=device, gpu=GPU, cache=cache)

    def no_sampler():
        raise MissingExtraError("NVRTC is needed to compile the CUDA sampler")

    backend._box_decoder = no_sampler
    assert not backend.decodes_boxes_on_device  # declared: the pipeline samples on the host
    with pytest.raises(BackendError, match="does not decode boxes"):
        backend.decode_box(np.zeros((F, 6, 7, 5), np.float32), (1, 0, 2), (9, 7, 9), (20, 15, 19), (3, 0, 5), (13, 15, 14))
    from arssr_rt.pipeline import VolumeEngine

    lr = np.random.default_rng(8).random((9, 7, 9), dtype=np.float32)
    with VolumeEngine(chosen, backend=backend, chunk=300) as up:
        got = up.infer(lr, (20, 15, 19))
    np.testing.assert_allclose(got, whole_volume(lr, (20, 15, 19), mode), atol=1e-5, rtol=0)
