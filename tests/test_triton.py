"""export-triton: the repository layout, configs that match the ONNX graphs, and the
Python-backend model run against a stand-in of Triton's python-backend utilities (BLS calls
served by onnxruntime on the repository's own ONNX files) matching the local pipeline."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import types
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import FIXTURE_PATH

from arssr_rt.cli import main
from arssr_rt.geometry import plan_output_grid
from arssr_rt.pipeline import VolumeEngine
from arssr_rt.volume import Volume


class _Tensor:
    def __init__(self, name: str, array: np.ndarray):
        self._name, self._array = name, np.asarray(array)

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class _Error:
    def __init__(self, message: str):
        self._message = message

    def message(self) -> str:
        return self._message


class _Response:
    def __init__(self, output_tensors=(), error=None):
        self.output_tensors, self.error_ = list(output_tensors), error

    def has_error(self) -> bool:
        return self.error_ is not None

    def error(self):
        return self.error_


def fake_pb_utils(repo: Path) -> types.ModuleType:
    """Just enough of triton_python_backend_utils; BLS requests run the repo's ONNX models."""
    import onnxruntime as ort

    sessions: dict[str, ort.InferenceSession] = {}
    calls: dict[str, int] = {}
    shapes: dict[str, list[dict[str, tuple[int, ...]]]] = {}  # every BLS request's input shapes

    class InferenceRequest:
        def __init__(self, model_name, requested_output_names, inputs):
            self.model_name, self.outputs, self.inputs = model_name, requested_output_names, inputs

        def exec(self):
            if self.model_name not in sessions:
                sessions[self.model_name] = ort.InferenceSession(str(repo / self.model_name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
            calls[self.model_name] = calls.get(self.model_name, 0) + 1
            feeds = {t.name(): t.as_numpy() for t in self.inputs}
            shapes.setdefault(self.model_name, []).append({k: v.shape for k, v in feeds.items()})
            results = sessions[self.model_name].run(self.outputs, feeds)
            return _Response([_Tensor(n, r) for n, r in zip(self.outputs, results)])

    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor = _Tensor
    module.InferenceRequest = InferenceRequest
    module.InferenceResponse = _Response
    module.TritonError = _Error
    module.TritonModelException = RuntimeError
    # like Triton: None for an input the client did not send
    module.get_input_tensor_by_name = lambda request, name: next((t for t in request.inputs if t.name() == name), None)
    module.get_output_tensor_by_name = lambda response, name: next(t for t in response.output_tensors if t.name() == name)
    module.calls = calls
    module.shapes = shapes
    return module


@pytest.fixture
def repo(tmp_path, tiny_bundle) -> Path:
    assert main(["export-triton", "--model", str(tiny_bundle), "-o", str(tmp_path / "repo")]) == 0
    return tmp_path / "repo"


def _parameters(repo: Path) -> dict[str, str]:
    config = (repo / "arssr" / "config.pbtxt").read_text()
    return dict(re.findall(r'key: "(\w+)" value: \{ string_value: "([^"]*)" \}', config))


def _load_served_model(repo: Path, monkeypatch, parameters: dict[str, str] | None = None):
    """(TritonPythonModel initialised as Triton would, the fake pb_utils) for the repo's model.py."""
    pb_utils = fake_pb_utils(repo)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb_utils)
    spec = importlib.util.spec_from_file_location("arssr_triton_model", repo / "arssr" / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    parameters = _parameters(repo) if parameters is None else parameters
    model = module.TritonPythonModel()
    model.initialize({"model_repository": str(repo / "arssr"), "model_version": "1",
                      "model_config": json.dumps({"parameters": {k: {"string_value": v} for k, v in parameters.items()}})})
    return model, pb_utils


def test_served_model_passes_its_backend_instead_of_registering_one(repo, monkeypatch):
    """The BLS backend is handed to the VolumeEngine; the global backend registry stays as it was."""
    from arssr_rt.backends.base import available_backends

    before = available_backends()
    model, _ = _load_served_model(repo, monkeypatch)
    assert model.upsampler.backend.name == "triton-bls"
    assert available_backends() == before and "triton-bls" not in before
    model.finalize()


def test_repository_layout(repo):
    files = sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file())
    assert files == [
        "arssr/1/bundle/model.json", "arssr/1/model.py", "arssr/config.pbtxt",
        "arssr_decoder/1/model.onnx", "arssr_decoder/config.pbtxt",
        "arssr_encoder/1/model.onnx", "arssr_encoder/config.pbtxt",
    ]


def _tensors(config: str) -> dict[str, tuple[str, list[int]]]:
    found = re.findall(r'name: "(\w+)"\s+data_type: (\w+)\s+dims: \[ ([^\]]*) \]', config)
    return {name: (dtype, [int(d) for d in dims.split(",")]) for name, dtype, dims in found}


def test_configs_have_dynamic_dims_matching_the_onnx_graphs(repo, tiny_bundle):
    feature_dim = json.loads((tiny_bundle / "model.json").read_text())["spec"]["feature_dim"]
    encoder = (repo / "arssr_encoder" / "config.pbtxt").read_text()
    decoder = (repo / "arssr_decoder" / "config.pbtxt").read_text()
    pipeline = (repo / "arssr" / "config.pbtxt").read_text()
    assert 'backend: "onnxruntime"' in encoder and "max_batch_size: 0" in encoder
    assert _tensors(encoder) == {"lr": ("TYPE_FP32", [1, 1, -1, -1, -1]), "features": ("TYPE_FP32", [1, feature_dim, -1, -1, -1])}
    assert _tensors(decoder) == {"features": ("TYPE_FP32", [-1, feature_dim]), "coords": ("TYPE_FP32", [-1, 3]), "intensity": ("TYPE_FP32", [-1, 1])}
    assert 'backend: "python"' in pipeline
    assert _tensors(pipeline) == {"volume": ("TYPE_FP32", [-1, -1, -1]), "affine": ("TYPE_FP64", [4, 4]), "out_shape": ("TYPE_INT32", [3]),
                                  "output": ("TYPE_FP32", [-1, -1, -1]), "output_affine": ("TYPE_FP64", [4, 4])}
    assert json.loads((repo / "arssr" / "1" / "bundle" / "model.json").read_text())["receptive_radius"] > 0


def test_tensorrt_accelerator_and_refusals(tmp_path, tiny_bundle):
    assert main(["export-triton", "--model", str(tiny_bundle), "-o", str(tmp_path / "trt"), "--tensorrt", "--precision", "fp16"]) == 0
    encoder = (tmp_path / "trt" / "arssr_encoder" / "config.pbtxt").read_text()
    assert 'name : "tensorrt"' in encoder and 'value: "FP16"' in encoder and "TYPE_FP16" in encoder
    assert main(["export-triton", "--model", str(tiny_bundle), "-o", str(tmp_path / "trt")]) == 2  # exists
    assert main(["export-triton", "--model", str(tiny_bundle), "-o", str(tmp_path / "x"), "--precision", "int4"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trt"]


@pytest.mark.parametrize("which", ["tiny_bundle", "phase_bundle"])
def test_python_model_matches_the_local_pipeline(which, tmp_path, monkeypatch, request):
    """The served pipeline equals the local one, for a global- and a phase-coordinate bundle."""
    bundle_dir = request.getfixturevalue(which)
    repo = tmp_path / "repo"
    assert main(["export-triton", "--model", str(bundle_dir), "-o", str(repo)]) == 0
    mode = "phase" if which == "phase_bundle" else "global"
    assert _parameters(repo)["coords"] == mode
    model, pb_utils = _load_served_model(repo, monkeypatch)

    img = nib.load(FIXTURE_PATH)
    data = np.asarray(img.dataobj, dtype=np.float32)[:20, :18, :16]
    out_shape = np.array([40, 27, 32], dtype=np.int32)
    request = types.SimpleNamespace(inputs=[_Tensor("volume", data), _Tensor("affine", img.affine), _Tensor("out_shape", out_shape)])
    bad = types.SimpleNamespace(inputs=[_Tensor("volume", np.zeros((4, 4, 4), np.float32)), _Tensor("affine", img.affine), _Tensor("out_shape", out_shape)])
    good_response, bad_response = model.execute([request, bad])

    assert not good_response.has_error()
    served = {t.name(): t.as_numpy() for t in good_response.output_tensors}
    grid = plan_output_grid(data.shape, img.affine, shape=out_shape.tolist())
    with VolumeEngine(bundle_dir, backend="onnxruntime") as local:
        assert local.bundle.coords_mode == mode
        expected = local.run(Volume(data=data, affine=img.affine), grid)
    assert served["output"].shape == (40, 27, 32)
    np.testing.assert_allclose(served["output"], expected, atol=1e-5 * float(np.ptp(data)))
    np.testing.assert_allclose(served["output_affine"], grid.affine)
    assert pb_utils.calls["arssr_encoder"] >= 1 and pb_utils.calls["arssr_decoder"] >= 1
    assert bad_response.has_error() and "constant" in bad_response.error().message()
    model.finalize()


def test_python_model_refuses_a_config_that_disagrees_with_the_bundles_coords(tmp_path, phase_bundle, monkeypatch):
    repo = tmp_path / "repo"
    assert main(["export-triton", "--model", str(phase_bundle), "-o", str(repo)]) == 0
    with pytest.raises(RuntimeError, match="coords 'global'.*'phase'"):
        _load_served_model(repo, monkeypatch, {**_parameters(repo), "coords": "global"})


def test_export_refuses_a_bundle_with_an_unknown_coords_mode(tmp_path, tiny_bundle, capsys):
    import shutil

    from arssr_rt.bundle import write_model_json

    odd = tmp_path / "odd"
    shutil.copytree(tiny_bundle, odd)
    meta = json.loads((odd / "model.json").read_text())
    meta["spec"]["coords"] = "local"
    write_model_json(odd, meta)
    assert main(["export-triton", "--model", str(odd), "-o", str(tmp_path / "repo")]) != 0
    assert "spec.coords" in capsys.readouterr().err
    assert not (tmp_path / "repo").exists()


# ------------------------------------------------------------------ TensorRT profiles


def _trt_parameters(config: str) -> dict[str, str]:
    return dict(re.findall(r'parameters \{ key: "(\w+)" value: "([^"]*)" \}', config))


def _profile(value: str) -> dict[str, list[int]]:
    """ONNX Runtime's "name:1x2x3,other:4x5" -> {name: [1, 2, 3], other: [4, 5]}."""
    return {name: [int(n) for n in dims.split("x")] for name, dims in (item.split(":") for item in value.split(","))}


def test_tensorrt_accelerator_gets_the_shape_profiles_the_pipeline_keeps_to(tmp_path, tiny_bundle, monkeypatch):
    """Without explicit profiles ONNX Runtime's TensorRT EP rebuilds an engine for every new
    tile / chunk shape; with them one engine per network covers every call the model makes."""
    repo = tmp_path / "trt"
    tile, chunk = 8, 1000
    assert main(["export-triton", "--model", str(tiny_bundle), "-o", str(repo), "--tensorrt", "--tile", str(tile), "--chunk", str(chunk)]) == 0
    radius = json.loads((tiny_bundle / "model.json").read_text())["receptive_radius"]
    feature_dim = json.loads((tiny_bundle / "model.json").read_text())["spec"]["feature_dim"]
    edge = tile + 2 * (radius + 1)  # the tiling rule: core + halo of radius + 1 each side
    encoder = _trt_parameters((repo / "arssr_encoder" / "config.pbtxt").read_text())
    decoder = _trt_parameters((repo / "arssr_decoder" / "config.pbtxt").read_text())
    assert _profile(encoder["trt_profile_min_shapes"]) == {"lr": [1, 1, 1, 1, 1]}
    assert _profile(encoder["trt_profile_opt_shapes"]) == _profile(encoder["trt_profile_max_shapes"]) == {"lr": [1, 1, edge, edge, edge]}
    assert _profile(decoder["trt_profile_min_shapes"]) == {"coords": [1, 3], "features": [1, feature_dim]}
    assert _profile(decoder["trt_profile_max_shapes"]) == {"coords": [chunk, 3], "features": [chunk, feature_dim]}
    assert _parameters(repo)["tile"] == str(tile) and _parameters(repo)["chunk"] == str(chunk)

    # the served model stays inside those profiles on a volume of many tiles, and is exact
    model, pb_utils = _load_served_model(repo, monkeypatch)
    img = nib.load(FIXTURE_PATH)
    data = np.asarray(img.dataobj, dtype=np.float32)[:20, :18, :16]
    out_shape = np.array([40, 27, 32], dtype=np.int32)
    (response,) = model.execute([types.SimpleNamespace(inputs=[_Tensor("volume", data), _Tensor("affine", img.affine), _Tensor("out_shape", out_shape)])])
    assert not response.has_error()
    encoder_calls = [c["lr"] for c in pb_utils.shapes["arssr_encoder"]]
    decoder_calls = pb_utils.shapes["arssr_decoder"]
    assert len(encoder_calls) > 1 and max(max(s[2:]) for s in encoder_calls) <= edge
    assert max(c["coords"][0] for c in decoder_calls) <= chunk and all(c["features"] == (c["coords"][0], feature_dim) for c in decoder_calls)
    grid = plan_output_grid(data.shape, img.affine, shape=out_shape.tolist())
    with VolumeEngine(tiny_bundle, backend="onnxruntime") as local:
        expected = local.run(Volume(data=data, affine=img.affine), grid)
    served = {t.name(): t.as_numpy() for t in response.output_tensors}
    np.testing.assert_allclose(served["output"], expected, atol=1e-5 * float(np.ptp(data)))
    model.finalize()


# ------------------------------------------------------------------ every failure is a response


def test_every_failure_of_a_request_is_a_one_line_error_response(repo, monkeypatch):
    model, _ = _load_served_model(repo, monkeypatch)
    img = nib.load(FIXTURE_PATH)
    data = np.asarray(img.dataobj, dtype=np.float32)[:12, :12, :12]
    good = types.SimpleNamespace(inputs=[_Tensor("volume", data), _Tensor("affine", img.affine), _Tensor("out_shape", np.array([24, 24, 24], np.int32))])
    missing = types.SimpleNamespace(inputs=[_Tensor("volume", data), _Tensor("affine", img.affine)])
    responses = model.execute([missing, good])
    assert responses[0].has_error() and "missing input 'out_shape'" in responses[0].error().message()
    assert not responses[1].has_error()

    def broken(*args, **kwargs):
        raise RuntimeError("arssr_decoder: CUDA error 700\nan illegal memory access was encountered")

    monkeypatch.setattr(model.upsampler, "run", broken)
    (response,) = model.execute([good])
    message = response.error().message()
    assert response.has_error() and "\n" not in message
    assert message == "arssr: internal error: RuntimeError: arssr_decoder: CUDA error 700 an illegal memory access was encountered"
    model.finalize()


# ------------------------------------------------------------------ the in-container install route


def _fake_wheel(path: Path, triton_model: bytes) -> Path:
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("arssr_rt/__init__.py", "")
        archive.writestr("arssr_rt/batch/triton_model.py", triton_model)
    return path


def test_export_copies_a_matching_wheel_and_refuses_others(tmp_path, tiny_bundle, capsys):
    from importlib import resources

    template = (resources.files("arssr_rt.batch") / "triton_model.py").read_bytes()
    good = _fake_wheel(tmp_path / "arssr_rt-0.1.0-py3-none-any.whl", template)
    assert main(["export-triton", "--model", str(tiny_bundle), "-o", str(tmp_path / "repo"), "--wheel", str(good)]) == 0
    copied = tmp_path / "repo" / "arssr" / "wheels" / good.name
    assert copied.read_bytes() == good.read_bytes()
    # Triton loads only numeric version folders of a model: wheels/ sits beside 1/
    assert sorted(p.name for p in (tmp_path / "repo" / "arssr").iterdir()) == ["1", "config.pbtxt", "wheels"]
    capsys.readouterr()
    garbage = tmp_path / "arssr_rt-0.2.0-py3-none-any.whl"
    garbage.write_bytes(b"not a zip file")
    cases = (
        (_fake_wheel(tmp_path / "arssr_rt-0.0.9-py3-none-any.whl", b"# an older model.py\n"), "another arssr-rt version"),
        (_fake_wheel(tmp_path / "other-1.0-py3-none-any.whl", template), "not an arssr-rt wheel"),
        (garbage, "not a readable wheel"),
        (tmp_path / "missing" / "arssr_rt-0.1.0-py3-none-any.whl", "no such file"),
    )
    for bad, why in cases:
        assert main(["export-triton", "--model", str(tiny_bundle), "-o", str(tmp_path / "repo2"), "--wheel", str(bad)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("arssr-rt: error: --wheel") and why in err[0], err
        assert not (tmp_path / "repo2").exists()


def test_the_documented_wheel_route_installs_a_working_arssr_rt(tmp_path, tiny_bundle):
    """docs/batch.md: `pip wheel --no-deps .`, `export-triton --wheel`, `pip install` it in the
    server. Build the wheel from a copy of this checkout, install it into an empty target and
    import what model.py imports from there alone."""
    import shutil
    import subprocess

    pytest.importorskip("setuptools", reason="building the wheel offline needs setuptools in this environment")
    from conftest import REPO_ROOT

    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    shutil.copytree(REPO_ROOT / "arssr_rt", source / "arssr_rt", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    built = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("arssr_rt-*.whl")
    assert main(["export-triton", "--model", str(tiny_bundle), "-o", str(tmp_path / "repo"), "--wheel", str(wheel)]) == 0
    served_wheel = tmp_path / "repo" / "arssr" / "wheels" / wheel.name
    site = tmp_path / "site"
    installed = subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(served_wheel)],
                               capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr[-2000:]
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); import arssr_rt; assert arssr_rt.__file__.startswith(sys.argv[1]), arssr_rt.__file__\n"
        "import arssr_rt.backends.base, arssr_rt.bundle, arssr_rt.geometry, arssr_rt.pipeline, arssr_rt.validation, arssr_rt.volume\n"
        "from arssr_rt.bundle import resolve_model; print(resolve_model(None).name)\n"
    )
    ran = subprocess.run([sys.executable, "-c", probe, str(site)], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"})
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert ran.stdout.strip()  # the embedded default model travels in the wheel
    assert (site / "arssr_rt" / "batch" / "triton_model.py").read_bytes() == (tmp_path / "repo" / "arssr" / "1" / "model.py").read_bytes()


@pytest.mark.parametrize("field,value,message", [
    ("receptive_radius", -3, "receptive_radius"),
    ("schema_version", 99, "schema_version"),
    ("normalization", {"mode": "zscore"}, "normalization.mode"),
])
def test_served_model_validates_the_bundle_meta(repo, monkeypatch, field, value, message):
    """model.json in the repository gets the same checks as any bundle: a broken one stops the
    model at load with one line, instead of serving with a nonsense radius or normalisation."""
    meta_path = repo / "arssr" / "1" / "bundle" / "model.json"
    meta = json.loads(meta_path.read_text())
    meta[field] = value
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(RuntimeError) as info:  # the fake pb_utils' TritonModelException
        _load_served_model(repo, monkeypatch)
    text = str(info.value)
    assert message in text and "re-export the repository" in text and "\n" not in text
