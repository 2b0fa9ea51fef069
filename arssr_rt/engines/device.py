"""A thin, checked layer over ``cuda.bindings.runtime``: memory, copies, streams, events.

Why a layer: cuda-python returns ``(error, value)`` tuples instead of raising, and the
engine runner and the device decode loop need only a dozen calls. Keeping them here means
one place checks every error code, and the tests can swap in a host-memory fake with the same
methods (tests/fake_tensorrt.py) to exercise the orchestration on a CPU.

Pointers are plain ints (device addresses); streams and events are whatever the runtime
returns, and ``stream_handle`` turns a stream into the int TensorRT's ``execute_async_v3``
takes.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from ..errors import BackendError
from ..extras import require


class DeviceApi(Protocol):
    """What the runner and the decode loop need from a GPU (or from the CPU fake in tests)."""

    def malloc(self, nbytes: int) -> int: ...
    def free(self, ptr: int) -> None: ...
    def upload(self, ptr: int, host: np.ndarray, stream: Any) -> None: ...
    def download(self, host: np.ndarray, ptr: int, stream: Any) -> None: ...
    def memset(self, ptr: int, value: int, nbytes: int, stream: Any) -> None: ...
    def create_stream(self) -> Any: ...
    def destroy_stream(self, stream: Any) -> None: ...
    def create_event(self) -> Any: ...
    def destroy_event(self, event: Any) -> None: ...
    def record(self, event: Any, stream: Any) -> None: ...
    def wait(self, stream: Any, event: Any) -> None: ...
    def synchronize(self, stream: Any) -> None: ...
    def stream_handle(self, stream: Any) -> int: ...


class CudaRuntime:
    """DeviceApi on a real GPU through cuda.bindings.runtime; binds ``device`` on creation."""

    def __init__(self, device: int = 0):
        self.rt = require("cuda.bindings.runtime")
        self.device = device
        self._check(self.rt.cudaSetDevice(device), f"cudaSetDevice({device})")
        # cudaFree(0) forces the primary context into existence, so driver-API calls (the
        # sampler's module load and launch) find it current on this thread
        self._check(self.rt.cudaFree(0), "cudaFree(0)")

    def _check(self, result: Any, what: str) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if err != self.rt.cudaError_t.cudaSuccess:
            name = getattr(err, "name", str(err))
            raise BackendError(f"CUDA call {what} failed: {name}")
        if not rest:
            return None
        return rest[0] if len(rest) == 1 else tuple(rest)

    def malloc(self, nbytes: int) -> int:
        return int(self._check(self.rt.cudaMalloc(max(int(nbytes), 1)), f"cudaMalloc({nbytes})"))

    def free(self, ptr: int) -> None:
        if ptr:
            self._check(self.rt.cudaFree(ptr), "cudaFree")

    def upload(self, ptr: int, host: np.ndarray, stream: Any) -> None:
        """Host -> device; ``host`` must stay alive and unchanged until ``stream`` passes this point."""
        host = _contiguous(host)
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.rt.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, kind, stream), "cudaMemcpyAsync(H2D)")

    def download(self, host: np.ndarray, ptr: int, stream: Any) -> None:
        """Device -> host into a C-contiguous ``host`` array; complete after synchronize."""
        if not host.flags.c_contiguous:
            raise BackendError("download needs a C-contiguous host array")
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.rt.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, kind, stream), "cudaMemcpyAsync(D2H)")

    def memset(self, ptr: int, value: int, nbytes: int, stream: Any) -> None:
        self._check(self.rt.cudaMemsetAsync(ptr, value, nbytes, stream), "cudaMemsetAsync")

    def create_stream(self) -> Any:
        return self._check(self.rt.cudaStreamCreateWithFlags(self.rt.cudaStreamNonBlocking), "cudaStreamCreateWithFlags")

    def destroy_stream(self, stream: Any) -> None:
        self._check(self.rt.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def create_event(self) -> Any:
        return self._check(self.rt.cudaEventCreateWithFlags(self.rt.cudaEventDisableTiming), "cudaEventCreateWithFlags")

    def destroy_event(self, event: Any) -> None:
        self._check(self.rt.cudaEventDestroy(event), "cudaEventDestroy")

    def record(self, event: Any, stream: Any) -> None:
        self._check(self.rt.cudaEventRecord(event, stream), "cudaEventRecord")

    def wait(self, stream: Any, event: Any) -> None:
        self._check(self.rt.cudaStreamWaitEvent(stream, event, 0), "cudaStreamWaitEvent")

    def synchronize(self, stream: Any) -> None:
        self._check(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def stream_handle(self, stream: Any) -> int:
        return int(stream)


def _contiguous(host: np.ndarray) -> np.ndarray:
    if not host.flags.c_contiguous:
        raise BackendError("upload needs a C-contiguous host array")
    return host


class DeviceBuffer:
    """An owned device allocation of ``nbytes``; grows on demand, freed by ``release``."""

    def __init__(self, device: DeviceApi, nbytes: int = 0):
        self.device = device
        self.ptr = 0
        self.nbytes = 0
        if nbytes:
            self.ensure(nbytes)

    def ensure(self, nbytes: int) -> int:
        """Make room for ``nbytes`` (contents are not kept when it grows); returns the pointer."""
        if nbytes > self.nbytes:
            self.release()
            self.ptr = self.device.malloc(nbytes)
            self.nbytes = int(nbytes)
        return self.ptr

    def release(self) -> None:
        if self.ptr:
            self.device.free(self.ptr)
        self.ptr = 0
        self.nbytes = 0
