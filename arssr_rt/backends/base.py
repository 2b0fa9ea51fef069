"""The backend protocol (encode a tile, decode a chunk) and the registry that picks one.

A backend module registers a factory with ``@register_backend(name, priority)``; its heavy
imports (torch, tensorrt, cuda) happen inside the factory so importing arssr_rt stays light.
``auto`` tries registered backends by descending priority and takes the first that opens.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol

import numpy as np

from ..errors import BackendError, MissingExtraError

if TYPE_CHECKING:
    from ..bundle import ModelBundle


class Backend(Protocol):
    """What the pipeline needs from an inference engine.

    encode: normalised LR tile float32 (D, H, W) -> features float32 (F, D, H, W).
    decode: sampled features float32 (N, F) + coords float32 (N, 3) -> intensity float32 (N,).
    """

    name: str

    def encode(self, lr: np.ndarray) -> np.ndarray: ...

    def decode(self, features: np.ndarray, coords: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class BackendOptions:
    """Options every factory receives; a backend ignores what does not apply to it."""

    device: int = 0
    threads: int | None = None
    precision: str = "fp32"


Factory = Callable[["ModelBundle", BackendOptions], Backend]


@dataclass(frozen=True)
class BackendEntry:
    name: str
    priority: int
    factory: Factory


_REGISTRY: dict[str, BackendEntry] = {}

# modules that register backends when imported; imported lazily by the registry
BACKEND_MODULES = (
    "arssr_rt.backends.onnxruntime_backend",
    "arssr_rt.backends.torch_backend",
    "arssr_rt.backends.openvino_backend",
    "arssr_rt.backends.tensorrt_backend",
    "arssr_rt.backends.torch_cuda_backend",
)


def register_backend(name: str, priority: int) -> Callable[[Factory], Factory]:
    """Register ``factory`` under ``name``; higher priority wins in ``auto``."""

    def wrap(factory: Factory) -> Factory:
        _REGISTRY[name] = BackendEntry(name, priority, factory)
        return factory

    return wrap


def _load_registry() -> dict[str, BackendEntry]:
    for mod in BACKEND_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:  # the module exists but something it imports at top level is missing
                raise
    return _REGISTRY


def available_backends() -> list[str]:
    """Names of registered backends, best first (registration does not mean usable here)."""
    reg = _load_registry()
    return [e.name for e in sorted(reg.values(), key=lambda e: -e.priority)]


def open_backend(name: str, bundle: "ModelBundle", options: BackendOptions | None = None) -> Backend:
    """Open backend ``name`` (or the best usable one for ``auto``) for ``bundle``."""
    options = options or BackendOptions()
    reg = _load_registry()
    if name != "auto":
        if name not in reg:
            raise BackendError(f"unknown backend {name!r}; choose from auto, {', '.join(available_backends())}")
        return reg[name].factory(bundle, options)
    reasons = []
    for entry in sorted(reg.values(), key=lambda e: -e.priority):
        try:
            return entry.factory(bundle, options)
        except (BackendError, MissingExtraError) as exc:
            reasons.append(f"{entry.name}: {exc}")
    raise BackendError("no backend could be opened: " + "; ".join(reasons))
