"""Bounded reading of an NRRD file's voxel bytes (attached or detached, raw/gzip/bzip2/text).

pynrrd parses the header well, but its data reader follows ``data file:`` anywhere and
inflates gzip/bzip2 data without limit (a 1.5 MB file became 3.2 GB of RSS). Here the bytes
are fetched with a cap derived from the header's own sizes: the data file goes through the
one resolver (``linked_files``), compressed data is stream-inflated and refused as soon as
it yields more than the header accounts for, and only then does pynrrd decode the exact
bytes (type, endianness, index order) from memory.
"""

from __future__ import annotations

import bz2
import gzip
import io
import math
import zlib
from pathlib import Path
from typing import IO, Any

from .errors import InputError
from .linked_files import external_data_allowed, resolve_linked

# bytes per value of every NRRD scalar type (the NRRD spec's names, lower-cased)
_TYPE_SIZES = {
    **dict.fromkeys(("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"), 1),
    **dict.fromkeys(("short", "short int", "signed short", "signed short int", "int16", "int16_t", "ushort",
                     "unsigned short", "unsigned short int", "uint16", "uint16_t"), 2),
    **dict.fromkeys(("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t", "float"), 4),
    **dict.fromkeys(("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64",
                     "int64_t", "ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t",
                     "double"), 8),
}
_GZIP = {"gzip", "gz"}
_BZIP2 = {"bzip2", "bz2"}
_TEXT = {"ascii", "text", "txt"}
# what a byte skip of -1 ("the data is the last N bytes"), or at most a positive one, may leave in
# front of compressed data
_UNKNOWN_PREFIX = 1 << 20
# longest line a "line skip" may skip; NRRD line skips pass short text headers
_MAX_SKIPPED_LINE = 1 << 20
# characters per value a text-encoded file may use (digits, sign, exponent, separators)
_TEXT_BYTES_PER_VALUE = 64


def _field(header: dict, *names: str, default: Any = None) -> Any:
    for name in names:
        if name in header:
            return header[name]
    return default


def value_size(header: dict, path: Path) -> int:
    """Bytes per voxel value from the header's ``type``; 'block' and unknown types refused."""
    kind = str(header.get("type", "")).strip().lower()
    if kind not in _TYPE_SIZES:
        raise InputError(f"{path}: NRRD type {header.get('type')!r} is not a scalar voxel type")
    return _TYPE_SIZES[kind]


def data_file_name(header: dict) -> Any:
    """The header's ``data file:`` (a detached .nhdr's voxels), or None when the data are attached."""
    return _field(header, "data file", "datafile")


def _data_handle(header: dict, path: Path, attached: IO[bytes]) -> tuple[IO[bytes], bool]:
    """The handle the data starts in, and whether it is a file opened here (to close)."""
    name = data_file_name(header)
    if name is None:
        return attached, False
    text = str(name).strip()
    if text.upper().startswith("LIST") or (" " in text and "%" in text):
        raise InputError(f"{path}: multi-file NRRD data ({text[:60]!r}) is not supported; save the volume as one .nrrd file")
    target = resolve_linked(path, text, what="data file", allow_external=external_data_allowed())
    try:
        return open(target, "rb"), True
    except OSError as exc:
        raise InputError(f"{path}: its data file {target} cannot be read ({exc.strerror or exc})") from None


def _skip_lines(handle: IO[bytes], count: int, path: Path) -> None:
    if count < 0:
        raise InputError(f"{path}: NRRD line skip {count} is negative")
    for _ in range(count):
        line = handle.readline(_MAX_SKIPPED_LINE)
        if not line:  # at the end of the file: the remaining skips would each read nothing
            raise InputError(f"{path}: NRRD line skip {count} passes the end of the data; the header is wrong")
        if len(line) == _MAX_SKIPPED_LINE and not line.endswith(b"\n"):
            raise InputError(f"{path}: NRRD line skip passes a line over {_MAX_SKIPPED_LINE:,} bytes; the header is wrong")


def _read_capped(stream: IO[bytes], cap: int, path: Path, what: str) -> bytes:
    """At most ``cap`` bytes of ``stream``; more than that is refused before it is held."""
    blob = stream.read(cap + 1)
    if len(blob) > cap:
        raise InputError(
            f"{path}: NRRD {what} holds more than the {cap:,} bytes its header's sizes account for "
            "(a decompression bomb or a wrong header); refused"
        )
    return blob


def _payload(header: dict, path: Path, handle: IO[bytes], need: int, skip: int) -> bytes:
    """Exactly the ``need`` data bytes that follow the skips, read with a byte cap."""
    encoding = str(header.get("encoding", "raw")).strip().lower()
    if encoding == "raw":
        if skip == -1:  # the data is the file's last `need` bytes
            handle.seek(max(0, handle.seek(0, io.SEEK_END) - need))
        else:
            handle.seek(skip, io.SEEK_CUR)
        blob = _read_capped(handle, need, path, "raw data")
    elif encoding in _GZIP or encoding in _BZIP2:
        if skip > _UNKNOWN_PREFIX:  # it would be inflated (and held) before the data: refuse, as for skip -1
            raise InputError(f"{path}: NRRD byte skip {skip:,} on {encoding} data is over the {_UNKNOWN_PREFIX:,} "
                             "bytes allowed in front of compressed data")
        stream = gzip.GzipFile(fileobj=handle) if encoding in _GZIP else bz2.BZ2File(handle)
        cap = need + (_UNKNOWN_PREFIX if skip == -1 else skip)
        blob = _read_capped(stream, cap, path, f"{encoding} data inflated")
        blob = blob[len(blob) - need:] if skip == -1 and len(blob) >= need else blob[max(skip, 0):]
    else:
        raise InputError(f"{path}: NRRD encoding {header.get('encoding')!r} is not supported")
    if len(blob) < need:
        raise InputError(f"{path}: NRRD data is corrupt or truncated ({len(blob):,} of {need:,} bytes)")
    return blob


def read_voxels(nrrd: Any, header: dict, path: Path, attached: IO[bytes]) -> Any:
    """The voxel array (index order F) of ``header``, whose attached data starts at ``attached``."""
    sizes = [int(n) for n in header["sizes"]]
    count = math.prod(sizes)
    skip = int(_field(header, "byte skip", "byteskip", default=0))
    if skip < -1:
        raise InputError(f"{path}: NRRD byte skip {skip} is invalid (must be >= -1)")
    encoding = str(header.get("encoding", "raw")).strip().lower()
    handle, owned = _data_handle(header, path, attached)
    try:
        _skip_lines(handle, int(_field(header, "line skip", "lineskip", default=0)), path)
        if encoding in _TEXT:
            if skip != 0:
                raise InputError(f"{path}: NRRD byte skip is not allowed with text encoding")
            blob = _read_capped(handle, count * _TEXT_BYTES_PER_VALUE + _MAX_SKIPPED_LINE, path, "text data")
            plain = {**header, "encoding": "ascii"}
        else:
            need = count * value_size(header, path)
            blob = _payload(header, path, handle, need, skip)
            plain = {**header, "encoding": "raw"}
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"{path}: NRRD data is corrupt or truncated ({exc})") from None
    finally:
        if owned:
            handle.close()
    for key in ("data file", "datafile", "line skip", "lineskip", "byte skip", "byteskip"):
        plain.pop(key, None)
    try:  # pynrrd decodes the exact bytes: type, endianness, text parsing, F order
        return nrrd.read_data(plain, io.BytesIO(blob), str(path), index_order="F")
    except (nrrd.NRRDError, ValueError) as exc:
        raise InputError(f"{path}: NRRD data is corrupt or truncated ({exc})") from None
