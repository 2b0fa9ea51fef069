"""write_bundle: files, model.json, the ONNX contract (names, types, dynamic dims), validation,
refusals, and bundle integrity checks. Shrunk specs of all three encoders (random weights,
TEST ONLY) keep it quick; test_checkpoint_import.py covers the published full sizes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from arssr_rt.bundle import load_bundle  # noqa: E402
from arssr_rt.cli import main  # noqa: E402
from arssr_rt.errors import ModelError, OutputError  # noqa: E402
from arssr_rt import bundle_format as contract  # noqa: E402
from arssr_rt.export import validate  # noqa: E402
from arssr_rt.export.bundle_writer import write_bundle  # noqa: E402
from arssr_rt.network import build_model  # noqa: E402

SHRUNK = {
    "rdn": {"encoder": "rdn", "feature_dim": 12, "encoder_args": {"width": 8, "growth": 8, "blocks": 2, "layers": 2}, "decoder_width": 24},
    "rescnn": {"encoder": "rescnn", "feature_dim": 12, "encoder_args": {"width": 8, "blocks": 2, "convs": 2}, "decoder_width": 24},
    "srresnet": {"encoder": "srresnet", "feature_dim": 12, "encoder_args": {"width": 8, "blocks": 2}, "decoder_width": 24},
}
ONNX_FILES = ["encoder.onnx", "decoder.onnx", "encoder.fp16.onnx", "decoder.fp16.onnx"]


def lively(model):
    """Calibrate the decoder's last bias so the final ReLU passes most outputs (random weights
    otherwise give mostly zeros, and comparing zeros proves nothing)."""
    model.eval()
    gen = torch.Generator().manual_seed(5)
    last = model.decoder.stage_two[-2]
    with torch.no_grad():
        last.bias.zero_()
        lr = torch.rand(1, 1, 8, 8, 8, generator=gen)
        coords = torch.rand(1, 256, 3, generator=gen) * 2 - 1
        x = torch.cat([model.query(model.encoder(lr), coords), coords], dim=-1)
        pre = model.decoder.stage_two[:-1](x + model.decoder.stage_one(x))
        last.bias.fill_(float(-pre.median() + pre.std()))
    return model


def make_model(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return lively(build_model(dict(SHRUNK[name])))


@pytest.fixture(scope="module")
def real_lr(fixture_path: Path) -> np.ndarray:
    return np.asarray(nib.load(fixture_path).dataobj, dtype=np.float32)


@pytest.fixture(scope="module", params=sorted(SHRUNK))
def exported(request, tmp_path_factory, real_lr):
    """(model, bundle dir) for each shrunk encoder, validated on random and real input."""
    model = make_model(request.param)
    out = write_bundle(model, tmp_path_factory.mktemp("export") / request.param, name=f"{request.param}-TEST",
                       extra_meta={"training": {"steps": 0, "data": "none (random weights)"}, "description": "test"},
                       real_input=real_lr)
    return model, out


def test_bundle_has_every_file_as_single_files(exported) -> None:
    _, out = exported
    assert sorted(p.name for p in out.iterdir()) == sorted(["model.json", "weights.pt", *ONNX_FILES])
    bundle = load_bundle(out)
    assert sorted(bundle.meta["files"]) == sorted(["weights.pt", *ONNX_FILES])
    assert not list(out.parent.glob(f".{out.name}.*")), "staging folder left behind"


def test_model_json_describes_the_model(exported) -> None:
    model, out = exported
    meta = load_bundle(out).meta
    assert meta["spec"] == model.spec.to_dict() and meta["spec"]["feature_dim"] == 12
    assert meta["receptive_radius"] == model.receptive_radius
    assert meta["axis_order"] == "xyz" and meta["normalization"] == {"mode": "minmax"}
    assert meta["opset"] >= 20
    assert meta["onnx"]["encoder"] == {"inputs": ["lr"], "outputs": ["features"]}
    assert meta["onnx"]["decoder"] == {"inputs": ["features", "coords"], "outputs": ["intensity"]}
    assert meta["training"] == {"steps": 0, "data": "none (random weights)"}
    assert meta["description"] == "test" and meta["name"].endswith("-TEST")
    assert meta["parameters"]["total"] == sum(p.numel() for p in model.parameters())
    assert "T" in meta["created"]


def test_validation_record_meets_tolerance(exported) -> None:
    _, out = exported
    val = load_bundle(out).meta["validation"]
    assert val["fp32"]["inputs"] == ["random", "real"]
    for key in ("encoder_max_abs", "decoder_max_abs", "forward_max_abs"):
        assert 0 <= val["fp32"][key] <= 1e-4
        assert val["fp16"][key] < 5e-2
    assert val["fp32"]["positive_fraction"] > 0.3


def _io(model: onnx.ModelProto) -> dict[str, tuple[int, list]]:
    return {
        v.name: (v.type.tensor_type.elem_type, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim])
        for v in list(model.graph.input) + list(model.graph.output)
    }


@pytest.mark.parametrize("half", [False, True])
def test_onnx_files_follow_the_contract(exported, half: bool) -> None:
    _, out = exported
    suffix = ".fp16.onnx" if half else ".onnx"
    t = onnx.TensorProto.FLOAT16 if half else onnx.TensorProto.FLOAT
    enc = onnx.load(str(out / f"encoder{suffix}"))
    dec = onnx.load(str(out / f"decoder{suffix}"))
    for m in (enc, dec):
        onnx.checker.check_model(m, full_check=True)
        assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 20
    e, d = _io(enc), _io(dec)
    assert list(e) == ["lr", "features"] and list(d) == ["features", "coords", "intensity"]
    assert e["lr"][0] == t and e["lr"][1][:2] == [1, 1] and all(isinstance(x, str) for x in e["lr"][1][2:])
    assert e["features"][1][:2] == [1, 12] and e["features"][1][2:] == e["lr"][1][2:]
    n = d["features"][1][0]
    assert isinstance(n, str) and d["features"][1][1] == 12 and d["coords"][1] == [n, 3] and d["intensity"][1] == [n, 1]
    assert {v[0] for v in d.values()} == {t}


def test_contract_reproduces_forward_on_odd_shapes(exported) -> None:
    """The fp32 graphs + torch's trilinear query == model(lr, coords), shapes unlike the trace."""
    model, out = exported
    enc = ort.InferenceSession(str(out / "encoder.onnx"), providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(str(out / "decoder.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(2)
    for shape, n in (((3, 17, 4), 1), ((13, 6, 9), 1000)):
        lr = rng.random(shape, dtype=np.float32)
        coords = rng.uniform(-1, 1, size=(n, 3)).astype(np.float32)
        (feats,) = enc.run(None, {"lr": lr[None, None]})
        with torch.inference_mode():
            sampled = model.query(torch.from_numpy(feats), torch.from_numpy(coords)[None])[0].numpy()
            expected = model(torch.from_numpy(lr)[None, None], torch.from_numpy(coords)[None])[0].numpy()
        (got,) = dec.run(None, {"features": sampled, "coords": coords})
        assert got.shape == (n, 1)
        assert np.abs(got - expected).max() <= 1e-4


def test_weights_pt_rebuilds_the_model(exported) -> None:
    model, out = exported
    payload = torch.load(out / "weights.pt", weights_only=True)
    assert set(payload) == {"spec", "state_dict"}
    rebuilt = build_model(payload["spec"]).eval()
    rebuilt.load_state_dict(payload["state_dict"], strict=True)
    assert all(k.startswith(("encoder.", "decoder.")) for k in payload["state_dict"])
    lr, coords = torch.rand(1, 1, 6, 7, 5), torch.rand(1, 50, 3) * 2 - 1
    with torch.inference_mode():
        torch.testing.assert_close(rebuilt(lr, coords), model(lr, coords), rtol=0, atol=0)


def test_flipped_byte_in_decoder_is_named(exported, tmp_path: Path) -> None:
    _, out = exported
    copy = shutil.copytree(out, tmp_path / "corrupt")
    blob = bytearray((copy / "decoder.onnx").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (copy / "decoder.onnx").write_bytes(bytes(blob))
    with pytest.raises(ModelError, match=r"decoder\.onnx fails its sha256 check") as err:
        load_bundle(copy)
    assert "\n" not in str(err.value)


def test_wrong_schema_version_is_refused(exported, tmp_path: Path) -> None:
    _, out = exported
    copy = shutil.copytree(out, tmp_path / "future")
    meta = json.loads((copy / "model.json").read_text())
    meta["schema_version"] = 99
    (copy / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=r"model\.json has schema_version 99, expected 1"):
        load_bundle(copy)


def test_missing_file_is_named(exported, tmp_path: Path) -> None:
    _, out = exported
    copy = shutil.copytree(out, tmp_path / "partial")
    (copy / "encoder.fp16.onnx").unlink()
    with pytest.raises(ModelError, match=r"encoder\.fp16\.onnx is missing"):
        load_bundle(copy)


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    model = make_model("rescnn")
    out = write_bundle(model, tmp_path / "b", validate=False)
    before = (out / "model.json").read_text()
    with pytest.raises(OutputError, match="not empty; pass --force"):
        write_bundle(model, out, validate=False)
    assert (out / "model.json").read_text() == before
    write_bundle(model, out, name="again", validate=False, force=True)
    assert load_bundle(out).name == "again"
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(OutputError, match="not a model bundle"):
        write_bundle(model, tmp_path / "notes", force=True, validate=False)
    assert (tmp_path / "notes" / "todo.txt").read_text() == "mine"


def test_failed_validation_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(validate, "FP32_TOLERANCE", -1.0)
    with pytest.raises(ModelError, match=r"encoder\.onnx disagrees with torch") as err:
        write_bundle(make_model("rescnn"), tmp_path / "b")
    assert str(tmp_path / "b") in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    model = make_model("rescnn")
    with pytest.raises(ModelError, match="axis_order"):
        write_bundle(model, tmp_path / "a", axis_order="ras", validate=False)
    with pytest.raises(ModelError, match="extra_meta may not set files"):
        write_bundle(model, tmp_path / "b", extra_meta={"files": {}}, validate=False)
    with pytest.raises(OutputError, match="does not exist"):
        write_bundle(model, tmp_path / "missing" / "b", validate=False)
    with pytest.raises(ModelError, match="3-D"):
        write_bundle(model, tmp_path / "c", real_input=np.zeros((4, 4)))


def test_export_command_writes_a_bundle_from_a_run_checkpoint(tmp_path: Path, capsys) -> None:
    model = make_model("srresnet")
    ckpt = tmp_path / "run" / "checkpoint.pt"
    ckpt.parent.mkdir()
    torch.save({"spec": model.spec.to_dict(), "state_dict": model.state_dict(), "optimizer": {"lr": 1e-4}, "step": 123,
                "training": {"data": ["colin27"], "scales": [2, 4]}}, ckpt)
    out = tmp_path / "bundle"
    assert main(["export", str(ckpt), "-o", str(out), "--name", "srresnet-run"]) == 0
    err = capsys.readouterr().err
    assert "wrote bundle" in err and "fp32" in err
    meta = load_bundle(out).meta
    assert meta["name"] == "srresnet-run"
    assert meta["training"] == {"data": ["colin27"], "scales": [2, 4], "step": 123, "checkpoint": "checkpoint.pt"}
    assert main(["export", str(ckpt), "-o", str(out)]) == OutputError.exit_code
    assert "--force" in capsys.readouterr().err


def test_export_never_replaces_the_folder_holding_its_checkpoint(tmp_path: Path, capsys) -> None:
    model = make_model("srresnet")
    out = write_bundle(model, tmp_path / "b", validate=False)  # a bundle folder, so --force would replace it
    ckpt = out / "checkpoint.pt"
    torch.save({"spec": model.spec.to_dict(), "state_dict": model.state_dict()}, ckpt)
    before = ckpt.read_bytes()
    assert main(["export", str(ckpt), "-o", str(out), "--force"]) == OutputError.exit_code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holding the input" in err[0]
    assert ckpt.read_bytes() == before


def test_contract_constants_match_docs() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "onnx-contract.md").read_text()
    for name in (contract.ENCODER_INPUT, contract.ENCODER_OUTPUT, contract.DECODER_COORDS, contract.DECODER_OUTPUT, *ONNX_FILES):
        assert f"`{name}`" in doc


ORT_INCLUDE_CANDIDATES = ("/usr/include/onnxruntime", "/usr/local/include/onnxruntime")


def _ort_include_dir() -> Path | None:
    import os

    for d in filter(None, (os.environ.get("ORT_INCLUDE_DIR"), *ORT_INCLUDE_CANDIDATES)):
        if (Path(d) / "onnxruntime_cxx_api.h").is_file():
            return Path(d)
    return None


def test_cpp_snippet_compiles_against_onnxruntime_headers() -> None:
    """docs/examples/ort_contract.cpp must stay valid C++ against the real ORT C++ API."""
    import shutil as sh
    import subprocess

    compiler = sh.which("g++")
    include = _ort_include_dir()
    if compiler is None:
        pytest.skip("g++ not found")
    if include is None:
        pytest.skip("onnxruntime C++ headers not found (set ORT_INCLUDE_DIR or apt-get install libonnxruntime-dev)")
    source = Path(__file__).resolve().parents[1] / "docs" / "examples" / "ort_contract.cpp"
    run = subprocess.run([compiler, "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Werror", f"-I{include}", str(source)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]


ORT_LIB_CANDIDATES = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/local/lib", "/usr/lib")


def _ort_lib_dir() -> Path | None:
    import os

    for d in filter(None, (os.environ.get("ORT_LIB_DIR"), *ORT_LIB_CANDIDATES)):
        if (Path(d) / "libonnxruntime.so").exists():
            return Path(d)
    return None


@pytest.fixture(scope="module")
def cpp_example(tmp_path_factory) -> Path:
    """docs/examples/ort_contract.cpp built against libonnxruntime (once per module), or a skip."""
    import shutil as sh
    import subprocess

    compiler, include, lib = sh.which("g++"), _ort_include_dir(), _ort_lib_dir()
    if compiler is None or include is None or lib is None:
        pytest.skip("needs g++, the onnxruntime C++ headers and libonnxruntime.so (ORT_INCLUDE_DIR / ORT_LIB_DIR)")
    source = Path(__file__).resolve().parents[1] / "docs" / "examples" / "ort_contract.cpp"
    exe = tmp_path_factory.mktemp("cpp") / "ort_contract"
    build = subprocess.run([compiler, "-std=c++17", "-O1", f"-I{include}", str(source), f"-L{lib}", "-lonnxruntime",
                            f"-Wl,-rpath,{lib}", "-o", str(exe)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    return exe


def run_cpp_example(exe: Path, bundle_dir: Path, tmp_path: Path, in_shape=(12, 10, 9), scale=1.5) -> tuple[np.ndarray, np.ndarray, str]:
    """(C++ output, Python onnxruntime pipeline output, C++ stdout) for the example's synthetic input."""
    import subprocess

    pipeline = pytest.importorskip("arssr_rt.pipeline")
    raw = tmp_path / "out.raw"
    ran = subprocess.run([str(exe), str(bundle_dir), *map(str, in_shape), str(scale), str(raw)], capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-2000:]
    out_shape = tuple(int(round(n * scale)) for n in in_shape)
    cpp = np.fromfile(raw, dtype=np.float32).reshape(out_shape)
    lr = (np.arange(np.prod(in_shape)) % 97 / 96.0).astype(np.float32).reshape(in_shape)
    with pipeline.VolumeEngine(load_bundle(bundle_dir), backend="onnxruntime") as up:
        expected = up.infer(lr, out_shape)
    return cpp, expected, ran.stdout


def test_cpp_snippet_runs_and_matches_the_python_runtime(exported, cpp_example, tmp_path: Path) -> None:
    """Built and run against a bundle, the C++ example reproduces the onnxruntime pipeline."""
    _, out = exported
    cpp, expected, stdout = run_cpp_example(cpp_example, out, tmp_path)
    assert "(global coords, base lobes 0)" in stdout
    assert (expected > 0).mean() > 0.3
    assert np.abs(cpp - expected).max() <= 1e-4


def test_cpp_snippet_reads_the_phase_mode_and_matches_the_python_runtime(cpp_example, tmp_path: Path) -> None:
    """A spec.coords = "phase" bundle: the C++ example feeds the decoder the cell phase, as the runtime."""
    import subprocess

    torch.manual_seed(3)
    model = lively(build_model({**SHRUNK["rescnn"], "coords": "phase"}))
    out = write_bundle(model, tmp_path / "phase", name="rescnn-phase-TEST", validate=False)
    in_shape, scale = (12, 10, 9), 1.5
    cpp, expected, stdout = run_cpp_example(cpp_example, out, tmp_path, in_shape, scale)
    assert "(phase coords, base lobes 0)" in stdout
    assert (expected > 0).mean() > 0.3
    assert np.abs(cpp - expected).max() <= 1e-4
    # the mode matters: the same weights read as a global-coordinate bundle give another output
    meta = json.loads((Path(out) / "model.json").read_text())
    meta["spec"]["coords"] = "global"
    (Path(out) / "model.json").write_text(json.dumps(meta))
    ran = subprocess.run([str(cpp_example), str(out), *map(str, in_shape), str(scale), str(tmp_path / "global.raw")],
                         capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0 and "(global coords, base lobes 0)" in ran.stdout
    assert np.abs(np.fromfile(tmp_path / "global.raw", dtype=np.float32).reshape(cpp.shape) - cpp).max() > 1e-3
    # an unknown mode is refused, not guessed
    meta["spec"]["coords"] = "local"
    (Path(out) / "model.json").write_text(json.dumps(meta))
    ran = subprocess.run([str(cpp_example), str(out), *map(str, in_shape), str(scale)], capture_output=True, text=True, timeout=300)
    assert ran.returncode == 2 and "spec.coords" in ran.stderr


def test_cpp_snippet_samples_a_subvoxel_feature_grid_like_the_python_runtime(cpp_example, tmp_path: Path) -> None:
    """spec.feature_scale = 2: the C++ example samples the finer map on its own grid, as the runtime."""
    torch.manual_seed(5)
    model = build_model({**SHRUNK["rescnn"], "coords": "phase", "decoder": "modulated", "feature_scale": 2}).eval()
    with torch.no_grad():  # no final ReLU here; perturb so the modulator and sub-sites all matter
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    out = write_bundle(model, tmp_path / "subvoxel", name="rescnn-subvoxel-TEST", validate=False)
    cpp, expected, stdout = run_cpp_example(cpp_example, out, tmp_path, (11, 10, 9), 2.3)
    assert "(phase coords, base lobes 0)" in stdout
    assert np.abs(expected).max() > 0.05
    assert np.abs(cpp - expected).max() <= 1e-4



@pytest.fixture(scope="module")
def contract_harness(tmp_path_factory) -> Path:
    """tests/cpp/contract_harness.cpp (docs/examples/arssr_contract.h alone, no onnxruntime), built once."""
    import shutil as sh
    import subprocess

    compiler = sh.which("g++")
    if compiler is None:
        pytest.skip("g++ not found")
    source = Path(__file__).resolve().parent / "cpp" / "contract_harness.cpp"
    exe = tmp_path_factory.mktemp("harness") / "contract_harness"
    build = subprocess.run([compiler, "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror", str(source), "-o", str(exe)],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    return exe


@pytest.mark.parametrize("lobes", [3, 8])
def test_cpp_residual_base_equals_the_python_runtime(contract_harness, tmp_path: Path, lobes) -> None:
    """The C++ example's Lanczos base (residual bundles) is windowed_sinc's, on a real volume at
    anisotropic, non-integer scales, to float32 rounding."""
    import subprocess

    import nibabel as nib

    from arssr_rt import windowed_sinc
    from arssr_rt.geometry import input_index_of_output
    from conftest import FIXTURE_PATH

    hr = np.asarray(nib.load(str(FIXTURE_PATH)).get_fdata(dtype=np.float32))
    lr = np.ascontiguousarray(hr[5:25, 8:26, 10:27] / hr.max(), dtype=np.float32)
    out_shape = (47, 31, 40)
    lr.tofile(tmp_path / "lr.raw")
    ran = subprocess.run([str(contract_harness), "base", str(lobes), *map(str, lr.shape), *map(str, out_shape),
                          str(tmp_path / "lr.raw"), str(tmp_path / "base.raw")], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    cpp = np.fromfile(tmp_path / "base.raw", dtype=np.float32).reshape(out_shape)
    expected = windowed_sinc.sample_grid(lr, [input_index_of_output(np.arange(H), h, H) for h, H in zip(lr.shape, out_shape)],
                                         lobes=lobes)
    np.testing.assert_allclose(cpp, expected, rtol=0, atol=2e-6)
    other = windowed_sinc.sample_grid(lr, [input_index_of_output(np.arange(H), h, H) for h, H in zip(lr.shape, out_shape)],
                                      lobes=11 - lobes)
    assert np.abs(cpp - other).max() > 1e-3  # the lobes matter


@pytest.mark.parametrize("spec,expected", [({}, "coords=global lobes=0"), ({"coords": "phase", "base": "lanczos8"}, "coords=phase lobes=8"),
                                           ({"base": "lanczos3"}, "coords=global lobes=3"), ({"base": "none"}, "coords=global lobes=0"),
                                           ({"base": "lanczos5"}, None), ({"coords": "local"}, None)])
def test_cpp_reads_the_bundle_spec_and_refuses_unknown_bases(contract_harness, tmp_path: Path, spec, expected) -> None:
    """An unknown spec.base is refused (exit 2), never ignored: ignoring it would be a wrong image."""
    import subprocess

    (tmp_path / "model.json").write_text(json.dumps({"format": "arssr-rt-bundle", "spec": spec,
                                                     "onnx": {"decoder_inputs": ["features", "coords"]}}))
    ran = subprocess.run([str(contract_harness), "spec", str(tmp_path / "model.json")], capture_output=True, text=True, timeout=60)
    if expected is None:
        assert ran.returncode == 2 and "unknown spec." in ran.stderr
    else:
        assert ran.returncode == 0 and ran.stdout.strip() == expected, ran.stderr
