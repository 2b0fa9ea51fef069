"""--keep-acquired --acquisition kspace: the output keeps a band-limited input's own spectrum
inside the acquired band (the central k-space crop of the output gives the input back)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from arssr_rt.consistency import keep_kspace
from arssr_rt.degrade import cubic_resample, degrade
from arssr_rt.fourier import fourier_resample, sinc_upsample
from conftest import FIXTURE_PATH


@pytest.fixture(scope="module")
def hr() -> np.ndarray:
    return np.asarray(nib.load(str(FIXTURE_PATH)).get_fdata(dtype=np.float32))


@pytest.mark.parametrize("scale", [(2, 2, 2), (3, 3, 3), (2.5, 2.5, 2.5), (1, 1, 4), (2, 1, 3)])
def test_the_band_of_the_output_is_the_acquired_data(hr, scale):
    """A real k-space-cropped LR (magnitude), up-sampled by tricubic (which does not honour the
    band), then projected: the output's k-space crop equals the LR to float32 precision; even,
    odd, non-integer and per-axis scales (an axis at scale 1 is its own band)."""
    lr = degrade(hr, scale, "kspace")
    out = cubic_resample(lr, hr.shape).astype(np.float32)
    rng = float(lr.max() - lr.min())
    before = np.abs(fourier_resample(out, lr.shape) - lr).max()
    keep_kspace(out, lr)
    after = np.abs(fourier_resample(out, lr.shape) - lr).max()
    assert before > 1e-2 * rng and after < 1e-4 * rng
    again = keep_kspace(out.copy(), lr)  # a projection: applying it twice changes nothing
    assert np.abs(again - out).max() < 1e-4 * rng


def test_sinc_interpolation_is_a_fixed_point_and_detail_outside_the_band_is_kept(hr):
    lr = degrade(hr, (2, 2, 2), "kspace")
    sinc = sinc_upsample(lr, hr.shape)
    rng = float(lr.max() - lr.min())
    assert np.abs(keep_kspace(sinc.copy(), lr) - sinc).max() < 1e-4 * rng
    detail = hr - fourier_resample(fourier_resample(hr, lr.shape), hr.shape)  # HR content beyond the band
    kept = keep_kspace((sinc + detail).astype(np.float32), lr)
    np.testing.assert_allclose(kept, sinc + detail, atol=1e-4 * rng)


def test_projection_without_scipy_matches(hr, monkeypatch):
    """The runtime needs no scipy: numpy.fft gives the same projection."""
    import sys

    lr = degrade(hr, (2, 2, 3), "kspace")
    out = cubic_resample(lr, hr.shape).astype(np.float32)
    with_scipy = keep_kspace(out.copy(), lr)

    monkeypatch.setitem(sys.modules, "scipy.fft", None)  # as in a core-only install: importing it raises ImportError
    without = keep_kspace(out.copy(), lr)
    np.testing.assert_allclose(without, with_scipy, atol=1e-5 * float(lr.max() - lr.min()))


def test_refuses_a_down_sampled_axis(hr):
    with pytest.raises(ValueError, match="up-sampled"):
        keep_kspace(np.zeros((8, 8, 8), np.float32), np.zeros((8, 8, 16), np.float32))


def test_cli_kspace_consistency_end_to_end(tmp_path, hr, cli):
    """The embedded model on a real x2 k-space-cropped volume: the written float32 output's
    k-space crop is the input; the usage errors are one line and write nothing."""
    lr = degrade(hr, (2, 2, 2), "kspace")
    src = tmp_path / "lowres.nii.gz"
    nib.Nifti1Image(lr.astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0])).to_filename(src)
    out = tmp_path / "sr.nii.gz"
    code, err = cli("upsample", src, "--scale", "2", "-o", out, "--keep-acquired", "--acquisition", "kspace",
                    "--dtype", "float32", "--backend", "onnxruntime", "--threads", "1", "-q")
    assert code == 0, err
    got = np.asarray(nib.load(str(out)).dataobj, dtype=np.float32)
    rng = float(lr.max() - lr.min())
    assert np.abs(fourier_resample(got, lr.shape) - lr).max() < 1e-4 * rng
    plain = tmp_path / "plain.nii.gz"
    assert cli("upsample", src, "--scale", "2", "-o", plain, "--dtype", "float32", "--backend", "onnxruntime",
               "--threads", "1", "-q")[0] == 0
    model_only = np.asarray(nib.load(str(plain)).dataobj, dtype=np.float32)
    assert np.abs(fourier_resample(model_only, lr.shape) - lr).max() > 1e-3 * rng  # the model alone does not keep the band
    for args, reason in [(["--acquisition", "kspace"], "--keep-acquired"),
                         (["--keep-acquired", "--acquisition", "spiral"], "--acquisition"),
                         (["--keep-acquired", "--acquisition", "kspace", "--slice-gap", "0.2"], "--slice-gap"),
                         (["--keep-acquired", "--acquisition", "kspace", "--adapt"], "--adapt")]:
        code, err = cli("upsample", src, "--scale", "2", "-o", tmp_path / "x.nii.gz", *args)
        assert code == 2 and reason in err and len(err.strip().splitlines()) == 1, (args, err)
        assert not (tmp_path / "x.nii.gz").exists()
