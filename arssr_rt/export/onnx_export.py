"""torch -> ONNX for the two graphs of the contract: encoder (lr -> features) and decoder.

The trilinear feature query is deliberately NOT in the graphs: runtimes sample the feature
map themselves (separably in numpy, or in a CUDA kernel), so the decoder takes features that
are already sampled. fp16 variants are exported from ``model.half()`` (fp16 inputs and
outputs, same names) because TensorRT 11 builds strongly typed engines from the ONNX types.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from ..errors import ModelError
from ..extras import require
from .. import bundle_format as contract

if TYPE_CHECKING:
    import torch

    from ..network import ArSSR


def _graph_modules():
    """The wrapper modules, built lazily so importing this file does not import torch."""
    torch = require("torch")
    require("onnxscript")  # the dynamo exporter needs it; fail early with the pip hint

    class EncoderGraph(torch.nn.Module):
        def __init__(self, encoder: torch.nn.Module):
            super().__init__()
            self.encoder = encoder

        def forward(self, lr: torch.Tensor) -> torch.Tensor:
            return self.encoder(lr)

    class DecoderGraph(torch.nn.Module):
        def __init__(self, decoder: torch.nn.Module):
            super().__init__()
            self.decoder = decoder

        def forward(self, features: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
            return self.decoder(torch.cat([features, coords], dim=-1))

    return torch, EncoderGraph, DecoderGraph


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The dynamo exporter chats on stdout, logging and warnings; a CLI must stay clean."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _export(module: "torch.nn.Module", args: tuple, path: Path, input_names: list[str], output_names: list[str], dynamic_shapes: dict) -> None:
    torch = require("torch")
    module.eval()
    try:
        with _quiet_exporter(), torch.no_grad():
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=input_names,
                output_names=output_names,
                dynamic_shapes=dynamic_shapes,
                opset_version=contract.OPSET,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    except Exception as exc:  # the exporter raises many unrelated types; report one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"ONNX export of {path.name} failed: {first}") from exc
    if Path(str(path) + ".data").exists():  # never ship a half bundle with external data
        raise ModelError(f"ONNX export of {path.name} wrote external data; expected a single file")


def export_encoder(model: "ArSSR", path: Path, half: bool = False) -> Path:
    """Write the encoder graph: ``lr`` [1,1,D,H,W] -> ``features`` [1,F,D,H,W], D,H,W dynamic."""
    torch, EncoderGraph, _ = _graph_modules()
    dtype = torch.float16 if half else torch.float32
    graph = EncoderGraph(copy.deepcopy(model.encoder) if half else model.encoder).to(dtype)
    # sizes of the trace example are odd and distinct so no dim specialises to another
    example = torch.rand(1, 1, 5, 6, 7, dtype=dtype)
    dyn = {contract.ENCODER_INPUT: {2: "D", 3: "H", 4: "W"}}
    _export(graph, (example,), path, [contract.ENCODER_INPUT], [contract.ENCODER_OUTPUT], dyn)
    return path


def export_decoder(model: "ArSSR", path: Path, half: bool = False) -> Path:
    """Write the decoder graph: ``features`` [N,F] + ``coords`` [N,3] -> ``intensity`` [N,1]."""
    torch, _, DecoderGraph = _graph_modules()
    dtype = torch.float16 if half else torch.float32
    graph = DecoderGraph(copy.deepcopy(model.decoder) if half else model.decoder).to(dtype)
    n = 17
    example = (torch.rand(n, model.spec.feature_dim, dtype=dtype), torch.rand(n, 3, dtype=dtype) * 2 - 1)
    dyn = {contract.DECODER_FEATURES: {0: "N"}, contract.DECODER_COORDS: {0: "N"}}
    _export(graph, example, path, [contract.DECODER_FEATURES, contract.DECODER_COORDS], [contract.DECODER_OUTPUT], dyn)
    return path


def check_onnx(path: Path) -> None:
    """Run the ONNX checker (full check with shape inference); ModelError naming the file."""
    onnx = require("onnx")
    try:
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    except Exception as exc:
        raise ModelError(f"{path} fails the ONNX checker: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from exc


def export_all(model: "ArSSR", out_dir: Path) -> dict[str, Path]:
    """Export fp32 and fp16 encoder and decoder into ``out_dir``; returns name -> path.

    The model is left in fp32 and eval mode (the fp16 exports work on copies).
    """
    model.eval()
    paths = {
        contract.ENCODER_FP32: export_encoder(model, out_dir / contract.ENCODER_FP32),
        contract.DECODER_FP32: export_decoder(model, out_dir / contract.DECODER_FP32),
    }
    paths[contract.ENCODER_FP16] = export_encoder(model, out_dir / contract.ENCODER_FP16, half=True)
    paths[contract.DECODER_FP16] = export_decoder(model, out_dir / contract.DECODER_FP16, half=True)
    for path in paths.values():
        check_onnx(path)
    return paths
