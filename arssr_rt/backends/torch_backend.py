"""Reference backend: the bundle's weights.pt in the torch model, fp32 on the CPU.

Slower than onnxruntime on most CPUs, but it is the ground truth the ONNX graphs are
checked against, and it needs no ONNX at all. torch is imported only when this opens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..bundle import WEIGHTS
from ..errors import BackendError, ModelError
from ..extras import require
from ..safe_load import load_checkpoint
from .base import BackendOptions, register_backend

if TYPE_CHECKING:
    from ..bundle import ModelBundle


def load_weights(path) -> dict[str, Any]:
    """Read a weights.pt ({"spec", "state_dict"}) safely (tensors and plain types only)."""
    payload = load_checkpoint(path, advice="a bundle's weights.pt holds tensors only: re-export the bundle")
    if not isinstance(payload, dict) or "spec" not in payload or "state_dict" not in payload:
        raise ModelError(f"{path} is not a bundle weights file (expected keys 'spec' and 'state_dict')")
    return payload


def load_bundle_model(bundle: "ModelBundle"):
    """The bundle's torch model with its weights loaded strictly (fp32, CPU, not yet eval)."""
    from ..network import build_model

    payload = load_weights(bundle.file(WEIGHTS))
    model = build_model(payload["spec"])
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{bundle.file(WEIGHTS)} does not match its spec: {str(exc).splitlines()[0]}") from exc
    return model


class TorchBackend:
    """fp32 torch on the CPU under inference_mode; see base.Backend for the array contract."""

    name = "torch"

    def __init__(self, bundle: "ModelBundle", options: BackendOptions):
        self._torch = torch = require("torch")
        if options.precision != "fp32":
            raise BackendError(f"torch backend runs fp32 on the CPU only, not {options.precision!r}")
        model = load_bundle_model(bundle)
        if options.threads:
            torch.set_num_threads(int(options.threads))  # process-wide: torch has no per-model setting
        self.model = model.eval()
        self.feature_dim = bundle.feature_dim

    def encode(self, lr: np.ndarray) -> np.ndarray:
        """(D, H, W) float32 in [0, 1] -> (F, D, H, W) float32."""
        if lr.ndim != 3:
            raise BackendError(f"encode expects a (D, H, W) tile, got shape {lr.shape}")
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(lr, dtype=np.float32))[None, None]
            return self.model.encoder(x)[0].numpy().copy()

    def decode(self, features: np.ndarray, coords: np.ndarray) -> np.ndarray:
        """(N, F) sampled features + (N, 3) coords -> (N,) float32 intensities."""
        if features.ndim != 2 or features.shape[1] != self.feature_dim or coords.shape != (features.shape[0], 3):
            raise BackendError(f"decode expects (N, {self.feature_dim}) features and (N, 3) coords, got {features.shape} and {coords.shape}")
        torch = self._torch
        with torch.inference_mode():
            f = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
            c = torch.from_numpy(np.ascontiguousarray(coords, dtype=np.float32))
            return self.model.decoder(torch.cat([f, c], dim=-1))[:, 0].numpy().copy()

    def close(self) -> None:
        self.model = None

    def __enter__(self) -> "TorchBackend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@register_backend("torch", priority=5)
def open_torch(bundle: "ModelBundle", options: BackendOptions) -> TorchBackend:
    return TorchBackend(bundle, options)
