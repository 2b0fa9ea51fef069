"""BIDS derivatives for batch outputs (BIDS 1.10, "Derivatives: imaging data types").

A NIfTI input whose name is a BIDS name (``sub-<label>[_ses-<label>]..._<suffix>.nii[.gz]``,
known entities in the spec's order) gets a derivative output: the same sub-/ses-/datatype
folders under OUT_DIR and its name with ``res-<label>`` at the entity's place (after
``space``, before ``den``/``label``/``desc``; the suffix stays last). The sidecar carries
``Resolution`` (REQUIRED with ``res``), ``Sources`` as BIDS URIs into the source dataset
(named ``raw`` in ``DatasetLinks``), ``Description`` and ``SkullStripped``; OUT_DIR gets a
``dataset_description.json`` (DatasetType derivative, GeneratedBy, SourceDatasets). Other
inputs keep the plain ``<stem>_<label>.nii.gz`` naming.

The res label is the size label of the plain names with ``.`` written ``p`` (BIDS labels are
alphanumeric): ``x2``, ``x1x1x3``, ``x2p5``, ``0p5mm``, ``256x256x100``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import OutputError

BIDS_VERSION = "1.10.0"
DESCRIPTION_FILE = "dataset_description.json"
TOOL_NAME = "arssr-rt"
# filename entity order (bids-specification src/schema/rules/entities.yaml)
ENTITY_ORDER = (
    "sub", "tpl", "ses", "cohort", "sample", "task", "tracksys", "acq", "nuc", "voi", "ce", "trc", "stain", "rec", "dir", "run",
    "mod", "echo", "flip", "inv", "mt", "part", "proc", "hemi", "space", "split", "recording", "chunk", "atlas", "seg", "scale",
    "res", "den", "label", "prov", "desc",
)
DATATYPES = ("anat", "func", "dwi", "fmap", "perf", "pet")
ANAT_SUFFIXES = ("T1w", "T2w", "PDw", "T2starw", "FLAIR", "inplaneT1", "inplaneT2", "PDT2", "angio", "T1map", "T2map",
                 "T2starmap", "R1map", "R2map", "R2starmap", "PDmap", "MTRmap", "MTsat", "UNIT1", "T1rho", "MWFmap",
                 "MTVmap", "Chimap", "S0map", "M0map", "MESE", "MEGRE", "VFA", "IRT1", "MP2RAGE", "MPM", "MTS", "MTR")
LABEL = re.compile(r"[a-zA-Z0-9]+")
NAME = re.compile(r"(?P<entities>sub-[a-zA-Z0-9]+(?:_[a-zA-Z]+-[a-zA-Z0-9]+)*)_(?P<suffix>[a-zA-Z0-9]+)(?P<ext>\.nii(?:\.gz)?)")
RAW_LINK = "raw"  # the DatasetLinks name of the source dataset in Sources URIs


@dataclass(frozen=True)
class BidsName:
    """A parsed BIDS file name: entities in order, suffix, extension."""

    entities: tuple[tuple[str, str], ...]
    suffix: str
    extension: str

    def get(self, key: str) -> str | None:
        return dict(self.entities).get(key)

    def with_entity(self, key: str, value: str) -> "BidsName":
        """This name with ``key-value`` set (replaced if present) at its place in the entity order."""
        if not LABEL.fullmatch(value):
            raise ValueError(f"BIDS label {value!r} must be alphanumeric")
        entities = dict(self.entities)
        entities[key] = value
        ordered = tuple(sorted(entities.items(), key=lambda kv: ENTITY_ORDER.index(kv[0])))
        return BidsName(ordered, self.suffix, self.extension)

    def filename(self, extension: str | None = None) -> str:
        return "_".join(f"{k}-{v}" for k, v in self.entities) + f"_{self.suffix}{extension if extension is not None else self.extension}"


def parse_name(name: str) -> BidsName | None:
    """The BIDS name of a NIfTI file, or None when it is not one (unknown or repeated entity,
    entities out of the spec's order)."""
    match = NAME.fullmatch(name)
    if not match:
        return None
    pairs = tuple(tuple(part.split("-", 1)) for part in match["entities"].split("_"))
    keys = [k for k, _ in pairs]
    if any(k not in ENTITY_ORDER for k in keys) or len(set(keys)) != len(keys):
        return None
    if [ENTITY_ORDER.index(k) for k in keys] != sorted(ENTITY_ORDER.index(k) for k in keys):
        return None
    return BidsName(pairs, match["suffix"], match["ext"])  # type: ignore[arg-type]


def res_label(size_label: str) -> str:
    """``x2`` -> ``x2``, ``x2.5`` -> ``x2p5``, ``0.5mm`` -> ``0p5mm``, ``ref-T1`` -> ``refT1``: the
    plain label, alphanumeric."""
    label = re.sub(r"[^a-zA-Z0-9]", "", size_label.replace(".", "p"))
    if not LABEL.fullmatch(label):
        raise ValueError(f"size label {size_label!r} has no BIDS form")
    return label


@dataclass(frozen=True)
class BidsSource:
    """Where a BIDS-named input sits: its dataset root (the folder above ``sub-<label>``),
    its path inside, and the parsed name."""

    root: Path
    relative: Path  # the input's path inside root (sub-01/[ses-1/]anat/sub-01_T1w.nii.gz, or loose)
    name: BidsName
    datatype: str

    @property
    def uri(self) -> str:
        return f"bids:{RAW_LINK}:{self.relative.as_posix()}"

    def output_relative(self, res: str) -> Path:
        """sub-01/[ses-1/]<datatype>/sub-01[_ses-1]..._res-<res>_<suffix>.nii.gz"""
        ses = self.name.get("ses")
        folders = [f"sub-{self.name.get('sub')}", *([f"ses-{ses}"] if ses else []), self.datatype]
        return Path(*folders, self.name.with_entity("res", res).filename(".nii.gz"))


def bids_source(path: Path) -> BidsSource | None:
    """The BIDS place of an input file, or None when its name or folders are not BIDS.

    The folders must be ``sub-<label>/[ses-<label>/]<datatype>/`` with the labels of the
    name (the raw layout), or the file sits loose and is anatomical (then ``anat`` is
    assumed, as the raw layout would have it)."""
    name = parse_name(path.name)
    if name is None:
        return None
    sub, ses = name.get("sub"), name.get("ses")
    wanted = [f"sub-{sub}"] + ([f"ses-{ses}"] if ses else [])
    parents = list(Path(os.path.abspath(path)).parent.parts)
    if parents[-1] in DATATYPES and parents[-1 - len(wanted):-1] == wanted:
        root = Path(*parents[:-1 - len(wanted)])
        return BidsSource(root, Path(*wanted, parents[-1], path.name), name, parents[-1])
    if name.suffix in ANAT_SUFFIXES and parents[-1] not in DATATYPES:
        return BidsSource(Path(*parents), Path(path.name), name, "anat")
    return None


def read_description(root: Path) -> dict[str, Any] | None:
    """A folder's dataset_description.json, or None (absent, unreadable, not an object)."""
    try:
        data = json.loads((root / DESCRIPTION_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def source_sidecar(path: Path) -> dict[str, Any]:
    """The input's own JSON sidecar (same name, .json), or {}."""
    name = parse_name(path.name)
    if name is None:
        return {}
    try:
        data = json.loads(path.with_name(name.filename(".json")).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def skull_stripped(source: BidsSource, path: Path) -> bool | None:
    """SkullStripped (REQUIRED for MRI NIfTI derivatives): the input sidecar's value; else
    False for a raw dataset (raw BIDS holds acquisitions, not skull-stripped images); None
    (unknown: not written) for a derivative input that does not say."""
    own = source_sidecar(path).get("SkullStripped")
    if isinstance(own, bool):
        return own
    description = read_description(source.root) or {}
    return False if description.get("DatasetType", "raw") == "raw" else None


def derivative_sidecar(source: BidsSource, path: Path, res: str, resolution: str, how: str) -> dict[str, Any]:
    """The BIDS fields of an output's sidecar (the tool's own go under sidecar.TOOL_KEY)."""
    fields: dict[str, Any] = {
        "Description": f"Resampled by arssr-rt {__version__} ({how}) onto the grid named by res-{res}",
        "Sources": [source.uri],
        "Resolution": resolution,
    }
    stripped = skull_stripped(source, path)
    if stripped is not None:
        fields["SkullStripped"] = stripped
    return fields


def resolution_text(label: str, in_shape, in_spacing, out_shape, out_spacing) -> str:
    """The meaning of ``res-<label>`` (the spec's Resolution: free text)."""
    def mm(s):
        return "x".join(f"{v:.4g}" for v in s)

    def n(s):
        return "x".join(str(int(v)) for v in s)

    return (f"{label}: {mm(out_spacing)} mm voxels, {n(out_shape)} grid (the input's {mm(in_spacing)} mm, "
            f"{n(in_shape)})")


def dataset_link(out_dir: Path, root: Path) -> str:
    """Where DatasetLinks.raw points: a path relative to OUT_DIR when OUT_DIR is inside the
    source dataset (the usual <raw>/derivatives/<pipeline>), else the source's file:// URI."""
    out, src = Path(os.path.realpath(out_dir)), Path(os.path.realpath(root))
    if out.is_relative_to(src):
        return os.path.relpath(src, out)
    return src.as_uri()


def description_for(out_dir: Path, roots: list[Path], model: str, model_sha256: str, existing: dict[str, Any] | None) -> dict[str, Any]:
    """OUT_DIR's dataset_description.json: an earlier one of this tool is updated (its other
    fields kept); one source dataset per run (the ``raw`` link)."""
    description = dict(existing or {})
    root = roots[0]
    source = read_description(root) or {}
    description.setdefault("Name", f"arssr-rt super-resolution of {source.get('Name') or root.name}")
    description["BIDSVersion"] = BIDS_VERSION
    description["DatasetType"] = "derivative"
    generated = [g for g in description.get("GeneratedBy", []) if isinstance(g, dict) and g.get("Name") != TOOL_NAME]
    description["GeneratedBy"] = [{"Name": TOOL_NAME, "Version": __version__,
                                   "Description": f"ArSSR super-resolution, model {model} (model.json sha256 {model_sha256})"}, *generated]
    link = dataset_link(out_dir, root)
    entry: dict[str, Any] = {"URL": link if "://" in link else Path(os.path.realpath(root)).as_uri()}
    for key, ours in (("DatasetDOI", "DOI"), ("DatasetVersion", "Version")):
        if isinstance(source.get(key), str):
            entry[ours] = source[key]
    datasets = [d for d in description.get("SourceDatasets", []) if isinstance(d, dict) and d.get("URL") != entry["URL"]]
    description["SourceDatasets"] = [entry, *datasets]
    links = dict(description.get("DatasetLinks") or {})
    links[RAW_LINK] = link
    description["DatasetLinks"] = links
    return description


def check_sources(out_dir: Path, roots: list[Path]) -> None:
    """One source dataset per OUT_DIR, and never OUT_DIR itself (its description is the raw one)."""
    real = {Path(os.path.realpath(r)) for r in roots}
    if len(real) > 1:
        raise OutputError(f"inputs come from {len(real)} BIDS datasets ({', '.join(sorted(map(str, real)))}); "
                          "give each its own --output-dir (one derivative dataset has one source)")
    if Path(os.path.realpath(out_dir)) in real:
        raise OutputError(f"{out_dir}: is the input BIDS dataset; write derivatives to a folder of their own "
                          f"(e.g. {Path(out_dir) / 'derivatives' / 'arssr-rt'})")


def is_own_description(existing: dict[str, Any] | None) -> bool:
    return bool(existing) and any(isinstance(g, dict) and g.get("Name") == TOOL_NAME for g in existing.get("GeneratedBy", []))  # type: ignore[union-attr]


README = """# arssr-rt super-resolution

BIDS derivative dataset written by `arssr-rt batch`: each image is its source (see `Sources`
in its JSON sidecar, and `SourceDatasets` in dataset_description.json) super-resolved by an
ArSSR model (or --interp) onto a finer grid: the input's field of view, or a --reference
image's grid. The `res-<label>` entity is the
size request (`x2`: twice the voxels per axis; `0p5mm`: 0.5 mm voxels); each sidecar's
`Resolution` gives the voxel size and grid. The tool's own bookkeeping (input and model
sha256, options) is under `ArssrRTBatch` in each sidecar; `batch_report*.json` lists the run.
"""
BIDSIGNORE = "# written by arssr-rt batch: its report and QC pictures are not BIDS files\nbatch_report*.json\n*_qc.png\n"


def check_description(out_dir: Path, roots: list[Path], force: bool) -> dict[str, Any] | None:
    """Before any work: the sources are one dataset, not OUT_DIR, and OUT_DIR's description
    (returned) is absent or this tool's; a foreign one is replaced only with --force."""
    check_sources(out_dir, roots)
    path = Path(out_dir) / DESCRIPTION_FILE
    existing = read_description(Path(out_dir))
    if (path.exists() or path.is_symlink()) and not is_own_description(existing):
        if not force:
            raise OutputError(f"{path}: already exists and was not written by arssr-rt (use --force to overwrite)")
        return None
    return existing


def write_description(out_dir: Path, roots: list[Path], model: str, model_sha256: str, existing: dict[str, Any] | None) -> Path:
    """Write OUT_DIR/dataset_description.json, atomically; also a .bidsignore for the report
    and QC pictures unless one of the user's is there, and a README (RECOMMENDED) if none."""
    from ..atomic import atomic_write_text

    path = Path(out_dir) / DESCRIPTION_FILE
    atomic_write_text(path, json.dumps(description_for(Path(out_dir), roots, model, model_sha256, existing), indent=2) + "\n")
    ignore = Path(out_dir) / ".bidsignore"
    try:
        mine = not ignore.exists() or ignore.read_text(encoding="utf-8").startswith("# written by arssr-rt")
    except (OSError, UnicodeDecodeError):
        mine = False
    if mine and not ignore.is_symlink():
        atomic_write_text(ignore, BIDSIGNORE)
    if not any(Path(out_dir).glob("README*")):
        atomic_write_text(Path(out_dir) / "README.md", README)
    return path
