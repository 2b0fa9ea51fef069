"""The default runtime backend: the bundle's ONNX graphs on onnxruntime's CPU provider.

Sessions are created once per backend (graph optimisation takes longer than a small tile),
with ORT_ENABLE_ALL and the requested intra-op thread count. No torch anywhere on this path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..errors import BackendError, ModelError
from ..export import contract
from ..extras import require
from .base import BackendOptions, register_backend

if TYPE_CHECKING:
    from ..bundle import ModelBundle

PRECISION_FILES = {
    "fp32": (contract.ENCODER_FP32, contract.DECODER_FP32, np.float32),
    "fp16": (contract.ENCODER_FP16, contract.DECODER_FP16, np.float16),
}


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


class OnnxRuntimeBackend:
    """Encoder and decoder sessions of one bundle; see base.Backend for the array contract."""

    name = "onnxruntime"

    def __init__(self, bundle: "ModelBundle", options: BackendOptions):
        ort = require("onnxruntime")
        if options.precision not in PRECISION_FILES:
            raise BackendError(f"onnxruntime backend supports precision fp32 or fp16, not {options.precision!r}")
        enc_name, dec_name, self._io_dtype = PRECISION_FILES[options.precision]
        self.feature_dim = bundle.feature_dim
        self._encoder = _create_session(ort, bundle.file(enc_name), options, [contract.ENCODER_INPUT], [contract.ENCODER_OUTPUT])
        self._decoder = _create_session(
            ort, bundle.file(dec_name), options, [contract.DECODER_FEATURES, contract.DECODER_COORDS], [contract.DECODER_OUTPUT]
        )

    def encode(self, lr: np.ndarray) -> np.ndarray:
        """(D, H, W) float32 in [0, 1] -> (F, D, H, W) float32."""
        if lr.ndim != 3:
            raise BackendError(f"encode expects a (D, H, W) tile, got shape {lr.shape}")
        x = np.ascontiguousarray(lr, dtype=self._io_dtype)[None, None]
        (features,) = self._encoder.run([contract.ENCODER_OUTPUT], {contract.ENCODER_INPUT: x})
        return np.asarray(features[0], dtype=np.float32)

    def decode(self, features: np.ndarray, coords: np.ndarray) -> np.ndarray:
        """(N, F) sampled features + (N, 3) coords -> (N,) float32 intensities."""
        if features.ndim != 2 or features.shape[1] != self.feature_dim or coords.shape != (features.shape[0], 3):
            raise BackendError(f"decode expects (N, {self.feature_dim}) features and (N, 3) coords, got {features.shape} and {coords.shape}")
        (out,) = self._decoder.run(
            [contract.DECODER_OUTPUT],
            {
                contract.DECODER_FEATURES: np.ascontiguousarray(features, dtype=self._io_dtype),
                contract.DECODER_COORDS: np.ascontiguousarray(coords, dtype=self._io_dtype),
            },
        )
        return np.asarray(out[:, 0], dtype=np.float32)

    def close(self) -> None:
        self._encoder = None
        self._decoder = None

    def __enter__(self) -> "OnnxRuntimeBackend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@register_backend("onnxruntime", priority=10)
def open_onnxruntime(bundle: "ModelBundle", options: BackendOptions) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(bundle, options)
