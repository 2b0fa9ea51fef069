"""backends/base.py: the runner every backend derives from (validation, the one batching loop,
timing, context manager, the declared decode_box capability) and how a backend is chosen."""

from __future__ import annotations

import numpy as np
import pytest

from arssr_rt.backends.base import BackendOptions, BackendRunner, available_backends, open_backend
from arssr_rt.bundle import load_bundle
from arssr_rt.errors import BackendError


class Recorder(BackendRunner):
    """A runner whose network is y = sum(features) + sum(coords); records each call's rows."""

    name = "recorder"

    def __init__(self, feature_dim: int = 4, max_points: int | None = None, options: BackendOptions | None = None):
        self.feature_dim, self.max_decode_points, self.options = feature_dim, max_points, options
        self.rows: list[int] = []  # rows per network call
        self.calls: list[int] = []  # rows per public decode call
        self.closed = 0

    def decode(self, features, coords):
        self.calls.append(features.shape[0])
        return super().decode(features, coords)

    def _encode_impl(self, lr):
        return np.repeat(lr[None], self.feature_dim, axis=0)

    def _decode_impl(self, features, coords):
        self.rows.append(features.shape[0])
        return features.sum(axis=1) + coords.sum(axis=1)

    def close(self):
        self.closed += 1


def test_decode_is_one_loop_driven_by_the_declared_maximum():
    rng = np.random.default_rng(0)
    f, c = rng.random((20, 4), dtype=np.float32), rng.random((20, 3), dtype=np.float32)
    r = Recorder(max_points=7)
    np.testing.assert_allclose(r.decode(f, c), f.sum(1) + c.sum(1), rtol=1e-6)
    assert r.rows == [7, 7, 6]
    unlimited = Recorder()
    unlimited.decode(f, c)
    assert unlimited.rows == [20]


def test_public_methods_validate_once_for_every_backend():
    r = Recorder()
    with pytest.raises(BackendError, match=r"\(D, H, W\)"):
        r.encode(np.zeros((2, 3), np.float32))
    with pytest.raises(BackendError, match=r"\(N, 4\) features"):
        r.decode(np.zeros((5, 3), np.float32), np.zeros((5, 3), np.float32))
    with pytest.raises(BackendError, match=r"\(N, 3\) coords"):
        r.decode(np.zeros((5, 4), np.float32), np.zeros((4, 3), np.float32))
    assert r.rows == []  # nothing reached the network


def test_an_encoder_input_over_the_declared_maximum_is_refused():
    r = Recorder()
    r.max_encode_tile = (8, 8, 8)
    assert r.encode(np.ones((8, 3, 8), np.float32)).shape == (4, 8, 3, 8)
    with pytest.raises(BackendError, match="largest input"):
        r.encode(np.ones((9, 3, 8), np.float32))


def test_timing_counts_calls_items_and_seconds():
    r = Recorder(max_points=10)
    assert r.timings() == {}
    r.encode(np.ones((2, 3, 4), np.float32))
    r.decode(np.ones((25, 4), np.float32), np.ones((25, 3), np.float32))
    r.decode(np.ones((5, 4), np.float32), np.ones((5, 3), np.float32))
    t = r.timings()
    assert t["encode"]["calls"] == 1 and t["encode"]["items"] == 24
    assert t["decode"]["calls"] == 2 and t["decode"]["items"] == 30
    assert set(t) == {"encode", "decode"} and all(v["seconds"] >= 0 for v in t.values())


def test_decode_box_is_a_declared_capability_not_a_method_lookup():
    r = Recorder()
    assert r.decodes_boxes_on_device is False
    with pytest.raises(BackendError, match="does not decode boxes"):
        r.decode_box(np.zeros((4, 2, 2, 2), np.float32), (0, 0, 0), (2, 2, 2), (4, 4, 4), (0, 0, 0), (4, 4, 4))


def test_context_manager_closes():
    with Recorder() as r:
        pass
    assert r.closed == 1


def test_open_backend_takes_a_name_an_instance_or_a_factory(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    instance = Recorder()
    assert open_backend(instance, bundle) is instance
    seen = []
    made = open_backend(lambda b, o: seen.append((b, o)) or Recorder(options=o), bundle, BackendOptions(chunk=99))
    assert isinstance(made, Recorder) and seen[0][0] is bundle and made.options.chunk == 99
    assert open_backend("onnxruntime", bundle).name == "onnxruntime"
    with pytest.raises(BackendError, match="not a BackendRunner"):
        open_backend(lambda b, o: object(), bundle)
    assert "recorder" not in available_backends()  # nothing was registered globally


def test_the_upsampler_hands_chunk_to_the_backend_and_chunks_the_host_path(tiny_bundle):
    """--chunk travels in BackendOptions; the pipeline samples that many points per decode call,
    and the backend's declared maximum (not a second hard-coded cut) splits them further."""
    from arssr_rt.pipeline import VolumeEngine

    bundle = load_bundle(tiny_bundle)
    made: list[Recorder] = []

    def factory(b, options):
        made.append(Recorder(b.feature_dim, max_points=300, options=options))
        return made[-1]

    lr = np.random.default_rng(1).random((6, 7, 8), dtype=np.float32)
    with VolumeEngine(bundle, backend=factory, chunk=1000, tile=100) as up:
        up.infer(lr, (12, 14, 16))
    r = made[0]
    assert r.options.chunk == 1000 and r.closed == 1
    assert max(r.rows) == 300 and sum(r.rows) == 12 * 14 * 16
    assert r.timings()["decode"]["items"] == 12 * 14 * 16
    assert max(r.calls) <= 1000 and len(r.calls) == r.timings()["decode"]["calls"] >= 3


def test_torch_cuda_gets_chunk_from_the_options(tiny_bundle):
    pytest.importorskip("torch")
    from arssr_rt.backends.torch_cuda_backend import TorchCudaBackend
    from arssr_rt.pipeline import VolumeEngine

    with VolumeEngine(load_bundle(tiny_bundle), backend=lambda b, o: TorchCudaBackend(b, o, torch_device="cpu"), chunk=123) as up:
        assert up.backend.chunk == 123 and up.backend.decodes_boxes_on_device
