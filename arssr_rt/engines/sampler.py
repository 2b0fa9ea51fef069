"""The CUDA trilinear sampler (sampler.cu): compile and launch.

``compile_ptx(arch)`` / ``compile_cubin(arch)`` run NVRTC through ``cuda.bindings.nvrtc`` and
need no GPU, so CI compile-checks the kernel. ``SamplerKernel`` loads it on a device and
launches it through the driver API of ``cuda.bindings`` (or a CuPy RawModule when only CuPy
is installed). The kernel's per-point math is mirrored line for line in numpy by the tests
(tests/kernel_mirror.py), which pin it to ``arssr_rt.sampling`` and torch ``grid_sample``.

Geometry of one call: a ``sampling.BoxSpec``; a chunk = C-order points [first, first + count)
of its box.
"""

from __future__ import annotations

from importlib import resources
from typing import Any, Sequence

import numpy as np

from ..errors import BackendError, MissingExtraError
from ..extras import require
from ..sampling import COORD_MODES, BoxSpec, check_coords_mode

KERNEL_FILE = "sampler.cu"
BLOCK_THREADS = 256
MAX_BLOCKS = 1 << 16  # grid-stride loop beyond this
DTYPE_TAGS = {np.dtype(np.float32): "f32", np.dtype(np.float16): "f16"}
COORD_MODE_CODES = {"global": 0, "phase": 1}  # the kernel's ``coord_mode`` argument
assert set(COORD_MODE_CODES) == set(COORD_MODES)


def kernel_source() -> str:
    return (resources.files("arssr_rt.engines") / KERNEL_FILE).read_text()


def kernel_name(in_dtype: Any, out_dtype: Any) -> str:
    """Entry point for feature dtype ``in_dtype`` and decoder-input dtype ``out_dtype``."""
    try:
        return f"arssr_sample_{DTYPE_TAGS[np.dtype(in_dtype)]}_{DTYPE_TAGS[np.dtype(out_dtype)]}"
    except KeyError:
        raise BackendError(f"the sampler handles float32/float16 only, not {in_dtype} -> {out_dtype}") from None


def coord_mode_code(mode: str) -> int:
    """The kernel's ``coord_mode`` for a bundle's ``spec.coords``; ModelError for an unknown mode."""
    return COORD_MODE_CODES[check_coords_mode(mode)]


# ---------------------------------------------------------------- NVRTC


def _nvrtc_check(nvrtc: Any, result: Any, prog: Any = None) -> Any:
    err, *rest = result
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        detail = ""
        if prog is not None:
            _, size = nvrtc.nvrtcGetProgramLogSize(prog)
            buf = b" " * size
            nvrtc.nvrtcGetProgramLog(prog, buf)
            detail = ": " + buf.decode(errors="replace").strip()
        raise BackendError(f"NVRTC failed ({getattr(err, 'name', err)}){detail}")
    return rest[0] if len(rest) == 1 else rest


def _compile(arch: str, target: str) -> bytes:
    """NVRTC-compile sampler.cu; ``target`` is "ptx" (virtual compute_XY) or "cubin" (real sm_XY)."""
    nvrtc = require("cuda.bindings.nvrtc")
    digits = arch.removeprefix("sm_").removeprefix("compute_")
    if not digits.isdigit():
        raise BackendError(f"GPU architecture must look like sm_90, got {arch!r}")
    gpu_arch = f"{'compute' if target == 'ptx' else 'sm'}_{digits}"
    try:
        prog = _nvrtc_check(nvrtc, nvrtc.nvrtcCreateProgram(kernel_source().encode(), KERNEL_FILE.encode(), 0, [], []))
    except (OSError, RuntimeError) as exc:  # libnvrtc missing: the wheel is not installed
        raise MissingExtraError(f"NVRTC is needed to compile the CUDA sampler but cannot be loaded ({exc}): pip install \"arssr-rt[gpu]\"") from None
    try:
        opts = [f"--gpu-architecture={gpu_arch}".encode(), b"--std=c++17", b"--fmad=false"]
        _nvrtc_check(nvrtc, nvrtc.nvrtcCompileProgram(prog, len(opts), opts), prog)
        if target == "ptx":
            size = _nvrtc_check(nvrtc, nvrtc.nvrtcGetPTXSize(prog))
            buf = b" " * size
            _nvrtc_check(nvrtc, nvrtc.nvrtcGetPTX(prog, buf))
        else:
            size = _nvrtc_check(nvrtc, nvrtc.nvrtcGetCUBINSize(prog))
            buf = b" " * size
            _nvrtc_check(nvrtc, nvrtc.nvrtcGetCUBIN(prog, buf))
        return buf
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def compile_ptx(arch: str = "sm_80") -> bytes:
    """PTX of sampler.cu for ``arch`` (any GPU of that family or newer can JIT it); no GPU needed."""
    return _compile(arch, "ptx")


def compile_cubin(arch: str) -> bytes:
    """Machine code of sampler.cu for exactly ``arch`` (e.g. sm_90); no GPU needed."""
    return _compile(arch, "cubin")


# ---------------------------------------------------------------- launch


def _launch_args(feat_ptr: int, feat_strides: Sequence[int], spec: BoxSpec, feature_dim: int, first: int, count: int,
                 rows_ptr: int, row_stride: int, coords_ptr: int, coord_stride: int, status_ptr: int) -> list[np.ndarray]:
    """Kernel parameters in signature order, each as a 1-element array of its C type."""
    i32, i64, ptr = np.int32, np.int64, np.uint64
    values = (
        [(feat_ptr, ptr)] + [(s, i64) for s in feat_strides]
        + [(feature_dim, i32)] + [(v, i32) for v in spec.block_shape + spec.in_offset + spec.in_shape + spec.out_shape + spec.out_start]
        + [(spec.extents[1], i32), (spec.extents[2], i32), (first, i64), (count, i64),
           (rows_ptr, ptr), (row_stride, i64), (coords_ptr, ptr), (coord_stride, i64),
           (coord_mode_code(spec.coords_mode), i32), (status_ptr, ptr)]
    )
    return [np.array([v], dtype=t) for v, t in values]


def launch_grid(count: int) -> int:
    return max(1, min(MAX_BLOCKS, -(-count // BLOCK_THREADS)))


class SamplerKernel:
    """sampler.cu loaded on the current device (cuda.bindings driver API, or CuPy)."""

    def __init__(self, gpu_sm: str):
        self.gpu_sm = gpu_sm
        self._functions: dict[str, Any] = {}
        try:
            self._driver = require("cuda.bindings.driver")
            self._module = self._load_driver_module()
            self._cupy_module = None
        except MissingExtraError:
            self._driver = None
            cupy = require("cupy")
            self._cupy_module = cupy.RawModule(code=kernel_source(), options=("--std=c++17", "--fmad=false"))

    def _load_driver_module(self) -> Any:
        drv = self._driver
        try:
            image = compile_cubin(self.gpu_sm)  # exact machine code: no driver JIT, no PTX-version trap
        except BackendError:
            image = compile_ptx(self.gpu_sm)
        err, module = drv.cuModuleLoadData(image)
        if err != drv.CUresult.CUDA_SUCCESS:
            raise BackendError(f"cannot load the CUDA sampler for {self.gpu_sm}: {getattr(err, 'name', err)}")
        return module

    def _function(self, name: str) -> Any:
        if name not in self._functions:
            if self._driver is not None:
                err, fn = self._driver.cuModuleGetFunction(self._module, name.encode())
                if err != self._driver.CUresult.CUDA_SUCCESS:
                    raise BackendError(f"the CUDA sampler has no entry point {name}: {getattr(err, 'name', err)}")
            else:
                fn = self._cupy_module.get_function(name)
            self._functions[name] = fn
        return self._functions[name]

    def launch(self, stream_handle: int, feat_ptr: int, feat_dtype: Any, feat_strides: Sequence[int], feature_dim: int,
               spec: BoxSpec, first: int, count: int, rows_ptr: int, row_stride: int, coords_ptr: int, coord_stride: int,
               out_dtype: Any, status_ptr: int) -> None:
        """Queue one chunk on ``stream_handle``; strides are in elements of the block (F, b0, b1, b2)."""
        if count <= 0:
            return
        fn = self._function(kernel_name(feat_dtype, out_dtype))
        args = _launch_args(feat_ptr, feat_strides, spec, feature_dim, first, count, rows_ptr, row_stride, coords_ptr, coord_stride, status_ptr)
        grid = launch_grid(count)
        if self._driver is not None:
            drv = self._driver
            params = np.array([a.ctypes.data for a in args], dtype=np.uint64)
            err, = drv.cuLaunchKernel(fn, grid, 1, 1, BLOCK_THREADS, 1, 1, 0, stream_handle, params.ctypes.data, 0)
            if err != drv.CUresult.CUDA_SUCCESS:
                raise BackendError(f"CUDA sampler launch failed: {getattr(err, 'name', err)}")
        else:
            cupy = require("cupy")
            with cupy.cuda.ExternalStream(stream_handle):
                fn((grid,), (BLOCK_THREADS,), tuple(a[0] for a in args))

    def close(self) -> None:
        if self._driver is not None and self._module is not None:
            self._driver.cuModuleUnload(self._module)
            self._module = None
