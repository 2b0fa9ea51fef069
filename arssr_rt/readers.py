"""One entry point for every input format: ``read_volume(path)`` picks the reader.

NIfTI is built in; NRRD and DICOM series folders live in ``io_nrrd`` / ``io_dicom`` and are
imported only when such an input is given, so their optional dependencies (pynrrd, pydicom)
are never needed for NIfTI work. Every reader returns a validated ``Volume`` (same checks as
``nifti_io.load_volume``: shape, size, spacing, affine, NaN/Inf, constant) or raises InputError.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

from .errors import InputError
from .nifti_io import load_volume
from .validation import DEFAULT_MAX_INPUT_VOXELS
from .volume import Volume

NIFTI_NAMES = (".nii", ".nii.gz", ".hdr", ".img", ".hdr.gz", ".img.gz")
NRRD_NAMES = (".nrrd", ".nhdr")
DICOM_NAMES = (".dcm", ".ima")
MGH_NAMES = (".mgz", ".mgh")


def _reader_module(name: str, what: str) -> ModuleType:
    """Import ``arssr_rt.<name>`` lazily; a build without it gets a clear one-line error."""
    try:
        return importlib.import_module(f"arssr_rt.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"arssr_rt.{name}":
            raise InputError(f"{what} input is not available in this build of arssr-rt") from None
        raise


def _read_nifti(path: Path, max_voxels: int) -> Volume:
    return load_volume(path, max_voxels=max_voxels)


def _read_nrrd(path: Path, max_voxels: int) -> Volume:
    """NRRD (.nrrd/.nhdr) via arssr_rt.io_nrrd.read_nrrd(path, max_voxels=...)."""
    return _reader_module("io_nrrd", "NRRD").read_nrrd(path, max_voxels=max_voxels)


def _read_mgh(path: Path, max_voxels: int) -> Volume:
    """FreeSurfer .mgz/.mgh via arssr_rt.io_mgh.read_mgh (nibabel's MGHImage, same checks)."""
    return _reader_module("io_mgh", "MGH/MGZ").read_mgh(path, max_voxels=max_voxels)


def _read_dicom_dir(path: Path, max_voxels: int) -> Volume:
    """A DICOM series folder (or one file of it) via arssr_rt.io_dicom.load_dicom_series(path, max_voxels=...)."""
    return _reader_module("io_dicom", "DICOM").load_dicom_series(path, max_voxels=max_voxels)


def input_format(path: str | os.PathLike) -> str:
    """``"nifti"``, ``"nrrd"``, ``"mgh"`` or ``"dicom"`` from the name (folders are DICOM series).

    Unknown suffixes go to the NIfTI reader, whose content check then says what is wrong
    (``not NIfTI``) rather than guessing from the name alone.
    """
    p = Path(path)
    if p.is_dir():
        return "dicom"
    name = p.name.lower()
    if name.endswith(NRRD_NAMES):
        return "nrrd"
    if name.endswith(DICOM_NAMES):
        return "dicom"
    if name.endswith(MGH_NAMES):
        return "mgh"
    return "nifti"


_READERS = {"nifti": _read_nifti, "nrrd": _read_nrrd, "dicom": _read_dicom_dir, "mgh": _read_mgh}


def read_volume(path: str | os.PathLike, max_voxels: int = DEFAULT_MAX_INPUT_VOXELS) -> Volume:
    """Read and validate a volume from a NIfTI file, an NRRD file or a DICOM series folder."""
    p = Path(path)
    if not p.exists() and not p.is_symlink():
        raise InputError(f"{p}: no such file or folder")
    return _READERS[input_format(p)](p, max_voxels)
