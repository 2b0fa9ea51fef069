"""What one input becomes, for ``upsample`` and ``batch`` alike (one code path for both).

``read_input`` opens a 3-D volume or a 4-D series; ``plan_target`` turns --scale /
--voxel-size / --shape or --reference into the output grid (and, for a reference grid the
model cannot decode directly, the input-aligned grid it goes through: see reference.py);
``render`` makes the output intensities (the model or --interp nearest|linear|cubic, then
--clip-to-input-range); ``render_and_write`` does that for every volume and writes one file.
All checks happen in the first two, before any compute.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np

from .errors import InputError, OutputError
from .params import flag, setting
from .geometry import OutputGrid
from .volume import Volume

if TYPE_CHECKING:
    from .pipeline import ProgressFn, VolumeEngine
    from .reference import Reference
    from .series import SeriesInput


@dataclass(frozen=True)
class Target:
    """The written grid; ``world``: it is not the input's FOV-preserving grid (a reference's
    oblique or shifted grid), so it is sampled in world space; ``via``: then the
    input-aligned FOV-preserving grid the model writes first (model path only)."""

    grid: OutputGrid
    world: bool = False
    via: OutputGrid | None = None

    @property
    def model_grid(self) -> OutputGrid:
        """The grid the network decodes (what progress counts)."""
        return self.via or self.grid


def read_input(path: str | os.PathLike, max_memory: int | None = None) -> tuple[Volume, "SeriesInput | None"]:
    """A 3-D volume (any reader) or a 4-D NIfTI series (its first volume, and the series).

    ``max_memory``: the run's budget, which also bounds what is read (a volume whose float32
    copies would not fit is refused from its header, before its data is read)."""
    from .errors import InputTooLargeError
    from .memory import input_voxel_limit
    from .readers import input_format, read_volume
    from .series import open_series, series_length
    from .validation import DEFAULT_MAX_INPUT_VOXELS

    p = Path(path)
    limit = DEFAULT_MAX_INPUT_VOXELS if max_memory is None else input_voxel_limit(max_memory, DEFAULT_MAX_INPUT_VOXELS)
    try:
        if input_format(p) == "nifti" and series_length(p) > 1:
            series = open_series(p, limit)
            return series.first, series
        return read_volume(p, limit), None
    except InputTooLargeError as exc:
        if limit >= DEFAULT_MAX_INPUT_VOXELS:
            raise
        raise InputTooLargeError(f"{exc}, which is what {flag('max_memory')} {max_memory / 2**30:.3g} GiB leaves for the input: "
                                 f"raise {flag('max_memory')}") from None


def check_voxel_limit(grid: OutputGrid, max_output_voxels: int, what: str = "output") -> None:
    if grid.voxels > max_output_voxels:
        raise OutputError(f"{what} {grid.shape[0]}x{grid.shape[1]}x{grid.shape[2]} = {grid.voxels:,} voxels is over the "
                          f"limit of {max_output_voxels:,} ({flag('max_output_voxels')})")


def plan_target(volume: Volume, method: str, *, scale: Any = None, voxel_size: Any = None, shape: Any = None,
                reference: "str | os.PathLike | Reference | None" = None, max_output_voxels: int,
                on_note: Callable[[str], None] | None = None) -> Target:
    """The output grid of the size option or the reference (checked against the voxel limit)."""
    from .pipeline import plan_grid, warn_downsampling
    from .reference import Reference, aligned, intermediate_grid, overlaps, read_reference

    if reference is None:
        grid = plan_grid(volume, scale, voxel_size, shape, max_output_voxels)
        warn_downsampling(volume.shape, grid.shape, on_note)
        return Target(grid)
    ref = reference if isinstance(reference, Reference) else read_reference(reference)
    check_voxel_limit(ref.grid, max_output_voxels)
    if ref.volumes > 1 and on_note:
        on_note(f"note: --reference {ref.path} has {ref.volumes} volumes: its grid (the first three axes) is used")
    if aligned(volume.shape, volume.affine, ref.grid):  # the model decodes it directly: same as --shape
        warn_downsampling(volume.shape, ref.grid.shape, on_note)
        return Target(ref.grid)
    if not overlaps(volume.shape, volume.affine, ref.grid):
        raise InputError(f"{flag('reference')} {ref.path}: its grid does not overlap the field of view of {volume.source_path or 'the input'} "
                         "(are both in the same world space?)")
    if method != "model":  # classical kernels sample the input at the reference's points directly
        return Target(ref.grid, world=True)
    try:
        via = intermediate_grid(volume.shape, volume.affine, ref.grid, on_note)
    except InputError as exc:  # the scale-range check speaks of --shape, which the user did not give
        raise InputError(f"{flag('reference')} {ref.path}: reaching its spacing with the model is out of range "
                         f"({str(exc).split('; ', 1)[-1]}); use {setting('interp', 'cubic')} or a coarser reference") from None
    check_voxel_limit(via, max_output_voxels, f"the model's input-aligned grid for {flag('reference')},")
    return Target(ref.grid, world=True, via=via)


def render(volume: Volume, target: Target, method: str, upsampler: "VolumeEngine | None" = None,
           progress: "ProgressFn | None" = None, clip: bool = False, max_memory: int | None = None) -> np.ndarray:
    """The output intensities on ``target.grid`` (float32, the input's units)."""
    from .pipeline import DEFAULT_MAX_MEMORY, clip_range
    from .reference import FILL, to_reference

    budget = max_memory or (upsampler.max_memory if upsampler is not None else DEFAULT_MAX_MEMORY)
    if method != "model":
        from .memory import OUTPUT_IN_MEMORY_FRACTION, output_buffer
        from .resample import resample_fov, resample_world

        if not target.world:
            out = resample_fov(volume.data, target.grid.shape, method)
        else:
            buffer = output_buffer(target.grid.shape, in_memory=4 * target.grid.voxels <= OUTPUT_IN_MEMORY_FRACTION * budget)
            out = resample_world(volume.data, volume.affine, target.grid.shape, target.grid.affine, method, FILL, out=buffer)
    else:
        if upsampler is None:
            raise ValueError("the model path needs an VolumeEngine")
        if target.world and target.via is None:
            raise ValueError("a world-space target on the model path needs its input-aligned grid (plan_target)")
        out = upsampler.run(volume, target.model_grid, progress)
        if target.via is not None:
            out = to_reference(out, target.via, target.grid, budget)
    return clip_range(out, volume.data, clip)


def render_and_write(volume: Volume, series: "SeriesInput | None", target: Target, method: str, path: str | os.PathLike,
                     fmt: str, *, upsampler: "VolumeEngine | None" = None, dtype: str | None = None, force: bool = False,
                     inputs: Iterable[str | os.PathLike] = (), progress: Callable[[Any], "ProgressFn"] | None = None,
                     clip: bool = False, max_memory: int | None = None, keep_first: bool = False,
                     descrip: str | None = None) -> tuple[Path, np.ndarray | None]:
    """Render every volume and write one output (a 4-D series: one 4-D NIfTI, volume by volume).

    Returns the written path and, for QC, the rendered data (a series' first volume when
    ``keep_first``; else None for a series). ``descrip``: the provenance text of the file
    (``provenance.describe``)."""
    from .pipeline import DEFAULT_MAX_MEMORY
    from .series import SeriesGrid, run_series
    from .writers import write_volume

    inputs = list(inputs)
    if series is None:
        data = render(volume, target, method, upsampler, progress(target.model_grid) if progress else None, clip, max_memory)
        model = upsampler.model_label if method == "model" and upsampler is not None else None  # provenance (DICOM)
        return write_volume(path, data, target.grid, volume, fmt, dtype=dtype, force=force, inputs=inputs, method=method,
                            descrip=descrip, model=model), data
    if fmt != "nifti":
        raise OutputError(f"{series.path}: a 4-D series is written as one 4-D NIfTI (.nii/.nii.gz); {fmt} output takes 3-D volumes")
    step = progress(SeriesGrid(target.model_grid, series.count)) if progress else None  # type: ignore[arg-type]
    first: list[np.ndarray] = []

    def one(v: Volume) -> np.ndarray:
        result = render(v, target, method, upsampler, step, clip, max_memory)
        if keep_first and not first:
            first.append(result)
        return result

    budget = max_memory or (upsampler.max_memory if upsampler is not None else DEFAULT_MAX_MEMORY)
    written = run_series(series, target.grid, one, path, dtype=dtype, force=force, inputs=inputs, max_memory=budget, descrip=descrip)
    return written, first[0] if first else None
