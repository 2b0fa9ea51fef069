"""A fake ``tensorrt`` module (10.x or 11.x API surface) and a host-memory fake GPU.

Just enough of the real Python API for arssr_rt/engines to run on a CPU, with the behaviour
that matters for correctness made strict:
- 11.x has no ``BuilderFlag.FP16`` (AttributeError, as the real 11.x) and no
  ``ICudaEngine.device_memory_size``; 10.0 has no ``device_memory_size_v2``;
- building fails when an input lacks a profile, when a profile contradicts the ONNX shape,
  or when FP16 is asked of a strongly typed network (as TensorRT 10 refuses);
- engines carry the building version; deserialising with another version returns None;
- an fp16 ONNX gives an engine with HALF I/O (strong typing), the FP16 flag does not.
The fake engines compute simple known functions: encoder features[c] = (c + 1) * box3(lr)
(a 3x3x3 zero-padded mean: receptive radius 1), decoder intensity = 0.5 * sum(features) +
coords @ (1, 2, 3). ``FakeDevice`` is a DeviceApi over host memory that bounds-checks every
pointer and logs every stream operation, and ``NumpySampler`` runs the kernel's numpy mirror
on it, so the device decode loop is exercised end to end.
"""

from __future__ import annotations

import enum
import itertools
import json
import types
from typing import Any

import numpy as np

from arssr_rt.sampling import BoxSpec

from kernel_mirror import reference_sample_rows

# ---------------------------------------------------------------- host-memory fake GPU


class FakeDevice:
    """DeviceApi on host memory; pointers are fake addresses into bounds-checked allocations."""

    def __init__(self) -> None:
        self._allocs: dict[int, np.ndarray] = {}
        self._next = 1 << 20
        self.log: list[tuple] = []
        self._ids = itertools.count()

    # memory
    def malloc(self, nbytes: int) -> int:
        ptr = self._next
        self._allocs[ptr] = np.zeros(max(int(nbytes), 1), dtype=np.uint8)
        self._next += (int(nbytes) + 4095) // 4096 * 4096 + 4096  # a gap: overruns hit no allocation
        self.log.append(("malloc", ptr, nbytes))
        return ptr

    def free(self, ptr: int) -> None:
        del self._allocs[ptr]
        self.log.append(("free", ptr))

    def resolve(self, ptr: int, nbytes: int) -> np.ndarray:
        """The uint8 view of [ptr, ptr + nbytes); AssertionError when it leaves an allocation."""
        for base, buf in self._allocs.items():
            if base <= ptr < base + buf.size:
                off = ptr - base
                assert off + nbytes <= buf.size, f"access [{ptr}, +{nbytes}) overruns allocation {base}+{buf.size}"
                return buf[off:off + nbytes]
        raise AssertionError(f"pointer {ptr} is not in any allocation")

    def array(self, ptr: int, dtype: Any, shape: tuple, strides_elems: tuple | None = None) -> np.ndarray:
        """A numpy view of device memory (strided views allowed, bounds-checked)."""
        dtype = np.dtype(dtype)
        shape = tuple(int(s) for s in shape)
        if strides_elems is None:
            n = int(np.prod(shape)) if shape else 1
            return self.resolve(ptr, n * dtype.itemsize).view(dtype).reshape(shape)
        span = 1 + sum((s - 1) * abs(st) for s, st in zip(shape, strides_elems))
        assert all(st >= 0 for st in strides_elems)
        raw = self.resolve(ptr, span * dtype.itemsize).view(dtype)
        return np.lib.stride_tricks.as_strided(raw, shape, tuple(st * dtype.itemsize for st in strides_elems), writeable=False)

    def upload(self, ptr: int, host: np.ndarray, stream: Any) -> None:
        assert host.flags.c_contiguous
        self.resolve(ptr, host.nbytes)[:] = np.frombuffer(host.tobytes(), dtype=np.uint8)
        self.log.append(("upload", ptr, host.nbytes, stream))

    def download(self, host: np.ndarray, ptr: int, stream: Any) -> None:
        assert host.flags.c_contiguous
        host.reshape(-1).view(np.uint8)[:] = self.resolve(ptr, host.nbytes)
        self.log.append(("download", ptr, host.nbytes, stream))

    def memset(self, ptr: int, value: int, nbytes: int, stream: Any) -> None:
        self.resolve(ptr, nbytes)[:] = value
        self.log.append(("memset", ptr, nbytes, stream))

    # streams and events: work runs at once, the log keeps the order for the tests
    def create_stream(self) -> str:
        return f"stream{next(self._ids)}"

    def destroy_stream(self, stream: Any) -> None:
        self.log.append(("destroy_stream", stream))

    def create_event(self) -> str:
        return f"event{next(self._ids)}"

    def destroy_event(self, event: Any) -> None:
        self.log.append(("destroy_event", event))

    def record(self, event: Any, stream: Any) -> None:
        self.log.append(("record", event, stream))

    def wait(self, stream: Any, event: Any) -> None:
        self.log.append(("wait", stream, event))

    def synchronize(self, stream: Any) -> None:
        self.log.append(("sync", stream))

    def stream_handle(self, stream: Any) -> int:
        return hash(stream) & 0xFFFF

    def live_allocations(self) -> int:
        return len(self._allocs)


class NumpySampler:
    """The Sampler protocol on a FakeDevice, through the kernel's numpy mirror."""

    def __init__(self, device: FakeDevice):
        self.device = device
        self.launches: list[dict] = []

    def launch(self, stream_handle, feat_ptr, feat_dtype, feat_strides, feature_dim, spec: BoxSpec, first, count,
               rows_ptr, row_stride, coords_ptr, coord_stride, out_dtype, status_ptr) -> None:
        dev = self.device
        block = dev.array(feat_ptr, feat_dtype, (feature_dim, *spec.block_shape), tuple(feat_strides))
        rows, coords, bad = reference_sample_rows(block.astype(np.float32), spec, first, count)
        dev.array(rows_ptr, out_dtype, (count, row_stride))[:, :feature_dim] = rows.astype(out_dtype)
        dev.array(coords_ptr, out_dtype, (count, coord_stride))[:, :3] = coords.astype(out_dtype)
        if bad:
            dev.array(status_ptr, np.int32, (1,))[0] = 1
        self.launches.append({"first": first, "count": count, "rows": rows_ptr, "coords": coords_ptr})
        dev.log.append(("sample", first, count, rows_ptr, stream_handle))


# ---------------------------------------------------------------- the known functions


def box3(x: np.ndarray) -> np.ndarray:
    """3x3x3 mean with zero padding: receptive radius 1."""
    p = np.pad(x.astype(np.float32), 1)
    out = np.zeros(x.shape, dtype=np.float32)
    for d in itertools.product(range(3), repeat=3):
        out += p[d[0]:d[0] + x.shape[0], d[1]:d[1] + x.shape[1], d[2]:d[2] + x.shape[2]]
    return out / 27.0


def fake_encoder(lr: np.ndarray, feature_dim: int) -> np.ndarray:
    """(D, H, W) -> (F, D, H, W)."""
    b = box3(lr)
    return np.stack([(c + 1) * b for c in range(feature_dim)]).astype(np.float32)


def fake_decoder(features: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """(N, F), (N, 3) -> (N,)."""
    return (0.5 * features.astype(np.float32).sum(axis=1) + coords.astype(np.float32) @ np.array([1.0, 2.0, 3.0], np.float32)).astype(np.float32)


# ---------------------------------------------------------------- the fake tensorrt module


def make_fake_tensorrt(version: str = "10.13.0.35", device: FakeDevice | None = None) -> types.ModuleType:
    """A module object that looks like ``import tensorrt`` of ``version`` to arssr_rt."""
    major = int(version.split(".")[0])
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.device = device  # where fake engines read and write "device" memory
    trt.calls = []  # (what, detail) for assertions
    trt.deserialized = 0

    flags = ["TF32", "REFIT", "DEBUG", "DISABLE_TIMING_CACHE"] + (["FP16", "INT8", "BF16", "OBEY_PRECISION_CONSTRAINTS"] if major < 11 else [])
    trt.BuilderFlag = enum.Enum("BuilderFlag", flags)
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", ["EXPLICIT_BATCH", "STRONGLY_TYPED"] if major < 11 else ["STRONGLY_TYPED"], start=0)
    trt.MemoryPoolType = enum.Enum("MemoryPoolType", ["WORKSPACE", "DLA_MANAGED_SRAM"])
    trt.TensorIOMode = enum.Enum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"])
    trt.DataType = enum.Enum("DataType", ["FLOAT", "HALF", "INT32", "INT64"])

    def nptype(dt):
        return {trt.DataType.FLOAT: np.float32, trt.DataType.HALF: np.float16, trt.DataType.INT32: np.int32, trt.DataType.INT64: np.int64}[dt]

    trt.nptype = nptype

    class Logger:
        WARNING, INFO, ERROR = 2, 3, 1

        def __init__(self, severity: int = 2):
            self.severity = severity

    trt.Logger = Logger

    class Tensor:
        def __init__(self, name, dtype, shape):
            self.name, self.dtype, self.shape = name, dtype, tuple(shape)

    class Network:
        def __init__(self, flags: int):
            self.flags = flags
            self.inputs: list[Tensor] = []
            self.outputs: list[Tensor] = []
            self.onnx_path = None

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, i):
            return self.inputs[i]

        @property
        def strongly_typed(self):
            return major >= 11 or bool(self.flags & (1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)))

    class OnnxParser:
        def __init__(self, network: Network, logger):
            self.network, self.errors = network, []

        def parse_from_file(self, path: str) -> bool:
            import onnx

            trt.calls.append(("parse", path))
            try:
                model = onnx.load(path)
            except Exception as exc:
                self.errors.append(f"cannot read {path}: {exc}")
                return False
            to_trt = {onnx.TensorProto.FLOAT: trt.DataType.FLOAT, onnx.TensorProto.FLOAT16: trt.DataType.HALF}

            def tensors(values):
                out = []
                for v in values:
                    t = v.type.tensor_type
                    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
                    out.append(Tensor(v.name, to_trt[t.elem_type], dims))
                return out

            self.network.inputs = tensors(model.graph.input)
            self.network.outputs = tensors(model.graph.output)
            self.network.onnx_path = path
            return True

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, i):
            return self.errors[i]

    trt.OnnxParser = OnnxParser

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            self.shapes[name] = [list(lo), list(opt), list(hi)]

    class TimingCache:
        def __init__(self, data: bytes):
            self.entries = json.loads(data.decode()) if data else {"version": version, "builds": 0}
            if self.entries.get("version") != version:
                raise RuntimeError("timing cache from another TensorRT version")

        def serialize(self) -> bytes:
            return json.dumps(self.entries).encode()

    class BuilderConfig:
        def __init__(self):
            self.flags = {trt.BuilderFlag.TF32}  # on by default, as in TensorRT
            self.pools = {}
            self.profiles = []
            self.timing_cache = None
            self.ignore_mismatch = None

        def set_memory_pool_limit(self, pool, size):
            self.pools[pool] = size

        def set_flag(self, flag):
            self.flags.add(flag)

        def clear_flag(self, flag):
            self.flags.discard(flag)

        def get_flag(self, flag):
            return flag in self.flags

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def create_timing_cache(self, data: bytes):
            return TimingCache(bytes(data))

        def set_timing_cache(self, cache, ignore_mismatch):
            self.timing_cache, self.ignore_mismatch = cache, ignore_mismatch
            return True

        def get_timing_cache(self):
            return self.timing_cache

    class Builder:
        def __init__(self, logger):
            self.logger = logger

        def create_network(self, flags: int = 0):
            trt.calls.append(("create_network", flags))
            return Network(flags)

        def create_builder_config(self):
            return BuilderConfig()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network: Network, config: BuilderConfig):
            fp16_flag = major < 11 and trt.BuilderFlag.FP16 in config.flags
            trt.calls.append(("build", {"flags": sorted(f.name for f in config.flags), "onnx": network.onnx_path}))
            if fp16_flag and network.strongly_typed:
                return None  # TensorRT 10 rejects precision flags on strongly typed networks
            if len(config.profiles) != 1:
                return None
            shapes = config.profiles[0].shapes
            io = []
            for t in network.inputs:
                if t.name not in shapes:
                    return None  # a dynamic input without a profile
                for lo, hi, dim in zip(shapes[t.name][0], shapes[t.name][2], t.shape):
                    if dim >= 0 and not lo == hi == dim:
                        return None
                io.append({"name": t.name, "mode": "INPUT", "dtype": t.dtype.name, "shape": list(t.shape), "profile": shapes[t.name]})
            for t in network.outputs:
                io.append({"name": t.name, "mode": "OUTPUT", "dtype": t.dtype.name, "shape": list(t.shape)})
            io.reverse()  # bindings come in an order unlike the contract: the runner must go by name
            if config.timing_cache is not None:
                config.timing_cache.entries["builds"] += 1
            plan = {"version": version, "io": io, "flags": sorted(f.name for f in config.flags), "onnx": network.onnx_path}
            return json.dumps(plan).encode()

    trt.Builder = Builder

    class ExecutionContext:
        def __init__(self, engine):
            self.engine = engine
            self.shapes = {}
            self.addresses = {}

        def set_input_shape(self, name, shape):
            t = self.engine.io[name]
            lo, _, hi = t["profile"]
            if t["mode"] != "INPUT" or len(shape) != len(lo) or not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
                return False
            self.shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            t = self.engine.io[name]
            if t["mode"] == "INPUT":
                return self.shapes.get(name, tuple(t["shape"]))
            if name == "features":  # encoder: (1, F, D, H, W)
                d = self.shapes["lr"]
                return (1, t["shape"][1], *d[2:])
            return (self.shapes["features"][0], 1)  # decoder

        def set_tensor_address(self, name, ptr):
            if name not in self.engine.io:
                return False
            self.addresses[name] = int(ptr)
            return True

        def execute_async_v3(self, stream_handle):
            dev = trt.device
            io = self.engine.io
            if set(self.addresses) != set(io):
                return False
            dt = {n: nptype(getattr(trt.DataType, t["dtype"])) for n, t in io.items()}
            trt.calls.append(("execute", dict(self.shapes)))
            if "lr" in io:
                shape = self.shapes["lr"]
                lr = dev.array(self.addresses["lr"], dt["lr"], shape)[0, 0].astype(np.float32)
                out = fake_encoder(lr, io["features"]["shape"][1])[None]
                dev.array(self.addresses["features"], dt["features"], out.shape)[:] = out.astype(dt["features"])
            else:
                n, f = self.shapes["features"]
                feats = dev.array(self.addresses["features"], dt["features"], (n, f))
                coords = dev.array(self.addresses["coords"], dt["coords"], (n, 3))
                out = fake_decoder(feats, coords)[:, None]
                dev.array(self.addresses["intensity"], dt["intensity"], out.shape)[:] = out.astype(dt["intensity"])
            dev.log.append(("execute", stream_handle, dict(self.shapes)))
            return True

    class Engine:
        def __init__(self, plan):
            self.plan = plan
            self.io = {t["name"]: t for t in plan["io"]}
            self.names = [t["name"] for t in plan["io"]]

        @property
        def num_io_tensors(self):
            return len(self.names)

        def get_tensor_name(self, i):
            return self.names[i]

        def get_tensor_mode(self, name):
            return getattr(trt.TensorIOMode, self.io[name]["mode"])

        def get_tensor_dtype(self, name):
            return getattr(trt.DataType, self.io[name]["dtype"])

        def get_tensor_shape(self, name):
            return tuple(self.io[name]["shape"])

        def get_tensor_profile_shape(self, name, index):
            if index != 0 or "profile" not in self.io[name]:
                raise RuntimeError("no such profile")
            return [tuple(s) for s in self.io[name]["profile"]]

        def create_execution_context(self):
            return ExecutionContext(self)

    minor = int(version.split(".")[1])
    if major >= 11 or minor >= 1:
        Engine.device_memory_size_v2 = property(lambda self: 1 << 20)
    if major < 11:
        Engine.device_memory_size = property(lambda self: 1 << 20)

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, data):
            trt.deserialized += 1
            plan = json.loads(bytes(data).decode())
            if plan["version"] != version:
                return None  # TensorRT refuses engines of another version
            return Engine(plan)

    trt.Runtime = Runtime
    return trt


# ---------------------------------------------------------------- a small bundle with contract ONNX


def make_fake_bundle(path, feature_dim: int = 4, receptive_radius: int = 1, with_fp16: bool = True, coords: str | None = None):
    """A verified bundle whose ONNX files have the contract's names, dtypes and dynamic dims.

    ``coords`` sets model.json ``spec.coords`` (the decoder coordinate mode); None leaves it out.

    The graphs are tiny (the fake engines compute their own known functions); what matters to
    the engine code is the I/O declared in each file.
    """
    import onnx
    from onnx import TensorProto, helper

    from arssr_rt.bundle import load_bundle, write_model_json

    path.mkdir(parents=True, exist_ok=True)

    def save(name: str, elem: int) -> None:
        enc = helper.make_graph(
            [helper.make_node("Tile", ["lr", "reps"], ["features"])],
            "encoder",
            [helper.make_tensor_value_info("lr", elem, [1, 1, "D", "H", "W"])],
            [helper.make_tensor_value_info("features", elem, [1, feature_dim, "D", "H", "W"])],
            [helper.make_tensor("reps", TensorProto.INT64, [5], [1, feature_dim, 1, 1, 1])],
        )
        dec = helper.make_graph(
            [helper.make_node("Concat", ["features", "coords"], ["x"], axis=1),
             helper.make_node("ReduceSum", ["x", "axes"], ["intensity"], keepdims=1)],
            "decoder",
            [helper.make_tensor_value_info("features", elem, ["N", feature_dim]), helper.make_tensor_value_info("coords", elem, ["N", 3])],
            [helper.make_tensor_value_info("intensity", elem, ["N", 1])],
            [helper.make_tensor("axes", TensorProto.INT64, [1], [1])],
        )
        for graph, file in ((enc, f"encoder{name}.onnx"), (dec, f"decoder{name}.onnx")):
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
            onnx.checker.check_model(model)
            onnx.save(model, str(path / file))

    save("", TensorProto.FLOAT)
    files = ["encoder.onnx", "decoder.onnx"]
    if with_fp16:
        save(".fp16", TensorProto.FLOAT16)
        files += ["encoder.fp16.onnx", "decoder.fp16.onnx"]
    spec = {"encoder": "rescnn", "feature_dim": feature_dim, "encoder_args": {}, "decoder_width": 8, "decoder_depth": 2}
    if coords is not None:
        spec["coords"] = coords
    meta = {
        "name": "fake",
        "spec": spec,
        "receptive_radius": receptive_radius,
        "axis_order": "xyz",
        "normalization": {"mode": "minmax"},
        "files": {f: "" for f in files},
    }
    write_model_json(path, meta)
    return load_bundle(path)
