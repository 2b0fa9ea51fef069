"""Atomic file writes: write a hidden temp file next to the target, fsync, rename.

Readers (and a killed run) only ever see the old file or the complete new one; any failure
removes the temp file, so nothing partial is left behind.
"""

from __future__ import annotations

import functools
import os
import uuid
from pathlib import Path
from typing import Callable

from .errors import OutputError


@functools.cache
def _umask() -> int:
    """The process umask, read once (reading it means setting it, which races with threads)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_path_for(path: Path, suffix: str | None = None) -> Path:
    """A unique hidden sibling of ``path`` ending in ``suffix`` (default: the path's suffix)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp{path.suffix if suffix is None else suffix}")


def atomic_write(path: str | Path, write: Callable[[Path], None], suffix: str | None = None, fsync: bool = True) -> Path:
    """Run ``write(tmp)`` then rename the temp file onto ``path``.

    ``suffix`` lets writers that choose the format by extension (nibabel: ``.nii.gz``) see
    the right one. OSError becomes a one-line OutputError; the temp file never survives.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise OutputError(f"{path}: output folder {path.parent} does not exist")
    if path.is_dir():
        raise OutputError(f"{path}: is a folder")
    tmp = temp_path_for(path, suffix)
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb") as handle:  # data on disk before the rename makes it visible
                os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # outputs follow the umask like any new file
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))
