"""``export-triton``: a Triton Inference Server model repository for a model bundle.

Layout (Triton's own conventions):

    REPO/arssr_encoder/config.pbtxt, 1/model.onnx   encoder, dims [1, 1, -1, -1, -1]
    REPO/arssr_decoder/config.pbtxt, 1/model.onnx   decoder, dims [-1, F] + [-1, 3]
    REPO/arssr/config.pbtxt, 1/model.py, 1/bundle/model.json
                                                   Python backend: tiling + sampling,
                                                   calling the two models by BLS

The pipeline model's config carries the bundle's decoder coordinate mode (``model.json``
``spec.coords``: "global", the published ArSSR, or "phase") as parameter ``coords``; model.py
feeds the decoder those coordinates and refuses to start when the installed arssr-rt or the
copied model.json disagree with it.

The networks are served by Triton's ONNX Runtime backend (on GPU when the server has one;
``tensorrt=True`` adds the TensorRT execution accelerator, which builds engines inside the
server for its own GPU and TensorRT version, so no engine file has to match). The repository
is written to a temp folder and renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from importlib import resources
from pathlib import Path

from ..bundle import ModelBundle, resolve_model
from ..errors import InputError, ModelError, OutputError
from ..sampling import COORD_MODES

ENCODER_MODEL = "arssr_encoder"
DECODER_MODEL = "arssr_decoder"
PIPELINE_MODEL = "arssr"
ONNX_FILES = {"fp32": ("encoder.onnx", "decoder.onnx", "TYPE_FP32"), "fp16": ("encoder.fp16.onnx", "decoder.fp16.onnx", "TYPE_FP16")}
_ORT_TYPES = {"tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16"}


def _tensor_block(kind: str, name: str, data_type: str, dims: list[int]) -> str:
    return f'{kind} [\n  {{\n    name: "{name}"\n    data_type: {data_type}\n    dims: [ {", ".join(str(d) for d in dims)} ]\n  }}\n]\n'


def _io_signature(onnx_path: Path) -> tuple[list[tuple[str, str, list[int]]], list[tuple[str, str, list[int]]]]:
    """(name, Triton type, dims with -1 for dynamic axes) of each ONNX input and output."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])

    def describe(args) -> list[tuple[str, str, list[int]]]:
        out = []
        for arg in args:
            if arg.type not in _ORT_TYPES:
                raise ModelError(f"{onnx_path}: tensor {arg.name} has type {arg.type}, not float32/float16")
            out.append((arg.name, _ORT_TYPES[arg.type], [d if isinstance(d, int) else -1 for d in arg.shape]))
        return out

    return describe(session.get_inputs()), describe(session.get_outputs())


def network_config(name: str, onnx_path: Path, tensorrt: bool, precision: str) -> str:
    """config.pbtxt for one ONNX network: no batching dimension (the dims carry it), dynamic
    spatial / point dims as -1, default instance placement (one per GPU, else CPU)."""
    inputs, outputs = _io_signature(onnx_path)
    text = f'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: 0\n'
    for tensor_name, data_type, dims in inputs:
        text += _tensor_block("input", tensor_name, data_type, dims)
    for tensor_name, data_type, dims in outputs:
        text += _tensor_block("output", tensor_name, data_type, dims)
    if tensorrt:
        mode = "FP16" if precision == "fp16" else "FP32"
        text += (
            "optimization {\n  execution_accelerators {\n    gpu_execution_accelerator : [ {\n"
            '      name : "tensorrt"\n'
            f'      parameters {{ key: "precision_mode" value: "{mode}" }}\n'
            '      parameters { key: "trt_engine_cache_enable" value: "true" }\n'
            "    } ]\n  }\n}\n"
        )
    return text


def pipeline_config(precision: str, chunk: int, normalization: str, coords: str = "global") -> str:
    """config.pbtxt of the Python-backend model that does tiling and sampling.

    ``coords`` is the decoder coordinate mode (the bundle's ``spec.coords``).
    """
    text = f'name: "{PIPELINE_MODEL}"\nbackend: "python"\nmax_batch_size: 0\n'
    text += _tensor_block("input", "volume", "TYPE_FP32", [-1, -1, -1])
    text += _tensor_block("input", "affine", "TYPE_FP64", [4, 4])
    text += _tensor_block("input", "out_shape", "TYPE_INT32", [3])
    text += _tensor_block("output", "output", "TYPE_FP32", [-1, -1, -1])
    text += _tensor_block("output", "output_affine", "TYPE_FP64", [4, 4])
    # the pipeline itself is numpy on the CPU; the networks it calls run on the GPU
    text += "instance_group [ { kind: KIND_CPU count: 1 } ]\n"
    for key, value in (("precision", precision), ("chunk", str(chunk)), ("normalization", normalization), ("coords", coords)):
        text += f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}\n'
    return text


def export_triton_repository(
    model: str | Path | ModelBundle | None,
    out: str | Path,
    precision: str = "fp32",
    chunk: int = 1 << 17,
    normalization: str | None = None,
    tensorrt: bool = False,
    force: bool = False,
) -> Path:
    """Write the model repository for ``model`` to ``out``; returns ``out``."""
    if precision not in ONNX_FILES:
        raise InputError(f"--precision must be one of {', '.join(ONNX_FILES)}, got {precision!r}")
    if chunk < 1:
        raise InputError(f"--chunk must be >= 1, got {chunk}")
    bundle = model if isinstance(model, ModelBundle) else resolve_model(model)
    encoder_file, decoder_file, _ = ONNX_FILES[precision]
    for name in (encoder_file, decoder_file):
        if not bundle.has(name):
            raise ModelError(f"model bundle {bundle.path} has no {name} (needed for --precision {precision})")
    out = Path(out)
    if out.exists() and not force:
        raise OutputError(f"{out}: already exists (use --force to replace it)")
    if not out.parent.is_dir():
        raise OutputError(f"{out.parent}: output folder does not exist")
    normalization = normalization or str(bundle.normalization.get("mode", "minmax"))
    coords = bundle.coords_mode  # what the decoder was trained to see; model.py checks it again
    if coords not in COORD_MODES:
        raise ModelError(f"model bundle {bundle.path}: unknown decoder coordinate mode {coords!r} (model.json spec.coords); known: {', '.join(COORD_MODES)}")

    tmp = out.parent / f".{out.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        for model_name, source in ((ENCODER_MODEL, encoder_file), (DECODER_MODEL, decoder_file)):
            version = tmp / model_name / "1"
            version.mkdir(parents=True)
            shutil.copyfile(bundle.file(source), version / "model.onnx")
            (tmp / model_name / "config.pbtxt").write_text(network_config(model_name, version / "model.onnx", tensorrt, precision))
        version = tmp / PIPELINE_MODEL / "1"
        (version / "bundle").mkdir(parents=True)
        template = resources.files("arssr_rt.batch") / "triton_model.py"
        (version / "model.py").write_text(template.read_text())
        # the pipeline needs the bundle's description (radius, normalisation, axis order), not its weights
        meta = dict(bundle.meta)
        meta["files"] = {}
        (version / "bundle" / "model.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        (tmp / PIPELINE_MODEL / "config.pbtxt").write_text(pipeline_config(precision, chunk, normalization, coords))
        if out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
