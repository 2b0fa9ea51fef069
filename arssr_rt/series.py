"""4-D NIfTI series (fMRI/DWI-like): super-resolved volume by volume into one 4-D output.

Why here and not in the pipeline: the VolumeEngine stays a 3-D engine; a series is read one
volume at a time from one open file handle (sequential, so a .nii.gz is inflated once, not once
per volume), each volume is validated and normalised on its own exactly as a 3-D run would be,
and only that volume's input and result are in flight. The stored 4-D output is in memory when
small and file-backed otherwise (memory.py). The header keeps TR (pixdim[4]) and xyzt_units.
A file whose 4th axis has length 1 is a 3-D volume (the 3-D reader squeezes it); 5-D and
above are refused.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from .errors import InputError, OutputError
from .geometry import OutputGrid
from .intensity import choose_output_dtype, to_output_dtype
from .memory import OUTPUT_IN_MEMORY_FRACTION, all_finite, convert_in_slabs, output_buffer_of
from .validation import DEFAULT_MAX_INPUT_VOXELS, check_size, check_voxels, spatial_shape
from .volume import Volume

# a whole series may hold this many times the per-volume input limit (e.g. 300 fMRI volumes)
SERIES_VOXEL_FACTOR = 64


def series_length(path: str | os.PathLike) -> int:
    """Volumes along axis 4 of a NIfTI file (1 for 3-D); refuses 5-D and above.

    Any header problem returns 1 so the 3-D reader reports it with its own message.
    """
    import nibabel as nib

    from .nifti_io import _quiet_nibabel

    try:
        with _quiet_nibabel():
            img = nib.load(Path(path), mmap=False)
        shape = tuple(int(n) for n in img.header.get_data_shape())
    except Exception:
        return 1
    if not isinstance(img, nib.Nifti1Pair):
        return 1
    if len(shape) > 4 and math.prod(shape[4:]) != 1:
        raise InputError(f"{path}: is {len(shape)}-D with shape {shape}; a 3-D volume or a 4-D series (x, y, z, t) is "
                         "needed: split the extra axes into separate files first")
    return shape[3] if len(shape) >= 4 else 1


@dataclass
class SeriesInput:
    """An opened, header-checked 4-D NIfTI: ``first`` is volume 0, ``volumes()`` yields all."""

    path: Path
    img: object
    shape: tuple[int, int, int]
    count: int
    first: Volume

    def volumes(self) -> Iterator[Volume]:
        """Each volume as a validated Volume, read sequentially from one open handle."""
        from nibabel.openers import ImageOpener
        from nibabel.volumeutils import apply_read_scaling, array_from_file

        from .nifti_io import _describe_read_error, _quiet_nibabel

        proxy = self.img.dataobj  # type: ignore[attr-defined]
        dtype = np.dtype(proxy.dtype)
        step = math.prod(self.shape) * dtype.itemsize
        with _quiet_nibabel(), ImageOpener(self.img.file_map["image"].filename) as handle:  # type: ignore[attr-defined]
            for t in range(self.count):
                try:
                    raw = array_from_file(self.shape, dtype, handle, offset=int(proxy.offset) + t * step, order="F")
                    data = np.asarray(apply_read_scaling(raw, proxy.slope, proxy.inter), dtype=np.float32)
                except Exception as exc:
                    raise InputError(f"{self.path}: volume {t}: {_describe_read_error(exc)}") from None
                data = np.ascontiguousarray(data)
                check_voxels(f"{self.path} (volume {t})", data)
                yield Volume(data=data, affine=self.first.affine, header=self.first.header,
                             source_dtype=self.first.source_dtype, source_path=self.path, meta=self.first.meta)


def open_series(path: str | os.PathLike, max_voxels: int = DEFAULT_MAX_INPUT_VOXELS) -> SeriesInput:
    """The NIfTI reader's checks on a 4-D file (header, size, spacing, affine, gzip cap), then volume 0."""
    import nibabel as nib

    from . import nifti_io as nio
    from .validation import check_affine, check_scalar_dtype, check_spacing

    p = Path(path)
    img = nio.load_image(p, lambda exc: nio._describe_read_error(exc, p))
    full = tuple(int(n) for n in img.header.get_data_shape())
    on_disk = np.dtype(img.get_data_dtype())
    check_scalar_dtype(p, on_disk)
    shape = spatial_shape(p, full[:3])
    check_size(p, shape, on_disk.itemsize, max_voxels)
    check_size(p, full, on_disk.itemsize, SERIES_VOXEL_FACTOR * max_voxels)
    raw = nio._raw_header(img)
    check_spacing(p, np.asarray(raw["pixdim"][1:4], dtype=np.float64))
    nio._check_vox_offset(p, img, raw)
    affine = check_affine(p, nio.affine_in_mm(img.affine, img.header))
    nio.check_forms(p, img.header)
    nio._check_data_bytes_present(p, img, full, on_disk)
    nio._verify_gzip_stream(p, img, full, on_disk)
    meta = {"format": "nifti2" if isinstance(img.header, nib.Nifti2Header) else "nifti1",
            "scl_slope": float(getattr(img.dataobj, "slope", 1.0)), "scl_inter": float(getattr(img.dataobj, "inter", 0.0)),
            "on_disk_shape": full}
    first = Volume(data=np.zeros((1, 1, 1), np.float32), affine=affine, header=img.header,
                   source_dtype=on_disk.newbyteorder("="), source_path=p, meta=meta)
    series = SeriesInput(p, img, shape, int(np.prod(full[3:])), first)
    volumes = series.volumes()
    first.data = next(volumes).data
    volumes.close()  # closes the file handle now, not at garbage collection
    return series


@dataclass(frozen=True)
class SeriesGrid:
    """What ``progress(grid)`` sees for a series: ``voxels`` counts every output volume."""

    grid: OutputGrid
    count: int

    @property
    def voxels(self) -> int:
        return self.grid.voxels * self.count

    def __getattr__(self, name: str):
        return getattr(self.grid, name)


def run_series(series: SeriesInput, grid: OutputGrid, run: Callable[[Volume], np.ndarray], path: str | os.PathLike,
               *, dtype: str | None, force: bool, inputs: Iterable[str | os.PathLike], max_memory: int,
               descrip: str | None = None) -> Path:
    """Super-resolve every volume with ``run`` and write one 4-D NIfTI at ``path`` atomically."""
    from .nifti_write import _scaling_for, check_output_path, form_affines, output_header, output_suffix, write_nifti_image

    p = check_output_path(path, force, [*inputs, series.path])
    out_dtype = choose_output_dtype(series.first.source_dtype, dtype)
    slope, inter = _scaling_for(series.first, out_dtype)
    shape4 = (*grid.shape, series.count)
    nbytes = math.prod(shape4) * out_dtype.itemsize
    stored = np.empty(shape4, out_dtype) if nbytes <= OUTPUT_IN_MEMORY_FRACTION * max_memory else output_buffer_of(shape4, out_dtype)
    lo, hi = np.inf, -np.inf
    for t, volume in enumerate(series.volumes()):
        result = run(volume)
        if not all_finite(result):
            raise OutputError(f"{p}: volume {t}: the result has NaN/Inf voxels (model or backend fault); nothing was written")
        block = convert_in_slabs(result, lambda slab: to_output_dtype(slab, out_dtype, slope, inter), out_dtype)
        stored[..., t] = block
        lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
        del result, block
    forms = form_affines(series.first, grid)
    header = output_header(series.first, grid, out_dtype, slope, inter, (lo * slope + inter, hi * slope + inter), forms, descrip)
    kept = np.array(header["pixdim"][4:], copy=True)
    header.set_data_shape(shape4)
    header["pixdim"][4:] = kept  # TR and the rest of pixdim beyond the spatial axes
    return write_nifti_image(p, stored, grid.affine, header, forms, slope, inter, output_suffix(p))
