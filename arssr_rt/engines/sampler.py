"""The CUDA trilinear sampler (sampler.cu): compile, launch, and its exact numpy mirror.

``compile_ptx(arch)`` / ``compile_cubin(arch)`` run NVRTC through ``cuda.bindings.nvrtc`` and
need no GPU, so CI compile-checks the kernel. ``SamplerKernel`` loads it on a device and
launches it through the driver API of ``cuda.bindings`` (or a CuPy RawModule when only CuPy
is installed). ``reference_sample_rows`` is the kernel's per-point math in numpy, line for
line, used by the tests to pin the kernel to ``arssr_rt.sampling`` and torch ``grid_sample``.

Geometry of one call (``BoxSpec``): a feature block (F, b0, b1, b2) whose voxel 0 is global
input voxel ``in_offset`` of a volume ``in_shape``; the output grid ``out_shape``; the box
[out_start, out_stop) of it; the decoder coordinate mode (the bundle's ``spec.coords``:
"global" or "phase", see arssr_rt/geometry.py); a chunk = C-order points
[first, first + count) of the box.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, Sequence

import numpy as np

from ..errors import BackendError, MissingExtraError, ModelError
from ..extras import require
from ..geometry import COORD_MODES, PHASE_EPS

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
    try:
        return COORD_MODE_CODES[mode]
    except KeyError:
        raise ModelError(f"unknown decoder coordinate mode {mode!r} (model.json spec.coords); known: {', '.join(COORD_MODES)}") from None


# ---------------------------------------------------------------- geometry of one call


def _triplet(v: Sequence[int], what: str) -> tuple[int, int, int]:
    t = tuple(int(x) for x in v)
    if len(t) != 3:
        raise ValueError(f"{what} needs 3 values, got {list(v)}")
    return t  # type: ignore[return-value]


@dataclass(frozen=True)
class BoxSpec:
    """Where a feature block sits and which output box to sample from it (see module doc)."""

    block_shape: tuple[int, int, int]
    in_offset: tuple[int, int, int]
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    out_start: tuple[int, int, int]
    out_stop: tuple[int, int, int]
    coords_mode: str = "global"  # what the decoder's coords input holds (bundle.coords_mode)

    @classmethod
    def make(cls, block_shape, in_offset, in_shape, out_shape, out_start, out_stop, coords_mode: str = "global") -> "BoxSpec":
        spec = cls(*(_triplet(v, n) for v, n in zip(
            (block_shape, in_offset, in_shape, out_shape, out_start, out_stop),
            ("block_shape", "in_offset", "in_shape", "out_shape", "out_start", "out_stop"))), coords_mode=coords_mode)
        spec.validate()
        return spec

    @property
    def extents(self) -> tuple[int, int, int]:
        return tuple(b - a for a, b in zip(self.out_start, self.out_stop))  # type: ignore[return-value]

    @property
    def points(self) -> int:
        n = self.extents
        return n[0] * n[1] * n[2]

    def validate(self) -> None:
        """ValueError unless the block covers every weighted corner of the box; ModelError for an unknown coords mode."""
        coord_mode_code(self.coords_mode)
        for a in range(3):
            h, H, b = self.in_shape[a], self.out_shape[a], self.block_shape[a]
            s, e, o = self.out_start[a], self.out_stop[a], self.in_offset[a]
            if min(h, H, b) < 1 or not 0 <= s < e <= H or not 0 <= o <= o + b <= h:
                raise ValueError(f"bad box on axis {a}: block {o}+{b} of {h} input voxels, output [{s}, {e}) of {H}")
            lo, hi = needed_input_range(h, H, s, e)
            if lo < o or hi >= o + b:
                raise ValueError(f"feature block [{o}, {o + b}) on axis {a} does not cover input voxels [{lo}, {hi}] needed by output [{s}, {e})")


def needed_input_range(h: int, H: int, start: int, stop: int) -> tuple[int, int]:
    """First and last input voxel with a non-zero weight for output voxels [start, stop)."""
    j = np.arange(start, stop, dtype=np.float64)
    p = (j + 0.5) * h / H - 0.5
    i0 = np.floor(p)
    t = p - i0
    i0 = i0.astype(np.int64)
    used = np.concatenate([i0[(1.0 - t) != 0], (i0 + 1)[t != 0]])
    used = used[(used >= 0) & (used < h)]
    return int(used.min()), int(used.max())


# ---------------------------------------------------------------- numpy mirror of the kernel


def _axis_corners(g: np.ndarray, h: int, H: int, off: int, blen: int):
    p = _input_index(g, h, H)
    fl = np.floor(p)
    t = p - fl
    i0 = fl.astype(np.int64)
    i1 = i0 + 1
    w_lo = np.where((i0 >= 0) & (i0 < h), 1.0 - t, 0.0).astype(np.float32)
    w_hi = np.where((i1 >= 0) & (i1 < h), t, 0.0).astype(np.float32)
    l0, l1 = i0 - off, i1 - off
    bad = ((w_lo != 0) & ((l0 < 0) | (l0 >= blen))) | ((w_hi != 0) & ((l1 < 0) | (l1 >= blen)))
    return np.clip(l0, 0, blen - 1), np.clip(l1, 0, blen - 1), w_lo, w_hi, bad


def _input_index(g: np.ndarray, h: int, H: int) -> np.ndarray:
    return (g.astype(np.float64) + 0.5) * h / H - 0.5


def _decoder_coords(g: np.ndarray, h: int, H: int, mode: str) -> np.ndarray:
    """The kernel's decoder_coord in float64, rounded once to float32."""
    if coord_mode_code(mode) == COORD_MODE_CODES["phase"]:
        p = _input_index(g, h, H)
        return (2.0 * (p - np.floor(p + PHASE_EPS)) - 1.0).astype(np.float32)
    return (-1.0 + (2.0 * g.astype(np.float64) + 1.0) / H).astype(np.float32)


def _blend(w_lo: np.ndarray, a: np.ndarray, w_hi: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * w_lo) + (b * w_hi)  # float32 products then sum: the kernel's _rn ops


def reference_sample_rows(features: np.ndarray, spec: BoxSpec, first: int = 0, count: int | None = None) -> tuple[np.ndarray, np.ndarray, bool]:
    """The kernel in numpy: (rows (count, F) float32, coords (count, 3) float32, bad flag).

    ``features`` is the (F, b0, b1, b2) block. Same per-point steps as sampler.cu, so a float32
    kernel run equals this bit for bit.
    """
    count = spec.points - first if count is None else count
    n0, n1, n2 = spec.extents
    q = np.arange(first, first + count, dtype=np.int64)
    g = [spec.out_start[0] + q // (n1 * n2), spec.out_start[1] + (q // n2) % n1, spec.out_start[2] + q % n2]
    c = [_axis_corners(g[a], spec.in_shape[a], spec.out_shape[a], spec.in_offset[a], spec.block_shape[a]) for a in range(3)]
    f = np.moveaxis(np.asarray(features, dtype=np.float32), 0, -1)  # (b0, b1, b2, F): gathers give (count, F)
    (lo0, hi0, wl0, wh0, _), (lo1, hi1, wl1, wh1, _), (lo2, hi2, wl2, wh2, _) = c
    col = lambda w: w[:, None]  # noqa: E731
    t = {}
    for name1, i1 in (("0", lo1), ("1", hi1)):
        for name2, i2 in (("0", lo2), ("1", hi2)):
            t[name1 + name2] = _blend(col(wl0), f[lo0, i1, i2], col(wh0), f[hi0, i1, i2])
    u0 = _blend(col(wl1), t["00"], col(wh1), t["10"])
    u1 = _blend(col(wl1), t["01"], col(wh1), t["11"])
    rows = _blend(col(wl2), u0, col(wh2), u1).astype(np.float32)
    coords = np.stack([_decoder_coords(g[a], spec.in_shape[a], spec.out_shape[a], spec.coords_mode) for a in range(3)], axis=1)
    bad = bool(np.any(c[0][4] | c[1][4] | c[2][4]))
    return rows, coords, bad


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


@lru_cache(maxsize=None)
def ptx_entry_points(arch: str = "sm_80") -> tuple[str, ...]:
    """Names of the kernels in the compiled PTX (a cheap self-check for CI)."""
    ptx = compile_ptx(arch).decode(errors="replace")
    return tuple(line.split()[-1].rstrip("(") for line in ptx.splitlines() if line.lstrip().startswith(".visible .entry"))
