"""The fixed ONNX I/O contract of a model bundle (see docs/onnx-contract.md).

Torch-free on purpose: the runtime backends read these names, the exporter writes them, and
C++ products rely on them, so they live in one place.
"""

from __future__ import annotations

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


def contract_names() -> dict[str, dict[str, list[str]]]:
    """The contract as stored in model.json under ``onnx``."""
    return {
        "encoder": {"inputs": [ENCODER_INPUT], "outputs": [ENCODER_OUTPUT]},
        "decoder": {"inputs": [DECODER_FEATURES, DECODER_COORDS], "outputs": [DECODER_OUTPUT]},
    }
