"""A derived DICOM series for an output grid: the source's own dataset, updated (pydicom).

Model of the IOD: a derived classic single-frame image (MR Image Storage; CT stays CT) is the
source's full dataset with every attribute that describes the *source's* pixels, geometry or
instances removed and rewritten for the new grid (Image Pixel, Image Plane, General Image,
General Series, SOP Common), so the patient, study, equipment and acquisition (MR Image
module: ScanOptions, EchoTrainLength, TR/TE/TI, ...) modules stay exactly as the scanner
wrote them. Private groups go: they describe the source instances in ways nobody can update
(a stale Siemens CSA header would mislead dcm2niix). A source that was not DICOM (NIfTI, MGZ,
NRRD) gets a new study with every Type 1/2 attribute of the Patient, General Study, General Series,
Frame of Reference, General Equipment and MR Image modules present, empty where unknown.
(highdicom, considered, models only enhanced/multi-frame, SC, segmentation and parametric-map
IODs, none of which is a classic MR series that this reader and every PACS read back.)

Derivation: ImageType DERIVED\\SECONDARY\\<the source's value 3 and on, else OTHER>;
SeriesDescription = the source's text + what was done + "(arssr-rt)" (64 characters);
DerivationDescription says how the grid and the values changed; DerivationCodeSequence is
CID 7203 "Spatial resampling" (DCM 113085); a DICOM source is referenced by every slice's
SourceImageSequence (the source slices the output slice lies across, purpose CID 7202
"Source image for image processing operation") and, as the Common Instance Reference module
requires, by ReferencedSeriesSequence with every source instance; ContributingEquipmentSequence
names arssr-rt as processing equipment (DCM 109102).

Values: those of the NIfTI the tool writes for the same request (voxel type from the source or
--dtype, integers rounded and clipped as there); integers are stored as they are (int16/uint16,
no Rescale when unscaled: the MR IOD has no Modality LUT), anything else is quantised to uint16
over its range with RescaleSlope/Intercept; DerivationDescription states which, with the step.
The folder appears atomically, after the output guard.
"""

from __future__ import annotations

import copy
import datetime as _dt
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from . import __version__
from .atomic import atomic_write_folder
from .errors import OutputError
from .extras import require
from .geometry import OutputGrid
from .intensity import choose_output_dtype, to_output_dtype
from .io_dicom import GREY_PHOTOMETRICS, LPS_TO_RAS, MR_IMAGE_STORAGE
from .memory import min_max
from .nifti_write import _scaling_for
from .outputs import check_output
from .volume import Volume

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
# classic single-frame classes whose modules this writer fills; others are written as MR
KEPT_SOP_CLASSES = (MR_IMAGE_STORAGE, CT_IMAGE_STORAGE)
TOOL = "arssr-rt"

# source attributes that describe the source's instances, pixels or slice geometry: never copied
# (groups 0028 Image Pixel / presentation, 7FE0 pixel data, 60xx overlays and private groups go too)
DROPPED = (
    "SOPInstanceUID", "InstanceNumber", "InstanceCreationDate", "InstanceCreationTime", "InstanceCreatorUID",
    "SeriesInstanceUID", "SeriesDate", "SeriesTime", "ContentDate", "ContentTime", "SeriesDescription",
    "ImagePositionPatient", "ImageOrientationPatient", "SliceLocation", "SliceThickness", "SpacingBetweenSlices",
    "ImagesInAcquisition", "InStackPositionNumber", "SourceImageSequence", "DerivationDescription",
    "DerivationCodeSequence", "ReferencedSeriesSequence", "StudiesContainingOtherReferencedInstancesSequence",
    "IconImageSequence", "RealWorldValueMappingSequence", "DataSetTrailingPadding",
    "DigitalSignaturesSequence", "MACParametersSequence", "EncryptedAttributesSequence",
    "OriginalAttributesSequence", "ReferencedRawDataSequence", "ReferencedPerformedProcedureStepSequence",
)
DROPPED_GROUPS = (0x0028, 0x7FE0, 0x0088)  # Image Pixel/VOI/Modality LUT, pixel data, icon/storage
# ... except what still holds for an image computed from the source's pixels: lossy stays lossy,
# burned-in text or a recognisable face is resampled with the image, not removed
KEPT_FROM_DROPPED_GROUPS = (
    "LossyImageCompression", "LossyImageCompressionRatio", "LossyImageCompressionMethod",
    "BurnedInAnnotation", "RecognizableVisualFeatures",
)
# Type 2 (and 2C that a tool cannot decide) attributes of Patient, General Study, General Series,
# Frame of Reference, General Equipment: present, empty when unknown
TYPE2_COMMON = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
    "Laterality", "PatientPosition", "PositionReferenceIndicator", "Manufacturer",
)
TYPE2_BY_CLASS = {
    MR_IMAGE_STORAGE: ("ScanOptions", "MRAcquisitionType", "RepetitionTime", "EchoTime", "EchoTrainLength"),
    CT_IMAGE_STORAGE: ("KVP", "AcquisitionNumber"),
}
# Type 1 MR Image attributes with no "unknown": Research Mode and no variant, said in the description
MR_UNKNOWN_TYPE1 = {"ScanningSequence": "RM", "SequenceVariant": "NONE"}
DESCRIPTION_LENGTH = 64  # LO
DERIVATION_LENGTH = 1024  # ST
UNKNOWN_VALUE_3 = "OTHER"
METHOD_NAMES = {"model": "SR", "nearest": "nearest", "linear": "linear", "cubic": "cubic"}


def ds_number(value: float) -> str:
    """A DICOM DS string (at most 16 characters) for ``value``."""
    text = f"{value:.10g}"
    if len(text) > 16:
        text = f"{value:.8e}" if abs(value) >= 1e-4 else f"{value:.6e}"
    return text


def _number(value: float) -> str:
    return f"{value:.3g}"


def pixel_encoding(data: np.ndarray, source: Volume, dtype: str | None = None) -> tuple[np.ndarray, float, float, str]:
    """Stored 16-bit integers, (slope, intercept) and a sentence saying how the values were stored.

    The values are those of the tool's NIfTI output for the same request: the voxel type
    follows the source (or ``dtype``) and an integer type is rounded and clipped to its range
    with the source's scaling (intensity.to_output_dtype). Those integers are stored as they
    are when they fit int16/uint16; anything else (float output) is quantised to uint16 over
    its range with RescaleSlope/Intercept, which keeps 16-bit precision of the range.
    """
    out_dtype = choose_output_dtype(source.source_dtype, dtype)
    if out_dtype.kind in "iu":
        slope, inter = _scaling_for(source, out_dtype)
        stored = to_output_dtype(data, out_dtype, slope, inter)
        lo, hi = (int(v) for v in min_max(stored))
        info = np.iinfo(out_dtype)
        clipped = _clipped_voxels(data, slope, inter, info) if lo == info.min or hi == info.max else 0
        for target in (np.uint16, np.int16) if out_dtype.kind == "u" else (np.int16, np.uint16):
            if np.iinfo(target).min <= lo and hi <= np.iinfo(target).max:
                text = f"values rounded to integers of the {out_dtype} range, as in the NIfTI output"
                if clipped:
                    text += f" ({clipped:,} voxels outside it clipped)"
                if slope != 1.0 or inter != 0.0:
                    text += f", stored * RescaleSlope {slope:.6g} + RescaleIntercept {inter:.6g} (the source's scaling)"
                return stored.astype(target), slope, inter, text
        data = stored.astype(np.float64) * slope + inter
    lo_f, hi_f = (float(v) for v in min_max(data))
    slope = (hi_f - lo_f) / 65535.0 if hi_f > lo_f else 1.0
    quantised = np.empty(data.shape, dtype=np.uint16)
    for k in range(data.shape[2]):  # slice by slice: no full-size float64 copy
        quantised[:, :, k] = np.clip(np.rint((data[:, :, k].astype(np.float64) - lo_f) / slope), 0, 65535)
    text = (f"values quantised to 16 bits: stored uint16 * RescaleSlope {slope:.6g} + RescaleIntercept {lo_f:.6g} "
            f"(worst error {slope / 2:.3g})")
    return quantised, slope, lo_f, text


def _clipped_voxels(data: np.ndarray, slope: float, inter: float, info: np.iinfo) -> int:
    """How many voxels to_output_dtype clipped (slice by slice: no second full-size array)."""
    count = 0
    for k in range(data.shape[2]):
        values = np.rint((data[:, :, k].astype(np.float64) - inter) / slope)
        count += int(np.count_nonzero(values < info.min) + np.count_nonzero(values > info.max))
    return count


def size_text(source: Volume, grid: OutputGrid) -> str:
    """``x2`` / ``x2x2x1`` when the grid keeps the source's axes, else the voxel size ``0.5mm``."""
    src = np.asarray(source.affine, dtype=np.float64)[:3, :3]
    out = np.asarray(grid.affine, dtype=np.float64)[:3, :3]
    src_dirs = src / np.linalg.norm(src, axis=0)
    out_dirs = out / np.linalg.norm(out, axis=0)
    if np.allclose(src_dirs, out_dirs, atol=1e-6):
        factors = [_number(H / h) for H, h in zip(grid.shape, source.shape)]
        return "x" + "x".join(factors if len(set(factors)) > 1 else factors[:1])
    sizes = [_number(s) for s in grid.spacing]
    return "x".join(sizes if len(set(sizes)) > 1 else sizes[:1]) + "mm"


def series_description(source_text: str, done: str) -> str:
    """``<source text> <done> (arssr-rt)``, the source text cut so the whole fits in 64 characters."""
    suffix = f"{done} ({TOOL})"
    room = DESCRIPTION_LENGTH - len(suffix) - 1
    head = source_text.strip()[: max(room, 0)].rstrip()
    return f"{head} {suffix}" if head else suffix[:DESCRIPTION_LENGTH]


def _source_text(source: Volume, reference: Any) -> str:
    """What the source is called: its SeriesDescription, else the input's file name (a NIfTI
    descrip is mostly the writing software's: "spm - algebra", "FSL4.1"), else that descrip."""
    if reference is not None and str(getattr(reference, "SeriesDescription", "") or "").strip():
        return str(reference.SeriesDescription)
    if source.source_path is not None:
        from .writers import input_stem

        return input_stem(source.source_path)
    try:
        return source.header["descrip"].tobytes().split(b"\0")[0].decode("ascii").strip()
    except (KeyError, TypeError, ValueError, AttributeError, UnicodeDecodeError):
        return ""


def _image_type(reference: Any) -> list[str]:
    """DERIVED\\SECONDARY and the source's values 3.. (what kind of image: M, P, DIFFUSION, ...)."""
    value = getattr(reference, "ImageType", None) if reference is not None else None
    values = [str(value)] if isinstance(value, str) else [str(v) for v in (value or [])]
    rest = [v for v in values[2:] if v] or [UNKNOWN_VALUE_3]
    return ["DERIVED", "SECONDARY", *rest]


def _plain_copy(ds: Any) -> Any:
    """A Dataset copy of ``ds`` with every element decoded in the source's own encoding, so it
    is written in ours whatever the source's was (a FileDataset read as big endian cannot be
    saved as little endian; a raw element would be decoded with the wrong byte order)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    out = Dataset()
    for elem in ds:  # iterating decodes raw elements with the dataset's own transfer syntax
        if elem.VR == "SQ":
            out.add_new(elem.tag, "SQ", Sequence([_plain_copy(item) for item in elem.value]))
        else:
            out.add(copy.deepcopy(elem))
    return out


def _base_from_source(reference: Any) -> Any:
    """The source's dataset without anything that described its instances, pixels or geometry."""
    ds = _plain_copy(reference)
    ds.remove_private_tags()
    kept = {name for name in KEPT_FROM_DROPPED_GROUPS if name in ds}
    for elem in list(ds):
        if elem.keyword in kept:
            continue
        group = elem.tag.group
        if group in DROPPED_GROUPS or 0x6000 <= group <= 0x60FF or group == 0x0002:
            del ds[elem.tag]
    for name in DROPPED:
        if name in ds:
            delattr(ds, name)
    return ds


def _sop_class(folder: Path, reference: Any) -> str:
    """The source's class when it is classic MR or CT, else the one its Modality names (a
    Secondary Capture of an MR); another modality would be mislabelled, so it is refused."""
    sop_class = str(getattr(reference, "SOPClassUID", "") or "")
    if sop_class in KEPT_SOP_CLASSES:
        return sop_class
    modality = str(getattr(reference, "Modality", "") or "MR").strip().upper()
    if modality not in ("MR", "CT"):
        raise OutputError(f"{folder}: DICOM output is written as MR or CT images; the source is {modality} "
                          "(write NIfTI instead)")
    return CT_IMAGE_STORAGE if modality == "CT" else MR_IMAGE_STORAGE


def _code_item(code: Any) -> Any:
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code.value, code.scheme_designator, code.meaning
    return item


def _source_slices(source: Volume, grid: OutputGrid, k: int, count: int) -> range:
    """Source slice indices the output slice ``k`` lies across (its corners in the source's
    index space, widened by one slice for the interpolation neighbours)."""
    to_source = np.linalg.inv(np.asarray(source.affine, dtype=np.float64)) @ np.asarray(grid.affine, dtype=np.float64)
    nx, ny = grid.shape[0] - 1, grid.shape[1] - 1
    corners = np.array([[i, j, kk, 1.0] for i in (-0.5, nx + 0.5) for j in (-0.5, ny + 0.5) for kk in (k - 0.5, k + 0.5)])
    ks = (to_source @ corners.T)[2]
    lo = max(int(np.floor(ks.min())) - 1, 0)
    hi = min(int(np.ceil(ks.max())) + 1, count - 1)
    return range(lo, hi + 1) if lo <= hi else range(0)


def _derivation_text(source: Volume, grid: OutputGrid, method: str, quantisation: str, from_dicom: bool,
                     model: str | None = None) -> str:
    how = "ArSSR super-resolution" if method == "model" else f"{method} interpolation"
    if method == "model" and model:
        how += f" (model {model})"
    before = "x".join(str(n) for n in source.shape)
    after = "x".join(str(n) for n in grid.shape)
    src_spacing = "x".join(_number(float(s)) for s in np.linalg.norm(np.asarray(source.affine)[:3, :3], axis=0))
    out_spacing = "x".join(_number(s) for s in grid.spacing)
    text = (f"{how} by {TOOL} {__version__}: {before} voxels of {src_spacing} mm resampled to {after} voxels of "
            f"{out_spacing} mm, field of view kept; {quantisation}")
    if not from_dicom:
        text += "; source was not DICOM: patient, study and acquisition attributes unknown (empty)"
    return text[:DERIVATION_LENGTH]


def write_dicom_series(
    folder: str | Path,
    data: np.ndarray,
    grid: OutputGrid,
    source: Volume,
    method: str = "model",
    force: bool = False,
    inputs: Iterable[str | os.PathLike] = (),
    dtype: str | None = None,
    model: str | None = None,
) -> Path:
    """Write ``data`` (on ``grid``) as a new derived single-frame series in ``folder``.

    ``method``: what made the values (``model`` or an --interp name), for the descriptions;
    ``model``: the bundle's name and version (model.json), named in DerivationDescription;
    ``dtype``: --dtype, the voxel type whose values are stored (see ``pixel_encoding``).
    One file per slice along the grid's third axis, named IM0001.dcm ...; the folder appears
    under its final name only when every file is complete (``atomic.atomic_write_folder``),
    after the output guard (never an input, no replacing without ``force``).
    """
    pydicom = require("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sr.codedict import codes
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

    folder = Path(folder)
    data = np.asarray(data, dtype=np.float32)
    if data.shape != tuple(grid.shape):
        raise OutputError(f"{folder}: data shape {data.shape} does not match the grid {tuple(grid.shape)}")
    protected = [*inputs, *([source.source_path] if source.source_path is not None else [])]
    folder = check_output(folder, inputs=protected, force=force, folder=True)
    if not np.all(np.isfinite(data)):
        raise OutputError(f"{folder}: the result has NaN/Inf voxels (model or backend fault); nothing was written")
    stored, slope, intercept, quantisation = pixel_encoding(data, source, dtype)

    reference = source.meta.get("dicom_reference")
    instances: list[tuple[str, str]] = list(source.meta.get("dicom_instances") or [])
    now = _dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    if reference is not None:
        base = _base_from_source(reference)
        sop_class = _sop_class(folder, reference)
        try:
            base.SeriesNumber = int(getattr(reference, "SeriesNumber", None)) + 1000
        except (TypeError, ValueError):  # absent, empty or not a number
            base.SeriesNumber = 1000
    else:
        base = Dataset()
        sop_class = MR_IMAGE_STORAGE
        base.SeriesNumber = 1000
    base.SOPClassUID = sop_class
    base.Modality = "CT" if sop_class == CT_IMAGE_STORAGE else "MR"
    for name in TYPE2_COMMON + TYPE2_BY_CLASS[sop_class]:
        if name not in base:
            setattr(base, name, None)
    if sop_class == MR_IMAGE_STORAGE:
        for name, value in MR_UNKNOWN_TYPE1.items():
            if not getattr(base, name, None):
                setattr(base, name, value)
    for name in ("StudyInstanceUID", "FrameOfReferenceUID"):  # Type 1: a source without them gets new ones
        if not str(base.get(name, "") or "").strip():
            setattr(base, name, generate_uid())
    text = _source_text(source, reference)
    if any(ord(c) > 127 for c in text) and "SpecificCharacterSet" not in base:
        base.SpecificCharacterSet = "ISO_IR 192"

    # General Series, General Image, SOP Common: what was done, by whom, from what
    base.SeriesInstanceUID = generate_uid()
    base.SeriesDescription = series_description(text, f"{METHOD_NAMES.get(method, method)} {size_text(source, grid)}")
    base.SeriesDate = base.ContentDate = base.InstanceCreationDate = date
    base.SeriesTime = base.ContentTime = base.InstanceCreationTime = time
    base.ImageType = _image_type(reference)
    base.DerivationDescription = _derivation_text(source, grid, method, quantisation, reference is not None, model)
    base.DerivationCodeSequence = pydicom.Sequence([_code_item(codes.cid7203.SpatialResampling)])
    equipment = Dataset()
    equipment.Manufacturer = TOOL
    # no SoftwareVersions/model name here: dcm2niix reads them out of the sequence into the BIDS
    # sidecar in place of the scanner's; the version is in the description
    equipment.ContributionDateTime = date + time
    equipment.ContributionDescription = base.DerivationDescription[:1024]
    equipment.PurposeOfReferenceCodeSequence = pydicom.Sequence([_code_item(codes.DCM.ProcessingEquipment)])
    base.ContributingEquipmentSequence = pydicom.Sequence(
        [*(getattr(reference, "ContributingEquipmentSequence", None) or []), equipment])
    if reference is not None and instances and "SeriesInstanceUID" in reference:
        series_ref = Dataset()
        series_ref.SeriesInstanceUID = reference.SeriesInstanceUID
        series_ref.ReferencedInstanceSequence = pydicom.Sequence([_instance_item(c, i) for c, i in instances])
        base.ReferencedSeriesSequence = pydicom.Sequence([series_ref])

    # Image Plane (LPS) and Image Pixel
    lps = LPS_TO_RAS @ np.asarray(grid.affine, dtype=np.float64)
    col_step, row_step, slice_step = lps[:3, 0], lps[:3, 1], lps[:3, 2]
    row_dir = col_step / np.linalg.norm(col_step)
    col_dir = row_step / np.linalg.norm(row_step)
    normal = np.cross(row_dir, col_dir)
    thickness = float(abs(slice_step @ normal))
    low, high = np.percentile(data, [1.0, 99.5])
    base.ImageOrientationPatient = [ds_number(v) for v in (*row_dir, *col_dir)]
    base.PixelSpacing = [ds_number(float(np.linalg.norm(row_step))), ds_number(float(np.linalg.norm(col_step)))]
    base.SliceThickness = ds_number(thickness)
    base.SpacingBetweenSlices = ds_number(thickness)
    base.Rows, base.Columns = int(grid.shape[1]), int(grid.shape[0])
    base.SamplesPerPixel = 1
    # same display polarity as the source: values are never inverted, so a MONOCHROME1 input
    # stays MONOCHROME1 (written as MONOCHROME2 it would display inverted)
    photometric = str(source.meta.get("photometric", "MONOCHROME2"))
    base.PhotometricInterpretation = photometric if photometric in GREY_PHOTOMETRICS else "MONOCHROME2"
    base.BitsAllocated = base.BitsStored = 16
    base.HighBit = 15
    base.PixelRepresentation = 1 if stored.dtype == np.int16 else 0
    if slope != 1.0 or intercept != 0.0 or sop_class == CT_IMAGE_STORAGE:  # CT: Type 1
        base.RescaleSlope = ds_number(slope)
        base.RescaleIntercept = ds_number(intercept)
        if sop_class != CT_IMAGE_STORAGE:
            base.RescaleType = "US"
    base.WindowCenter = ds_number(float((low + high) / 2))
    base.WindowWidth = ds_number(float(max(high - low, 1e-3)))
    purpose = _code_item(codes.DCM.SourceImageForImageProcessingOperation)

    def build(stage: Path) -> None:
        ds = base  # one dataset: every per-slice attribute below is rewritten for each slice
        for k in range(grid.shape[2]):
            ds.file_meta = FileMetaDataset()
            ds.file_meta.MediaStorageSOPClassUID = sop_class
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
            ds.InstanceNumber = k + 1
            position = lps[:3, :3] @ np.array([0.0, 0.0, float(k)]) + lps[:3, 3]
            ds.ImagePositionPatient = [ds_number(v) for v in position]
            ds.SliceLocation = ds_number(float(position @ normal))
            if instances:
                items = []
                for s in _source_slices(source, grid, k, len(instances)):
                    item = _instance_item(*instances[s])
                    item.PurposeOfReferenceCodeSequence = pydicom.Sequence([purpose])
                    items.append(item)
                if items:
                    ds.SourceImageSequence = pydicom.Sequence(items)
                elif "SourceImageSequence" in ds:  # a slice outside the source's slab
                    del ds.SourceImageSequence
            ds.add_new(0x7FE00010, "OW", np.ascontiguousarray(stored[:, :, k].T).tobytes())  # 16-bit: OW
            ds.save_as(stage / f"IM{k + 1:04d}.dcm", enforce_file_format=True)

    return atomic_write_folder(folder, build)


def _instance_item(sop_class: str, sop_instance: str) -> Any:
    from pydicom.dataset import Dataset

    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    return item
