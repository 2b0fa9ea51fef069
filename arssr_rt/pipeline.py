"""The full-volume pipeline, top to bottom: ``VolumeEngine.run`` reads as the flow.

normalise -> (zyx bundles: transpose) -> encode tiles with an exact halo -> sample + decode
chunks -> keep flat background flat -> (transpose back) -> restore intensities.
``upsample_file`` adds read + validate before and the atomic write after.

The pipeline is the only tiler and chunker: backends run networks on what it hands them
(``backends/base.py``), within the limits they declare. Peak memory is bounded by the tile
and chunk sizes, not by the volume (see memory.py).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from .background import flatten_flat_background
from .consistency import check_slice_profile, check_up_sampled, keep_acquired, keep_samples
from .backends.base import Backend, BackendOptions, BackendSpec, open_backend
from .bundle_format import check_runtime_base
from .bundle import ModelBundle, resolve_model
from . import windowed_sinc
from .errors import BackendError, InputError, OutputError
from .geometry import OutputGrid, Triplet
from .intensity import Normalizer
from .progress import WorkMeter, network_costs
from .labels import check_intensity_image
from .params import flag, setting
from .memory import (MemoryPlan, encoder_bytes_per_voxel, model_bytes, output_buffer, plan_memory, release_pages,
                     restore_in_place, transposed)
from .sampling import box_coords, sample_box
from .tta import average_passes, check_passes, plain_symmetries
from .tiling import Tile, cap_tile, output_chunks, plan_tiles
from .volume import Volume

if TYPE_CHECKING:
    from .adapt.plan import AdaptOptions
    from .tta import Symmetry

# output points sampled per step: 8 MB of decoder input at F=128 stays in cache between the
# trilinear blends and the decoder (1 << 17 points spent 4x longer sampling, measured)
DEFAULT_CHUNK = 1 << 14
DEFAULT_MAX_MEMORY = 2 * 1024**3  # peak bytes the whole run may use (see memory.py)
DEFAULT_MAX_OUTPUT_VOXELS = 1024**3  # refuse outputs larger than this (4 GiB as float32)

ProgressFn = Callable[[int], None]  # receives output voxels done (encoder work included: progress.WorkMeter)


class VolumeEngine:
    """A loaded model + backend, reusable across volumes (batch jobs load it once): the engine
    behind the public ``arssr_rt.Upsampler`` (api.py), which takes images, arrays and tensors.

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
        keep_samples: bool = True,
        tta: "Sequence[Symmetry]" = (),
        tta_passes: int = 1,
        ensemble: "Sequence[str | Path | ModelBundle]" = (),
    ):
        from .intensity import check_mode

        check_mode(normalization)  # before the model loads
        check_passes(tta_passes)
        if tta and tta_passes != 1:
            raise ValueError("give either tta (the symmetries) or tta_passes (chosen per grid), not both")
        options = options or BackendOptions()
        if keep_acquired is not None:  # an unknown profile or a bad gap fails before the model loads
            check_slice_profile(keep_acquired, slice_gap)
        if chunk is not None:
            options = replace(options, chunk=chunk)
        if tile is not None and tile < 1:
            raise InputError(f"{flag('tile')} must be >= 1, got {tile}")
        if options.chunk is not None and options.chunk < 1:
            raise InputError(f"{flag('chunk')} must be >= 1, got {options.chunk}")
        # --threads -1 / 0 used to run silently with the backend's default (all cores)
        if options.threads is not None and options.threads < 1:
            raise InputError(f"{flag('threads')} must be >= 1, got {options.threads}")
        if options.device < 0:
            raise InputError(f"{flag('device')} must be a GPU index >= 0, got {options.device}")
        if ensemble and not (isinstance(backend, str) or callable(backend)):
            raise InputError(f"{flag('ensemble')} opens one backend per model: give the backend by name, not an open one")
        self.bundle = model if isinstance(model, ModelBundle) else resolve_model(model)
        members = [m if isinstance(m, ModelBundle) else resolve_model(m) for m in ensemble]  # every model loads before any opens
        self.backend: Backend = open_backend(backend, self.bundle, options)
        # --ensemble: more models whose outputs are averaged with this one's (each its own engine, same settings)
        self.extra: tuple[VolumeEngine, ...] = ()
        try:
            self.extra = tuple(VolumeEngine(m, backend, options, tile=tile, chunk=chunk, normalization=normalization,
                                            max_memory=max_memory) for m in members)
        except BaseException:
            self.close()
            raise
        self.tile, self.chunk, self.max_memory = tile, options.chunk or DEFAULT_CHUNK, max_memory
        self.normalization = normalization
        self.as_intensity = as_intensity  # True: take a label-map-like image as intensities anyway
        self.keep_acquired, self.slice_gap = keep_acquired, slice_gap  # slice profile of the data-consistency step
        # output voxels on an input voxel centre get the acquired value (see consistency.keep_samples);
        # off for --keep-acquired, whose thick-slice averages are not point samples
        self.keep_samples = keep_samples
        # test-time averaging (tta.py): the mean of one pass per symmetry, each undone; () = one plain pass.
        # tta_passes > 1: the symmetries are chosen per run from its grid (tta.plain_symmetries)
        self.tta = tuple(tta)
        self.tta_passes = tta_passes
        # full-size outputs alive beside the one being inferred: the TTA sum, the ensemble sum
        self.held_outputs = int(self.passes > 1) + int(bool(self.extra))
        for member in self.extra:
            member.held_outputs = self.held_outputs

    @property
    def model_name(self) -> str:
        """How outputs name the model: the bundle's name, or ``a+b`` for an ensemble."""
        return "+".join(e.bundle.name for e in (self, *self.extra))

    @property
    def model_label(self) -> str:
        """``<name> version <v>`` (provenance), ``+``-joined for an ensemble."""
        return "+".join(e.bundle.label for e in (self, *self.extra))

    @property
    def passes(self) -> int:
        """Up-sampling passes a run makes (test-time averaging)."""
        return len(self.tta) if self.tta else self.tta_passes

    def __enter__(self) -> "VolumeEngine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for member in getattr(self, "extra", ()):
            member.close()
        if hasattr(self, "backend"):
            self.backend.close()

    def run(self, volume: Volume, grid: OutputGrid, progress: ProgressFn | None = None) -> np.ndarray:
        """Super-resolve ``volume`` onto ``grid``; float32 in the input's intensity units."""
        where = volume.name
        if self.keep_acquired:
            check_up_sampled(volume.shape, grid.shape)
        if not self.as_intensity:
            check_intensity_image(where, volume.data, volume.header)
        try:
            norm = Normalizer(mode=self.normalization).fit(volume.data)  # type: ignore[arg-type]
        except InputError as exc:  # constant image, outlier voxels: name the file
            raise InputError(f"{where}: {exc}") from None
        if self.keep_acquired:
            self.check_keep_acquired_memory(volume.shape, grid.shape)
        lr = norm.normalize(volume.data)
        syms = self.tta or tuple(plain_symmetries(self.tta_passes, volume.shape, grid.shape))
        if syms:  # each pass on a flipped / swapped copy, undone, averaged (tta.py)
            out = average_passes([lambda report, s=sym: s.undo(self.infer_oriented(s.apply(lr), s.shape(grid.shape), report))
                                  for sym in syms], progress, math.prod(grid.shape))
            if not isinstance(out, np.memmap):  # the first pass's undo may be a view (a lone symmetry)
                out = np.ascontiguousarray(out)
        else:
            out = self.infer_oriented(lr, grid.shape, progress)
        del lr
        if self.keep_acquired:  # each acquired voxel = the output averaged over its profile (kspace: the band kept)
            keep_acquired(out, norm.normalize(volume.data), self.keep_acquired, self.slice_gap)
        out = restore_in_place(norm, out)
        if self.keep_samples and not self.keep_acquired:  # after restore: the input's values exactly, not a round trip
            keep_samples(out, volume.data)
        return out

    def infer_oriented(self, lr: np.ndarray, out_shape: Sequence[int], progress: ProgressFn | None = None) -> np.ndarray:
        """Normalised LR in volume axis order -> normalised output, flat air kept flat; with an
        ensemble, the mean of every model's output (one progress total for all)."""
        if not self.extra:
            return self._infer_oriented_one(lr, out_shape, progress)
        return average_passes([lambda report, e=member: e._infer_oriented_one(lr, out_shape, report) for member in (self, *self.extra)],
                              progress, math.prod(out_shape))

    def _infer_oriented_one(self, lr: np.ndarray, out_shape: Sequence[int], progress: ProgressFn | None = None) -> np.ndarray:
        """This engine's own model (no ensemble): infer in the bundle's axis order."""
        zyx = self.bundle.axis_order == "zyx"
        if zyx:  # published weights saw SimpleITK (z, y, x) arrays
            lr = np.ascontiguousarray(lr.transpose(2, 1, 0))
            out_shape = tuple(out_shape)[::-1]
        out = self.infer(lr, out_shape, progress)
        flatten_flat_background(lr, out)  # exactly-constant air stays exactly constant
        return transposed(out) if zyx else out

    def infer(self, lr: np.ndarray, out_shape: Sequence[int], progress: ProgressFn | None = None) -> np.ndarray:
        """Normalised LR (D,H,W) -> normalised output of ``out_shape``: encode each tile, then
        sample + decode the output voxels it owns (on the device when the backend can)."""
        plan = self.memory_plan(lr.shape, out_shape)
        out = output_buffer(out_shape, in_memory=plan.output_in_memory)
        radius = self.bundle.receptive_radius
        tile = cap_tile(plan.tile, lr.shape, radius, self.backend.max_encode_tile)
        base = self.bundle.spec.get("base", "none")
        check_runtime_base(base, "model.json")  # a bundle built in memory skipped load_bundle's check
        tiles = plan_tiles(lr.shape, out_shape, tile, radius)
        # progress counts output voxels, spread over encoder and decoder work (progress.WorkMeter)
        meter = WorkMeter([_extent(t.encode) for t in tiles], [_extent(t.output) for t in tiles], out.size,
                          network_costs(self.bundle), progress)
        for index, t in enumerate(tiles):
            features, offset = self._encode(lr, t)
            meter.encoded(index)
            on_device = self.backend.decodes_boxes_on_device
            block = features if on_device else np.ascontiguousarray(np.moveaxis(features, 0, -1))
            boxes = [tuple(zip(*t.output))] if on_device else output_chunks(t.output, self.chunk)
            for start, stop in boxes:
                values = self._decode(block, offset, lr.shape, out.shape, start, stop, on_device)
                out[start[0]:stop[0], start[1]:stop[1], start[2]:stop[2]] = values
                meter.decoded(values.size)
            del features, block
            if base != "none":  # residual bundles: decoder output + windowed-sinc base of the tile's outputs
                windowed_sinc.add_base(out, lr, t.output, windowed_sinc.lobes_of(base))
            release_pages(out)
        meter.finish()
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

    def check_keep_acquired_memory(self, in_shape: Sequence[int], out_shape: Sequence[int]) -> None:
        """Refuse (before any compute) a --keep-acquired projection that would not fit next to
        the runtime, the input copies and an in-memory output within --max-memory."""
        from .consistency import keep_acquired_bytes
        from .memory import RUNTIME_BASE_BYTES

        plan = self.memory_plan(in_shape, out_shape)
        in_bytes, out_bytes = 4 * int(np.prod(in_shape)), 4 * int(np.prod(out_shape))
        free = self.max_memory - RUNTIME_BASE_BYTES - 3 * in_bytes - (out_bytes if plan.output_in_memory else 0)
        need = keep_acquired_bytes(out_shape, in_shape, profile=self.keep_acquired or "box")
        if need > free:
            raise InputError(f"{flag('keep_acquired')} needs {need / 2**30:.2f} GiB more for this grid, {max(free, 0) / 2**30:.2f} GiB of "
                             f"{flag('max_memory')} {self.max_memory / 2**30:.3g} is left: raise {flag('max_memory')}")

    def memory_plan(self, shape: Sequence[int], out_shape: Sequence[int] | None = None) -> MemoryPlan:
        """Tile size and output placement that keep the run inside ``max_memory``."""
        plan = plan_memory(
            shape, out_shape if out_shape is not None else shape, max_memory=self.max_memory,
            encoder_bytes_per_voxel=encoder_bytes_per_voxel(self.bundle.spec), receptive_radius=self.bundle.receptive_radius,
            feature_dim=self.bundle.feature_dim, chunk=self.chunk, model_bytes=model_bytes(self.bundle),
            feature_scale=self.bundle.feature_scale, outputs=1 + self.held_outputs,
        )
        return plan if self.tile is None else MemoryPlan(self.tile, plan.output_in_memory, plan.encoder_budget)


def _extent(box: Sequence[tuple[int, int]]) -> int:
    return math.prod(int(b) - int(a) for a, b in box)


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
                on_note(f"note: {volume.name}: the header says {intent}: using {setting('interp', 'nearest')} "
                        f"(pass {flag('interp')} to choose another)")
            return "nearest"
        method = "model"
    if method != "nearest" and not as_intensity:
        check_intensity_image(volume.name, volume.data, volume.header)
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
            f"{max_output_voxels:,} ({flag('max_output_voxels')})"
        )
    return grid


def default_output_path(in_path: Path, scale: Any = None, voxel_size: Any = None, shape: Any = None, fmt: str = "nifti",
                        reference: Any = None) -> Path:
    """``<stem>_<label>.nii.gz`` (.mgz, .nrrd, or a DICOM folder ``<stem>_<label>``) next to the input."""
    from .writers import output_name, reference_label, size_label

    label = reference_label(reference) if reference is not None else size_label(scale, voxel_size, shape)
    return Path(in_path).parent / output_name(in_path, label, fmt)


def upsample(*args: Any, **kwargs: Any) -> Any:
    """``arssr_rt.upsample`` (api.py: arrays, tensors, nibabel images); kept here for old imports."""
    from .api import upsample as api_upsample

    return api_upsample(*args, **kwargs)


def upsample_file(
    in_path: str | Path,
    out_path: str | Path | None = None,
    *,
    scale: Any = None,
    voxel_size: Any = None,
    shape: Any = None,
    reference: str | Path | None = None,
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
    upsampler: VolumeEngine | None = None,
    max_memory: int = DEFAULT_MAX_MEMORY,
    on_backend: Callable[[str], None] | None = None,
    on_plan: Callable[[dict[str, Any]], None] | None = None,
    progress: Callable[[OutputGrid], ProgressFn] | None = None,
    as_intensity: bool = False,
    keep_acquired: str | None = None,
    slice_gap: float = 0.0,
    keep_samples: bool = True,
    interp: str | None = None,
    clip_to_input_range: bool = False,
    on_note: Callable[[str], None] | None = None,
    adapt: "AdaptOptions | None" = None,
    save_adapted: str | Path | None = None,
    on_adapt_step: Callable[[int, int | None, float], None] | None = None,
    on_adapt_info: Callable[[str], None] | None = None,
    base_model: Any = None,
    tta: int = 1,
    ensemble: Sequence[Any] = (),
) -> UpsampleResult:
    """Read, validate, super-resolve and atomically write one volume.

    Every check that can fail (input, size options or reference, output path, model) runs
    before compute, so a bad call costs nothing and leaves nothing behind. ``progress(grid)``
    may return a callable that receives the number of output voxels done (after each tile's
    encoder call and each decoded chunk: ``progress.WorkMeter``). ``on_plan(info)`` is told,
    just before compute, the input/output shapes and spacing, volumes, backend and model (or
    interp method).
    ``output_format``: auto (from the suffix), nifti, mgh, nrrd, or dicom (a series folder).
    ``reference``: an image whose grid the output takes (instead of scale / voxel_size /
    shape; see reference.py).
    ``adapt``: fine-tune a copy of the model on this scan first (thick-slice scans, see
    arssr_rt/adapt) and run the adapted copy; ``save_adapted`` also writes it as a bundle;
    ``base_model`` is the bundle's torch model when the caller loaded it already (batch).
    ``tta``: inference passes averaged over flips (tta.py); with ``adapt`` it is the adapted
    run's (``AdaptOptions.tta``); a given ``upsampler`` keeps its own (its ensemble too).
    ``ensemble``: more models whose outputs are averaged with ``model``'s (not with ``adapt``).
    """
    from .intensity import choose_output_dtype
    from .options import check_grid_options
    from .render import plan_target, read_input, render_and_write
    from .provenance import describe
    from .writers import check_volume_output, output_format as format_for, reference_label, size_label

    t0 = time.perf_counter()
    in_path = Path(in_path)
    check_grid_options(scale, voxel_size, shape, reference)
    fmt = format_for(out_path, output_format)
    volume, series = read_input(in_path, upsampler.max_memory if upsampler is not None else max_memory)
    if series is not None and fmt != "nifti":
        raise OutputError(f"{in_path}: a 4-D series is written as one 4-D NIfTI (.nii/.nii.gz); {fmt} output takes 3-D volumes")
    method = choose_interp(volume, interp, as_intensity, on_note)
    target = plan_target(volume, method, scale=scale, voxel_size=voxel_size, shape=shape, reference=reference,
                         max_output_voxels=max_output_voxels // (series.count if series else 1), on_note=on_note)
    out = Path(out_path) if out_path is not None else default_output_path(in_path, scale, voxel_size, shape, fmt, reference)
    inputs = [in_path, *_reference_files(reference)]  # -o REF --force used to overwrite the reference
    check_volume_output(out, fmt, inputs=inputs, force=force)
    choose_output_dtype(volume.source_dtype, dtype)  # an unknown --dtype fails before compute
    check_passes(tta)
    if adapt is not None:
        from .adapt.plan import check_adapt_input

        check_adapt_input(str(in_path), series is not None, method)
        if ensemble or (upsampler is not None and upsampler.extra):
            raise InputError(f"{flag('ensemble')} averages fixed models; it does not go with adaptation (adapt one model)")
        if tta != 1:
            from .adapt.plan import DEFAULT_TTA

            if adapt.tta not in (DEFAULT_TTA, tta):
                raise InputError(f"{setting('tta', tta)} and the adaptation's {adapt.tta} passes disagree: give one")
            adapt = replace(adapt, tta=tta)
    up = None
    owner = upsampler is None
    if method == "model" and adapt is not None:  # the adapted copy runs through this same path, in its own VolumeEngine
        bundle = upsampler.bundle if upsampler is not None else (model if isinstance(model, ModelBundle) else resolve_model(model))
        adapted = _adapt(volume, bundle, adapt, save_adapted, force, in_path, normalization, options, on_adapt_step, on_adapt_info, base_model)
        profile = None if keep_acquired is None else adapted.plan.profile
        up = VolumeEngine(bundle, adapted.backend, options, tile=tile, chunk=chunk, normalization=normalization,
                       max_memory=upsampler.max_memory if upsampler is not None else max_memory, as_intensity=as_intensity,
                       keep_acquired=profile, slice_gap=adapted.plan.gap, keep_samples=keep_samples,
                       tta=adapted.symmetries())
        owner = True
    elif method == "model":
        up = upsampler or VolumeEngine(model, backend, options, tile=tile, chunk=chunk, normalization=normalization, max_memory=max_memory,
                                    as_intensity=as_intensity, keep_acquired=keep_acquired, slice_gap=slice_gap,
                                    keep_samples=keep_samples, tta_passes=tta, ensemble=ensemble)
    if up is not None and on_backend:
        on_backend(up.backend.name)
    label = reference_label(reference) if reference is not None else size_label(scale, voxel_size, shape)
    descrip = describe(label, up.model_name if up is not None else None, method)
    in_spacing = tuple(float(x) for x in np.linalg.norm(volume.affine[:3, :3], axis=0))
    if on_plan:
        grid = target.grid
        on_plan({"input": str(in_path), "output": str(out), "in_shape": tuple(volume.shape), "in_spacing": in_spacing,
                 "out_shape": tuple(grid.shape), "out_spacing": tuple(grid.spacing), "volumes": series.count if series else 1,
                 "backend": up.backend.name if up is not None else "numpy", "model": up.model_name if up is not None else f"interp {method}"})
    try:
        written, _ = render_and_write(volume, series, target, method, out, fmt, upsampler=up, dtype=dtype, force=force,
                                      inputs=inputs, progress=progress, clip=clip_to_input_range,
                                      max_memory=up.max_memory if up is not None else max_memory, descrip=descrip)
    finally:
        if up is not None and owner:
            up.close()
    return UpsampleResult(
        out_path=written,
        in_shape=volume.shape,
        out_shape=target.grid.shape,
        in_spacing=tuple(float(x) for x in np.linalg.norm(volume.affine[:3, :3], axis=0)),  # type: ignore[arg-type]
        out_spacing=target.grid.spacing,
        seconds=time.perf_counter() - t0,
        backend=up.backend.name if up is not None else "numpy",
        model=(up.model_name + (" (adapted)" if adapt is not None else "")) if up is not None else f"interp {method}",
        timings=up.backend.timings() if up is not None else None,
    )


def _reference_files(reference: Any) -> list[Path]:
    """The file (or folder) a --reference was read from: an input of the run, never an output."""
    where = getattr(reference, "path", reference)  # a path, or a Reference (the API's nibabel images)
    return [Path(where)] if isinstance(where, (str, os.PathLike)) else []


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
        on_note(f"adapted in {adapted.steps} steps ({adapted.precision} on {adapted.device}), {adapted.seconds:.0f} s "
                f"(L1 {adapted.loss_first:.4f} -> {adapted.loss_last:.4f})")
    if save_adapted is not None:
        real = volume.data if bundle.axis_order == "xyz" else volume.data.transpose(2, 1, 0)
        path = adapted.save(save_adapted, force=force, inputs=[in_path], real_input=real)
        if on_note:
            on_note(f"wrote the adapted model to {path} (reuse it with --model {path})")
    return adapted
