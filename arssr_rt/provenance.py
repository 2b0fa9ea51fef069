"""What an output says about how it was made, in the file itself.

NIfTI has an 80-byte ``descrip`` field that every viewer and ``fslhd``/``nifti_tool`` show;
FreeSurfer MGH has none, but carries command-line history as TAG_CMDLINE records after the
footer (``mri_info`` reads them, nibabel skips them). One short text serves both, so a file
found alone on a disk still says: this tool and version, which model (or classical
resampling), which size request.
"""

from __future__ import annotations

import struct

from . import __version__

DESCRIP_BYTES = 80  # NIfTI-1/2 descrip is char[80]; nibabel refuses longer
MGH_TAG_CMDLINE = 3  # FreeSurfer utils/tags.h


def describe(label: str, model: str | None, method: str = "model") -> str:
    """``arssr-rt 0.1.0 default x2 model`` or ``arssr-rt 0.1.0 x2 interp cubic``, in 80 bytes.

    ``label`` is the size label of the output name (``x2``, ``0.5mm``, ``256x256x100``); a
    model name too long to fit is cut, never the tool, version or label."""
    tail = f"{label} model" if method == "model" else f"{label} interp {method}"
    head = f"arssr-rt {__version__}"
    room = DESCRIP_BYTES - len(_ascii(head)) - len(_ascii(tail)) - 2
    name = _ascii(model or "")[:max(room, 0)] if method == "model" else ""
    text = " ".join(p for p in (head, name, tail) if p)
    return _ascii(text)[:DESCRIP_BYTES]


def with_source(text: str, source: bytes | str | None) -> str:
    """``text`` followed by the input's own descrip (e.g. dcm2niix's ``TE=2.9;Time=...``) when
    the whole of it still fits in 80 bytes; a cut-off acquisition note would mislead, so a
    longer one is left out."""
    if isinstance(source, bytes):
        source = source.split(b"\0", 1)[0].decode("ascii", "replace")
    source = (source or "").strip()
    joined = f"{text}; {source}"
    return joined if source and len(_ascii(joined)) <= DESCRIP_BYTES else text


def mgh_cmdline_tag(text: str) -> bytes:
    """One FreeSurfer TAG_CMDLINE record: big-endian int32 tag, int64 length, the text + NUL."""
    body = _ascii(text).encode("ascii") + b"\0"
    return struct.pack(">iq", MGH_TAG_CMDLINE, len(body)) + body


def _ascii(text: str) -> str:
    return text.encode("ascii", "replace").decode("ascii")
