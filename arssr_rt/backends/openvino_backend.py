"""CPU backend on OpenVINO: the bundle's ONNX graphs, compiled once per backend.

Measured on the development CPU (AVX-512), OpenVINO runs the encoder's Conv3d about as fast
as torch or faster and 1.5-2x faster than onnxruntime, so ``auto`` prefers it when the
``openvino`` extra is installed. Precisions:

- ``fp32`` (exact): inference precision pinned to f32 (OpenVINO would otherwise pick bf16 on
  CPUs that have it), equal to the torch reference to ~1e-6.
- ``bf16``: OpenVINO's bf16 inference hint (cheaper on CPUs with native bf16 units).
- ``int8``: int8 convolutions (a QDQ copy of the encoder, built once from the bundle's ONNX
  into the user cache, see ``arssr_rt.quantize``; the bundle is never modified) and the
  decoder in bf16 (an int8 MLP measured no faster than bf16 here and loses more accuracy).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BackendError, ModelError
from .. import bundle_format as contract
from ..extras import require
from .base import BackendOptions, BackendRunner, register_backend

if TYPE_CHECKING:
    from ..bundle import ModelBundle

PRECISIONS = ("fp32", "bf16", "int8")
# decoder rows per inference call (the declared max_decode_points): activations of a few
# thousand points stay in L2 cache
DECODE_BATCH = 4096


def compile_cache_dir() -> Path | None:
    """OpenVINO's compiled-model cache (``CACHE_DIR``) in the arssr-rt user cache, or None.

    OpenVINO keys its entries on the graph, device and config itself, so a later process skips
    most of the compile (an end-to-end ``arssr-rt upsample`` pays it once). An unwritable cache
    only costs that time, never a run.
    """
    from ..quantize import cache_dir

    try:
        path = cache_dir().parent / "openvino"
        path.mkdir(exist_ok=True)
    except (BackendError, OSError):
        return None
    return path


def _compile(core: Any, path: Any, options: BackendOptions, hint: str) -> Any:
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_PRECISION_HINT": hint}
    if options.threads:
        config["INFERENCE_NUM_THREADS"] = int(options.threads)
    try:
        return core.compile_model(str(path), "CPU", config)
    except Exception as exc:  # OpenVINO raises its own untyped errors for a bad graph
        raise ModelError(f"OpenVINO cannot compile {path}: {str(exc).strip().splitlines()[0]}") from exc


def _check_names(compiled: Any, path: Any, inputs: list[str], outputs: list[str]) -> None:
    got_in = [p.get_any_name() for p in compiled.inputs]
    got_out = [p.get_any_name() for p in compiled.outputs]
    if got_in != inputs or got_out != outputs:
        raise ModelError(f"{path} breaks the ONNX contract: inputs {got_in} outputs {got_out}, expected {inputs} -> {outputs}")


class OpenVinoBackend(BackendRunner):
    """Compiled encoder and decoder of one bundle; see base.BackendRunner for the array contract."""

    name = "openvino"
    max_decode_points = DECODE_BATCH
    precisions = PRECISIONS

    def __init__(self, bundle: "ModelBundle", options: BackendOptions):
        ov = require("openvino")
        self.check_precision(options.precision)
        encoder_path, decoder_path = bundle.file(contract.ENCODER_FP32), bundle.file(contract.DECODER_FP32)
        hint = "f32" if options.precision == "fp32" else "bf16"
        if options.precision == "int8":
            from ..quantize import static_int8_encoder

            encoder_path = static_int8_encoder(bundle)
        core = ov.Core()
        cache = compile_cache_dir()
        if cache is not None:
            core.set_property({"CACHE_DIR": str(cache)})
        self.feature_dim = bundle.feature_dim
        self.precision = options.precision
        encoder = _compile(core, encoder_path, options, hint)
        decoder = _compile(core, decoder_path, options, hint)
        _check_names(encoder, encoder_path, [contract.ENCODER_INPUT], [contract.ENCODER_OUTPUT])
        _check_names(decoder, decoder_path, [contract.DECODER_FEATURES, contract.DECODER_COORDS], [contract.DECODER_OUTPUT])
        self._encoder = encoder.create_infer_request()
        self._decoder = decoder.create_infer_request()

    def _encode_impl(self, lr: np.ndarray) -> np.ndarray:
        out = self._encoder.infer({contract.ENCODER_INPUT: lr[None, None]}, share_inputs=True)
        return np.asarray(out[0][0], dtype=np.float32)

    def _decode_impl(self, features: np.ndarray, coords: np.ndarray) -> np.ndarray:
        feeds = {contract.DECODER_FEATURES: np.ascontiguousarray(features, dtype=np.float32),
                 contract.DECODER_COORDS: np.ascontiguousarray(coords, dtype=np.float32)}
        return self._decoder.infer(feeds, share_inputs=True, share_outputs=True)[0][:, 0]  # a view: decode copies it

    def close(self) -> None:
        self._encoder = None
        self._decoder = None


@register_backend("openvino", priority=15)
def open_openvino(bundle: "ModelBundle", options: BackendOptions) -> OpenVinoBackend:
    return OpenVinoBackend(bundle, options)
