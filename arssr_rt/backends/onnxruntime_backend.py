"""The default runtime backend: the bundle's ONNX graphs on onnxruntime's CPU provider.

Sessions are created once per backend (graph optimisation takes longer than a small tile),
with ORT_ENABLE_ALL and the requested intra-op thread count. No torch anywhere on this path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..errors import ModelError
from .. import bundle_format as contract
from ..extras import require
from .base import BackendOptions, BackendRunner, register_backend

if TYPE_CHECKING:
    from ..bundle import ModelBundle

PRECISION_FILES = {
    "fp32": (contract.ENCODER_FP32, contract.DECODER_FP32, np.float32),
    "fp16": (contract.ENCODER_FP16, contract.DECODER_FP16, np.float16),
}
PRECISIONS = (*PRECISION_FILES, "int8")
# decoder rows per session call (the declared max_decode_points): a few thousand points keep
# the MLP's activations in cache (measured 2-3x more points/s than 65,536-point calls on an
# AVX-512 CPU)
DECODE_BATCH = 2048


def _model_paths(bundle: "ModelBundle", precision: str):
    """(encoder, decoder, io dtype) for a precision; int8 copies come from the user cache."""
    if precision == "int8":
        from ..quantize import onnxruntime_int8_graphs

        return (*onnxruntime_int8_graphs(bundle), np.float32)
    enc_name, dec_name, io_dtype = PRECISION_FILES[precision]
    return bundle.file(enc_name), bundle.file(dec_name), io_dtype


def _create_session(ort, path, options: BackendOptions, expected_inputs: list[str], expected_outputs: list[str]):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    if options.threads:
        opts.intra_op_num_threads = int(options.threads)
    opts.log_severity_level = 3  # warnings about unused initialisers are noise to a user
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors for a bad graph
        raise ModelError(f"onnxruntime cannot load {path}: {str(exc).strip().splitlines()[0]}") from exc
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    if inputs != expected_inputs or outputs != expected_outputs:
        raise ModelError(f"{path} breaks the ONNX contract: inputs {inputs} outputs {outputs}, expected {expected_inputs} -> {expected_outputs}")
    return session


class OnnxRuntimeBackend(BackendRunner):
    """Encoder and decoder sessions of one bundle; see base.BackendRunner for the array contract."""

    name = "onnxruntime"
    max_decode_points = DECODE_BATCH
    precisions = PRECISIONS

    def __init__(self, bundle: "ModelBundle", options: BackendOptions):
        ort = require("onnxruntime")
        self.check_precision(options.precision)
        encoder_path, decoder_path, self._io_dtype = _model_paths(bundle, options.precision)
        self.feature_dim = bundle.feature_dim
        self._encoder = _create_session(ort, encoder_path, options, [contract.ENCODER_INPUT], [contract.ENCODER_OUTPUT])
        self._decoder = _create_session(
            ort, decoder_path, options, [contract.DECODER_FEATURES, contract.DECODER_COORDS], [contract.DECODER_OUTPUT]
        )

    def _encode_impl(self, lr: np.ndarray) -> np.ndarray:
        x = lr.astype(self._io_dtype, copy=False)[None, None]
        (features,) = self._encoder.run([contract.ENCODER_OUTPUT], {contract.ENCODER_INPUT: x})
        return np.asarray(features[0], dtype=np.float32)

    def _decode_impl(self, features: np.ndarray, coords: np.ndarray) -> np.ndarray:
        feeds = {contract.DECODER_FEATURES: np.ascontiguousarray(features, dtype=self._io_dtype),
                 contract.DECODER_COORDS: np.ascontiguousarray(coords, dtype=self._io_dtype)}
        (values,) = self._decoder.run([contract.DECODER_OUTPUT], feeds)
        return values[:, 0]

    def close(self) -> None:
        self._encoder = None
        self._decoder = None


@register_backend("onnxruntime", priority=10)
def open_onnxruntime(bundle: "ModelBundle", options: BackendOptions) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(bundle, options)
