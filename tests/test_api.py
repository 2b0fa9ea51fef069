"""The Python API (arssr_rt.upsample / Upsampler / transforms) against what the CLI writes.

Real data: a 32^3 crop of the shipped Colin27 fixture, the embedded default model (torch-free
backends), one thread. Every input kind is checked against ``arssr-rt upsample`` on the same
file and options: the geometry is what the CLI writes and the voxels are bit-identical.
"""

from __future__ import annotations

import pickle
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import arssr_rt
from arssr_rt.cli import main
from arssr_rt.errors import ArssrError
from arssr_rt.params import CLI_FLAGS, python_names

from conftest import FIXTURE_PATH, REPO_ROOT

SCALE = (1.5, 2.0, 1.25)
OPTS = dict(threads=1)


@pytest.fixture(scope="module")
def crop(tmp_path_factory) -> Path:
    """A 32^3 crop of the real fixture (uint8, qform = sform code 1), as a file."""
    path = tmp_path_factory.mktemp("api") / "crop.nii.gz"
    img = nib.load(FIXTURE_PATH).slicer[16:48, 16:48, 16:48]
    img.set_qform(img.affine, code=1)  # slicer leaves sform code 2 and qform code 0
    img.set_sform(img.affine, code=1)
    nib.save(img, path)
    return path


def cli_output(src: Path, out: Path, *args: str) -> nib.Nifti1Image:
    argv = ["upsample", str(src), "-o", str(out), "--threads", "1", "--quiet", *args]
    assert main(argv) == 0
    return nib.load(out)


@pytest.fixture(scope="module")
def cli_float(crop, tmp_path_factory) -> nib.Nifti1Image:
    """``arssr-rt upsample crop --scale 1.5,2,1.25 --dtype float32``."""
    return cli_output(crop, tmp_path_factory.mktemp("cli") / "sr.nii.gz", "--scale", "1.5,2,1.25", "--dtype", "float32")


@pytest.fixture(scope="module")
def api_image(crop) -> nib.Nifti1Image:
    return arssr_rt.upsample(nib.load(crop), scale=SCALE, **OPTS)


def fdata(img) -> np.ndarray:
    return np.asarray(img.get_fdata(dtype=np.float32))


# ----- nibabel images ---------------------------------------------------------------------------


def test_nibabel_image_in_image_out_equals_the_cli_file(api_image, cli_float):
    assert type(api_image) is nib.Nifti1Image and api_image.get_data_dtype() == np.float32
    np.testing.assert_array_equal(fdata(api_image), fdata(cli_float))  # bit-identical voxels
    # the header as it would be on disk: every field equal to the CLI's file
    on_disk = nib.Nifti1Image.from_bytes(api_image.to_bytes())
    for field in ("dim", "pixdim", "qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d", "qoffset_x",
                  "qoffset_y", "qoffset_z", "srow_x", "srow_y", "srow_z", "xyzt_units", "descrip", "intent_code",
                  "datatype", "cal_min", "cal_max"):
        np.testing.assert_array_equal(on_disk.header[field], cli_float.header[field], err_msg=field)
    np.testing.assert_allclose(api_image.affine, cli_float.affine, atol=1e-5)  # the file stores float32
    assert api_image.header.get_zooms() == pytest.approx((2 / 3, 0.5, 0.8))
    assert int(api_image.header["qform_code"]) == int(api_image.header["sform_code"]) == 1


def test_output_affine_keeps_the_field_of_view(crop, api_image):
    from arssr_rt.geometry import plan_output_grid

    src = nib.load(crop)
    grid = plan_output_grid(src.shape, src.affine, scale=SCALE)
    np.testing.assert_allclose(api_image.affine, grid.affine, atol=1e-12)
    assert api_image.shape == grid.shape == (48, 64, 40)


def test_integer_dtype_decodes_like_the_cli_file(crop, tmp_path):
    cli = cli_output(crop, tmp_path / "u8.nii.gz", "--scale", "1.5,2,1.25")  # uint8 in -> uint8 out
    ours = arssr_rt.upsample(nib.load(crop), scale=SCALE, dtype="uint8", **OPTS)
    assert ours.get_data_dtype() == cli.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(fdata(ours), fdata(cli))


def test_clip_and_keep_acquired_equal_the_cli(crop, tmp_path):
    cli = cli_output(crop, tmp_path / "kc.nii.gz", "--scale", "1.5,2,1.25", "--dtype", "float32", "--keep-acquired",
                     "--slice-profile", "gaussian", "--clip-to-input-range")
    ours = arssr_rt.upsample(nib.load(crop), scale=SCALE, keep_acquired="gaussian", clip_to_input_range=True, **OPTS)
    np.testing.assert_array_equal(fdata(ours), fdata(cli))
    src = fdata(nib.load(crop))
    assert src.min() <= fdata(ours).min() and fdata(ours).max() <= src.max()


def test_nifti2_stays_nifti2_and_mgh_stays_mgh(crop, api_image):
    src = nib.load(crop)
    data = np.asarray(src.dataobj)
    n2 = arssr_rt.upsample(nib.Nifti2Image(data, src.affine, src.header), scale=SCALE, **OPTS)
    assert type(n2) is nib.Nifti2Image
    np.testing.assert_array_equal(fdata(n2), fdata(api_image))
    mgh = arssr_rt.upsample(nib.MGHImage(data, src.affine), scale=SCALE, **OPTS)
    assert type(mgh) is nib.MGHImage and mgh.shape == api_image.shape
    np.testing.assert_allclose(mgh.affine, api_image.affine, atol=1e-5)
    np.testing.assert_array_equal(fdata(mgh), fdata(api_image))


def test_4d_nifti_is_done_volume_by_volume_and_keeps_tr(crop):
    src = nib.load(crop)
    vol = np.asarray(src.dataobj).astype(np.float32)
    series = nib.Nifti1Image(np.stack([vol, vol[::-1] * 2 + 5], axis=-1), src.affine)
    series.header.set_xyzt_units("mm", "sec")
    series.header["pixdim"][4] = 2.5
    out = arssr_rt.upsample(series, scale=1.5, **OPTS)
    assert out.shape == (48, 48, 48, 2) and out.header["pixdim"][4] == pytest.approx(2.5)
    assert out.header.get_xyzt_units() == ("mm", "sec")
    for t in range(2):
        one = arssr_rt.upsample(nib.Nifti1Image(np.asarray(series.dataobj)[..., t], src.affine), scale=1.5, **OPTS)
        np.testing.assert_array_equal(fdata(out)[..., t], fdata(one))


# ----- arrays and tensors -----------------------------------------------------------------------


def test_array_and_affine_in_array_and_affine_out(crop, api_image):
    src = nib.load(crop)
    data, affine = arssr_rt.upsample(src.get_fdata(), src.affine, scale=SCALE, **OPTS)
    assert data.dtype == np.float32
    np.testing.assert_array_equal(data, fdata(api_image))
    np.testing.assert_array_equal(affine, api_image.affine)
    alone = arssr_rt.upsample(src.get_fdata(), scale=SCALE, **OPTS)  # no affine: the array only
    assert isinstance(alone, np.ndarray)
    np.testing.assert_array_equal(alone, data)  # the same voxels (intensities do not depend on the affine)


def test_channel_first_array_is_each_channel_on_its_own(crop):
    vol = nib.load(crop).get_fdata(dtype=np.float32)[:20, :20, :20]
    x = np.stack([vol, vol * 3 + 100, vol[:, ::-1]])
    out = arssr_rt.upsample(x, scale=1.5, **OPTS)
    assert out.shape == (3, 30, 30, 30)
    for c in range(3):
        np.testing.assert_array_equal(out[c], arssr_rt.upsample(x[c], scale=1.5, **OPTS))
    # normalised per channel: a scaled copy of a channel comes back scaled the same way
    np.testing.assert_allclose(out[1], out[0] * 3 + 100, rtol=1e-5, atol=1e-3)


def test_tensor_round_trip_keeps_kind_device_and_dtype(crop):
    torch = pytest.importorskip("torch")
    from arssr_rt.geometry import plan_output_grid

    src = nib.load(crop)
    vol = src.get_fdata(dtype=np.float32)[:20, :20, :20]
    ref = arssr_rt.upsample(vol, scale=1.5, **OPTS)
    x = torch.from_numpy(vol.astype(np.float64))[None].requires_grad_(True)
    y = arssr_rt.upsample(x, scale=1.5, **OPTS)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float64 and y.device == x.device and tuple(y.shape) == (1, 30, 30, 30)
    np.testing.assert_array_equal(y[0].numpy(), ref.astype(np.float64))
    y16, affine = arssr_rt.upsample(torch.from_numpy(vol).to(torch.uint8)[None], src.affine, scale=1.5, **OPTS)
    assert y16.dtype == torch.float32  # an integer tensor comes back float32
    np.testing.assert_array_equal(y16[0].numpy(), ref)
    np.testing.assert_array_equal(affine, plan_output_grid(vol.shape, src.affine, scale=(1.5,) * 3).affine)
    yi = arssr_rt.upsample(torch.from_numpy(vol)[None], scale=1.5, dtype="int16", **OPTS)
    assert yi.dtype == torch.int16
    np.testing.assert_array_equal(yi[0].numpy(), np.clip(np.rint(ref), -32768, 32767).astype(np.int16))


def test_monai_metatensor_gets_the_cli_affine(crop, api_image):
    torch = pytest.importorskip("torch")
    monai_data = pytest.importorskip("monai.data", reason="MONAI is optional (pip install monai)")
    src = nib.load(crop)
    x = monai_data.MetaTensor(torch.from_numpy(src.get_fdata(dtype=np.float32))[None], affine=torch.as_tensor(src.affine),
                              meta={"filename_or_obj": str(crop)})
    y = arssr_rt.upsample(x, scale=SCALE, **OPTS)
    assert isinstance(y, monai_data.MetaTensor) and y.meta["filename_or_obj"] == str(crop)
    np.testing.assert_allclose(y.affine.numpy(), api_image.affine, atol=1e-12)
    np.testing.assert_array_equal(y.as_tensor()[0].numpy(), fdata(api_image))


# ----- Upsampler, progress, notes, transforms --------------------------------------------------


def test_upsampler_loads_once_and_gives_the_same_voxels(crop, api_image, monkeypatch):
    from arssr_rt import pipeline

    loads = []
    real = pipeline.resolve_model
    monkeypatch.setattr(pipeline, "resolve_model", lambda m: loads.append(m) or real(m))
    src = nib.load(crop)
    with arssr_rt.Upsampler(**OPTS) as up:
        first = up(src, scale=SCALE)
        data, _ = up.run(src.get_fdata(), src.affine, scale=SCALE)
        assert up.backend_name and up.model_name
    assert len(loads) == 1
    np.testing.assert_array_equal(fdata(first), fdata(api_image))
    np.testing.assert_array_equal(data, fdata(api_image))


def test_progress_callable_counts_every_output_voxel(crop):
    vol = nib.load(crop).get_fdata(dtype=np.float32)
    seen: list[tuple[int, int]] = []
    arssr_rt.upsample(np.stack([vol, vol + 1]), scale=1.5, progress=lambda done, total: seen.append((done, total)), **OPTS)
    done = [d for d, _ in seen]
    assert done == sorted(done) and seen[-1] == (2 * 48**3, 2 * 48**3) and len(seen) > 2


def test_classical_interp_loads_no_model_and_equals_the_cli(crop, tmp_path, monkeypatch):
    from arssr_rt import pipeline

    cli = cli_output(crop, tmp_path / "nn.nii.gz", "--scale", "1.5,2,1.25", "--interp", "nearest")
    monkeypatch.setattr(pipeline, "resolve_model", lambda m: pytest.fail("the model was loaded for interp='nearest'"))
    ours = arssr_rt.upsample(nib.load(crop), scale=SCALE, interp="nearest", dtype="uint8")
    np.testing.assert_array_equal(fdata(ours), fdata(cli))


def test_notes_are_python_warnings(crop):
    src = nib.load(crop)
    with pytest.warns(UserWarning, match="down-samples axis 2"):
        arssr_rt.upsample(src, scale=(1, 1, 0.75), interp="linear")
    labels = nib.Nifti1Image((np.asarray(src.dataobj) > 100).astype(np.int16), src.affine)
    labels.header.set_intent("label")
    with pytest.warns(UserWarning, match=r"using interp='nearest' \(pass interp to choose another\)"):
        out = arssr_rt.upsample(labels, scale=2)
    assert set(np.unique(fdata(out))) == {0.0, 1.0}


def test_transform_updates_the_meta_dict_affine(crop, api_image):
    from arssr_rt.transforms import ArssrUpsampled

    src = nib.load(crop)
    sample = {"image": src.get_fdata(dtype=np.float32)[None], "image_meta_dict": {"affine": src.affine, "x": 1}, "label": 7}
    t = ArssrUpsampled(keys=["image"], scale=SCALE, **OPTS)
    out = t(sample)
    assert out["label"] == 7 and out["image_meta_dict"]["x"] == 1
    assert sample["image_meta_dict"]["affine"] is src.affine  # the input dict is not changed
    np.testing.assert_array_equal(out["image_meta_dict"]["affine"], api_image.affine)
    np.testing.assert_array_equal(out["image"][0], fdata(api_image))
    state = pickle.loads(pickle.dumps(t))  # to DataLoader workers: without the loaded model
    assert state._upsampler is None and t._upsampler is not None
    t.close()
    with pytest.raises(KeyError, match="allow_missing_keys"):
        ArssrUpsampled(keys="other", scale=2)(sample)
    assert ArssrUpsampled(keys="other", scale=2, allow_missing_keys=True)(sample)["label"] == 7
    with pytest.raises(TypeError):
        ArssrUpsampled(keys="image", scale=2, treads=1)  # a misspelt option fails when built


def test_transform_on_tensors_keeps_tensor_affines(crop, api_image):
    torch = pytest.importorskip("torch")
    from arssr_rt.transforms import ArssrUpsampled

    src = nib.load(crop)
    x = torch.from_numpy(src.get_fdata(dtype=np.float32))[None]
    out = ArssrUpsampled("image", scale=SCALE, **OPTS)({"image": x, "image_meta_dict": {"affine": torch.as_tensor(src.affine)}})
    assert isinstance(out["image"], torch.Tensor) and isinstance(out["image_meta_dict"]["affine"], torch.Tensor)
    np.testing.assert_allclose(out["image_meta_dict"]["affine"].numpy(), api_image.affine, atol=1e-12)


# ----- errors name the parameter from Python and the flag on the command line -------------------

# (Python keywords, CLI arguments, [(CLI spelling, Python spelling)]): the same message, once
ERROR_CASES = [
    (dict(scale=2, tile=3), ["--scale", "2", "--tile", "3"], [("--tile", "tile"), ("--max-memory", "max_memory")]),
    (dict(scale=2, max_memory="0.01"), ["--scale", "2", "--max-memory", "0.01"], [("--max-memory", "max_memory")]),
    (dict(scale="1_0"), ["--scale", "1_0"], [("--scale", "scale")]),
    (dict(), [], [("--scale", "scale"), ("--voxel-size", "voxel_size"), ("--shape", "shape"), ("--reference", "reference")]),
    (dict(scale=2, shape=(8, 8, 8)), ["--scale", "2", "--shape", "8,8,8"], [("--scale", "scale"), ("--voxel-size", "voxel_size"), ("--shape", "shape")]),
    (dict(voxel_size=1e-9), ["--voxel-size", "1e-9"], [("--voxel-size", "voxel_size")]),
    (dict(scale=2, dtype="float16"), ["--scale", "2", "--dtype", "float16"], [("--dtype", "dtype")]),
    (dict(scale=2, interp="bogus"), ["--scale", "2", "--interp", "bogus"], [("--interp", "interp")]),
    (dict(scale=2, normalization="zscore"), ["--scale", "2", "--normalization", "zscore"], [("--normalization", "normalization")]),
    (dict(scale=2, max_output_voxels=10), ["--scale", "2", "--max-output-voxels", "10"], [("--max-output-voxels", "max_output_voxels")]),
    (dict(scale=(2, 2, 0.75), keep_acquired=True), ["--scale", "2,2,0.75", "--keep-acquired"], [("--keep-acquired", "keep_acquired")]),
    (dict(scale=2, keep_acquired="triangle"), ["--scale", "2", "--keep-acquired", "--slice-profile", "triangle"], [("--keep-acquired", "keep_acquired")]),
]


def cli_error(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after any warning line
    assert err.startswith("arssr-rt: error: ")
    return err.removeprefix("arssr-rt: error: ")


@pytest.mark.filterwarnings("ignore:this request down-samples")
@pytest.mark.parametrize("kwargs,argv,spellings", ERROR_CASES, ids=[" ".join(c[1]) or "no-size" for c in ERROR_CASES])
def test_errors_name_the_parameter_in_python_and_the_flag_on_the_cli(kwargs, argv, spellings, crop, tmp_path, capsys):
    with pytest.raises(ArssrError) as err:
        arssr_rt.upsample(nib.load(crop), **kwargs, **OPTS)
    api_msg = str(err.value)
    cli_msg = cli_error(["upsample", str(crop), "-o", str(tmp_path / "o.nii.gz"), "--threads", "1", *argv], capsys)
    assert not re.search(r"(^|\s|\()--[a-z]", api_msg), api_msg  # no CLI flag in a Python error
    for flag, name in spellings:
        assert flag in cli_msg and re.search(rf"\b{name}\b", api_msg)
    expected = cli_msg
    for flag, name in sorted(spellings, key=lambda s: -len(s[0])):
        expected = expected.replace(flag, name)
    assert api_msg == expected  # one message, two spellings of the setting
    assert not (tmp_path / "o.nii.gz").exists()


def test_label_map_advice_is_spelled_for_each_surface(tmp_path, crop, capsys):
    src = nib.load(crop)
    path = tmp_path / "seg.nii.gz"
    nib.save(nib.Nifti1Image((np.asarray(src.dataobj) > 100).astype(np.int16), src.affine), path)
    with pytest.raises(arssr_rt.InputError) as err:
        arssr_rt.upsample(nib.load(path), scale=2)
    cli_msg = cli_error(["upsample", str(path), "--scale", "2", "-o", str(tmp_path / "o.nii.gz")], capsys)
    assert "pass interp='nearest' to resample" in str(err.value) and "or as_intensity=True if" in str(err.value)
    assert "pass --interp nearest to resample" in cli_msg and "or --as-intensity if" in cli_msg
    assert str(err.value).replace("interp='nearest'", "--interp nearest").replace("as_intensity=True", "--as-intensity") == cli_msg


def test_upsampler_and_file_errors_name_parameters(crop, tmp_path):
    with pytest.raises(arssr_rt.InputError, match=r"^chunk must be a whole number >= 1, got 0$"):
        arssr_rt.Upsampler(chunk=0)
    with pytest.raises(arssr_rt.InputError, match=r"^max_memory must be from .* got 5$"):
        arssr_rt.Upsampler(max_memory=5)  # bytes
    assert arssr_rt.Upsampler(max_memory="512M", **OPTS)._engine.max_memory == 512 * 2**20
    existing = tmp_path / "exists.nii.gz"
    existing.write_bytes(b"x")
    with pytest.raises(arssr_rt.OutputError, match=r"already exists \(use force=True to overwrite\)"):
        arssr_rt.upsample_file(crop, existing, scale=2)
    with pytest.raises(arssr_rt.InputError, match="^x must be a nibabel image"):
        arssr_rt.upsample("crop.nii.gz", scale=2)
    with pytest.raises(arssr_rt.InputError, match="channel-first 4-D"):
        arssr_rt.upsample(np.zeros((2, 2, 4, 4, 4)), scale=2)
    with pytest.raises(arssr_rt.InputError, match=r"^array \(channel 1\): is constant"):
        arssr_rt.upsample(np.stack([nib.load(crop).get_fdata(), np.zeros((32, 32, 32))]), scale=2)


def test_the_cli_still_names_flags_after_python_calls(crop, tmp_path, capsys):
    with python_names(), pytest.raises(ArssrError, match="^tile must"):
        arssr_rt.upsample(nib.load(crop), scale=2, tile=2)
    assert cli_error(["upsample", str(crop), "--scale", "2", "--tile", "2"], capsys).startswith("--tile must be at least 8")


def test_every_named_setting_is_in_the_flag_table_and_every_flag_exists():
    import typer

    from arssr_rt.cli import app

    used = set()
    for path in (REPO_ROOT / "arssr_rt").rglob("*.py"):
        used |= set(re.findall(r"""\b(?:flag|setting)\(\s*['"]([a-z_]+)['"]""", path.read_text(encoding="utf-8")))
    assert used and used <= set(CLI_FLAGS), used - set(CLI_FLAGS)
    command = typer.main.get_command(app)
    options = {opt for name in ("upsample", "batch") for p in command.commands[name].params for opt in p.opts}
    assert set(CLI_FLAGS.values()) <= options, set(CLI_FLAGS.values()) - options


def test_no_runtime_error_hard_codes_a_cli_flag():
    """Messages on the upsample path name settings through params (the CLI-only commands,
    their modules and training/export/evaluation tools keep their flags)."""
    import ast

    runtime = [p for p in (REPO_ROOT / "arssr_rt").glob("*.py") if p.name != "cli.py"]
    runtime += list((REPO_ROOT / "arssr_rt" / "backends").glob("*.py"))
    found = []
    for path in runtime:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Raise) and node.exc is not None:
                found += [f"{path.name}:{node.lineno}" for sub in ast.walk(node.exc)
                          if isinstance(sub, ast.Constant) and isinstance(sub.value, str) and re.search(r"(^|[\s(])--[a-z]", sub.value)]
    assert not found, found


def test_import_stays_cheap():
    """``import arssr_rt`` loads neither the API nor the pipeline (torch-free runs: test_torch_free)."""
    code = ("import sys, arssr_rt\n"
            "assert 'arssr_rt.api' not in sys.modules and 'arssr_rt.pipeline' not in sys.modules\n"
            "assert callable(arssr_rt.upsample) and isinstance(arssr_rt.Upsampler, type) and arssr_rt.transforms.ArssrUpsampled\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.gpu
def test_cuda_tensor_comes_back_on_its_device(crop):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here")
    vol = nib.load(crop).get_fdata(dtype=np.float32)[:20, :20, :20]
    x = torch.from_numpy(vol)[None].to("cuda", torch.float16)
    y = arssr_rt.upsample(x, scale=1.5, backend="onnxruntime", **OPTS)
    assert y.device == x.device and y.dtype == torch.float16
    ref = arssr_rt.upsample(x.float().cpu(), scale=1.5, backend="onnxruntime", **OPTS)
    np.testing.assert_array_equal(y.cpu().numpy(), ref.numpy().astype(np.float16))


def test_max_memory_takes_bytes_from_python_and_units_as_text():
    from arssr_rt.options import max_memory_bytes, parse_max_memory

    assert parse_max_memory("3") == 3 * 2**30  # the CLI's bare number stays GiB
    assert parse_max_memory("512M") == parse_max_memory("512MiB") == parse_max_memory("0.5G") == 2**29
    assert parse_max_memory("1.5GiB") == parse_max_memory("1536 MB") == 3 * 2**29
    assert max_memory_bytes(2**30) == 2**30 and max_memory_bytes("1G") == 2**30
    for bad in ("2X", "1e3M", "-1G", "nan", ""):
        with pytest.raises(arssr_rt.InputError, match="max-memory|max_memory"):
            parse_max_memory(bad)
    with python_names(), pytest.raises(arssr_rt.InputError, match=r"^max_memory must be a number of bytes"):
        max_memory_bytes(True)


def test_reference_from_python_equals_the_cli(crop, tmp_path):
    """``reference=`` (a path or a nibabel image) gives the CLI's --reference output: an
    oblique reference (rotated 15 degrees about two axes), model path and a classical kernel."""
    src = nib.load(crop)
    angle = np.deg2rad(15)
    rx = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    ry = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    affine = np.eye(4)
    affine[:3, :3] = rx @ ry @ (src.affine[:3, :3] * 0.75)
    centre = src.affine[:3, :3] @ ((np.array(src.shape) - 1) / 2) + src.affine[:3, 3]
    affine[:3, 3] = centre - affine[:3, :3] @ (np.array([20, 20, 20]) - 1) / 2
    ref = nib.Nifti1Image(np.zeros((20, 20, 20), np.int16), affine)
    ref_path = tmp_path / "ref.nii.gz"
    nib.save(ref, ref_path)
    for extra, kwargs in (([], {}), (["--interp", "linear"], {"interp": "linear"})):
        cli = cli_output(crop, tmp_path / f"cli{len(extra)}.nii.gz", "--reference", str(ref_path), "--dtype", "float32", *extra)
        for given in (ref_path, nib.load(ref_path)):
            ours = arssr_rt.upsample(src, reference=given, **kwargs, **OPTS)
            np.testing.assert_allclose(ours.affine, ref.affine, atol=1e-5)
            np.testing.assert_array_equal(fdata(ours), fdata(cli))
    with pytest.raises(ArssrError, match="reference gives the output grid.*drop scale"):
        arssr_rt.upsample(src, reference=ref_path, scale=2)


def test_nibabel_image_in_metres_is_taken_in_mm(crop):
    """An in-memory image (and reference) whose xyzt_units say metres: voxel_size and the
    reference grid are mm, as for the same scan stored in mm."""
    mm = nib.load(crop)
    affine = mm.affine.copy()
    affine[:3, :] /= 1000.0
    metres = nib.Nifti1Image(np.asarray(mm.dataobj), affine)
    metres.header.set_xyzt_units("meter", "sec")
    for kw in (dict(voxel_size=0.5), dict(reference=metres)):
        got = arssr_rt.upsample(metres, interp="linear", **kw, **OPTS)
        want = arssr_rt.upsample(mm, interp="linear", **({"reference": mm} if "reference" in kw else kw), **OPTS)
        assert got.header.get_xyzt_units()[0] == "mm"
        assert got.shape == want.shape
        np.testing.assert_allclose(got.affine, want.affine, atol=1e-4)
        np.testing.assert_array_equal(np.asarray(got.dataobj), np.asarray(want.dataobj))
