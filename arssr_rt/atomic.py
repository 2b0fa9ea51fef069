"""Atomic writes, the one implementation every writer uses: a hidden temp sibling, fsync, rename.

Readers (and a killed run) only ever see the old file or the complete new one; any failure,
Ctrl-C, SIGTERM or SIGHUP removes the temp file, so nothing partial is left behind. A temp's
name carries the writer's host and PID (``.<name>.<host>-<pid>-<rand>.tmp<suffix>``), so a
later run can tell a dead writer's leftover from a live one's file (``remove_stale_temps``).
Policy checks (never an input, no overwrite without --force) live in ``outputs.py``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import signal
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .errors import OutputError

# a leftover whose owner we cannot check (other host, older name format) is removed only
# after this long without a change: far longer than any write, so a live writer on another
# node of a shared file system is never hit (a write refreshes the mtime as it goes)
FOREIGN_TEMP_MAX_AGE_S = 24 * 3600
TEMP_MARKERS = (".tmp", ".partial-")
_TERMINATING = (signal.SIGTERM, signal.SIGHUP)


@functools.cache
def _umask() -> int:
    """The process umask, read once (reading it means setting it, which races with threads)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@functools.cache
def _host() -> str:
    """This host's name as it may appear in a file name (letters, digits, dashes)."""
    return re.sub(r"[^A-Za-z0-9]+", "-", socket.gethostname().split(".")[0])[:32] or "host"


def _owner_tag() -> str:
    return f"{_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def temp_path_for(path: Path, suffix: str | None = None) -> Path:
    """A unique hidden sibling of ``path`` ending in ``suffix`` (default: the path's suffix)."""
    return path.with_name(f".{path.name}.{_owner_tag()}.tmp{path.suffix if suffix is None else suffix}")


def staging_folder_for(path: Path) -> Path:
    """A unique hidden sibling folder name for building the folder ``path``."""
    return path.with_name(f".{path.name}.partial-{_owner_tag()}")


def is_temp_name(name: str) -> bool:
    """True for a name this module makes (a hidden temp file or staging folder)."""
    return name.startswith(".") and any(marker in name for marker in TEMP_MARKERS)


@contextlib.contextmanager
def terminate_as_exit() -> Iterator[None]:
    """While a temp file exists, SIGTERM/SIGHUP raise SystemExit(128 + signal) in the main
    thread, so the same ``except BaseException`` cleanup that handles Ctrl-C removes it.

    Only default handlers are replaced (a caller's own handler is left alone), only in the
    main thread (Python delivers signals there), and the old handlers come back afterwards.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for sig in _TERMINATING:
        if signal.getsignal(sig) is signal.SIG_DFL:
            previous[sig] = signal.signal(sig, _raise_exit)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _raise_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _fsync_tree(path: Path) -> None:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for file in files:
        with open(file, "rb") as handle:  # data on disk before the rename makes it visible
            os.fsync(handle.fileno())


def atomic_write(path: str | Path, write: Callable[[Path], None], suffix: str | None = None, fsync: bool = True) -> Path:
    """Run ``write(tmp)`` then rename the temp file onto ``path``.

    ``suffix`` lets writers that choose the format by extension (nibabel: ``.nii.gz``) see
    the right one. OSError becomes a one-line OutputError; the temp file never survives.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise OutputError(f"{path}: output folder {path.parent} does not exist (create it first)")
    if path.is_dir():
        raise OutputError(f"{path}: is a folder")
    tmp = temp_path_for(path, suffix)
    with terminate_as_exit():
        try:
            write(tmp)
            if fsync:
                _fsync_tree(tmp)
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
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_folder(path: str | Path, build: Callable[[Path], None], fsync: bool = True) -> Path:
    """Run ``build(stage)`` in a hidden sibling folder, then move it to ``path``.

    An existing folder at ``path`` is moved aside and deleted only after the new one is in
    place, so ``path`` is always either the old folder or the complete new one.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise OutputError(f"{path}: output folder {path.parent} does not exist (create it first)")
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: is a file, not a folder")
    stage = staging_folder_for(path)
    old = None
    with terminate_as_exit():
        try:
            stage.mkdir()
            build(stage)
            if fsync:
                _fsync_tree(stage)
            if path.exists():
                old = staging_folder_for(path)
                os.rename(path, old)
            os.rename(stage, path)
        except OSError as exc:
            shutil.rmtree(stage, ignore_errors=True)
            if old is not None and not path.exists():
                os.rename(old, path)
            raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from None
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            if old is not None and not path.exists():
                os.rename(old, path)
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path


def _owner_alive(name: str) -> bool | None:
    """Whether the writer named in a temp name is running: None when it cannot be told
    (another host, or a name from an older version without host and PID)."""
    match = re.search(r"\.(?:partial-)?([A-Za-z0-9-]+)-(\d+)-[0-9a-f]{8}(?:\.tmp|$)", name)
    if not match or match.group(1) != _host():
        return None
    pid = int(match.group(2))
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def remove_stale_temps(folder: Path, names: Iterable[str], max_age_s: float = FOREIGN_TEMP_MAX_AGE_S) -> list[Path]:
    """Delete temps in ``folder`` left for the files ``names`` by writers that are gone.

    A temp is removed when its owner (host + PID in the name) is a dead process on this
    host, or when the owner cannot be checked and the temp has not changed for
    ``max_age_s``; a live writer's temp (another batch on the same OUT_DIR) is never touched.
    """
    if not folder.is_dir():
        return []
    prefixes = tuple(f".{n}." for n in names)
    removed = []
    now = time.time()
    for entry in os.scandir(folder):
        if not (entry.name.startswith(prefixes) and is_temp_name(entry.name)):
            continue
        alive = _owner_alive(entry.name)
        if alive is None:
            try:
                alive = now - entry.stat(follow_symlinks=False).st_mtime < max_age_s
            except OSError:
                continue
        if alive:
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            Path(entry.path).unlink(missing_ok=True)
        removed.append(Path(entry.path))
    return removed
