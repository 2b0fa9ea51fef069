"""Model bundles as untrusted input: files stay inside the bundle, model.json fields are checked.

Works on copies of the real embedded default bundle (no torch needed), each with one field
or file made wrong; the loader must refuse it with one line naming the field.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from arssr_rt import bundle_format
from arssr_rt.bundle import embedded_models_dir, load_bundle, sha256_file
from arssr_rt.errors import ModelError

DEFAULT = embedded_models_dir() / "default"


@pytest.fixture
def copy_default(tmp_path: Path) -> Callable[[Callable[[dict[str, Any]], None]], Path]:
    """A copy of the default bundle whose model.json ``edit`` changed in place."""

    def make(edit: Callable[[dict[str, Any]], None]) -> Path:
        out = shutil.copytree(DEFAULT, tmp_path / "bundle")
        meta = json.loads((out / "model.json").read_text())
        edit(meta)
        (out / "model.json").write_text(json.dumps(meta))
        return out

    return make


def test_the_embedded_default_bundle_validates() -> None:
    bundle = load_bundle(DEFAULT)
    assert bundle.file("weights.pt") == (DEFAULT / "weights.pt").resolve()


def _list(name: str, digest: str) -> Callable[[dict[str, Any]], None]:
    return lambda meta: meta["files"].__setitem__(name, digest)


@pytest.mark.parametrize("name", ["../../../../etc/passwd", "/etc/passwd", "sub/../../outside.bin"])
def test_files_entry_outside_the_bundle_is_refused(copy_default, name: str, tmp_path: Path) -> None:
    (tmp_path / "outside.bin").write_bytes(b"secret")
    digest = sha256_file(Path("/etc/passwd")) if "passwd" in name else sha256_file(tmp_path / "outside.bin")
    bundle = copy_default(_list(name, digest))
    for verify in (True, False):
        with pytest.raises(ModelError, match="outside") as err:
            load_bundle(bundle, verify=verify)
        assert "\n" not in str(err.value)


def test_files_entry_that_is_a_symlink_out_of_the_bundle_is_refused(copy_default, tmp_path: Path) -> None:
    (tmp_path / "outside.bin").write_bytes(b"secret")
    bundle = copy_default(_list("notes.bin", sha256_file(tmp_path / "outside.bin")))
    (bundle / "notes.bin").symlink_to(tmp_path / "outside.bin")
    with pytest.raises(ModelError, match="outside"):
        load_bundle(bundle)


def _spec(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda meta: meta["spec"].__setitem__(key, value)


def _top(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda meta: meta.__setitem__(key, value)


BAD_FIELDS = {
    "receptive radius 0": (_top("receptive_radius", 0), "receptive_radius must be an integer 1"),
    "receptive radius -3": (_top("receptive_radius", -3), "receptive_radius"),
    "receptive radius 2.5": (_top("receptive_radius", 2.5), "receptive_radius"),
    "receptive radius text": (_top("receptive_radius", "10"), "receptive_radius"),
    "axis order": (_top("axis_order", "yxz"), "axis_order must be one of xyz, zyx"),
    "normalization mode": (_top("normalization", {"mode": "zscore"}), "normalization.mode must be one of"),
    "normalization not an object": (_top("normalization", "minmax"), "normalization must be an object"),
    "unknown spec key": (_spec("dropout", 0.1), "unknown keys 'dropout'"),
    "feature dim negative": (_spec("feature_dim", -32), "spec.feature_dim must be an integer"),
    "feature dim float": (_spec("feature_dim", 32.0), "spec.feature_dim"),
    "decoder width bool": (_spec("decoder_width", True), "spec.decoder_width"),
    "decoder depth huge": (_spec("decoder_depth", 10**9), "spec.decoder_depth"),
    "feature scale 0": (_spec("feature_scale", 0), "spec.feature_scale must be an integer 1..4"),
    "coords": (_spec("coords", "local"), "spec.coords must be one of global, phase"),
    "decoder": (_spec("decoder", "siren"), "spec.decoder must be one of arssr, modulated"),
    "encoder": (_spec("encoder", "unet"), "spec.encoder must be one of"),
    "encoder arg": (_spec("encoder_args", {"width": "32"}), "spec.encoder_args.width"),
    "digest": (_list("weights.pt", "abc"), "sha256 hex digest"),
}


@pytest.mark.parametrize("case", sorted(BAD_FIELDS))
def test_bad_field_is_refused_in_one_line(copy_default, case: str) -> None:
    edit, reason = BAD_FIELDS[case]
    with pytest.raises(ModelError, match=reason) as err:
        load_bundle(copy_default(edit))
    assert "\n" not in str(err.value) and "model.json" in str(err.value)


def test_descriptive_top_level_keys_are_allowed(copy_default) -> None:
    bundle = load_bundle(copy_default(_top("license", "CC-BY-4.0")))
    assert bundle.meta["license"] == "CC-BY-4.0"


def test_cli_refuses_an_escaping_bundle_in_one_line(copy_default, tmp_path: Path, fixture_path: Path, capsys) -> None:
    from arssr_rt.cli import main

    bundle = copy_default(_list("../../../../etc/passwd", sha256_file(Path("/etc/passwd"))))
    out = tmp_path / "out.nii.gz"
    code = main(["upsample", str(fixture_path), "-o", str(out), "--scale", "2", "--model", str(bundle), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and err[0].startswith("arssr-rt: error:") and "outside" in err[0]
    assert not out.exists()


def test_spec_sets_match_the_torch_registry() -> None:
    models = pytest.importorskip("arssr_rt.network", exc_type=ImportError)
    from arssr_rt import windowed_sinc
    from arssr_rt.sampling import COORD_MODES

    assert sorted(models.ENCODERS) == sorted(bundle_format.ENCODERS)
    assert tuple(COORD_MODES) == bundle_format.COORDS
    assert tuple(windowed_sinc.BASES) == bundle_format.BASES
    assert tuple(windowed_sinc.RUNTIME_BASES) == bundle_format.RUNTIME_BASES
    assert sorted(models.ModelSpec().to_dict()) == sorted(bundle_format.SPEC_KEYS)


def test_model_spec_refuses_unknown_keys() -> None:
    models = pytest.importorskip("arssr_rt.network", exc_type=ImportError)
    with pytest.raises(ModelError, match="unknown keys 'dropout'"):
        models.ModelSpec.from_dict({"encoder": "rescnn", "dropout": 0.1})


def test_runtime_imports_nothing_from_the_export_package() -> None:
    code = (
        "import sys, arssr_rt.cli, arssr_rt.pipeline, arssr_rt.bundle, arssr_rt.quantize, arssr_rt.engines.builder\n"
        "import arssr_rt.backends.onnxruntime_backend, arssr_rt.backends.openvino_backend, arssr_rt.batch.triton\n"
        "import arssr_rt.batch.runner, arssr_rt.commands.upsample, arssr_rt.commands.info, arssr_rt.commands.models\n"
        "print(sorted(m for m in sys.modules if m.startswith('arssr_rt.export')))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"
