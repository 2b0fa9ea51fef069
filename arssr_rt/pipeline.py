"""The full-volume pipeline, top to bottom in one screen:

load + validate -> normalise -> encode (tiles with exact halo) -> sample + decode (chunks)
-> restore intensities -> write atomically.

Peak memory is bounded by the tile and chunk sizes, not by the volume: only one tile's
features and one chunk's decoder input exist at a time (plus the output array).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .background import flatten_flat_background
from .backends.base import Backend, BackendOptions, open_backend
from .bundle import ModelBundle, resolve_model
from .errors import BackendError, InputError, OutputError
from .geometry import OutputGrid, Triplet, describe_scale
from .intensity import Normalizer
from .labels import check_intensity_image
from .memory import MemoryPlan, is_file_backed, output_buffer, plan_memory, release_pages, slabs
from .sampling import box_coords, sample_box
from .tiling import Tile, output_chunks, plan_tiles
from .volume import Volume

# output points sampled per step: 8 MB of decoder input at F=128 stays in cache between the
# trilinear blends and the decoder (1 << 17 points spent 4x longer sampling, measured)
DEFAULT_CHUNK = 1 << 14
DEFAULT_MAX_MEMORY = 2 * 1024**3  # peak bytes the whole run may use (see memory.py)
DEFAULT_MAX_OUTPUT_VOXELS = 1024**3  # refuse outputs larger than this (4 GiB as float32)

ProgressFn = Callable[[int], None]


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


def _model_bytes(bundle: ModelBundle) -> int:
    """Size of the fp32 graphs a CPU runtime holds (weights, plus its own repacked copy)."""
    from .export import contract

    total = 0
    for name in (contract.ENCODER_FP32, contract.DECODER_FP32):
        if bundle.has(name) and bundle.file(name).is_file():
            total += bundle.file(name).stat().st_size
    return total


def restore_in_place(norm: Normalizer, out: np.ndarray) -> np.ndarray:
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


class Upsampler:
    """A loaded model + backend, reusable across volumes (batch jobs load it once)."""

    def __init__(
        self,
        model: str | Path | ModelBundle | None = None,
        backend: str = "auto",
        options: BackendOptions | None = None,
        tile: int | None = None,
        chunk: int = DEFAULT_CHUNK,
        normalization: str = "minmax",
        max_memory: int = DEFAULT_MAX_MEMORY,
        as_intensity: bool = False,
    ):
        self.bundle = model if isinstance(model, ModelBundle) else resolve_model(model)
        self.backend: Backend = open_backend(backend, self.bundle, options or BackendOptions())
        if tile is not None and tile < 1:
            raise InputError(f"--tile must be >= 1, got {tile}")
        if chunk < 1:
            raise InputError(f"--chunk must be >= 1, got {chunk}")
        self.tile, self.chunk, self.max_memory = tile, chunk, max_memory
        self.normalization = normalization
        self.as_intensity = as_intensity  # True: take a label-map-like image as intensities anyway

    def __enter__(self) -> "Upsampler":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.backend.close()

    def memory_plan(self, shape: Sequence[int], out_shape: Sequence[int] | None = None) -> MemoryPlan:
        """Tile size and output placement that keep the run inside ``max_memory``."""
        plan = plan_memory(
            shape, out_shape if out_shape is not None else shape, max_memory=self.max_memory,
            encoder_bytes_per_voxel=encoder_bytes_per_voxel(self.bundle.spec), receptive_radius=self.bundle.receptive_radius,
            feature_dim=self.bundle.feature_dim, chunk=self.chunk, model_bytes=_model_bytes(self.bundle),
            feature_scale=self.bundle.feature_scale,
        )
        return plan if self.tile is None else MemoryPlan(self.tile, plan.output_in_memory, plan.encoder_budget)

    def tile_for(self, shape: Sequence[int], out_shape: Sequence[int] | None = None) -> int:
        return self.memory_plan(shape, out_shape).tile

    def run(self, volume: Volume, grid: OutputGrid, progress: ProgressFn | None = None) -> np.ndarray:
        """Super-resolve ``volume`` onto ``grid``; float32 in the input's intensity units."""
        where = volume.source_path or "input"
        if not self.as_intensity:
            check_intensity_image(where, volume.data, volume.header)
        try:
            norm = Normalizer(mode=self.normalization).fit(volume.data)  # type: ignore[arg-type]
        except InputError as exc:  # constant image, outlier voxels: name the file
            raise InputError(f"{where}: {exc}") from None
        lr = norm.normalize(volume.data)
        out_shape = grid.shape
        zyx = self.bundle.axis_order == "zyx"
        if zyx:  # published weights saw SimpleITK (z, y, x) arrays
            lr = np.ascontiguousarray(lr.transpose(2, 1, 0))
            out_shape = out_shape[::-1]
        out = self.infer(lr, out_shape, progress)
        flatten_flat_background(lr, out)  # exactly-constant air stays exactly constant
        del lr
        if zyx:
            out = transposed(out)
        return restore_in_place(norm, out)

    def infer(self, lr: np.ndarray, out_shape: Sequence[int], progress: ProgressFn | None = None) -> np.ndarray:
        """Normalised LR (D,H,W) -> normalised output of ``out_shape``, tile by tile."""
        plan = self.memory_plan(lr.shape, out_shape)
        out = output_buffer(out_shape, in_memory=plan.output_in_memory)
        tiles = plan_tiles(lr.shape, out_shape, plan.tile, self.bundle.receptive_radius)
        for tile in tiles:
            self._run_tile(lr, out, tile, progress)
            release_pages(out)
        return out

    def _run_tile(self, lr: np.ndarray, out: np.ndarray, tile: Tile, progress: ProgressFn | None) -> None:
        enc = tuple(slice(a, b) for a, b in tile.encode)
        tile_in = lr[enc]
        features = self.backend.encode(np.ascontiguousarray(tile_in))
        # a feature map r times finer covers the same field of view: sample it as an input grid
        # r times finer (align_corners=False makes both the same geometry)
        r = self.bundle.feature_scale
        expected = tuple(r * n for n in tile_in.shape)
        if tuple(features.shape[1:]) != expected:
            raise BackendError(f"encoder returned features of shape {tuple(features.shape[1:])} for a {tile_in.shape} tile; "
                               f"the bundle's feature_scale {r} needs {expected}")
        keep = tuple(slice(r * (k0 - e0), r * (k1 - e0)) for (k0, k1), (e0, _) in zip(tile.keep, tile.encode))
        offset = tuple(r * k0 for k0, _ in tile.keep)
        grid_shape = tuple(r * n for n in lr.shape)
        decode_box = getattr(self.backend, "decode_box", None)
        if decode_box is not None:
            # GPU backends sample + decode the whole tile on the device; the kept block is a view
            # of the encoder output, so its device copy is reused rather than uploaded again
            start, stop = tuple(a for a, _ in tile.output), tuple(b for _, b in tile.output)
            out[start[0]:stop[0], start[1]:stop[1], start[2]:stop[2]] = decode_box(features[(slice(None),) + keep], offset, grid_shape, out.shape, start, stop)
            if progress:
                progress(int(np.prod([b - a for a, b in zip(start, stop)])))
            return
        # keep core ± 1 as a channel-last block for the separable sampler
        block = np.ascontiguousarray(np.moveaxis(features[(slice(None),) + keep], 0, -1))
        del features
        for start, stop in output_chunks(tile.output, self.chunk):
            sampled = sample_box(block, offset, grid_shape, out.shape, start, stop)
            n = sampled.shape[:3]
            values = self.backend.decode(sampled.reshape(-1, sampled.shape[-1]), box_coords(out.shape, start, stop, grid_shape, self.bundle.coords_mode))
            out[start[0]:stop[0], start[1]:stop[1], start[2]:stop[2]] = values.reshape(n)
            if progress:
                progress(int(np.prod(n)))


@dataclass
class UpsampleResult:
    """What one ``upsample_file`` call did, for the summary line and batch reports."""

    out_path: Path
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    in_spacing: Triplet
    out_spacing: Triplet
    seconds: float
    backend: str
    model: str


def plan_grid(volume: Volume, scale: Any = None, voxel_size: Any = None, shape: Any = None, max_output_voxels: int = DEFAULT_MAX_OUTPUT_VOXELS) -> OutputGrid:
    """Parse the size options and refuse an output over the size limit (before any compute)."""
    from .options import output_grid

    grid = output_grid(volume.shape, volume.affine, scale, voxel_size, shape)
    if grid.voxels > max_output_voxels:
        raise OutputError(
            f"output {grid.shape[0]}x{grid.shape[1]}x{grid.shape[2]} = {grid.voxels:,} voxels is over the limit of "
            f"{max_output_voxels:,} (--max-output-voxels)"
        )
    return grid


def default_output_path(in_path: Path, grid: OutputGrid, in_shape: Sequence[int]) -> Path:
    """``<stem>_x<scale>.nii.gz`` next to the input."""
    name = in_path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".gz"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return in_path.with_name(f"{name}_{describe_scale(in_shape, grid.shape)}.nii.gz")


def upsample(
    data: np.ndarray,
    affine: np.ndarray,
    *,
    scale: Any = None,
    voxel_size: Any = None,
    shape: Any = None,
    model: str | Path | ModelBundle | None = None,
    backend: str = "auto",
    tile: int | None = None,
    chunk: int = DEFAULT_CHUNK,
    normalization: str = "minmax",
    max_output_voxels: int = DEFAULT_MAX_OUTPUT_VOXELS,
    as_intensity: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Super-resolve an array with its affine; returns (float32 data, output affine).

    Example:
        >>> out, out_affine = upsample(img.get_fdata(), img.affine, scale=2.5)
    """
    from .validation import check_affine, check_voxels

    arr = np.asarray(data, dtype=np.float32)
    if arr.ndim != 3:
        raise InputError(f"expected a 3-D array, got shape {arr.shape}")
    if min(arr.shape) < 2:
        raise InputError(f"every axis needs at least 2 voxels, got shape {arr.shape}")
    check_voxels("array", arr)
    check_affine("array", np.asarray(affine, dtype=np.float64))
    volume = Volume(data=arr, affine=np.asarray(affine, dtype=np.float64))
    grid = plan_grid(volume, scale, voxel_size, shape, max_output_voxels)
    with Upsampler(model, backend, tile=tile, chunk=chunk, normalization=normalization, as_intensity=as_intensity) as up:
        return up.run(volume, grid), grid.affine


def upsample_file(
    in_path: str | Path,
    out_path: str | Path | None = None,
    *,
    scale: Any = None,
    voxel_size: Any = None,
    shape: Any = None,
    model: str | Path | ModelBundle | None = None,
    backend: str = "auto",
    options: BackendOptions | None = None,
    tile: int | None = None,
    chunk: int = DEFAULT_CHUNK,
    normalization: str = "minmax",
    dtype: str | None = None,
    force: bool = False,
    max_output_voxels: int = DEFAULT_MAX_OUTPUT_VOXELS,
    upsampler: Upsampler | None = None,
    max_memory: int = DEFAULT_MAX_MEMORY,
    on_backend: Callable[[str], None] | None = None,
    progress: Callable[[OutputGrid], ProgressFn] | None = None,
    as_intensity: bool = False,
) -> UpsampleResult:
    """Read, validate, super-resolve and atomically write one volume.

    Every check that can fail (input, size options, output path, model) runs before compute,
    so a bad call costs nothing and leaves nothing behind. ``progress(grid)`` may return a
    callable that receives the number of output voxels done after each chunk.
    """
    from .intensity import choose_output_dtype
    from .nifti_io import check_output_path, save_volume
    from .readers import read_volume

    t0 = time.perf_counter()
    in_path = Path(in_path)
    volume = read_volume(in_path)
    grid = plan_grid(volume, scale, voxel_size, shape, max_output_voxels)
    target = Path(out_path) if out_path is not None else default_output_path(in_path, grid, volume.shape)
    check_output_path(target, force=force)
    choose_output_dtype(volume.source_dtype, dtype)  # an unknown --dtype fails before compute
    owner = upsampler is None
    up = upsampler or Upsampler(model, backend, options, tile=tile, chunk=chunk, normalization=normalization, max_memory=max_memory,
                                as_intensity=as_intensity)
    if on_backend:
        on_backend(getattr(up.backend, "name", backend))
    try:
        result = up.run(volume, grid, progress(grid) if progress else None)
        save_volume(target, result, grid, volume, dtype=dtype, force=force)
    finally:
        if owner:
            up.close()
    return UpsampleResult(
        out_path=target,
        in_shape=volume.shape,
        out_shape=grid.shape,
        in_spacing=tuple(float(x) for x in np.linalg.norm(volume.affine[:3, :3], axis=0)),  # type: ignore[arg-type]
        out_spacing=grid.spacing,
        seconds=time.perf_counter() - t0,
        backend=getattr(up.backend, "name", "?"),
        model=up.bundle.name,
    )
