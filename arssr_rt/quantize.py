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

On onnxruntime the copies are measured against fp32 on this CPU before use, with 7-bit-weight
copies as the fallback (``onnxruntime_int8_graphs``: uint8 x int8 kernels saturate without VNNI).

Needs the ``onnx`` package (the export extra) to build; reading a cached copy does not.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from .atomic import atomic_write, atomic_write_text
from .errors import BackendError, MissingExtraError, ModelError, OutputError
from . import bundle_format as contract
from .extras import require

if TYPE_CHECKING:
    from .bundle import ModelBundle

RECIPE_VERSION = "2"  # bump when a recipe changes, so old cached copies are not reused
CALIBRATION_TILE = 20  # encoder calibration crops (voxels per side): enough context, quick to run
CALIBRATION_SCALES = (2.0, 3.0)  # LR versions of the fixture the encoder is also calibrated on
# int8 decoder output against fp32 on calibration data: 40 dB keeps the int8 error power a
# small fraction of a ~30 dB model's error against the truth
INT8_FIDELITY_DB = 40.0


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


def dynamic_int8_decoder(bundle: "ModelBundle", reduce_range: bool = False) -> Path:
    """Decoder with dynamically quantised MatMuls (onnxruntime's int8 CPU kernels);
    ``reduce_range``: 7-bit weights, which onnxruntime's uint8 x int8 kernels cannot saturate."""
    target = cached_path(bundle, contract.DECODER_FP32, "dynamic-rr" if reduce_range else "dynamic")
    if target.is_file():
        return target
    _require_onnx()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source = bundle.file(contract.DECODER_FP32)

    def build(tmp: Path) -> None:
        quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"],
                         reduce_range=reduce_range)

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


def _quantize_static(source: Path, tmp: Path, feeds: list[dict[str, np.ndarray]], op_types: tuple[str, ...],
                     reduce_range: bool = False) -> None:
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
        reduce_range=reduce_range,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=keep_fp32,
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
    )


def _encoder_feeds(bundle: "ModelBundle") -> list[dict[str, np.ndarray]]:
    crops = _calibration_crops(_calibration_volume())
    if bundle.axis_order == "zyx":
        crops = [np.ascontiguousarray(c.transpose(2, 1, 0)) for c in crops]
    return [{contract.ENCODER_INPUT: c[None, None]} for c in crops]


def static_int8_encoder(bundle: "ModelBundle", reduce_range: bool = False) -> Path:
    """Encoder QDQ graph calibrated on the fixture; built on first use, then read from the cache.
    ``reduce_range``: 7-bit weights (see ``onnxruntime_int8_graphs``)."""
    source = bundle.file(contract.ENCODER_FP32)
    target = cached_path(bundle, contract.ENCODER_FP32, "static-rr" if reduce_range else "static")
    if target.is_file():
        return target
    _require_onnx()
    feeds = _encoder_feeds(bundle)
    return _atomic_build(target, lambda tmp: _quantize_static(source, tmp, feeds, ("Conv",), reduce_range))


def int8_fidelity_db(bundle: "ModelBundle", encoder: Path, decoder: Path, points: int = 4096) -> float:
    """PSNR (dB) of the int8 graphs' decoder output against the fp32 graphs' on this CPU: two
    calibration crops encoded, features at random voxels decoded at random coordinates. Both
    int8 graphs' errors are in it, measured with the kernels this machine really runs."""
    ort = require("onnxruntime")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1

    def session(path: Path):
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])

    enc32, dec32 = session(bundle.file(contract.ENCODER_FP32)), session(bundle.file(contract.DECODER_FP32))
    enc8, dec8 = session(encoder), session(decoder)
    rng = np.random.default_rng(0)
    ref, got = [], []
    for feed in _encoder_feeds(bundle)[:2]:
        f32 = enc32.run(None, feed)[0][0]
        f8 = enc8.run(None, feed)[0][0]
        rows = rng.integers(0, f32[0].size, points)
        coords = rng.uniform(-1.0, 1.0, (points, 3)).astype(np.float32)
        for feats, dec, out in ((f32, dec32, ref), (f8, dec8, got)):
            flat = np.ascontiguousarray(feats.reshape(feats.shape[0], -1)[:, rows].T, dtype=np.float32)
            out.append(dec.run(None, {contract.DECODER_FEATURES: flat, contract.DECODER_COORDS: coords})[0])
    a, b = np.concatenate(ref).astype(np.float64), np.concatenate(got).astype(np.float64)
    mse = float(np.mean((a - b) ** 2))
    # a residual model's decoder returns a small correction to the windowed-sinc base: its error
    # counts against the output's normalised [0, 1] range, not against the correction's own
    residual = str(bundle.spec.get("base", "none")) != "none"
    peak = 1.0 if residual else max(float(a.max() - a.min()), 1e-6)
    return float("inf") if mse == 0 else 10.0 * np.log10(peak ** 2 / mse)


def cpu_kernel_key() -> str:
    """What onnxruntime's int8 accuracy depends on besides the graphs: the instruction set it
    dispatches on (VNNI or not) and its own build. A short hash, for cache file names."""
    ort = require("onnxruntime")
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith(("flags", "Features")):
                flags = " ".join(sorted(line.split(":", 1)[1].split()))
                break
    except OSError:
        pass
    raw = f"{platform.machine()}|{flags or platform.processor()}|{getattr(ort, '__version__', '?')}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


_FIDELITY_MEMO: dict[str, float] = {}
FIDELITY_VERSION = 2  # bump when int8_fidelity_db measures differently (2: residual models against [0, 1])


def measured_fidelity_db(bundle: "ModelBundle", encoder: Path, decoder: Path) -> float:
    """``int8_fidelity_db``, measured once per (graphs, CPU, onnxruntime) and kept beside the
    cached graphs: the measurement costs ~0.3 s, which every int8 open (each batch worker) paid.
    A record that does not parse as a number is measured again; a read-only cache only loses
    the saving."""
    record = encoder.with_name(f"{encoder.stem}__{decoder.stem}__{cpu_kernel_key()}.fidelity-v{FIDELITY_VERSION}.json")
    key = str(record)
    if key in _FIDELITY_MEMO:
        return _FIDELITY_MEMO[key]
    score: float | None = None
    try:
        value = json.loads(record.read_text(encoding="utf-8")).get("psnr_db")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value):
            score = float(value)
    except (OSError, ValueError, AttributeError):
        pass
    if score is None:
        score = int8_fidelity_db(bundle, encoder, decoder)
        try:
            atomic_write_text(record, json.dumps({"psnr_db": score if math.isfinite(score) else 1e9}))
        except OutputError:
            pass
    _FIDELITY_MEMO[key] = score
    return score


def onnxruntime_int8_graphs(bundle: "ModelBundle") -> tuple[Path, Path]:
    """(encoder, decoder) int8 copies onnxruntime runs faithfully on this CPU.

    Without VNNI, onnxruntime's uint8 x int8 kernels (VPMADDUBSW) can saturate their int16 sums.
    Measured on an AVX2 EPYC: a random-weight test model fell to 25.2 dB against fp32 with 8-bit
    weights and reached 44.3 dB with 7-bit ones; the default model gave 55.5 / 48.5 dB. So the 8-bit
    copies are used where they measure faithful (``INT8_FIDELITY_DB``), the 7-bit ones otherwise,
    and a model that neither serves is refused rather than run inaccurately.
    """
    score = 0.0
    for reduce_range in (False, True):
        encoder, decoder = static_int8_encoder(bundle, reduce_range), dynamic_int8_decoder(bundle, reduce_range)
        score = measured_fidelity_db(bundle, encoder, decoder)
        if score >= INT8_FIDELITY_DB:
            return encoder, decoder
    raise BackendError(f"int8 mode is not accurate for this model on this CPU ({score:.1f} dB against fp32, "
                       f"{INT8_FIDELITY_DB:g} needed; onnxruntime's int8 kernels saturate here); use the exact mode")
