"""Turn command-line INPUTS (files, folders, CSV lists) into a sorted list of batch items.

Folders are walked recursively, following symlinks but never entering a folder twice (a
symlink loop cannot hang the walk); in a BIDS dataset (a folder with dataset_description.json)
derivatives/, sourcedata/ and code/ are not walked. Anything that cannot be an input (a missing path, a
looping or broken symlink, an unreadable folder, a file of the wrong type given by name) is
kept as an item with an ``error`` so the report shows it instead of silently dropping it.
"""

from __future__ import annotations

import csv
import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from ..atomic import is_temp_name
from ..io_dicom import is_dicom_file

# what a folder walk picks up; .img is the data half of an .hdr pair, so only .hdr counts
VOLUME_SUFFIXES = {".nii.gz": "nifti", ".nii": "nifti", ".hdr": "nifti", ".hdr.gz": "nifti", ".nrrd": "nrrd", ".nhdr": "nrrd",
                   ".mgz": "mgh", ".mgh": "mgh"}
EXPLICIT_ONLY_SUFFIXES = {".img": "nifti", ".img.gz": "nifti"}
CSV_COLUMNS = ("input", "output", "scale")
# folders of a BIDS dataset root that hold no raw data to process (other pipelines' outputs, DICOMs)
BIDS_NON_RAW = ("derivatives", "sourcedata", "code")


@dataclass(frozen=True)
class BatchItem:
    """One unit of work: a volume file or a DICOM series folder.

    ``relative`` is where its output goes under OUT_DIR (the path below the folder it was
    found in, so sub-folders are mirrored); ``output`` and ``scale`` come from a CSV row.
    """

    input: Path
    kind: str
    relative: Path
    output: Path | None = None
    scale: str | None = None
    error: str | None = None
    origin: str | None = None  # "list.csv row 3" for a CSV row (error messages name it)

    @property
    def stem(self) -> str:
        name = self.input.name
        suffix = volume_suffix(name) if self.kind != "dicom" else None
        return name[: -len(suffix)] if suffix else name


def volume_suffix(name: str, explicit: bool = False) -> str | None:
    """The recognised volume suffix of ``name`` (longest match), or None."""
    table = {**VOLUME_SUFFIXES, **EXPLICIT_ONLY_SUFFIXES} if explicit else VOLUME_SUFFIXES
    lower = name.lower()
    matches = [s for s in table if lower.endswith(s) and len(lower) > len(s)]
    return max(matches, key=len) if matches else None


def _describe_os_error(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "symlink loop (the link points back to itself)"
    if exc.errno == errno.ENOENT:
        return "broken symlink or missing file"
    if exc.errno == errno.EACCES:
        return "permission denied"
    return exc.strerror or str(exc)


def _failed(path: Path, relative: Path, message: str) -> BatchItem:
    return BatchItem(input=path, kind="unknown", relative=relative, error=message)


def _walk(root: Path, exclude: Sequence[Path] = ()) -> Iterable[BatchItem]:
    """Items under ``root``: volume files, and each folder holding DICOM files as one series.

    Folders in ``exclude`` (OUT_DIR, given resolved) are not entered, and hidden temp files
    of a write in progress are not inputs."""
    visited: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            st = folder.stat()
        except OSError as exc:
            yield _failed(folder, folder.relative_to(root), _describe_os_error(exc))
            continue
        if (st.st_dev, st.st_ino) in visited:
            continue  # reached again through a symlink: a cycle or an alias
        visited.add((st.st_dev, st.st_ino))
        if folder != root and Path(os.path.realpath(folder)) in exclude:
            continue
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            yield _failed(folder, folder.relative_to(root), f"cannot list folder: {_describe_os_error(exc)}")
            continue
        has_dicom = False
        bids_root = any(e.name == "dataset_description.json" for e in entries)
        for entry in entries:
            path = Path(entry.path)
            rel = path.relative_to(root)
            try:
                is_dir = entry.is_dir()
                is_file = entry.is_file()
                if entry.is_symlink():
                    os.stat(path)  # raises for loops and dangling links
            except OSError as exc:
                yield _failed(path, rel, _describe_os_error(exc))
                continue
            if is_temp_name(entry.name):
                continue
            if is_dir:
                if bids_root and entry.name in BIDS_NON_RAW:
                    continue  # a BIDS dataset's derivatives/ and sourcedata/ are not its raw data
                if not is_batch_output(path, ""):  # a DICOM output series of an earlier run
                    stack.append(path)
            elif is_file:
                suffix = volume_suffix(entry.name)
                if suffix and is_batch_output(path, suffix):
                    continue  # OUT_DIR is this folder: an earlier output is not a new input
                if suffix:
                    yield BatchItem(input=path, kind=VOLUME_SUFFIXES[suffix], relative=rel)
                elif not has_dicom and not entry.name.startswith(".") and is_dicom_file(path):
                    has_dicom = True
        if has_dicom:
            rel = folder.relative_to(root) if folder != root else Path(root.name)
            yield BatchItem(input=folder, kind="dicom", relative=rel)


def is_batch_output(path: Path, suffix: str) -> bool:
    """Whether ``path`` is an output of arssr-rt batch: its sidecar (``<stem>.json``) names it."""
    from .sidecar import read_sidecar

    side = path.with_name(path.name[: len(path.name) - len(suffix)] + ".json")
    if not side.is_file():
        return False
    record = read_sidecar(side)
    return record is not None and record.get("output") == path.name and "input_sha256" in record


def _explicit(path: Path, exclude: Sequence[Path] = ()) -> list[BatchItem]:
    """Items for one path named on the command line or in a CSV row."""
    rel = Path(path.name)
    try:
        path.stat()
    except OSError as exc:
        message = "no such file or folder" if exc.errno == errno.ENOENT and not path.is_symlink() else _describe_os_error(exc)
        return [_failed(path, rel, message)]
    if path.is_dir():
        return list(_walk(path, exclude))
    if path.name.lower().endswith(".csv"):
        return read_csv(path)
    suffix = volume_suffix(path.name, explicit=True)
    if suffix:
        return [BatchItem(input=path, kind={**VOLUME_SUFFIXES, **EXPLICIT_ONLY_SUFFIXES}[suffix], relative=rel)]
    if is_dicom_file(path):
        return [BatchItem(input=path.parent, kind="dicom", relative=Path(path.parent.name))]
    return [_failed(path, rel, "not an input: expected .nii/.nii.gz/.mgz/.mgh/.nrrd/.nhdr, a DICOM file or series folder, or a .csv list")]


def read_csv(path: Path) -> list[BatchItem]:
    """Rows of ``input[,output,scale]``; a header row naming the columns is optional.

    Relative inputs are relative to the CSV's folder; relative outputs to OUT_DIR (and
    ``plan_tasks`` refuses an output that resolves outside OUT_DIR unless allowed). A folder
    in the input column is one DICOM series (not walked).
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r) and not r[0].lstrip().startswith("#")]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        message = _describe_os_error(exc) if isinstance(exc, OSError) else f"unreadable CSV: {exc}"
        return [_failed(path, Path(path.name), message)]
    columns = list(CSV_COLUMNS)
    if rows and rows[0][0].strip().lower() == "input":
        columns = [c.strip().lower() for c in rows[0]]
        rows = rows[1:]
        unknown = set(columns) - set(CSV_COLUMNS)
        if unknown:
            return [_failed(path, Path(path.name), f"unknown CSV column(s) {sorted(unknown)}; expected input[,output,scale]")]
    items: list[BatchItem] = []
    for number, row in enumerate(rows, start=1):
        cells = {name: (row[i].strip() if i < len(row) else "") for i, name in enumerate(columns)}
        if not cells.get("input"):
            items.append(_failed(path, Path(f"{path.name}:{number}"), f"CSV row {number} has no input"))
            continue
        source = Path(cells["input"]).expanduser()
        source = source if source.is_absolute() else path.parent / source
        found = _explicit(source) if not source.is_dir() else [BatchItem(input=source, kind="dicom", relative=Path(source.name))]
        for item in found:
            items.append(
                BatchItem(
                    input=item.input,
                    kind=item.kind,
                    relative=item.relative,
                    output=Path(cells["output"]) if cells.get("output") else None,
                    scale=cells.get("scale") or None,
                    error=item.error,
                    origin=f"{path.name} row {number}",
                )
            )
    return items


def discover(inputs: Sequence[str | os.PathLike], exclude: Sequence[str | os.PathLike] = ()) -> list[BatchItem]:
    """All items for INPUTS, sorted by input path; the same real file appears once.

    Folder walks skip the folders in ``exclude`` and all below them (OUT_DIR inside an input
    folder: a rerun must not take the previous outputs as new inputs). A file named on the
    command line or in a CSV is taken even there: the user asked for it by name."""
    skip = [Path(os.path.realpath(Path(p).expanduser())) for p in exclude]
    items: list[BatchItem] = []
    for raw in inputs:
        items.extend(_explicit(Path(raw).expanduser(), skip))
    unique: dict[str, BatchItem] = {}
    for item in items:
        key = str(item.input) if item.error else os.path.realpath(item.input)
        unique.setdefault(key, item)
    return sorted(unique.values(), key=lambda it: str(it.input))


def select_shard(items: Sequence[BatchItem], index: int, count: int) -> list[BatchItem]:
    """Item ``index`` of every ``count`` of the sorted list (round robin: shards stay balanced
    when similar files sit next to each other); every item lands in exactly one shard."""
    ordered = sorted(items, key=lambda it: str(it.input))
    return ordered[index::count]


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` with 0 <= I < N (SLURM: ``$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT``)."""
    from ..errors import InputError

    try:
        left, right = text.split("/")
        index, count = int(left), int(right)
    except ValueError:
        raise InputError(f"--shard must look like I/N (e.g. 0/4), got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise InputError(f"--shard {text}: need 0 <= I < N")
    return index, count
