"""Model bundles: a directory with model.json, encoder.onnx, decoder.onnx and torch weights.

One bundle carries a model from training to every backend. ``model.json`` says what the model
is (architecture spec, feature dim, receptive radius, the axis order the weights expect,
intensity normalisation, training summary) and lists a sha256 for every file; loading
verifies the schema version, the fields the runtime uses (``bundle_format.validate_meta``)
and every checksum before anything runs. Every ``files`` entry must be a file inside the
bundle folder (no ``../``, absolute paths or symlinks out): model.json is untrusted input.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .atomic import atomic_write_text
from .bundle_format import MODEL_JSON, SCHEMA_VERSION, WEIGHTS, validate_meta
from .errors import ModelError
from .linked_files import resolve_linked

__all__ = ["MODEL_JSON", "SCHEMA_VERSION", "WEIGHTS", "ModelBundle", "load_bundle", "resolve_model", "write_model_json"]

DEFAULT_MODEL_NAME = "default"
USER_MODELS_ENV = "ARSSR_RT_MODELS"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class ModelBundle:
    """A verified model bundle on disk."""

    path: Path
    meta: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.meta.get("name", self.path.name))

    @property
    def version(self) -> str:
        """The bundle's own version (model.json ``version``; bundles before it: ``"1"``)."""
        return str(self.meta.get("version", "1"))

    @property
    def label(self) -> str:
        """``<name> version <version>``: how outputs' provenance names the model."""
        return f"{self.name} version {self.version}"

    @property
    def spec(self) -> dict[str, Any]:
        return dict(self.meta["spec"])

    @property
    def feature_dim(self) -> int:
        return int(self.meta["spec"]["feature_dim"])

    @property
    def receptive_radius(self) -> int:
        return int(self.meta["receptive_radius"])

    @property
    def axis_order(self) -> str:
        """'xyz': weights expect nibabel (i,j,k) arrays; 'zyx': SimpleITK order (published)."""
        return str(self.meta.get("axis_order", "xyz"))

    @property
    def coords_mode(self) -> str:
        """Decoder coordinates: 'global' (published ArSSR) or 'phase' (sub-voxel cell phase)."""
        return str(self.meta["spec"].get("coords", "global"))

    @property
    def feature_scale(self) -> int:
        """How many times finer than the input tile the encoder's feature map is (1: published)."""
        return int(self.meta["spec"].get("feature_scale", 1))  # validated by load_bundle

    @property
    def normalization(self) -> dict[str, Any]:
        return dict(self.meta.get("normalization", {"mode": "minmax"}))

    def file(self, name: str) -> Path:
        """Path of a bundle file (inside the bundle folder); ModelError if it is not listed."""
        if name not in self.meta.get("files", {}):
            raise ModelError(f"model bundle {self.path} has no {name}")
        return bundle_file(self.path, name)

    def has(self, name: str) -> bool:
        return name in self.meta.get("files", {})


def bundle_file(folder: Path, name: str) -> Path:
    """``folder/name`` resolved, refused unless it is a regular file inside ``folder``."""
    return resolve_linked(folder / MODEL_JSON, name, what="model bundle file", error=ModelError)


def load_bundle(path: str | Path, verify: bool = True) -> ModelBundle:
    """Read and verify a bundle directory; one-line ModelError naming the bad file."""
    path = Path(path)
    meta_path = path / MODEL_JSON
    if not path.is_dir():
        raise ModelError(f"model bundle {path} is not a directory")
    if not meta_path.is_file():
        raise ModelError(f"model bundle {path} has no {MODEL_JSON}")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{meta_path} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("schema_version") != SCHEMA_VERSION:
        raise ModelError(f"{meta_path} has schema_version {meta.get('schema_version') if isinstance(meta, dict) else None!r}, expected {SCHEMA_VERSION}")
    for key in ("spec", "receptive_radius", "files"):
        if key not in meta:
            raise ModelError(f"{meta_path} lacks the required key {key!r}")
    validate_meta(meta, str(meta_path))
    for name, digest in meta["files"].items():
        f = bundle_file(path, name)  # inside the bundle and present, even with verify=False
        if verify and sha256_file(f) != digest:
            raise ModelError(f"model bundle file {f} fails its sha256 check (corrupt or modified)")
    return ModelBundle(path=path, meta=meta)


def write_model_json(path: Path, meta: dict[str, Any]) -> None:
    """Fill in checksums of every listed file and write model.json atomically."""
    meta = dict(meta)
    meta["schema_version"] = SCHEMA_VERSION
    meta["files"] = {name: sha256_file(path / name) for name in sorted(meta.get("files", {}))}
    atomic_write_text(path / MODEL_JSON, json.dumps(meta, indent=2, sort_keys=True) + "\n")


def embedded_models_dir() -> Path:
    return Path(str(resources.files("arssr_rt") / "models"))


def user_models_dir() -> Path:
    return Path(os.environ.get(USER_MODELS_ENV, Path.home() / ".local" / "share" / "arssr-rt" / "models"))


def resolve_model(model: str | Path | None) -> ModelBundle:
    """A bundle from a directory path, or a name in the embedded or user models dirs."""
    if model is None:
        model = DEFAULT_MODEL_NAME
    candidate = Path(model)
    if candidate.is_dir():
        return load_bundle(candidate)
    for root in (embedded_models_dir(), user_models_dir()):
        if (root / str(model)).is_dir():
            return load_bundle(root / str(model))
    raise ModelError(f"no model named {model!r} (not a directory, not in {embedded_models_dir()} or {user_models_dir()})")
