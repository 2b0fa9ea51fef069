"""The backend runner every inference engine derives from, and the registry that picks one.

A backend is a runner in the Polygraphy way: public ``encode`` / ``decode`` (and, where the
backend declares it, ``decode_box``) validate their arrays once, count calls and seconds, and
call the backend's ``_encode_impl`` / ``_decode_impl`` / ``_decode_box_impl``, which only run
the network. ``decode`` is the one batching loop: it feeds ``_decode_impl`` at most
``max_decode_points`` rows a call (a declared limit: an engine profile, or the batch that keeps
a CPU runtime's activations in cache). Tiling and chunking of a volume belong to the pipeline,
which reads the declared ``max_encode_tile``.

A backend module registers a factory with ``@register_backend(name, priority)``; its heavy
imports (torch, tensorrt, cuda) happen inside the factory so importing arssr_rt stays light.
``auto`` tries registered backends by descending priority and takes the first that opens.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence, Union

import numpy as np

from ..errors import BackendError, MissingExtraError

if TYPE_CHECKING:
    from ..bundle import ModelBundle
    from ..sampling import BoxSpec


@dataclass(frozen=True)
class BackendOptions:
    """Options every factory receives; a backend ignores what does not apply to it.

    ``chunk`` (``--chunk``): output points per sample-and-decode step. On the host path the
    pipeline samples that many points and hands them to ``decode`` (which calls the network
    in pieces of at most the backend's ``max_decode_points``); a backend that decodes boxes
    on its device uses it as its device chunk. None: each path's default.
    """

    device: int = 0
    threads: int | None = None
    precision: str = "fp32"
    chunk: int | None = None


@dataclass
class CallStats:
    """How often one runner method ran, on how many items (voxels or points), for how long."""

    calls: int = 0
    items: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {"calls": self.calls, "items": self.items, "seconds": round(self.seconds, 6)}


class BackendRunner:
    """Base of every backend: validation, batching, timing and the context manager.

    encode: normalised LR tile float32 (D, H, W) -> features float32 (F, r*D, r*H, r*W).
    decode: sampled features float32 (N, F) + coords float32 (N, 3) -> intensity float32 (N,).
    decode_box (only where ``decodes_boxes_on_device``): a feature block (F, d, h, w) and a
    ``BoxSpec`` -> the box's intensities, sampled and decoded on the device.

    Subclasses set ``name`` and ``feature_dim`` (and ``coords_mode`` for decode_box), may
    declare ``max_decode_points`` / ``max_encode_tile``, and implement the ``_impl`` methods.
    """

    name: str = "?"
    feature_dim: int = 0
    coords_mode: str = "global"
    max_decode_points: int | None = None  # most rows one _decode_impl call takes; None: any
    max_encode_tile: tuple[int, int, int] | None = None  # largest encoder input; None: any
    precisions: tuple[str, ...] = ("fp32",)  # what BackendOptions.precision may be

    @classmethod
    def check_precision(cls, precision: str) -> None:
        """BackendError unless ``precision`` is one this backend declares (before loading anything)."""
        if precision not in cls.precisions:
            raise BackendError(f"{cls.name} backend supports precision {', '.join(cls.precisions)}, not {precision!r}")

    @property
    def stats(self) -> dict[str, CallStats]:
        if "_stats" not in self.__dict__:
            self._stats = {"encode": CallStats(), "decode": CallStats(), "decode_box": CallStats()}
        return self._stats

    def timings(self) -> dict[str, dict[str, float]]:
        """Per-method calls, items and seconds so far (methods never called are left out)."""
        return {k: v.as_dict() for k, v in self.stats.items() if v.calls}

    def _record(self, what: str, items: int, t0: float) -> None:
        s = self.stats[what]
        s.calls += 1
        s.items += int(items)
        s.seconds += time.perf_counter() - t0

    # ------------------------------------------------------------ public, validated

    def encode(self, lr: np.ndarray) -> np.ndarray:
        """(D, H, W) float32 in [0, 1] -> (F, rD, rH, rW) float32."""
        if lr.ndim != 3:
            raise BackendError(f"encode expects a (D, H, W) tile, got shape {lr.shape}")
        limit = self.max_encode_tile
        if limit is not None and any(n > m for n, m in zip(lr.shape, limit)):
            raise BackendError(f"{self.name}: a {lr.shape} tile is over the encoder's largest input {tuple(limit)} (its profile); the pipeline tiles below it")
        t0 = time.perf_counter()
        features = self._encode_impl(np.ascontiguousarray(lr, dtype=np.float32))
        self._record("encode", lr.size, t0)
        return features

    def decode(self, features: np.ndarray, coords: np.ndarray) -> np.ndarray:
        """(N, F) sampled features + (N, 3) coords -> (N,) float32 intensities."""
        if features.ndim != 2 or features.shape[1] != self.feature_dim or coords.shape != (features.shape[0], 3):
            raise BackendError(f"decode expects (N, {self.feature_dim}) features and (N, 3) coords, got {features.shape} and {coords.shape}")
        t0 = time.perf_counter()
        n = features.shape[0]
        step = self.max_decode_points or max(1, n)
        out = np.empty(n, dtype=np.float32)  # a copy: runtimes may return views of their own buffers
        for s in range(0, n, step):
            out[s:s + step] = self._decode_impl(features[s:s + step], coords[s:s + step])
        self._record("decode", n, t0)
        return out

    @property
    def decodes_boxes_on_device(self) -> bool:
        """Declared capability: ``decode_box`` samples and decodes a whole box on the device."""
        return False

    def decode_box(self, features: np.ndarray, in_offset: Sequence[int], in_shape: Sequence[int],
                   out_shape: Sequence[int], out_start: Sequence[int], out_stop: Sequence[int]) -> np.ndarray:
        """Sample + decode output box [out_start, out_stop) of ``out_shape`` from a feature block.

        ``features`` (F, d, h, w) has its voxel 0 at ``in_offset`` of the feature grid
        ``in_shape``; it must cover every voxel the box needs (ValueError otherwise). Returns
        float32 of shape ``out_stop - out_start``.
        """
        from ..sampling import BoxSpec

        if not self.decodes_boxes_on_device:
            raise BackendError(f"the {self.name} backend does not decode boxes on a device")
        if features.ndim != 4 or features.shape[0] != self.feature_dim:
            raise BackendError(f"decode_box expects a ({self.feature_dim}, d, h, w) feature block, got {features.shape}")
        spec = BoxSpec.make(features.shape[1:], in_offset, in_shape, out_shape, out_start, out_stop, self.coords_mode)
        t0 = time.perf_counter()
        out = self._decode_box_impl(features, spec)
        self._record("decode_box", spec.points, t0)
        return out

    # ------------------------------------------------------------ what a backend implements

    def _encode_impl(self, lr: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _decode_impl(self, features: np.ndarray, coords: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _decode_box_impl(self, features: np.ndarray, spec: "BoxSpec") -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        """Release sessions, engines and device memory; safe to call twice."""

    def __enter__(self) -> "BackendRunner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


Backend = BackendRunner  # what the pipeline holds

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


BackendSpec = Union[str, BackendRunner, Factory]


def open_backend(name: BackendSpec, bundle: "ModelBundle", options: BackendOptions | None = None) -> Backend:
    """Open backend ``name`` (or the best usable one for ``auto``) for ``bundle``.

    ``name`` may also be an open backend (returned as is) or a factory
    ``(bundle, options) -> backend`` (called), so callers with their own runner (the Triton
    model) need not register it globally.
    """
    options = options or BackendOptions()
    if isinstance(name, BackendRunner):
        return name
    if callable(name):
        backend = name(bundle, options)
        if not isinstance(backend, BackendRunner):
            raise BackendError(f"a backend factory returned {type(backend).__name__}, not a BackendRunner")
        return backend
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
