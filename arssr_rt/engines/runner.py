"""Run a deserialised TensorRT engine with tensors bound by name (TensorRT 10.x and 11.x).

The enqueue API is the same on both majors: ``set_input_shape`` and ``set_tensor_address``
per I/O tensor name, then ``execute_async_v3(stream)``. What differs is handled here:
- I/O dtypes come from the engine (an fp16 engine built by TensorRT 11 from the fp16 ONNX
  has float16 inputs and outputs; a 10.x FP16-flag engine keeps float32 I/O), so hosts
  arrays are converted to whatever the engine declares;
- the activation memory size is ``device_memory_size_v2`` (10.1+, the only one in 11.x),
  else the older ``device_memory_size``.

Only ever construct a TrtEngine after ``gpu_probe.require_gpu`` passed and after the cache
checked the engine's key (deserialising a foreign engine can crash the process).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any, Mapping

import numpy as np

from ..errors import BackendError
from .device import DeviceApi, DeviceBuffer

# TensorRT DataType names -> numpy, for bindings whose trt.nptype is missing or raises
_DTYPES_BY_NAME = {"FLOAT": np.float32, "HALF": np.float16, "INT32": np.int32, "INT64": np.int64, "INT8": np.int8, "UINT8": np.uint8, "BOOL": np.bool_}


def numpy_dtype(trt: ModuleType, trt_dtype: Any) -> np.dtype:
    name = getattr(trt_dtype, "name", str(trt_dtype)).split(".")[-1]
    if name in _DTYPES_BY_NAME:
        return np.dtype(_DTYPES_BY_NAME[name])
    try:
        return np.dtype(trt.nptype(trt_dtype))
    except Exception:
        raise BackendError(f"TensorRT tensor type {name} has no numpy equivalent") from None


def device_memory_size(engine: Any) -> int:
    """Activation memory an execution context needs (the v2 property where it exists)."""
    size = getattr(engine, "device_memory_size_v2", None)
    if size is None:
        size = engine.device_memory_size  # TensorRT 10.0 only has this one
    return int(size)


@dataclass(frozen=True)
class TensorInfo:
    """One I/O tensor of an engine, as declared by the engine itself."""

    name: str
    is_input: bool
    dtype: np.dtype
    shape: tuple[int, ...]  # -1 for dynamic dimensions
    profile: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None  # (min, opt, max), inputs only

    def fits(self, shape: tuple[int, ...]) -> bool:
        if len(shape) != len(self.shape):
            return False
        if self.profile is None:
            return all(d == s or d < 0 for d, s in zip(self.shape, shape))
        lo, _, hi = self.profile
        return all(a <= s <= b for a, s, b in zip(lo, shape, hi))


class TrtEngine:
    """One engine + one execution context; I/O by tensor name."""

    def __init__(self, trt: ModuleType, engine_bytes: bytes, device: DeviceApi, label: str = "engine"):
        self.trt = trt
        self.device = device
        self.label = label
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise BackendError(f"TensorRT could not deserialise the {label} engine (see the TensorRT log above)")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise BackendError(f"TensorRT could not create an execution context for the {label} engine (out of GPU memory?)")
        self.tensors = self._read_tensors()
        self._buffers: dict[str, DeviceBuffer] = {}

    def _read_tensors(self) -> dict[str, TensorInfo]:
        trt, engine = self.trt, self.engine
        out = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            profile = None
            if is_input:
                try:  # a static input has no profile shapes
                    lo, opt, hi = engine.get_tensor_profile_shape(name, 0)
                    profile = (tuple(lo), tuple(opt), tuple(hi))
                except Exception:
                    profile = None
            out[name] = TensorInfo(name, is_input, numpy_dtype(trt, engine.get_tensor_dtype(name)), tuple(engine.get_tensor_shape(name)), profile)
        return out

    @property
    def device_memory_size(self) -> int:
        return device_memory_size(self.engine)

    def tensor(self, name: str) -> TensorInfo:
        if name not in self.tensors:
            raise BackendError(f"the {self.label} engine has no tensor {name!r} (it has {', '.join(self.tensors)})")
        return self.tensors[name]

    def max_shape(self, name: str) -> tuple[int, ...]:
        info = self.tensor(name)
        return info.profile[2] if info.profile else info.shape

    def enqueue(self, inputs: Mapping[str, tuple[int, tuple[int, ...]]], outputs: Mapping[str, int], stream: Any) -> dict[str, tuple[int, ...]]:
        """Bind device pointers by name and queue one run on ``stream``; returns output shapes.

        ``inputs`` maps name -> (device pointer, shape); ``outputs`` maps name -> device pointer.
        Every I/O tensor of the engine must be given.
        """
        missing = {n for n in self.tensors} - set(inputs) - set(outputs)
        if missing:
            raise BackendError(f"{self.label} engine tensors not bound: {', '.join(sorted(missing))}")
        for name, (ptr, shape) in inputs.items():
            info = self.tensor(name)
            if not info.is_input:
                raise BackendError(f"{name!r} is an output of the {self.label} engine, not an input")
            if not info.fits(tuple(shape)) or not self.context.set_input_shape(name, tuple(int(d) for d in shape)):
                raise BackendError(f"shape {tuple(shape)} of {name!r} is outside the {self.label} engine's profile {info.profile}")
            if not self.context.set_tensor_address(name, int(ptr)):
                raise BackendError(f"TensorRT refused the address of {name!r}")
        shapes = {}
        for name, ptr in outputs.items():
            if self.tensor(name).is_input:
                raise BackendError(f"{name!r} is an input of the {self.label} engine, not an output")
            shapes[name] = tuple(int(d) for d in self.context.get_tensor_shape(name))
            if not self.context.set_tensor_address(name, int(ptr)):
                raise BackendError(f"TensorRT refused the address of {name!r}")
        if not self.context.execute_async_v3(self.device.stream_handle(stream)):
            raise BackendError(f"TensorRT failed to run the {self.label} engine")
        return shapes

    def buffer_ptr(self, name: str) -> int:
        """Device address of the buffer ``infer`` last used for ``name`` (0 if none yet)."""
        buf = self._buffers.get(name)
        return buf.ptr if buf is not None else 0

    def _buffer(self, name: str, nbytes: int) -> int:
        if name not in self._buffers:
            self._buffers[name] = DeviceBuffer(self.device)
        return self._buffers[name].ensure(nbytes)

    def infer(self, inputs: Mapping[str, np.ndarray], stream: Any) -> dict[str, np.ndarray]:
        """Host arrays in, host arrays out (engine dtypes), synchronised; for encode/decode."""
        bound_in = {}
        keep_alive = []
        for name, array in inputs.items():
            info = self.tensor(name)
            host = np.ascontiguousarray(array, dtype=info.dtype)
            keep_alive.append(host)
            ptr = self._buffer(name, host.nbytes)
            self.device.upload(ptr, host, stream)
            bound_in[name] = (ptr, host.shape)
        out_shapes = self.output_shape_for_all({n: s for n, (_, s) in bound_in.items()})
        bound_out = {name: self._buffer(name, int(np.prod(shape)) * self.tensor(name).dtype.itemsize) for name, shape in out_shapes.items()}
        self.enqueue(bound_in, bound_out, stream)
        results = {name: np.empty(shape, dtype=self.tensor(name).dtype) for name, shape in out_shapes.items()}
        for name, host in results.items():
            self.device.download(host, bound_out[name], stream)
        self.device.synchronize(stream)
        return results

    def output_shape_for_all(self, input_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        for n, shape in input_shapes.items():
            info = self.tensor(n)
            if not info.fits(tuple(shape)) or not self.context.set_input_shape(n, tuple(int(d) for d in shape)):
                raise BackendError(f"shape {tuple(shape)} of {n!r} is outside the {self.label} engine's profile {info.profile}")
        return {n: tuple(int(d) for d in self.context.get_tensor_shape(n)) for n, t in self.tensors.items() if not t.is_input}

    def close(self) -> None:
        for buf in self._buffers.values():
            buf.release()
        self._buffers.clear()
        # drop TensorRT objects in dependency order: context, engine, runtime
        self.context = None
        self.engine = None
        self._runtime = None


class TrtChunkDecoder:
    """The decoder engine as a device_decode.ChunkDecoder (contract tensor names)."""

    def __init__(self, engine: TrtEngine, features: str, coords: str, output: str):
        self.engine = engine
        self.names = (features, coords, output)
        f_info, c_info, o_info = engine.tensor(features), engine.tensor(coords), engine.tensor(output)
        if f_info.dtype != c_info.dtype:
            raise BackendError(f"decoder engine inputs differ in dtype ({f_info.dtype} vs {c_info.dtype}); the sampler writes one dtype")
        self.input_dtype = f_info.dtype
        self.output_dtype = o_info.dtype
        self.max_points = int(engine.max_shape(features)[0])
        self.feature_dim = int(engine.max_shape(features)[1])

    def enqueue(self, rows_ptr: int, coords_ptr: int, count: int, out_ptr: int, stream: Any) -> None:
        features, coords, output = self.names
        self.engine.enqueue({features: (rows_ptr, (count, self.feature_dim)), coords: (coords_ptr, (count, 3))}, {output: out_ptr}, stream)
