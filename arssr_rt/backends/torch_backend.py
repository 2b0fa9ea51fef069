"""Reference backend: the bundle's weights.pt in the torch model, fp32 on the CPU.

Slower than onnxruntime on most CPUs, but it is the ground truth the ONNX graphs are
checked against, and it needs no ONNX at all. torch is imported only when this opens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..bundle import WEIGHTS
from ..errors import ModelError
from ..extras import require
from ..safe_load import load_checkpoint
from .base import BackendOptions, BackendRunner, register_backend

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


class TorchBackend(BackendRunner):
    """fp32 torch on the CPU under inference_mode; see base.BackendRunner for the array contract."""

    name = "torch"

    def __init__(self, bundle: "ModelBundle", options: BackendOptions):
        self._torch = torch = require("torch")
        self.check_precision(options.precision)  # fp32 on the CPU only
        model = load_bundle_model(bundle)
        if options.threads:
            torch.set_num_threads(int(options.threads))  # process-wide: torch has no per-model setting
        self.model = model.eval()
        self.feature_dim = bundle.feature_dim

    def _encode_impl(self, lr: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            return self.model.encoder(self._torch.from_numpy(lr)[None, None])[0].numpy().copy()

    def _decode_impl(self, features: np.ndarray, coords: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            f = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
            c = torch.from_numpy(np.ascontiguousarray(coords, dtype=np.float32))
            return self.model.decoder(torch.cat([f, c], dim=-1))[:, 0].numpy()

    def close(self) -> None:
        self.model = None


@register_backend("torch", priority=5)
def open_torch(bundle: "ModelBundle", options: BackendOptions) -> TorchBackend:
    return TorchBackend(bundle, options)
