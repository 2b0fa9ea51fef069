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
server for its own GPU and TensorRT version, so no engine file has to match). Its engines get
one explicit shape profile per network, from the limits the served pipeline keeps to (encoder
input up to one tile plus halo, decoder calls up to ``chunk`` points; config parameters
``tile`` and ``chunk``), so ONNX Runtime builds each engine once instead of once per shape.

The Python backend needs arssr-rt installed in the server; ``wheel=`` copies a wheel of it
(``pip wheel --no-deps .`` in a source checkout) to ``arssr/wheels/`` for
``pip install /models/arssr/wheels/*.whl``. The repository is written to a temp folder and
renamed into place.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from importlib import resources
from pathlib import Path

from ..atomic import atomic_write_folder
from ..bundle import ModelBundle, resolve_model
from ..engines.builder import DEFAULT_TILE, encoder_edge
from ..errors import InputError, ModelError
from .. import bundle_format as contract
from ..outputs import check_output
from ..sampling import COORD_MODES

ENCODER_MODEL = "arssr_encoder"
DECODER_MODEL = "arssr_decoder"
PIPELINE_MODEL = "arssr"
ONNX_FILES = {"fp32": ("encoder.onnx", "decoder.onnx", "TYPE_FP32"), "fp16": ("encoder.fp16.onnx", "decoder.fp16.onnx", "TYPE_FP16")}
_ORT_TYPES = {"tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16"}
WHEELS_DIR = "wheels"  # under REPO/arssr/: Triton ignores a model folder's non-numeric subfolders
TEMPLATE = "arssr_rt/batch/triton_model.py"

# input name -> (min, opt, max) shape of one TensorRT optimisation profile
ShapeProfile = dict[str, tuple[list[int], list[int], list[int]]]


def shape_profiles(bundle: ModelBundle, tile: int, chunk: int) -> dict[str, ShapeProfile]:
    """TensorRT profiles of the two networks, from the limits the served pipeline keeps to:
    encoder input from one voxel to one tile core plus its halo per axis (the tiling rule of
    ``engines build``), decoder inputs from 1 to ``chunk`` points (model.py splits larger calls)."""
    edge = encoder_edge(bundle, tile)
    big = [1, 1, edge, edge, edge]
    f = bundle.feature_dim
    return {
        ENCODER_MODEL: {contract.ENCODER_INPUT: ([1, 1, 1, 1, 1], big, big)},
        DECODER_MODEL: {
            contract.DECODER_FEATURES: ([1, f], [chunk, f], [chunk, f]),
            contract.DECODER_COORDS: ([1, 3], [chunk, 3], [chunk, 3]),
        },
    }


def _profile_value(profile: ShapeProfile, which: int) -> str:
    """ONNX Runtime's ``trt_profile_*_shapes`` syntax: ``name:1x1x8x8x8,other:1x3``."""
    return ",".join(f"{name}:{'x'.join(str(n) for n in shapes[which])}" for name, shapes in sorted(profile.items()))


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


def network_config(name: str, onnx_path: Path, tensorrt: bool, precision: str, profile: ShapeProfile | None = None) -> str:
    """config.pbtxt for one ONNX network: no batching dimension (the dims carry it), dynamic
    spatial / point dims as -1, default instance placement (one per GPU, else CPU); with
    ``tensorrt``, the accelerator and (``profile``) its explicit min/opt/max shapes."""
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
        )
        if profile:
            if sorted(profile) != sorted(t[0] for t in inputs):
                raise ModelError(f"{onnx_path} has inputs {sorted(t[0] for t in inputs)}, the ONNX contract expects {sorted(profile)}")
            for key, which in (("trt_profile_min_shapes", 0), ("trt_profile_opt_shapes", 1), ("trt_profile_max_shapes", 2)):
                text += f'      parameters {{ key: "{key}" value: "{_profile_value(profile, which)}" }}\n'
        text += "    } ]\n  }\n}\n"
    return text


def pipeline_config(precision: str, chunk: int, normalization: str, coords: str = "global", tile: int = DEFAULT_TILE) -> str:
    """config.pbtxt of the Python-backend model that does tiling and sampling.

    ``coords`` is the decoder coordinate mode (the bundle's ``spec.coords``); ``tile`` and
    ``chunk`` bound every network call (the TensorRT profiles are built from them).
    """
    text = f'name: "{PIPELINE_MODEL}"\nbackend: "python"\nmax_batch_size: 0\n'
    text += _tensor_block("input", "volume", "TYPE_FP32", [-1, -1, -1])
    text += _tensor_block("input", "affine", "TYPE_FP64", [4, 4])
    text += _tensor_block("input", "out_shape", "TYPE_INT32", [3])
    text += _tensor_block("output", "output", "TYPE_FP32", [-1, -1, -1])
    text += _tensor_block("output", "output_affine", "TYPE_FP64", [4, 4])
    # the pipeline itself is numpy on the CPU; the networks it calls run on the GPU
    text += "instance_group [ { kind: KIND_CPU count: 1 } ]\n"
    for key, value in (("precision", precision), ("chunk", str(chunk)), ("tile", str(tile)), ("normalization", normalization), ("coords", coords)):
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
    tile: int = DEFAULT_TILE,
    wheel: str | Path | None = None,
) -> Path:
    """Write the model repository for ``model`` to ``out``; returns ``out``."""
    if precision not in ONNX_FILES:
        raise InputError(f"--precision must be one of {', '.join(ONNX_FILES)}, got {precision!r}")
    if chunk < 1:
        raise InputError(f"--chunk must be >= 1, got {chunk}")
    if tile < 1:
        raise InputError(f"--tile must be >= 1, got {tile}")
    wheel = Path(wheel) if wheel is not None else None
    if wheel is not None:
        check_wheel(wheel)
    bundle = model if isinstance(model, ModelBundle) else resolve_model(model)
    encoder_file, decoder_file, _ = ONNX_FILES[precision]
    for name in (encoder_file, decoder_file):
        if not bundle.has(name):
            raise ModelError(f"model bundle {bundle.path} has no {name} (needed for --precision {precision})")
    out = check_output(out, force=force, folder=True)
    normalization = normalization or str(bundle.normalization.get("mode", "minmax"))
    coords = bundle.coords_mode  # what the decoder was trained to see; model.py checks it again
    if coords not in COORD_MODES:
        raise ModelError(f"model bundle {bundle.path}: unknown decoder coordinate mode {coords!r} (model.json spec.coords); known: {', '.join(COORD_MODES)}")

    profiles = shape_profiles(bundle, tile, chunk)

    def build(tmp: Path) -> None:
        for model_name, source in ((ENCODER_MODEL, encoder_file), (DECODER_MODEL, decoder_file)):
            version = tmp / model_name / "1"
            version.mkdir(parents=True)
            shutil.copyfile(bundle.file(source), version / "model.onnx")
            (tmp / model_name / "config.pbtxt").write_text(network_config(model_name, version / "model.onnx", tensorrt, precision, profiles[model_name]))
        version = tmp / PIPELINE_MODEL / "1"
        (version / "bundle").mkdir(parents=True)
        template = resources.files("arssr_rt.batch") / "triton_model.py"
        (version / "model.py").write_text(template.read_text())
        # the pipeline needs the bundle's description (radius, normalisation, axis order), not its weights
        meta = dict(bundle.meta)
        meta["files"] = {}
        (version / "bundle" / "model.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        (tmp / PIPELINE_MODEL / "config.pbtxt").write_text(pipeline_config(precision, chunk, normalization, coords, tile))
        if wheel is not None:
            (tmp / PIPELINE_MODEL / WHEELS_DIR).mkdir()
            shutil.copyfile(wheel, tmp / PIPELINE_MODEL / WHEELS_DIR / wheel.name)

    return atomic_write_folder(out, build, fsync=False)


def check_wheel(wheel: Path) -> None:
    """Refuse anything but an arssr-rt wheel whose Triton model equals the one being exported:
    model.py and the arssr-rt it imports in the server must be the same version."""
    if not wheel.name.startswith("arssr_rt-") or wheel.suffix != ".whl":
        raise InputError(f"--wheel {wheel}: not an arssr-rt wheel (expected arssr_rt-<version>-py3-none-any.whl, from `pip wheel --no-deps .`)")
    try:
        with zipfile.ZipFile(wheel) as archive:
            served = archive.read(TEMPLATE)
    except FileNotFoundError:
        raise InputError(f"--wheel {wheel}: no such file") from None
    except KeyError:
        raise InputError(f"--wheel {wheel}: has no {TEMPLATE}; is it an arssr-rt wheel?") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"--wheel {wheel}: not a readable wheel ({exc})") from None
    if served != (resources.files("arssr_rt.batch") / "triton_model.py").read_bytes():
        raise InputError(f"--wheel {wheel}: built from another arssr-rt version than this one (its Triton model differs); "
                         "rebuild it with `pip wheel --no-deps .` from this checkout")
