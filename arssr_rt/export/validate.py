"""Check exported ONNX graphs against the torch model they came from, with onnxruntime.

Polygraphy's habit: run two backends on the same inputs and compare. Each graph is compared
on its own (encoder features, decoder intensity on torch-sampled features) and end to end
(ONNX encoder -> trilinear query -> ONNX decoder vs ``model(lr, coords)``), on random and on
real [0, 1] volumes. fp32 outputs must agree to ``FP32_TOLERANCE`` (features to the same
tolerance relative to their largest magnitude); fp16 differences are recorded.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ModelError
from ..extras import require
from .. import bundle_format as contract

if TYPE_CHECKING:
    from ..network import ArSSR

FP32_TOLERANCE = 1e-4
RANDOM_SHAPE = (11, 9, 10)  # odd, distinct sizes: exercises the dynamic D, H, W
REAL_CROP = 12  # a centre crop of the real volume keeps validation of big encoders quick
QUERY_POINTS = 512


def centre_crop(volume: np.ndarray, size: int) -> np.ndarray:
    starts = [max(0, (n - size) // 2) for n in volume.shape]
    return volume[tuple(slice(s, s + size) for s in starts)]


def minmax(volume: np.ndarray) -> np.ndarray:
    lo, hi = float(volume.min()), float(volume.max())
    return ((volume - lo) / (hi - lo) if hi > lo else np.zeros_like(volume)).astype(np.float32)


def validation_inputs(real_input: np.ndarray | None, seed: int = 0) -> dict[str, np.ndarray]:
    """Named (D, H, W) float32 volumes in [0, 1]: always random, plus a real crop if given."""
    rng = np.random.default_rng(seed)
    inputs = {"random": rng.random(RANDOM_SHAPE, dtype=np.float32)}
    if real_input is not None:
        real = np.asarray(real_input, dtype=np.float32)
        if real.ndim != 3 or min(real.shape) < 2:
            raise ModelError(f"real validation input must be a 3-D volume, got shape {real.shape}")
        inputs["real"] = minmax(centre_crop(real, REAL_CROP))
    return inputs


def _session(path: Path):
    ort = require("onnxruntime")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(f"onnxruntime cannot load {path}: {str(exc).strip().splitlines()[0]}") from exc


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    diff = np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))
    return float(diff.max()) if np.all(np.isfinite(diff)) else float("inf")


def compare_precision(model: "ArSSR", encoder_path: Path, decoder_path: Path, inputs: dict[str, np.ndarray], half: bool) -> dict[str, Any]:
    """Max abs differences of one encoder/decoder pair against torch fp32, over all inputs."""
    torch = require("torch")
    io_dtype = np.float16 if half else np.float32
    enc, dec = _session(encoder_path), _session(decoder_path)
    gen = torch.Generator().manual_seed(1)
    result = {"encoder_max_abs": 0.0, "decoder_max_abs": 0.0, "forward_max_abs": 0.0, "features_max_abs_value": 0.0, "inputs": sorted(inputs)}
    # the decoder ends in a ReLU: if torch outputs only zeros the comparison says little, so record it
    positive, total = 0, 0
    model.eval()
    with torch.inference_mode():
        for lr in inputs.values():
            lr_t = torch.from_numpy(np.ascontiguousarray(lr))[None, None]
            coords = (torch.rand(1, QUERY_POINTS, 3, generator=gen) * 2 - 1)
            feats_ref = model.encoder(lr_t)
            feats_onnx = enc.run([contract.ENCODER_OUTPUT], {contract.ENCODER_INPUT: lr_t.numpy().astype(io_dtype)})[0]
            result["encoder_max_abs"] = max(result["encoder_max_abs"], _max_abs(feats_onnx, feats_ref.numpy()))
            result["features_max_abs_value"] = max(result["features_max_abs_value"], float(feats_ref.abs().max()))

            # what the decoder is fed: the global coords or their cell phase (model.spec.coords)
            dcoords = model.decoder_coords(coords, lr_t.shape)
            sampled_ref = model.query(feats_ref, coords)[0]
            out_ref = model.decode(sampled_ref[None], dcoords)[0]
            out_dec = dec.run([contract.DECODER_OUTPUT], {
                contract.DECODER_FEATURES: sampled_ref.numpy().astype(io_dtype),
                contract.DECODER_COORDS: dcoords[0].numpy().astype(io_dtype),
            })[0]
            result["decoder_max_abs"] = max(result["decoder_max_abs"], _max_abs(out_dec, out_ref.numpy()))

            # end to end through the contract: ONNX features, trilinear query, ONNX decoder
            sampled_onnx = model.query(torch.from_numpy(feats_onnx.astype(np.float32)), coords)[0]
            out_e2e = dec.run([contract.DECODER_OUTPUT], {
                contract.DECODER_FEATURES: sampled_onnx.numpy().astype(io_dtype),
                contract.DECODER_COORDS: dcoords[0].numpy().astype(io_dtype),
            })[0]
            if model.spec.base != "none":  # the runtime adds the windowed-sinc base to the decoder's output
                out_e2e = out_e2e + model.base_at(lr_t, coords)[0].numpy()
            out_fwd = model(lr_t, coords)[0]
            result["forward_max_abs"] = max(result["forward_max_abs"], _max_abs(out_e2e, out_fwd.numpy()))
            positive += int((out_fwd > 0).sum())
            total += out_fwd.numel()
    result["positive_fraction"] = positive / total
    return result


def validate_exports(model: "ArSSR", out_dir: Path, real_input: np.ndarray | None = None) -> dict[str, Any]:
    """Validate the four ONNX files in ``out_dir``; ModelError if fp32 exceeds the tolerance.

    Returns the record stored in model.json under ``validation``.
    """
    inputs = validation_inputs(real_input)
    fp32 = compare_precision(model, out_dir / contract.ENCODER_FP32, out_dir / contract.DECODER_FP32, inputs, half=False)
    # outputs are in [0, 1]-space: absolute tolerance; features have a model-dependent scale
    # (unnormalised residual stacks reach tens), so the encoder's is relative to it
    limits = {
        "encoder_max_abs": FP32_TOLERANCE * max(1.0, fp32["features_max_abs_value"]),
        "decoder_max_abs": FP32_TOLERANCE,
        "forward_max_abs": FP32_TOLERANCE,
    }
    for key, limit in limits.items():
        if not fp32[key] <= limit:
            graph = contract.ENCODER_FP32 if key.startswith("encoder") else contract.DECODER_FP32
            raise ModelError(f"{out_dir / graph} disagrees with torch: {key.replace('_', ' ')} {fp32[key]:.3g} > {limit:.3g}")
    fp16 = compare_precision(model, out_dir / contract.ENCODER_FP16, out_dir / contract.DECODER_FP16, inputs, half=True)
    for key in ("encoder_max_abs", "decoder_max_abs", "forward_max_abs"):
        if not np.isfinite(fp16[key]):
            raise ModelError(f"{out_dir / contract.ENCODER_FP16} or {contract.DECODER_FP16} produces non-finite values")
    return {"tolerance_fp32": FP32_TOLERANCE, "runtime": f"onnxruntime {require('onnxruntime').__version__} CPU", "fp32": fp32, "fp16": fp16}
