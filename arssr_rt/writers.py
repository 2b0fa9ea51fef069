"""Which writer an output gets, and what an output is called: one place for every command.

The format comes from ``--output-format`` or, when that is ``auto``, from the path: a name
ending in .nii/.nii.gz is NIfTI, .mgz/.mgh MGH, .nrrd NRRD; DICOM is a folder (a new derived
series) and must be asked for by name, since a suffix-less path could be a typo. A detached
NRRD header (.nhdr) is refused: it is two files, and the atomic writer publishes one.
``output_name`` is the single naming scheme (``<stem>_<label>[.nii.gz|.mgz|.nrrd]``) used by
``upsample`` (default output) and ``batch``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .errors import InputError, OutputError
from .extras import require
from .geometry import OutputGrid
from .outputs import check_output
from .params import SIZE_SETTINGS, exactly_one, flag, setting
from .volume import Volume

FORMATS = ("auto", "nifti", "mgh", "nrrd", "dicom")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
MGH_SUFFIXES = (".mgz", ".mgh")
NRRD_SUFFIXES = (".nrrd",)
# the optional module each format's writer needs (checked before compute)
NEEDS = {"nrrd": "nrrd", "dicom": "pydicom"}
# what the default output name of each format ends in
DEFAULT_SUFFIX = {"nifti": ".nii.gz", "mgh": ".mgz", "nrrd": ".nrrd", "dicom": ""}
# input suffixes stripped from a name to get its stem (longest first)
INPUT_SUFFIXES = (".nii.gz", ".hdr.gz", ".img.gz", ".nii", ".hdr", ".img", ".nrrd", ".nhdr", ".dcm", ".ima", ".mgz", ".mgh")


def output_format(path: str | os.PathLike | None, requested: str = "auto") -> str:
    """``"nifti"``, ``"mgh"``, ``"nrrd"`` or ``"dicom"`` for ``path`` (refuses a path the format cannot have)."""
    if requested not in FORMATS:
        raise InputError(f"{flag('output_format')} must be one of {', '.join(FORMATS)}, got {requested!r}")
    name = Path(path).name.lower() if path is not None else ""
    is_nifti = any(name.endswith(s) and len(name) > len(s) for s in NIFTI_SUFFIXES)
    is_mgh = any(name.endswith(s) and len(name) > len(s) for s in MGH_SUFFIXES)
    is_nrrd = any(name.endswith(s) and len(name) > len(s) for s in NRRD_SUFFIXES)
    if name.endswith(".nhdr") and requested in ("auto", "nrrd"):
        raise OutputError(f"{path}: a detached NRRD header (.nhdr) is not written; name the output .nrrd (one file, gzip)")
    if requested == "mgh" or (requested == "auto" and is_mgh):
        if path is not None and not is_mgh:
            raise OutputError(f"{path}: an MGH output must end in .mgz or .mgh")
        return "mgh"
    if requested == "nrrd" or (requested == "auto" and is_nrrd):
        if path is not None and not is_nrrd:
            raise OutputError(f"{path}: an NRRD output must end in .nrrd")
        return "nrrd"
    if requested == "dicom":
        if is_nifti or is_mgh or is_nrrd:
            raise OutputError(f"{path}: a DICOM output is a folder; drop the file suffix")
        return "dicom"
    if path is not None and not is_nifti:
        raise OutputError(f"{path}: output must end in .nii, .nii.gz, .mgz, .mgh or .nrrd "
                          f"(or pass {setting('output_format', 'dicom')} for a DICOM series folder)")
    return "nifti"


def _number(text: str) -> str:
    try:
        return f"{float(text):g}"
    except ValueError:
        return text


def size_label(scale: Any, voxel_size: Any, shape: Any) -> str:
    """Name label from the size option as given: ``x2``, ``x1x1x3``, ``0.5mm``, ``256x256x100``."""
    def parts(value: Any, dedupe: bool = True) -> list[str]:
        text = ",".join(map(str, value)) if isinstance(value, (list, tuple, np.ndarray)) else str(value)
        values = [_number(p.strip()) for p in text.replace("x", ",").split(",") if p.strip()]
        return values if not dedupe or len(set(values)) > 1 else values[:1]

    if scale is not None and str(scale) != "":
        return "x" + "x".join(parts(scale))
    if voxel_size is not None and str(voxel_size) != "":
        return "x".join(parts(voxel_size)) + "mm"
    if shape is not None and str(shape) != "":
        return "x".join(parts(shape, dedupe=False))
    raise InputError(exactly_one(*SIZE_SETTINGS))


def reference_label(reference: str | os.PathLike) -> str:
    """Name label of a --reference output: ``ref-<reference stem, letters and digits only>``."""
    import re

    stem = re.sub(r"[^A-Za-z0-9]+", "", input_stem(reference))
    return f"ref-{stem}" if stem else "ref"


def input_stem(path: str | os.PathLike) -> str:
    """``t1.nii.gz`` -> ``t1``; a DICOM folder keeps its name."""
    name = Path(path).name
    lower = name.lower()
    for suffix in INPUT_SUFFIXES:
        if lower.endswith(suffix) and len(lower) > len(suffix):
            return name[: -len(suffix)]
    return name


def output_name(input_path: str | os.PathLike, label: str, fmt: str = "nifti") -> str:
    """The one output naming scheme: ``<stem>_<label>`` + .nii.gz, .mgz or .nrrd (nothing for DICOM)."""
    return f"{input_stem(input_path)}_{label}" + DEFAULT_SUFFIX.get(fmt, ".nii.gz")


def check_volume_output(path: str | os.PathLike, fmt: str, *, inputs: Iterable[str | os.PathLike] = (), force: bool = False) -> Path:
    """The guard for a volume output of format ``fmt`` (run before compute): the path fits the
    format, the format's writer is installed, and ``outputs.check_output`` passes."""
    fmt = output_format(path, fmt)
    if fmt in NEEDS:
        require(NEEDS[fmt])
    return check_output(path, inputs=inputs, force=force, folder=fmt == "dicom")


def write_volume(
    path: str | os.PathLike,
    data: np.ndarray,
    grid: OutputGrid,
    source: Volume,
    fmt: str = "auto",
    *,
    dtype: str | None = None,
    force: bool = False,
    inputs: Iterable[str | os.PathLike] = (),
    method: str = "model",
    descrip: str | None = None,
    model: str | None = None,
) -> Path:
    """Write ``data`` on ``grid`` with the writer for ``fmt`` (through the output guard).

    ``method`` (``model`` or the --interp name) and ``model`` (the bundle's name and version,
    when the model made the values) are what a DICOM series' descriptions say was done;
    ``descrip`` (``provenance.describe``) goes into the NIfTI descrip, the MGH command-line tag
    and the NRRD content field.
    """
    fmt = output_format(path, fmt)
    if fmt == "dicom":
        from .dicom_write import write_dicom_series

        return write_dicom_series(path, data, grid, source, method, force=force, inputs=inputs, dtype=dtype, model=model)
    if fmt == "mgh":
        from .io_mgh import save_mgh

        return save_mgh(path, data, grid, source, dtype=dtype, force=force, inputs=inputs, descrip=descrip)
    if fmt == "nrrd":
        from .nrrd_write import save_nrrd

        return save_nrrd(path, data, grid, source, dtype=dtype, force=force, inputs=inputs, method=method, model=model,
                         descrip=descrip)
    from .nifti_write import save_volume

    return save_volume(path, data, grid, source, dtype=dtype, force=force, inputs=inputs, descrip=descrip)
