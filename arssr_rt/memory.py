"""Keep a whole upsampling run inside a memory budget (``--max-memory``).

The budget is for the process, not one buffer: a fixed share for the interpreter, the runtime
libraries and the compiled model, the input, one decoder chunk, the output array when it is
small (an eighth of the budget), and whatever is left for an encoder tile (which sets the
tile size). A larger output lives in a temporary file mapped into memory; its pages are
handed back to the kernel after every tile (they stay in the page cache, not in this
process), so peak RSS does not grow with the output.
"""

from __future__ import annotations

import errno
import mmap
import os
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from .errors import OutputError
from .tiling import auto_tile

if TYPE_CHECKING:
    from .bundle import ModelBundle
    from .intensity import Normalizer

# interpreter + numpy + nibabel + onnxruntime/OpenVINO libraries, measured 100-160 MB, with margin
RUNTIME_BASE_BYTES = 320 * 1024**2
# larger outputs go to a mapped temporary file: the writer's converted copy and the runtime's
# arena (OpenVINO keeps its tile workspace between calls) must still fit next to it
OUTPUT_IN_MEMORY_FRACTION = 0.125
SAMPLER_COPIES = 3  # sample_box holds the blended chunk plus two temporaries
ENV_TMPDIR = "ARSSR_RT_TMPDIR"


INPUT_COPIES = 3  # float32 input-sized arrays a run counts on holding at once (the read volume, its normalised copy, slack)


def input_voxel_limit(max_memory: int, ceiling: int) -> int:
    """The most input voxels a run inside ``max_memory`` can read (the runtime plus the input's
    float32 copies, as ``plan_memory`` counts them), at most ``ceiling``: checked against the
    header before the data is read, so a small budget bounds the read too."""
    return max(1, min(int(ceiling), (int(max_memory) - RUNTIME_BASE_BYTES) // (4 * INPUT_COPIES)))


@dataclass(frozen=True)
class MemoryPlan:
    """How a run fits the budget: the encoder tile core and where the output lives."""

    tile: int
    output_in_memory: bool
    encoder_budget: int


def plan_memory(
    in_shape: Sequence[int],
    out_shape: Sequence[int],
    *,
    max_memory: int,
    encoder_bytes_per_voxel: float,
    receptive_radius: int,
    feature_dim: int,
    chunk: int,
    model_bytes: int,
    feature_scale: int = 1,
    outputs: int = 1,
) -> MemoryPlan:
    """Split ``max_memory`` between fixed costs, the output and the encoder tile.

    ``outputs``: output-sized float32 buffers alive at once (test-time averaging holds the
    running sum and the pass being decoded: 2); all in memory or all file-backed."""
    out_bytes = 4 * int(np.prod(out_shape)) * max(1, int(outputs))
    in_bytes = 4 * int(np.prod(in_shape))
    in_memory = out_bytes <= OUTPUT_IN_MEMORY_FRACTION * max_memory
    decode_bytes = chunk * (SAMPLER_COPIES * feature_dim + 8) * 4
    fixed = RUNTIME_BASE_BYTES + 2 * model_bytes + INPUT_COPIES * in_bytes + decode_bytes + (out_bytes if in_memory else 0)
    encoder_budget = max(0, int(max_memory) - fixed)
    # the kept feature block (channel-last copy) lives next to the encoder's own output
    # (a feature map r times finer holds r^3 feature vectors per input voxel)
    per_voxel = encoder_bytes_per_voxel + 4 * feature_dim * feature_scale**3
    tile = auto_tile(in_shape, receptive_radius, per_voxel, max(encoder_budget, 1))
    return MemoryPlan(tile=tile, output_in_memory=in_memory, encoder_budget=encoder_budget)


def output_buffer(shape: Sequence[int], in_memory: bool) -> np.ndarray:
    """A float32 array of ``shape``: in memory, or backed by an unlinked temporary file."""
    return np.empty(tuple(int(n) for n in shape), dtype=np.float32) if in_memory else output_buffer_of(shape, np.float32)


def output_buffer_of(shape: Sequence[int], dtype: np.dtype | type) -> np.ndarray:
    """An array of ``shape`` and ``dtype`` backed by an unlinked temporary file.

    The file is removed from the directory at once, so nothing is left behind even if the
    process dies; its space is freed when the last array referring to the mapping is gone.
    """
    shape = tuple(int(n) for n in shape)
    dtype = np.dtype(dtype)
    nbytes = dtype.itemsize * int(np.prod(shape))
    directory = os.environ.get(ENV_TMPDIR) or tempfile.gettempdir()
    fd, name = tempfile.mkstemp(prefix="arssr-rt-out-", suffix=".f32", dir=directory)
    try:
        os.unlink(name)
        _reserve(fd, max(nbytes, 1), directory)
        mapping = mmap.mmap(fd, max(nbytes, 1), flags=mmap.MAP_SHARED, access=mmap.ACCESS_WRITE)
    finally:
        os.close(fd)
    return np.frombuffer(mapping, dtype=dtype, count=int(np.prod(shape))).reshape(shape)


def _reserve(fd: int, nbytes: int, directory: str) -> None:
    """Allocate the file's blocks now: a full disk is a clear error here, not a SIGBUS mid-run.

    (Writing to a sparse, memory-mapped file on a full disk kills the process with SIGBUS.)
    """
    try:
        os.posix_fallocate(fd, 0, nbytes)
        return
    except AttributeError:  # no posix_fallocate on this platform
        pass
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise OutputError(f"not enough free space in {directory} for the {nbytes / 2**30:.2f} GiB temporary output "
                              f"buffer; free space there or point {ENV_TMPDIR} at a bigger disk") from None
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    os.ftruncate(fd, nbytes)  # filesystems without fallocate: sparse, as before


def _mapping_of(arr: np.ndarray) -> mmap.mmap | None:
    base = arr
    while base is not None:
        if isinstance(base, mmap.mmap):
            return base
        base = getattr(base, "base", None) if not isinstance(base, memoryview) else base.obj  # type: ignore[assignment]
    return None


def is_file_backed(arr: np.ndarray) -> bool:
    return _mapping_of(arr) is not None


def release_pages(arr: np.ndarray) -> None:
    """Drop a file-backed array's pages from this process (data stays in the file/page cache)."""
    mapping = _mapping_of(arr)
    if mapping is not None and hasattr(mapping, "madvise"):
        mapping.madvise(mmap.MADV_DONTNEED)


def slab_rows(shape: Sequence[int], slab_bytes: int = 64 * 1024**2) -> int:
    """Rows along axis 0 per slab so a float32 slab takes about ``slab_bytes``."""
    return max(1, slab_bytes // max(1, 4 * int(np.prod(shape[1:]))))


def slabs(arr_shape: Sequence[int]) -> Iterator[slice]:
    """Slices along axis 0 covering an array of ``arr_shape`` in ~64 MB slabs."""
    rows = slab_rows(arr_shape)
    for a in range(0, int(arr_shape[0]), rows):
        yield slice(a, a + rows)


def all_finite(arr: np.ndarray) -> bool:
    """``np.all(np.isfinite(arr))`` one slab at a time (no full-size boolean array)."""
    try:
        return all(bool(np.all(np.isfinite(arr[s]))) for s in slabs(arr.shape))
    finally:
        release_pages(arr)


def convert_in_slabs(arr: np.ndarray, convert: Callable[[np.ndarray], np.ndarray], dtype: np.dtype) -> np.ndarray:
    """``convert(arr)`` as a new array of ``dtype``, computed slab by slab.

    The result is file-backed when ``arr`` is; either way only one slab's temporaries exist
    at a time, so converting a huge output for writing never holds extra full-size copies.
    """
    mapped = is_file_backed(arr)
    out = output_buffer_of(arr.shape, dtype) if mapped else np.empty(arr.shape, dtype=dtype)
    for s in slabs(arr.shape):
        out[s] = convert(arr[s])
        release_pages(out)
        release_pages(arr)
    return out


def min_max(arr: np.ndarray) -> tuple[float, float]:
    """(min, max), one slab at a time for a file-backed array."""
    if not is_file_backed(arr):
        return float(arr.min()), float(arr.max())
    lo, hi = np.inf, -np.inf
    for s in slabs(arr.shape):
        lo, hi = min(lo, float(arr[s].min())), max(hi, float(arr[s].max()))
    release_pages(arr)
    return lo, hi


def encoder_bytes_per_voxel(spec: dict[str, Any]) -> float:
    """Peak bytes per encoder voxel (float32, features returned included), from the spec.

    Used only to choose a tile size. Fitted to the hungriest CPU runtime measured (OpenVINO:
    RDN 12.3 kB, ResCNN 2.3 kB, the default model 0.6 kB per voxel; onnxruntime needs about
    half): dense blocks (RDN) keep every block output, their concatenation and each dense
    layer's growing input alive.
    """
    args = spec.get("encoder_args", {})
    width = int(args.get("width", 64))
    feat = int(spec.get("feature_dim", 128))
    if spec.get("encoder") == "rdn":
        blocks, layers, growth = int(args.get("blocks", 8)), int(args.get("layers", 3)), int(args.get("growth", 64))
        dense_inputs = sum(width + growth * i for i in range(layers + 1))
        channels = 2 * width * blocks + dense_inputs + 2 * feat + 2 * width
    else:
        channels = 4 * width + feat
    r = int(spec.get("feature_scale", 1))
    if r > 1:  # the expansion conv's output and the pixel-shuffled copy of it
        channels += 2 * feat * r**3
    return 4.0 * channels * 1.5  # 1.5: runtime workspace and copies


def model_bytes(bundle: "ModelBundle") -> int:
    """Size of the fp32 graphs a CPU runtime holds (weights, plus its own repacked copy)."""
    from . import bundle_format as contract

    total = 0
    for name in (contract.ENCODER_FP32, contract.DECODER_FP32):
        if bundle.has(name) and bundle.file(name).is_file():
            total += bundle.file(name).stat().st_size
    return total


def restore_in_place(norm: "Normalizer", out: np.ndarray) -> np.ndarray:
    """``norm.restore`` slab by slab into ``out`` itself: no second full-size array."""
    for s in slabs(out.shape):
        out[s] = norm.restore(out[s])
        release_pages(out)
    return out


def transposed(out: np.ndarray) -> np.ndarray:
    """(i, j, k) -> (k, j, i) as a C-contiguous array; file-backed in, file-backed out."""
    if not is_file_backed(out):
        return np.ascontiguousarray(out.transpose(2, 1, 0))
    dst = output_buffer(out.shape[::-1], in_memory=False)
    for s in slabs(dst.shape):
        dst[s] = out[:, :, s].transpose(2, 1, 0)
        release_pages(dst)
        release_pages(out)
    return dst
