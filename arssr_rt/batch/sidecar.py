"""The output sidecar: a JSON record, written last, that says an output is complete and what
made it (input sha256, model sha256, options). A rerun skips an output only when its sidecar
matches the current input, model and options and the output is still there at its recorded
size, so a killed run resumes and a changed input or model is redone.

A BIDS derivative's sidecar is a BIDS sidecar (Description, Sources, Resolution, ...) with
that record under one key, ``ArssrRTBatch``; ``read_sidecar`` reads either layout.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text

SIDECAR_SCHEMA = 1
TOOL_KEY = "ArssrRTBatch"  # the record's key inside a BIDS sidecar (bids.TOOL_KEY)
_OUTPUT_SUFFIXES = (".nii.gz", ".nii", ".mgz", ".mgh", ".nrrd")


def sidecar_path(output: Path) -> Path:
    """``t1_x2.nii.gz`` -> ``t1_x2.json``; a DICOM output folder ``t1_x2`` -> ``t1_x2.json``."""
    name = output.name
    for suffix in _OUTPUT_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return output.with_name(name + ".json")


def _hash_file(path: Path, digest: "hashlib._Hash") -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)


def input_sha256(path: Path) -> str:
    """sha256 of a file, or of a folder's regular files (names and contents, sorted by name)."""
    digest = hashlib.sha256()
    if path.is_dir():
        for child in sorted(p for p in path.iterdir() if p.is_file()):
            digest.update(child.name.encode() + b"\0")
            _hash_file(child, digest)
    else:
        _hash_file(path, digest)
    return digest.hexdigest()


def model_sha256(bundle_path: Path) -> str:
    """sha256 of the bundle's model.json, which itself lists a sha256 of every model file."""
    digest = hashlib.sha256()
    _hash_file(Path(bundle_path) / "model.json", digest)
    return digest.hexdigest()


def output_size(output: Path) -> int:
    """Bytes of the output file, or of all files in a DICOM output folder."""
    if output.is_dir():
        return sum(p.stat().st_size for p in output.iterdir() if p.is_file())
    return output.stat().st_size


def write_sidecar(path: Path, record: dict[str, Any], bids: dict[str, Any] | None = None) -> None:
    """Atomically write ``record`` (plus schema and time) as the sidecar at ``path``; with
    ``bids`` fields, a BIDS sidecar holding the record under ``TOOL_KEY``."""
    record = {"schema": SIDECAR_SCHEMA, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **record}
    document = record if bids is None else {**bids, TOOL_KEY: record}
    atomic_write_text(path, json.dumps(document, indent=2, sort_keys=bids is None) + "\n")


def claim_path(output: Path) -> Path:
    """``.t1_x2.json.claim``: hidden, and not a sidecar (the sidecar still means "complete")."""
    return output.with_name(f".{sidecar_path(output).name}.claim")


def write_claim(output: Path, source: Path, input_digest: str) -> None:
    """Before the output is written: claim it for this input, so a run killed between the
    output and its sidecar may redo it without --force (``owned_by``); removed with the sidecar."""
    write_sidecar(claim_path(output), {"output": output.name, "input": str(source),
                                       "input_path": os.path.realpath(source), "input_sha256": input_digest})


def _names_input(record: dict[str, Any] | None, output: Path, source: Path, input_digest: str) -> bool:
    if record is None or record.get("output") != output.name:
        return False
    recorded = record.get("input_path") or os.path.realpath(str(record.get("input", "")))  # older sidecars: "input" only
    return recorded == os.path.realpath(source) or record.get("input_sha256") == input_digest


def owned_by(output: Path, source: Path, input_digest: str) -> bool:
    """Whether ``output`` was made (or is claimed) by arssr-rt batch from this input: its
    sidecar or claim names it and the input (same resolved path or same content). Only such
    an output is replaced without --force."""
    return any(_names_input(read_sidecar(p), output, source, input_digest) for p in (sidecar_path(output), claim_path(output)))


def read_sidecar(path: Path) -> dict[str, Any] | None:
    """The sidecar's record, or None when it is missing or unreadable (then: not up to date)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if isinstance(record, dict) and isinstance(record.get(TOOL_KEY), dict):
        record = record[TOOL_KEY]
    return record if isinstance(record, dict) and record.get("schema") == SIDECAR_SCHEMA else None


def stale_reason(output: Path, input_digest: str, model_digest: str, options: dict[str, Any]) -> str | None:
    """None when ``output`` is complete and up to date; else why it must be (re)made."""
    record = read_sidecar(sidecar_path(output))
    if record is None:
        return "no output yet" if not output.exists() else "output has no valid sidecar (interrupted run?)"
    if record.get("input_sha256") != input_digest:
        return "input changed"
    if record.get("model_sha256") != model_digest:
        return "model changed"
    if record.get("options") != options:
        return "options changed"
    try:
        if output_size(output) != record.get("output_bytes"):
            return "output differs from its sidecar"
    except OSError:
        return "output missing"
    qc = record.get("qc")
    if options.get("qc") and (not qc or not (output.parent / qc).is_file()):
        return "QC picture missing"
    return None
