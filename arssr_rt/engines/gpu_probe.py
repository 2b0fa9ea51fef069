"""Find out whether a usable CUDA GPU is here, before any TensorRT object exists.

Why first: a TensorRT Runtime created without a usable GPU only logs CUDA error 35 and hands
back an object; deserialising an engine with it then segfaults the process. So every
TensorRT path calls ``require_gpu`` and gets a typed BackendError instead.

``cudaGetDeviceCount`` of ``cuda.bindings.runtime`` returns an error code (no exception)
when there is no driver or no device, which makes it a safe probe.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from ..errors import BackendError
from ..params import setting
from ..extras import require


@dataclass(frozen=True)
class GpuInfo:
    """One CUDA device as far as engine compatibility is concerned."""

    index: int
    name: str
    major: int
    minor: int
    total_memory: int

    @property
    def sm(self) -> str:
        """Compute capability as TensorRT and NVRTC spell it, e.g. ``sm_90``."""
        return f"sm_{self.major}{self.minor}"


@dataclass(frozen=True)
class ProbeResult:
    gpus: tuple[GpuInfo, ...]
    reason: str  # why there is no GPU; empty when gpus is non-empty


def _runtime():
    return require("cuda.bindings.runtime")


def _error_text(rt, err) -> str:
    name = getattr(err, "name", str(err))
    try:
        _, text = rt.cudaGetErrorString(err)
        return f"{name}: {text.decode(errors='replace') if isinstance(text, bytes) else text}"
    except Exception:  # the string is a courtesy; the code name is enough
        return name


def _device_name(raw: object) -> str:
    if isinstance(raw, (bytes, bytearray)):
        raw = bytes(raw).split(b"\x00", 1)[0].decode(errors="replace")
    return str(raw).strip()


@lru_cache(maxsize=1)
def probe() -> ProbeResult:
    """All visible CUDA devices, or none with the reason (cached: the answer cannot change)."""
    try:
        rt = _runtime()
    except Exception as exc:  # MissingExtraError, or a broken install
        return ProbeResult((), str(exc))
    err, count = rt.cudaGetDeviceCount()
    if err != rt.cudaError_t.cudaSuccess:
        return ProbeResult((), f"no usable CUDA GPU ({_error_text(rt, err)})")
    if not count:
        return ProbeResult((), "no CUDA GPU is visible (cudaGetDeviceCount returned 0)")
    gpus = []
    for index in range(int(count)):
        err, prop = rt.cudaGetDeviceProperties(index)
        if err != rt.cudaError_t.cudaSuccess:
            return ProbeResult((), f"cannot read the properties of GPU {index} ({_error_text(rt, err)})")
        gpus.append(GpuInfo(index, _device_name(prop.name), int(prop.major), int(prop.minor), int(prop.totalGlobalMem)))
    return ProbeResult(tuple(gpus), "")


def gpu_unavailable_reason() -> str:
    """Empty when a GPU is usable, else one line saying why not (for pytest skips and logs)."""
    return probe().reason


def require_gpu(device: int = 0) -> GpuInfo:
    """The GpuInfo of ``device``; BackendError when there is none (never touches TensorRT)."""
    result = probe()
    if not result.gpus:
        raise BackendError(result.reason)
    if not 0 <= device < len(result.gpus):
        raise BackendError(f"{setting('device', device)} does not exist; this machine has {len(result.gpus)} CUDA GPU(s) (0..{len(result.gpus) - 1})")
    return result.gpus[device]
