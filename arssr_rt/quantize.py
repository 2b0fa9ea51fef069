"""int8 copies of a bundle's ONNX graphs for the fast CPU mode, built once and cached.

The bundle is never modified: quantised graphs live in the user cache
(``$ARSSR_RT_CACHE`` or ``$XDG_CACHE_HOME/arssr-rt`` or ``~/.cache/arssr-rt``) under a name
keyed by the sha256 of the source graph (from the verified ``model.json``) and the recipe, so
a changed model or recipe never reuses a stale copy. Files are written to a temporary name and
renamed into place, so concurrent runs cannot read half a file.

Two recipes:

- ``dynamic``: onnxruntime dynamic quantisation (int8 weights, per-call int8 activations) of
  the decoder's MatMuls. No calibration; what onnxruntime's CPU kernels run fastest.
- ``static``: a QDQ encoder (per-channel int8 weights, uint8 activations calibrated on the
  shipped Colin27 fixture and its x2 / x3 down-samplings); OpenVINO and onnxruntime fuse QDQ
  into int8 convolutions. The first and last convolutions stay fp32: they hold much of the
  accuracy and little of the cost.

Needs the ``onnx`` package (the export extra) to build; reading a cached copy does not.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from .atomic import atomic_write
from .errors import BackendError, MissingExtraError, ModelError
from . import bundle_format as contract
from .extras import require

if TYPE_CHECKING:
    from .bundle import ModelBundle

RECIPE_VERSION = "2"  # bump when a recipe changes, so old cached copies are not reused
CALIBRATION_TILE = 20  # encoder calibration crops (voxels per side): enough context, quick to run
CALIBRATION_SCALES = (2.0, 3.0)  # LR versions of the fixture the encoder is also calibrated on


def _require_onnx() -> None:
    """The quantiser edits ONNX graphs; say so instead of the generic 'for ONNX export' hint."""
    try:
        require("onnx")
    except MissingExtraError:
        raise MissingExtraError('int8 mode builds quantised copies of the model with the onnx package: pip install "arssr-rt[export]"') from None


def cache_dir() -> Path:
    """Where derived model files go; created on first use."""
    root = os.environ.get("ARSSR_RT_CACHE")
    if root:
        path = Path(root)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        path = Path(base) / "arssr-rt"
    path = path / "quantized"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BackendError(f"cannot create the model cache {path} ({exc.strerror}); set ARSSR_RT_CACHE to a writable folder") from None
    return path


def _source_sha(bundle: "ModelBundle", name: str) -> str:
    sha = bundle.meta.get("files", {}).get(name)
    if not sha:
        raise ModelError(f"model bundle {bundle.path} lists no checksum for {name}")
    return str(sha)


def cached_path(bundle: "ModelBundle", name: str, recipe: str) -> Path:
    """Cache location of ``name`` of ``bundle`` quantised with ``recipe``."""
    stem = name.removesuffix(".onnx")
    return cache_dir() / f"{_source_sha(bundle, name)[:32]}-{stem}-{recipe}-v{RECIPE_VERSION}.onnx"


def _atomic_build(target: Path, build) -> Path:  # type: ignore[no-untyped-def]
    if target.is_file():
        return target
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime.quantization advises "pre-processing" on the root logger
    try:
        atomic_write(target, build, suffix=".onnx")
    finally:
        root.setLevel(level)
    return target


def dynamic_int8_decoder(bundle: "ModelBundle") -> Path:
    """Decoder with dynamically quantised MatMuls (onnxruntime's int8 CPU kernels)."""
    target = cached_path(bundle, contract.DECODER_FP32, "dynamic")
    if target.is_file():
        return target
    _require_onnx()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source = bundle.file(contract.DECODER_FP32)

    def build(tmp: Path) -> None:
        quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])

    return _atomic_build(target, build)


def _calibration_volume() -> np.ndarray:
    """The shipped real T1 fixture, min-max normalised as the pipeline does."""
    import nibabel as nib

    from .intensity import Normalizer

    path = Path(__file__).resolve().parent / "data" / "colin27_t1_crop64_1mm.nii.gz"
    data = np.asarray(nib.load(str(path)).get_fdata(dtype=np.float32))
    return Normalizer(mode="minmax").fit(data).normalize(data).astype(np.float32)


def _calibration_crops(volume: np.ndarray) -> list[np.ndarray]:
    """Crops of the fixture (centre, corners: brain, skull, background) and of its x2 and x3
    cubic down-samplings, each min-max normalised as the pipeline normalises its input.

    The encoder's real inputs are LR volumes, smoother than the 1 mm fixture: calibrating on
    the HR alone lost more PSNR against the exact mode on the held-out volume than with the LR
    crops added (the measurements are in benchmarks/README.md).
    """
    from .degrade import degrade
    from .intensity import Normalizer

    t = CALIBRATION_TILE
    hi = [n - t for n in volume.shape]
    starts = [tuple(h // 2 for h in hi), (0, 0, 0), tuple(hi), (hi[0], 0, hi[2] // 2)]
    crops = [np.ascontiguousarray(volume[a : a + t, b : b + t, c : c + t]) for a, b, c in starts]
    for scale in CALIBRATION_SCALES:
        lr = degrade(volume, [scale] * 3, "cubic")
        lr = Normalizer(mode="minmax").fit(lr).normalize(lr)
        lt = min(t, *lr.shape)  # an x3 copy of a small fixture can be under one tile
        mid = [(n - lt) // 2 for n in lr.shape]
        for a, b, c in (tuple(mid), (0, 0, 0)):
            crops.append(np.ascontiguousarray(lr[a : a + lt, b : b + lt, c : c + lt], dtype=np.float32))
    return crops


def _graph_nodes(path: Path, op_types: tuple[str, ...]) -> list[str]:
    onnx = require("onnx")
    model = onnx.load(str(path))
    return [n.name for n in model.graph.node if n.op_type in op_types]


class _Reader:
    """onnxruntime CalibrationDataReader over a list of feed dicts."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._it: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def _quantize_static(source: Path, tmp: Path, feeds: list[dict[str, np.ndarray]], op_types: tuple[str, ...]) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    nodes = _graph_nodes(source, op_types)
    keep_fp32 = [nodes[0], nodes[-1]] if len(nodes) > 2 else []
    quantize_static(
        str(source),
        str(tmp),
        _Reader(feeds),  # type: ignore[arg-type]
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(op_types),
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=keep_fp32,
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
    )


def static_int8_encoder(bundle: "ModelBundle") -> Path:
    """Encoder QDQ graph calibrated on the fixture; built on first use, then read from the cache."""
    source = bundle.file(contract.ENCODER_FP32)
    target = cached_path(bundle, contract.ENCODER_FP32, "static")
    if target.is_file():
        return target
    _require_onnx()
    crops = _calibration_crops(_calibration_volume())
    if bundle.axis_order == "zyx":
        crops = [np.ascontiguousarray(c.transpose(2, 1, 0)) for c in crops]
    feeds = [{contract.ENCODER_INPUT: c[None, None]} for c in crops]
    return _atomic_build(target, lambda tmp: _quantize_static(source, tmp, feeds, ("Conv",)))
