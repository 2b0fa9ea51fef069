"""The output-path guard every writer goes through before it writes (and again at write time).

A path is compared after resolving its folder (``sub/../x.nii.gz`` is ``x.nii.gz``; a
symlinked folder is its target). Refused, always, even with --force: writing onto an input
of the run (the same file, the data half of an Analyze pair, the data file a detached NRRD
header names, a file inside an input DICOM series folder, or a folder output that holds an
input). Refused without --force: an existing file. Refused with a clear message: a missing
parent folder, a file where a folder is meant and the reverse. The write itself is ``atomic.atomic_write`` / ``atomic_write_folder``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from .errors import OutputError
from .params import setting

# an input file that is the header of a pair: its data file is an input too
_PAIRS = {".hdr": (".img", ".img.gz"), ".hdr.gz": (".img", ".img.gz")}


def normalized(path: str | os.PathLike) -> Path:
    """``path`` with its folder resolved (realpath) and the name kept: the key two paths
    share when they name one file. The name is kept so a symlink is replaced, not followed."""
    p = Path(os.path.expanduser(os.fspath(path)))
    if p.name in ("", ".", ".."):
        return Path(os.path.realpath(p))
    return Path(os.path.realpath(p.parent)) / p.name


def _nrrd_data_file(header: Path) -> list[Path]:
    """The ``data file:`` an NRRD header names (a detached .nhdr's voxels), resolved; [] if none,
    or if the header cannot be parsed the way the reader parses it (then it is never read)."""
    try:
        import nrrd
    except ImportError:  # no NRRD reader: such an input is refused before anything is written
        return []
    from .nrrd_data import data_file_name

    try:
        with open(header, "rb") as handle:
            name = data_file_name(nrrd.read_header(handle))
    except Exception:  # OSError, nrrd.NRRDError, a bad encoding ...: the reader refuses it too
        return []
    if name is None or not str(name).strip():
        return []
    return [Path(os.path.realpath(header.parent / str(name).strip()))]


def input_files(path: str | os.PathLike) -> list[Path]:
    """The resolved files (or series folder) one input consists of."""
    p = Path(os.path.realpath(os.path.expanduser(os.fspath(path))))
    found = [p]
    lower = p.name.lower()
    for suffix, partners in _PAIRS.items():
        if lower.endswith(suffix):
            stem = p.name[: -len(suffix)]
            found += [p.with_name(stem + partner) for partner in partners]
    if lower.endswith((".nhdr", ".nrrd")) and p.is_file():
        found += _nrrd_data_file(p)
    return found


class InputSet:
    """The inputs of a run, resolved once, so checking many outputs stays cheap (a batch)."""

    def __init__(self, inputs: Iterable[str | os.PathLike] = ()):
        self.names: dict[Path, str] = {}  # resolved file or series folder -> as the user gave it
        self.ids: dict[tuple[int, int], str] = {}  # (device, inode): hard links and aliases
        self.ancestors: dict[Path, str] = {}  # every folder above an input
        for raw in inputs:
            for part in input_files(raw):
                self.names.setdefault(part, str(raw))
                try:
                    st = part.stat()
                    self.ids.setdefault((st.st_dev, st.st_ino), str(raw))
                except OSError:
                    pass
                for parent in part.parents:
                    self.ancestors.setdefault(parent, str(raw))

    def conflict(self, path: str | os.PathLike, folder: bool = False) -> str | None:
        """Why writing ``path`` would touch an input (None when it would not)."""
        key = normalized(path)
        target = Path(os.path.realpath(key))
        for candidate in (key, target):
            if candidate in self.names:
                return f"is the input {self.names[candidate]}"
            for parent in candidate.parents:
                if parent in self.names and parent.is_dir():
                    return f"is inside the input series folder {self.names[parent]}"
            if folder and candidate in self.ancestors:
                return f"would replace a folder holding the input {self.ancestors[candidate]}"
        try:
            st = target.stat()
        except OSError:
            return None
        raw = self.ids.get((st.st_dev, st.st_ino))
        return f"is the input {raw}" if raw is not None else None


def check_output(
    path: str | os.PathLike,
    *,
    inputs: "InputSet | Iterable[str | os.PathLike]" = (),
    force: bool = False,
    folder: bool = False,
    what: str = "output",
) -> Path:
    """Refuse an output that cannot be written safely; returns the normalised path.

    Call it before any compute (so a bad call costs nothing), and writers call it again just
    before the atomic write. ``folder``: the output is a folder (a DICOM series).
    """
    p = Path(os.path.expanduser(os.fspath(path)))
    key = normalized(p)
    conflict = (inputs if isinstance(inputs, InputSet) else InputSet(inputs)).conflict(p, folder)
    if conflict:
        raise OutputError(f"{p}: {what} {conflict}; choose another output path (an input is never overwritten)")
    if not key.parent.is_dir():
        raise OutputError(f"{p}: {what} folder {p.parent} does not exist (create it first)")
    if folder and key.exists() and not key.is_dir():
        raise OutputError(f"{p}: {what} is a file, not a folder")
    if not folder and key.is_dir():
        raise OutputError(f"{p}: {what} is a folder")
    if (key.exists() or key.is_symlink()) and not force:
        raise OutputError(f"{p}: already exists (use {setting('force')} to overwrite)")
    return key


def is_inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether ``path`` (resolved as the guard resolves it) lies in or below ``folder``."""
    root = Path(os.path.realpath(os.path.expanduser(os.fspath(folder))))
    key = normalized(path)
    return all(root == c or root in c.parents for c in (key, Path(os.path.realpath(key))))
