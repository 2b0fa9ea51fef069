"""The engine cache: serialised TensorRT engines keyed so a wrong one is never deserialised.

An engine is valid only for the exact ONNX graph, TensorRT version, GPU model and compute
capability, precision and shape profiles it was built with; deserialising any other one
fails at best and crashes at worst. So every engine file ``<role>-<digest>.engine`` has a
JSON sidecar ``<role>-<digest>.json`` holding its full key plus the engine file's own sha256,
and ``EngineCache.load`` compares all of it *before* returning the bytes. A missing,
truncated, edited or mismatching file is reported, never handed to TensorRT.

The default folder is ``~/.cache/arssr-rt/engines`` (``ARSSR_RT_ENGINE_CACHE`` overrides).
The TensorRT timing cache lives next to the engines, one file per TensorRT version and GPU
(it is valid for one exact TensorRT version only).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..atomic import atomic_write_bytes
from ..errors import BackendError, OutputError

CACHE_ENV = "ARSSR_RT_ENGINE_CACHE"
SIDECAR_SCHEMA = 1
# profile of one input tensor: (min, opt, max) shapes
Profile = dict[str, list[list[int]]]


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "arssr-rt" / "engines"))


def _canonical_profiles(profiles: dict[str, Any]) -> Profile:
    return {name: [[int(d) for d in shape] for shape in shapes] for name, shapes in sorted(profiles.items())}


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine's validity depends on."""

    role: str  # "encoder" | "decoder"
    onnx_sha256: str
    trt_version: str
    gpu_name: str
    gpu_sm: str
    precision: str
    profiles: Profile = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["profiles"] = _canonical_profiles(self.profiles)
        return d

    @property
    def digest(self) -> str:
        """Short stable hash of the whole key: the file name stem."""
        blob = json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:20]

    @property
    def stem(self) -> str:
        return f"{self.role}-{self.digest}"

    def same_target(self, other: "EngineKey") -> bool:
        """Same graph, TensorRT, GPU and precision; the profiles may differ."""
        a, b = self.as_dict(), other.as_dict()
        a.pop("profiles"), b.pop("profiles")
        return a == b

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EngineKey":
        return cls(
            role=str(d["role"]),
            onnx_sha256=str(d["onnx_sha256"]),
            trt_version=str(d["trt_version"]),
            gpu_name=str(d["gpu_name"]),
            gpu_sm=str(d["gpu_sm"]),
            precision=str(d["precision"]),
            profiles=_canonical_profiles(d.get("profiles", {})),
        )


def key_mismatch(expected: EngineKey, found: EngineKey) -> str:
    """Empty when equal, else 'field: found != expected' for each differing field."""
    a, b = expected.as_dict(), found.as_dict()
    return "; ".join(f"{k}: {b[k]!r} != {a[k]!r}" for k in a if a[k] != b.get(k))


@dataclass(frozen=True)
class CachedEngine:
    """A sidecar read from disk (the engine bytes are read only by ``EngineCache.load``)."""

    key: EngineKey
    engine_path: Path
    sidecar_path: Path
    meta: dict[str, Any]


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    atomic_write_bytes(path, data)  # the project's one atomic writer (temp sibling, fsync, rename)


class EngineCache:
    """A folder of ``<role>-<digest>.engine`` + ``.json`` pairs and the timing caches."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()

    def _ensure_root(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create the engine cache folder {self.root}: {exc.strerror}") from None

    def paths(self, key: EngineKey) -> tuple[Path, Path]:
        return self.root / f"{key.stem}.engine", self.root / f"{key.stem}.json"

    def store(self, key: EngineKey, engine: bytes, extra: dict[str, Any] | None = None) -> CachedEngine:
        """Write the engine, then its sidecar (a sidecar never points at a partial engine)."""
        self._ensure_root()
        engine_path, sidecar_path = self.paths(key)
        meta = {
            "schema": SIDECAR_SCHEMA,
            "key": key.as_dict(),
            "engine_file": engine_path.name,
            "engine_sha256": _sha256_bytes(engine),
            "engine_bytes": len(engine),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **(extra or {}),
        }
        _atomic_write(engine_path, engine)
        _atomic_write(sidecar_path, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
        return CachedEngine(key, engine_path, sidecar_path, meta)

    def _read_sidecar(self, sidecar_path: Path) -> CachedEngine | None:
        try:
            meta = json.loads(sidecar_path.read_text())
            key = EngineKey.from_dict(meta["key"])
            engine_path = self.root / str(meta["engine_file"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if meta.get("schema") != SIDECAR_SCHEMA:
            return None
        return CachedEngine(key, engine_path, sidecar_path, meta)

    def entries(self) -> Iterator[CachedEngine]:
        """Every readable sidecar in the cache, newest first."""
        if not self.root.is_dir():
            return iter(())
        found = [e for e in (self._read_sidecar(p) for p in self.root.glob("*.json")) if e is not None]
        return iter(sorted(found, key=lambda e: e.sidecar_path.stat().st_mtime, reverse=True))

    def find(self, key: EngineKey) -> CachedEngine | None:
        """The exact entry for ``key``, or else the newest one with the same target (graph,
        TensorRT, GPU, precision) whose profiles differ; None when there is neither."""
        _, sidecar = self.paths(key)
        exact = self._read_sidecar(sidecar) if sidecar.is_file() else None
        if exact is not None and exact.key == EngineKey.from_dict(key.as_dict()):
            return exact
        for entry in self.entries():
            if entry.key.same_target(key):
                return entry
        return None

    def load(self, entry: CachedEngine, expected: EngineKey, require_profiles: bool = True) -> bytes:
        """The engine bytes after every check passed; BackendError naming the first failure.

        ``expected`` is what this process would build now; with ``require_profiles=False`` the
        profiles may differ (the caller reads them from the sidecar and respects them).
        """
        found = entry.key
        mismatch = key_mismatch(expected, found)
        if not require_profiles and found.same_target(expected):
            mismatch = ""
        if mismatch:
            raise BackendError(f"cached engine {entry.engine_path.name} was built for a different target ({mismatch}); rebuild it with `arssr-rt engines build`")
        try:
            data = entry.engine_path.read_bytes()
        except OSError as exc:
            raise BackendError(f"cannot read cached engine {entry.engine_path}: {exc.strerror}") from None
        if len(data) != entry.meta.get("engine_bytes") or _sha256_bytes(data) != entry.meta.get("engine_sha256"):
            raise BackendError(f"cached engine {entry.engine_path} fails its sha256 check (truncated or modified); rebuild it with `arssr-rt engines build`")
        return data

    def timing_cache_path(self, trt_version: str, gpu_name: str, gpu_sm: str) -> Path:
        """One timing cache per exact TensorRT version and GPU model."""
        tag = hashlib.sha256(f"{trt_version}|{gpu_name}|{gpu_sm}".encode()).hexdigest()[:12]
        return self.root / f"timing-{trt_version}-{gpu_sm}-{tag}.cache"

    def read_timing_cache(self, path: Path) -> bytes:
        try:
            return path.read_bytes()
        except OSError:
            return b""

    def write_timing_cache(self, path: Path, data: bytes) -> None:
        self._ensure_root()
        _atomic_write(path, data)
