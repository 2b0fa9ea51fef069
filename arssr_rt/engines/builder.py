"""Build the encoder and decoder TensorRT engines of a bundle, once, into the engine cache.

Precision follows the TensorRT major version, because 11.x removed weak typing:
- TensorRT 10.x, fp16: the fp32 ONNX with ``BuilderFlag.FP16`` (TensorRT picks fp16 kernels).
- TensorRT 11.x, fp16: the bundle's fp16 ONNX (``*.fp16.onnx``, fp16 I/O); networks are
  strongly typed, ``BuilderFlag.FP16`` no longer exists.
- fp32 on either: the fp32 ONNX with TF32 switched off, so "fp32" means fp32.

Shapes: the encoder gets one dynamic profile from a single voxel up to one tile with its halo
(``tile + 2 * (receptive_radius + 1)`` per axis); the decoder one profile over N points up to
``max_points``. Larger inputs are split by the runner, so the profiles bound memory, not use.

The caller must have passed ``gpu_probe.require_gpu`` before anything here runs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ..bundle import sha256_file
from ..errors import BackendError, InputError, ModelError
from .. import bundle_format as contract
from .cache import CachedEngine, EngineCache, EngineKey, Profile

if TYPE_CHECKING:
    from ..bundle import ModelBundle
    from .gpu_probe import GpuInfo

log = logging.getLogger(__name__)

ROLES = ("encoder", "decoder")
PRECISIONS = ("fp32", "fp16")
DEFAULT_TILE = 96  # encoder core edge in LR voxels
DEFAULT_MAX_POINTS = 262144  # decoder engine profile max rows: the GPU backends' default device chunk
DEFAULT_WORKSPACE = 4 << 30


@dataclass(frozen=True)
class BuildSettings:
    """What ``arssr-rt engines build`` asks for; defaults match the backend's own build."""

    precision: str = "fp32"
    max_points: int = DEFAULT_MAX_POINTS
    tile: int = DEFAULT_TILE
    workspace: int = DEFAULT_WORKSPACE

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise InputError(f"--precision must be fp16 or fp32, got {self.precision!r}")
        if self.max_points < 256:  # decode chunks start at multiples of 256 points (256-byte aligned)
            raise InputError(f"--max-points must be >= 256, got {self.max_points}")
        if self.tile < 1:
            raise InputError(f"--tile must be >= 1, got {self.tile}")


def trt_major(trt: ModuleType) -> int:
    """Major version of the imported tensorrt module (``10.13.0.35`` -> 10)."""
    try:
        return int(str(trt.__version__).split(".")[0])
    except (AttributeError, ValueError):
        raise BackendError(f"cannot read the TensorRT version from {getattr(trt, '__version__', None)!r}") from None


def onnx_file_for(role: str, precision: str, major: int) -> str:
    """The bundle file a build reads: fp16 ONNX only for fp16 on strongly typed TensorRT 11+."""
    fp16_graph = precision == "fp16" and major >= 11
    if role == "encoder":
        return contract.ENCODER_FP16 if fp16_graph else contract.ENCODER_FP32
    return contract.DECODER_FP16 if fp16_graph else contract.DECODER_FP32


def encoder_edge(bundle: "ModelBundle", tile: int) -> int:
    """Largest encoder input edge: the tile core plus a halo of receptive_radius + 1 each side."""
    return tile + 2 * (bundle.receptive_radius + 1)


def profiles_for(role: str, bundle: "ModelBundle", settings: BuildSettings) -> Profile:
    """min/opt/max shapes of every input of ``role``'s graph (contract names)."""
    if role == "encoder":
        edge = encoder_edge(bundle, settings.tile)
        big = [1, 1, edge, edge, edge]
        return {contract.ENCODER_INPUT: [[1, 1, 1, 1, 1], big, big]}
    n, f = settings.max_points, bundle.feature_dim
    return {
        contract.DECODER_FEATURES: [[1, f], [n, f], [n, f]],
        contract.DECODER_COORDS: [[1, 3], [n, 3], [n, 3]],
    }


def engine_key(trt: ModuleType, bundle: "ModelBundle", role: str, settings: BuildSettings, gpu: "GpuInfo") -> EngineKey:
    path = bundle.file(onnx_file_for(role, settings.precision, trt_major(trt)))
    # the bundle's model.json already holds this digest, verified at load; hashing the file
    # again costs little and keeps the key honest for bundles loaded with verify=False
    return EngineKey(
        role=role,
        onnx_sha256=sha256_file(path),
        trt_version=str(trt.__version__),
        gpu_name=gpu.name,
        gpu_sm=gpu.sm,
        precision=settings.precision,
        profiles=profiles_for(role, bundle, settings),
    )


def _parse_onnx(trt: ModuleType, builder: Any, logger: Any, onnx_path: Path) -> tuple[Any, Any]:
    network = builder.create_network(0)  # explicit batch is the only mode since 10.0
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ModelError(f"TensorRT cannot parse {onnx_path}: {errors[0] if errors else 'unknown parser error'}")
    return network, parser


def _timing_cache(config: Any, data: bytes) -> Any:
    """A timing cache from ``data``, or an empty one when the bytes are unusable."""
    try:
        cache = config.create_timing_cache(data)
        if cache is not None:
            return cache
    except Exception:  # a stale or corrupt cache file must not stop a build
        pass
    log.warning("ignoring an unusable TensorRT timing cache; starting an empty one")
    return config.create_timing_cache(b"")


def build_serialized(
    trt: ModuleType, onnx_path: Path, profiles: Profile, precision: str, timing_cache: bytes, workspace: int = DEFAULT_WORKSPACE
) -> tuple[bytes, bytes]:
    """Parse ``onnx_path`` and build one engine; returns (engine bytes, updated timing cache)."""
    major = trt_major(trt)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = _parse_onnx(trt, builder, logger, onnx_path)  # the parser must outlive the build
    inputs = sorted(network.get_input(i).name for i in range(network.num_inputs))
    if inputs != sorted(profiles):
        raise ModelError(f"{onnx_path} has inputs {inputs}, the ONNX contract expects {sorted(profiles)}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace))
    if precision == "fp16" and major < 11:
        config.set_flag(trt.BuilderFlag.FP16)  # weak typing: removed in TensorRT 11
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # on by default; TF32 rounds inputs to 10 bits
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profiles.items():
        profile.set_shape(name, tuple(lo), tuple(opt), tuple(hi))
    config.add_optimization_profile(profile)
    cache = _timing_cache(config, timing_cache)
    config.set_timing_cache(cache, False)  # ignore_mismatch=False: never reuse another version's timings

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(f"TensorRT failed to build an engine from {onnx_path.name} (see the TensorRT log above)")
    new_cache = config.get_timing_cache().serialize()
    return bytes(memoryview(serialized)), bytes(memoryview(new_cache))


def ensure_engine(
    trt: ModuleType,
    bundle: "ModelBundle",
    role: str,
    settings: BuildSettings,
    gpu: "GpuInfo",
    cache: EngineCache,
    rebuild: bool = False,
    exact: bool = False,
) -> tuple[CachedEngine, bool]:
    """The cached engine for ``role`` (built now when missing); returns (entry, built_now).

    ``exact`` demands the requested profiles (``engines build``); otherwise any cached engine
    for the same graph, TensorRT, GPU and precision is reused with its own profiles.
    """
    key = engine_key(trt, bundle, role, settings, gpu)
    if not rebuild:
        entry = cache.find(key)
        if entry is not None and (entry.key == key or not exact):
            return entry, False
    onnx_name = onnx_file_for(role, settings.precision, trt_major(trt))
    log.warning("building the TensorRT %s engine of %s (%s, %s); this runs once per GPU and TensorRT version", role, bundle.name, settings.precision, gpu.name)
    timing_path = cache.timing_cache_path(key.trt_version, gpu.name, gpu.sm)
    started = time.perf_counter()
    engine, timing = build_serialized(trt, bundle.file(onnx_name), key.profiles, settings.precision, cache.read_timing_cache(timing_path), settings.workspace)
    seconds = time.perf_counter() - started
    cache.write_timing_cache(timing_path, timing)
    extra = {
        "model": bundle.name,
        "bundle": str(bundle.path),
        "onnx_file": onnx_name,
        "tile": settings.tile if role == "encoder" else None,
        "max_points": settings.max_points if role == "decoder" else None,
        "build_seconds": round(seconds, 2),
    }
    return cache.store(key, engine, extra), True


def ensure_engines(
    trt: ModuleType, bundle: "ModelBundle", settings: BuildSettings, gpu: "GpuInfo", cache: EngineCache, rebuild: bool = False, exact: bool = False
) -> dict[str, tuple[CachedEngine, bool]]:
    """Encoder and decoder engines for ``bundle``: role -> (cache entry, built now)."""
    for name in (onnx_file_for(r, settings.precision, trt_major(trt)) for r in ROLES):
        if not bundle.has(name):
            hint = " (TensorRT 11 builds fp16 engines from the fp16 ONNX; re-export the bundle)" if ".fp16." in name else ""
            raise ModelError(f"model bundle {bundle.path} has no {name}{hint}")
    return {role: ensure_engine(trt, bundle, role, settings, gpu, cache, rebuild, exact) for role in ROLES}


def load_engines(trt: ModuleType, bundle: "ModelBundle", settings: BuildSettings, gpu: "GpuInfo", cache: EngineCache) -> dict[str, bytes]:
    """Engine bytes for both roles, built when missing, each checked against its key first."""
    entries = ensure_engines(trt, bundle, settings, gpu, cache)
    return {role: cache.load(entry, engine_key(trt, bundle, role, settings, gpu), require_profiles=False) for role, (entry, _) in entries.items()}
