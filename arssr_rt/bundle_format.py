"""The model bundle format: file names, the fixed ONNX I/O contract, and model.json checks.

Torch-free on purpose: the runtime backends read these names, the exporter (``export/``)
writes them, and C++ products rely on them (see docs/onnx-contract.md), so they live here,
next to ``bundle.py``, and the runtime imports nothing from the torch side.

A bundle is untrusted input like a volume: ``validate_meta`` refuses, with one line, a spec
with unknown keys or values no model was built with (a receptive radius of 0 gives silent
tile seams, a negative width a traceback deep in a backend), before anything runs.
"""

from __future__ import annotations

import math
import re
from typing import Any

from .errors import ModelError

SCHEMA_VERSION = 1
MODEL_JSON = "model.json"
WEIGHTS = "weights.pt"

ENCODER_INPUT = "lr"  # float32 [1, 1, D, H, W], min-max normalised to [0, 1]
ENCODER_OUTPUT = "features"  # float32 [1, F, D, H, W]
DECODER_FEATURES = "features"  # float32 [N, F], trilinearly sampled features
DECODER_COORDS = "coords"  # float32 [N, 3], array axis order; meaning per model.json spec.coords (global | phase)
DECODER_OUTPUT = "intensity"  # float32 [N, 1]

OPSET = 20  # 5-D GridSample and the dynamo exporter's default; a floor, not a ceiling

ENCODER_FP32 = "encoder.onnx"
DECODER_FP32 = "decoder.onnx"
ENCODER_FP16 = "encoder.fp16.onnx"
DECODER_FP16 = "decoder.fp16.onnx"
ONNX_FILES = (ENCODER_FP32, DECODER_FP32, ENCODER_FP16, DECODER_FP16)

# what a spec may say; arssr_rt/network builds exactly these (a test keeps the two in step)
ENCODERS = ("rdn", "rescnn", "srresnet")
DECODERS = ("arssr", "modulated")
COORDS = ("global", "phase")
AXIS_ORDERS = ("xyz", "zyx")
NORMALIZATIONS = ("minmax", "percentile")
BASES = ("none", "lanczos3", "lanczos8", "gated-lanczos3-8")  # windowed_sinc.BASES
RUNTIME_BASES = ("none", "lanczos3", "lanczos8")  # windowed_sinc.RUNTIME_BASES: one decoder channel
SPEC_KEYS = ("encoder", "feature_dim", "encoder_args", "decoder_width", "decoder_depth", "coords", "decoder", "feature_scale", "base")
# sane upper bounds: far above any model that fits in memory, far below what overflows
_MAX_WIDTH = 8192
_MAX_DEPTH = 256
_MAX_RADIUS = 4096
_MAX_FEATURE_SCALE = 4
_SHA256 = re.compile(r"[0-9a-f]{64}")


def contract_names() -> dict[str, dict[str, list[str]]]:
    """The contract as stored in model.json under ``onnx``."""
    return {
        "encoder": {"inputs": [ENCODER_INPUT], "outputs": [ENCODER_OUTPUT]},
        "decoder": {"inputs": [DECODER_FEATURES, DECODER_COORDS], "outputs": [DECODER_OUTPUT]},
    }


def _int_in(where: str, value: Any, lo: int, hi: int) -> int:
    """``value`` as an int in [lo, hi]; bools, floats and strings are refused, not coerced."""
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ModelError(f"{where} must be an integer {lo}..{hi}, got {value!r}")
    return value


def _one_of(where: str, value: Any, known: tuple[str, ...]) -> str:
    if value not in known:
        raise ModelError(f"{where} must be one of {', '.join(known)}, got {value!r}")
    return value


def validate_spec(spec: Any, where: str = "spec") -> dict[str, Any]:
    """Check a model spec dict (missing keys take ModelSpec's defaults); returns it."""
    if not isinstance(spec, dict):
        raise ModelError(f"{where} must be an object, got {type(spec).__name__}")
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise ModelError(f"{where} has unknown keys {', '.join(map(repr, unknown))}; known: {', '.join(SPEC_KEYS)}")
    if "encoder" in spec:
        _one_of(f"{where}.encoder", spec["encoder"], ENCODERS)
    for key, hi in (("feature_dim", _MAX_WIDTH), ("decoder_width", _MAX_WIDTH), ("decoder_depth", _MAX_DEPTH)):
        if key in spec:
            _int_in(f"{where}.{key}", spec[key], 1, hi)
    if "feature_scale" in spec:
        _int_in(f"{where}.feature_scale", spec["feature_scale"], 1, _MAX_FEATURE_SCALE)
    if "coords" in spec:
        _one_of(f"{where}.coords", spec["coords"], COORDS)
    if "decoder" in spec:
        _one_of(f"{where}.decoder", spec["decoder"], DECODERS)
    if "base" in spec:
        _one_of(f"{where}.base", spec["base"], BASES)
    args = spec.get("encoder_args", {})
    if not isinstance(args, dict):
        raise ModelError(f"{where}.encoder_args must be an object, got {args!r}")
    for key, value in args.items():  # every encoder argument is a width, a count or a depth
        _int_in(f"{where}.encoder_args.{key}", value, 1, _MAX_WIDTH)
    return spec


def check_runtime_base(base: Any, where: str) -> None:
    """Refuse a spec.base no runtime decodes (the gated base is training-only: its two-channel
    decoder is outside the ONNX contract), before any file is written or volume read."""
    if base not in RUNTIME_BASES:
        raise ModelError(f"{where}: spec.base {base!r} is not one of {', '.join(RUNTIME_BASES)}"
                         + (" (a training-only experiment: its two-channel decoder is not part of the ONNX contract)"
                            if base in BASES else ""))


def validate_meta(meta: dict[str, Any], where: str) -> None:
    """Check the model.json fields the runtime uses; ``where`` names the file in messages.

    Top-level keys beyond these are descriptive (model card, training summary) and allowed.
    """
    validate_spec(meta["spec"], f"{where}: spec")
    check_runtime_base(meta["spec"].get("base", "none"), where)
    _int_in(f"{where}: receptive_radius", meta["receptive_radius"], 1, _MAX_RADIUS)
    _one_of(f"{where}: axis_order", meta.get("axis_order", "xyz"), AXIS_ORDERS)
    norm = meta.get("normalization", {"mode": "minmax"})
    if not isinstance(norm, dict) or set(norm) - {"mode", "low", "high"}:
        raise ModelError(f"{where}: normalization must be an object with 'mode' (and optional 'low'/'high'), got {norm!r}")
    _one_of(f"{where}: normalization.mode", norm.get("mode", "minmax"), NORMALIZATIONS)
    for key in ("low", "high"):
        value = norm.get(key, 0.0)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise ModelError(f"{where}: normalization.{key} must be a finite number, got {value!r}")
    if "name" in meta and not isinstance(meta["name"], str):
        raise ModelError(f"{where}: name must be a string, got {meta['name']!r}")
    files = meta["files"]
    if not isinstance(files, dict) or not all(isinstance(k, str) for k in files):
        raise ModelError(f"{where}: files must map file names to sha256 digests")
    for name, digest in files.items():
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise ModelError(f"{where}: files[{name!r}] must be a sha256 hex digest, got {digest!r}")
