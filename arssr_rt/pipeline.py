"""The full-volume pipeline, top to bottom: ``Upsampler.run`` reads as the flow.

normalise -> (zyx bundles: transpose) -> encode tiles with an exact halo -> sample + decode
chunks -> keep flat background flat -> (transpose back) -> restore intensities.
``upsample_file`` adds read + validate before and the atomic write after.

The pipeline is the only tiler and chunker: backends run networks on what it hands them
(``backends/base.py``), within the limits they declare. Peak memory is bounded by the tile
and chunk sizes, not by the volume (see memory.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from .background import flatten_flat_background
from .consistency import check_slice_profile, keep_acquired
from .backends.base import Backend, BackendOptions, BackendSpec, open_backend
from .bundle import ModelBundle, resolve_model
from . import windowed_sinc
from .errors import BackendError, InputError, ModelError, OutputError
from .geometry import OutputGrid, Triplet
from .intensity import Normalizer
from .labels import check_intensity_image
from .memory import (MemoryPlan, encoder_bytes_per_voxel, model_bytes, output_buffer, plan_memory, release_pages,
                     restore_in_place, transposed)
from .sampling import box_coords, sample_box
from .tiling import Tile, cap_tile, output_chunks, plan_tiles
from .volume import Volume

if TYPE_CHECKING:
    from .adapt.plan import AdaptOptions

# output points sampled per step: 8 MB of decoder input at F=128 stays in cache between the
# trilinear blends and the decoder (1 << 17 points spent 4x longer sampling, measured)
DEFAULT_CHUNK = 1 << 14
DEFAULT_MAX_MEMORY = 2 * 1024**3  # peak bytes the whole run may use (see memory.py)
DEFAULT_MAX_OUTPUT_VOXELS = 1024**3  # refuse outputs larger than this (4 GiB as float32)

ProgressFn = Callable[[int], None]


class Upsampler:
    """A loaded model + backend, reusable across volumes (batch jobs load it once).

    ``backend``: a registered name (``auto`` picks the best that opens), an open backend, or a
    factory ``(bundle, options) -> backend``. ``chunk`` overrides ``options.chunk``.
    """

    def __init__(
        self,
        model: str | Path | ModelBundle | None = None,
        backend: BackendSpec = "auto",
        options: BackendOptions | None = None,
        tile: int | None = None,
        chunk: int | None = None,
        normalization: str = "minmax",
        max_memory: int = DEFAULT_MAX_MEMORY,
        as_intensity: bool = False,
        keep_acquired: str | None = None,
        slice_gap: float = 0.0,
    ):
        options = options or BackendOptions()
        if keep_acquired is not None:  # an unknown profile or a bad gap fails before the model loads
            check_slice_profile(keep_acquired, slice_gap)
        if chunk is not None:
            options = replace(options, chunk=chunk)
        if tile is not None and tile < 1:
            raise InputError(f"--tile must be >= 1, got {tile}")
        if options.chunk is not None and options.chunk < 1:
            raise InputError(f"--chunk must be >= 1, got {options.chunk}")
        self.bundle = model if isinstance(model, ModelBundle) else resolve_model(model)
        self.backend: Backend = open_backend(backend, self.bundle, options)
        self.tile, self.chunk, self.max_memory = tile, options.chunk or DEFAULT_CHUNK, max_memory
        self.normalization = normalization
        self.as_intensity = as_intensity  # True: take a label-map-like image as intensities anyway
        self.keep_acquired, self.slice_gap = keep_acquired, slice_gap  # slice profile of the data-consistency step

    def __enter__(self) -> "Upsampler":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.backend.close()

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
        if self.keep_acquired:  # each acquired voxel = the output averaged over its slice profile
            keep_acquired(out, norm.normalize(volume.data), self.keep_acquired, self.slice_gap)
        return restore_in_place(norm, out)

    def infer(self, lr: np.ndarray, out_shape: Sequence[int], progress: ProgressFn | None = None) -> np.ndarray:
        """Normalised LR (D,H,W) -> normalised output of ``out_shape``: encode each tile, then
        sample + decode the output voxels it owns (on the device when the backend can)."""
        plan = self.memory_plan(lr.shape, out_shape)
        out = output_buffer(out_shape, in_memory=plan.output_in_memory)
        radius = self.bundle.receptive_radius
        tile = cap_tile(plan.tile, lr.shape, radius, self.backend.max_encode_tile)
        base = self.bundle.spec.get("base", "none")
        if base not in windowed_sinc.BASES:
            raise ModelError(f"model.json: spec.base must be one of {', '.join(windowed_sinc.BASES)}, got {base!r}")
        for t in plan_tiles(lr.shape, out_shape, tile, radius):
            features, offset = self._encode(lr, t)
            on_device = self.backend.decodes_boxes_on_device
            block = features if on_device else np.ascontiguousarray(np.moveaxis(features, 0, -1))
            boxes = [tuple(zip(*t.output))] if on_device else output_chunks(t.output, self.chunk)
            for start, stop in boxes:
                values = self._decode(block, offset, lr.shape, out.shape, start, stop, on_device)
                out[start[0]:stop[0], start[1]:stop[1], start[2]:stop[2]] = values
                if progress:
                    progress(values.size)
            del features, block
            if base != "none":  # residual bundles: decoder output + windowed-sinc base of the tile's outputs
                windowed_sinc.add_base(out, lr, t.output)
            release_pages(out)
        return out

    def _encode(self, lr: np.ndarray, tile: Tile) -> tuple[np.ndarray, tuple[int, ...]]:
        """Features of ``tile``'s core ± 1 (a view of the encoder output) and their grid offset."""
        tile_in = np.ascontiguousarray(lr[tuple(slice(a, b) for a, b in tile.encode)])
        features = self.backend.encode(tile_in)
        # a feature map r times finer covers the same field of view: it is sampled as an input
        # grid r times finer (align_corners=False makes both the same geometry)
        r = self.bundle.feature_scale
        expected = tuple(r * n for n in tile_in.shape)
        if tuple(features.shape[1:]) != expected:
            raise BackendError(f"encoder returned features of shape {tuple(features.shape[1:])} for a {tile_in.shape} tile; "
                               f"the bundle's feature_scale {r} needs {expected}")
        keep = tuple(slice(r * (k0 - e0), r * (k1 - e0)) for (k0, k1), (e0, _) in zip(tile.keep, tile.encode))
        return features[(slice(None),) + keep], tuple(r * k0 for k0, _ in tile.keep)

    def _decode(self, block: np.ndarray, offset: Sequence[int], lr_shape: Sequence[int], out_shape: Sequence[int],
                start: Sequence[int], stop: Sequence[int], on_device: bool) -> np.ndarray:
        """Intensities of output box [start, stop): on the device, or sampled here and decoded."""
        grid_shape = tuple(self.bundle.feature_scale * n for n in lr_shape)
        if on_device:
            return self.backend.decode_box(block, offset, grid_shape, out_shape, start, stop)
        sampled = sample_box(block, offset, grid_shape, out_shape, start, stop)
        coords = box_coords(out_shape, start, stop, grid_shape, self.bundle.coords_mode)
        return self.backend.decode(sampled.reshape(-1, sampled.shape[-1]), coords).reshape(sampled.shape[:3])

    def memory_plan(self, shape: Sequence[int], out_shape: Sequence[int] | None = None) -> MemoryPlan:
        """Tile size and output placement that keep the run inside ``max_memory``."""
        plan = plan_memory(
            shape, out_shape if out_shape is not None else shape, max_memory=self.max_memory,
            encoder_bytes_per_voxel=encoder_bytes_per_voxel(self.bundle.spec), receptive_radius=self.bundle.receptive_radius,
            feature_dim=self.bundle.feature_dim, chunk=self.chunk, model_bytes=model_bytes(self.bundle),
            feature_scale=self.bundle.feature_scale,
        )
        return plan if self.tile is None else MemoryPlan(self.tile, plan.output_in_memory, plan.encoder_budget)


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
    timings: dict[str, dict[str, float]] | None = None  # the backend's per-call counts and seconds


def choose_interp(volume: Volume, interp: str | None, as_intensity: bool, on_note: Callable[[str], None] | None) -> str:
    """--interp, defaulting to the model, or to nearest for a NIfTI whose intent says label
    (its values are names: blending them is never right); other label maps are refused
    (labels.check_intensity_image) unless --interp nearest or --as-intensity."""
    from .labels import label_intent
    from .resample import parse_interp

    method = parse_interp(interp)
    if method is None:
        intent = label_intent(volume.header)
        if intent is not None and not as_intensity:
            if on_note:
                on_note(f"note: {volume.source_path or 'input'}: the header says {intent}: using --interp nearest "
                        "(pass --interp to choose another)")
            return "nearest"
        method = "model"
    if method != "nearest" and not as_intensity:
        check_intensity_image(volume.source_path or "input", volume.data, volume.header)
    return method


def warn_downsampling(in_shape: Sequence[int], out_shape: Sequence[int], on_note: Callable[[str], None] | None) -> None:
    """One warning line when an axis gets fewer voxels than it has: that is not super-resolution
    and nothing anti-aliases it."""
    axes = [f"axis {a} ({h} -> {H} voxels)" for a, (h, H) in enumerate(zip(in_shape, out_shape)) if H < h]
    if axes and on_note:
        on_note(f"warning: this request down-samples {', '.join(axes)} without anti-aliasing")


def clip_range(out: np.ndarray, data: np.ndarray, enabled: bool) -> np.ndarray:
    """--clip-to-input-range: output within [input min, input max] (a non-negative input gives a
    non-negative output), in place."""
    if enabled:
        np.clip(out, float(np.min(data)), float(np.max(data)), out=out)
    return out


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


def default_output_path(in_path: Path, scale: Any = None, voxel_size: Any = None, shape: Any = None, fmt: str = "nifti") -> Path:
    """``<stem>_<label>.nii.gz`` (or a DICOM folder ``<stem>_<label>``) next to the input."""
    from .writers import output_name, size_label

    return Path(in_path).parent / output_name(in_path, size_label(scale, voxel_size, shape), fmt)


def upsample(
    data: np.ndarray,
    affine: np.ndarray,
    *,
    scale: Any = None,
    voxel_size: Any = None,
    shape: Any = None,
    model: str | Path | ModelBundle | None = None,
    backend: BackendSpec = "auto",
    tile: int | None = None,
    chunk: int | None = None,
    normalization: str = "minmax",
    max_output_voxels: int = DEFAULT_MAX_OUTPUT_VOXELS,
    as_intensity: bool = False,
    keep_acquired: str | None = None,
    slice_gap: float = 0.0,
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
    with Upsampler(model, backend, tile=tile, chunk=chunk, normalization=normalization, as_intensity=as_intensity,
                   keep_acquired=keep_acquired, slice_gap=slice_gap) as up:
        return up.run(volume, grid), grid.affine


def upsample_file(
    in_path: str | Path,
    out_path: str | Path | None = None,
    *,
    scale: Any = None,
    voxel_size: Any = None,
    shape: Any = None,
    model: str | Path | ModelBundle | None = None,
    backend: BackendSpec = "auto",
    options: BackendOptions | None = None,
    tile: int | None = None,
    chunk: int | None = None,
    normalization: str = "minmax",
    dtype: str | None = None,
    force: bool = False,
    output_format: str = "auto",
    max_output_voxels: int = DEFAULT_MAX_OUTPUT_VOXELS,
    upsampler: Upsampler | None = None,
    max_memory: int = DEFAULT_MAX_MEMORY,
    on_backend: Callable[[str], None] | None = None,
    progress: Callable[[OutputGrid], ProgressFn] | None = None,
    as_intensity: bool = False,
    keep_acquired: str | None = None,
    slice_gap: float = 0.0,
    interp: str | None = None,
    clip_to_input_range: bool = False,
    on_note: Callable[[str], None] | None = None,
    adapt: "AdaptOptions | None" = None,
    save_adapted: str | Path | None = None,
    on_adapt_step: Callable[[int, int | None, float], None] | None = None,
    on_adapt_info: Callable[[str], None] | None = None,
    base_model: Any = None,
) -> UpsampleResult:
    """Read, validate, super-resolve and atomically write one volume.

    Every check that can fail (input, size options, output path, model) runs before compute,
    so a bad call costs nothing and leaves nothing behind. ``progress(grid)`` may return a
    callable that receives the number of output voxels done after each chunk.
    ``output_format``: auto (from the suffix), nifti, or dicom (a series folder).
    ``adapt``: fine-tune a copy of the model on this scan first (thick-slice scans, see
    arssr_rt/adapt) and run the adapted copy; ``save_adapted`` also writes it as a bundle;
    ``base_model`` is the bundle's torch model when the caller loaded it already (batch).
    """
    from .intensity import choose_output_dtype
    from .readers import input_format, read_volume
    from .series import SeriesGrid, open_series, run_series, series_length
    from .writers import check_volume_output, output_format as format_for, write_volume

    t0 = time.perf_counter()
    in_path = Path(in_path)
    fmt = format_for(out_path, output_format)
    series = open_series(in_path) if input_format(in_path) == "nifti" and series_length(in_path) > 1 else None
    if series is not None and fmt != "nifti":
        raise OutputError(f"{in_path}: a 4-D series is written as one 4-D NIfTI (.nii/.nii.gz); {fmt} output takes 3-D volumes")
    volume = series.first if series is not None else read_volume(in_path)
    grid = plan_grid(volume, scale, voxel_size, shape, max_output_voxels // (series.count if series else 1))
    target = Path(out_path) if out_path is not None else default_output_path(in_path, scale, voxel_size, shape, fmt)
    check_volume_output(target, fmt, inputs=[in_path], force=force)
    choose_output_dtype(volume.source_dtype, dtype)  # an unknown --dtype fails before compute
    method = choose_interp(volume, interp, as_intensity, on_note)
    warn_downsampling(volume.shape, grid.shape, on_note)
    if adapt is not None:
        from .adapt.plan import check_adapt_input

        check_adapt_input(str(in_path), series is not None, method)
    if method != "model" and series is not None:
        raise InputError(f"{in_path}: --interp {method} takes 3-D volumes; a 4-D series goes through the model (--interp model)")
    if method != "model":  # classical resampling: no model, no backend
        from .resample import resample_fov

        result = clip_range(resample_fov(volume.data, grid.shape, method), volume.data, clip_to_input_range)
        target = write_volume(target, result, grid, volume, fmt, dtype=dtype, force=force, inputs=[in_path])
        return UpsampleResult(out_path=target, in_shape=volume.shape, out_shape=grid.shape,
                              in_spacing=tuple(float(x) for x in np.linalg.norm(volume.affine[:3, :3], axis=0)),  # type: ignore[arg-type]
                              out_spacing=grid.spacing, seconds=time.perf_counter() - t0, backend="numpy", model=f"interp {method}")
    owner = upsampler is None
    if adapt is not None:  # the adapted copy runs through this same path, in its own Upsampler
        bundle = upsampler.bundle if upsampler is not None else (model if isinstance(model, ModelBundle) else resolve_model(model))
        adapted = _adapt(volume, bundle, adapt, save_adapted, force, in_path, normalization, options, on_adapt_step, on_adapt_info, base_model)
        profile = None if keep_acquired is None else adapted.plan.profile
        up = Upsampler(bundle, adapted.backend, options, tile=tile, chunk=chunk, normalization=normalization,
                       max_memory=upsampler.max_memory if upsampler is not None else max_memory, as_intensity=as_intensity,
                       keep_acquired=profile, slice_gap=adapted.plan.gap)
        owner = True
    else:
        up = upsampler or Upsampler(model, backend, options, tile=tile, chunk=chunk, normalization=normalization, max_memory=max_memory,
                                    as_intensity=as_intensity, keep_acquired=keep_acquired, slice_gap=slice_gap)
    if on_backend:
        on_backend(up.backend.name)
    try:
        if series is not None:  # volume by volume, one in flight; progress counts every volume
            step = progress(SeriesGrid(grid, series.count)) if progress else None  # type: ignore[arg-type]
            target = run_series(series, grid, lambda v: clip_range(up.run(v, grid, step), v.data, clip_to_input_range), target,
                                dtype=dtype, force=force, inputs=[in_path], max_memory=up.max_memory)
        else:
            result = clip_range(up.run(volume, grid, progress(grid) if progress else None), volume.data, clip_to_input_range)
            target = write_volume(target, result, grid, volume, fmt, dtype=dtype, force=force, inputs=[in_path])
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
        backend=up.backend.name,
        model=up.bundle.name + (" (adapted)" if adapt is not None else ""),
        timings=up.backend.timings(),
    )


def _adapt(volume: Volume, bundle: ModelBundle, adapt: "AdaptOptions", save_adapted: str | Path | None, force: bool,
           in_path: Path, normalization: str, options: BackendOptions | None, on_step: Any, on_note: Any, base_model: Any) -> Any:
    """Plan (refusing a scan that is not thick-slice), check the --save-adapted folder, adapt, save."""
    from .adapt.plan import plan_adaptation
    from .adapt.session import adapt_volume, check_save_target, require_torch
    from .geometry import spacing_of

    plan = plan_adaptation(spacing_of(volume.affine), volume.shape, adapt, str(in_path))
    require_torch()
    if save_adapted is not None:
        check_save_target(Path(save_adapted), force, [in_path])
    if on_note:
        on_note(f"adapting {bundle.name} to {in_path}: {plan.describe()}")
    adapted = adapt_volume(volume, bundle, adapt, normalization=normalization, threads=options.threads if options else None,
                           on_step=on_step, plan=plan, base_model=base_model)
    if on_note:
        on_note(f"adapted in {adapted.steps} steps ({adapted.precision}), {adapted.seconds:.0f} s "
                f"(L1 {adapted.loss_first:.4f} -> {adapted.loss_last:.4f})")
    if save_adapted is not None:
        real = volume.data if bundle.axis_order == "xyz" else volume.data.transpose(2, 1, 0)
        path = adapted.save(save_adapted, force=force, inputs=[in_path], real_input=real)
        if on_note:
            on_note(f"wrote the adapted model to {path} (reuse it with --model {path})")
    return adapted
