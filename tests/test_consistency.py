"""--keep-acquired: the output averaged over each acquired slice's profile gives the slice back."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from arssr_rt.consistency import keep_acquired
from arssr_rt.degrade import cubic_resample, degrade, slice_matrix
from conftest import FIXTURE_PATH


@pytest.fixture(scope="module")
def hr() -> np.ndarray:
    return np.asarray(nib.load(str(FIXTURE_PATH)).get_fdata(dtype=np.float32))


def test_box_rows_average_the_slice_extent():
    m = slice_matrix(16, 4, "box")
    np.testing.assert_allclose(m[1, 4:8], 0.25)
    assert np.count_nonzero(m[1]) == 4
    thin = slice_matrix(16, 4, "box", gap=0.5)  # slice covers the middle half of its spacing
    np.testing.assert_allclose(thin[1, 5:7], 0.5)
    frac = slice_matrix(8, 3, "box")  # non-integer ratio: partial-voxel weights
    np.testing.assert_allclose(frac.sum(axis=1), 1.0)
    assert 0 < frac[0, 2] < frac[0, 1]


@pytest.mark.parametrize("profile,gap", [("box", 0.0), ("box", 0.3), ("gaussian", 0.0)])
def test_every_acquired_slice_is_reproduced_to_float_precision(hr, profile, gap):
    """A thick-slice LR of the real fixture (1x1x4), up-sampled by tricubic (which does not honour
    the slices), then projected: each slice's profile average equals the acquired slice."""
    lr = degrade(hr, (1, 1, 4), "slice", profile=profile, gap=gap)
    out = cubic_resample(lr, hr.shape)
    rng = float(lr.max() - lr.min())
    m = slice_matrix(hr.shape[2], lr.shape[2], profile, gap)
    before = np.abs(np.tensordot(out, m, axes=([2], [1])) - lr).max()
    keep_acquired(out, lr, profile, gap)
    after = np.abs(np.tensordot(out.astype(np.float64), m, axes=([2], [1])) - lr).max()
    assert before > 1e-2 * rng  # the check can fail: tricubic alone is off
    assert after < 1e-4 * rng, after


def test_projection_moves_the_output_only_as_much_as_needed(hr):
    """Least-squares: an output that already reproduces the slices is left unchanged, and the
    projection never makes the estimate worse against the truth."""
    lr = degrade(hr, (1, 1, 4), "slice")
    exact = hr.astype(np.float64).copy()
    np.testing.assert_allclose(keep_acquired(exact.copy(), lr), exact, atol=1e-3)
    out = cubic_resample(lr, hr.shape).astype(np.float64)
    err_before = np.abs(out - hr).mean()
    keep_acquired(out, lr)
    assert np.abs(out - hr).mean() <= err_before


def test_isotropic_scale_projects_every_axis(hr):
    lr = degrade(hr, (2, 2, 2), "slice")
    out = cubic_resample(lr, hr.shape)
    keep_acquired(out, lr)
    back = out.astype(np.float64)
    for a in range(3):
        back = np.moveaxis(np.tensordot(slice_matrix(hr.shape[a], lr.shape[a]), back, axes=([1], [a])), 0, a)
    assert np.abs(back - lr).max() < 1e-4 * float(lr.max())


def test_refuses_a_down_sampled_axis_and_bad_profiles(hr):
    with pytest.raises(ValueError, match="up-sampled"):
        keep_acquired(np.zeros((10, 10, 10), np.float32), np.zeros((10, 10, 20), np.float32), axes=[2])
    with pytest.raises(ValueError, match="slice profile"):
        slice_matrix(16, 4, "triangle")
    with pytest.raises(ValueError, match="gap"):
        slice_matrix(16, 4, "box", gap=1.0)


def test_cli_keep_acquired_reproduces_each_acquired_slice(tmp_path, hr):
    """End to end with the embedded model: a real 1x1x4 thick-slice volume, up-sampled through
    plane with --keep-acquired, gives back each acquired slice as the mean of its 4 outputs."""
    import subprocess
    import sys

    lr = degrade(hr, (1, 1, 4), "slice")
    src = tmp_path / "thick.nii.gz"
    affine = np.diag([1.0, 1.0, 4.0, 1.0])
    nib.Nifti1Image(lr.astype(np.float32), affine).to_filename(src)
    out = tmp_path / "iso.nii.gz"
    run = subprocess.run([sys.executable, "-m", "arssr_rt", "upsample", str(src), "--scale", "1,1,4", "-o", str(out),
                          "--keep-acquired", "--dtype", "float32", "--backend", "onnxruntime", "-q"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    got = np.asarray(nib.load(str(out)).dataobj, dtype=np.float64)
    means = got.reshape(64, 64, 16, 4).mean(axis=3)
    assert np.abs(means - lr).max() < 1e-4 * float(lr.max() - lr.min())
    bad = subprocess.run([sys.executable, "-m", "arssr_rt", "upsample", str(src), "--scale", "1,1,4", "-o", str(tmp_path / "x.nii.gz"),
                          "--keep-acquired", "--slice-profile", "triangle"], capture_output=True, text=True)
    assert bad.returncode != 0 and bad.stderr.count("\n") == 1 and "slice profile" in bad.stderr
    assert not (tmp_path / "x.nii.gz").exists()


def _whole_projection(out: np.ndarray, lr: np.ndarray) -> np.ndarray:
    """The projection written as whole-array float64 algebra (what keep_acquired did before it
    went slab-wise): Y + pinv(A) (X - A Y), A separable."""
    mats = {a: slice_matrix(out.shape[a], lr.shape[a]) for a in range(3) if out.shape[a] != lr.shape[a]}
    res = out.astype(np.float64)
    for a, m in mats.items():
        res = np.moveaxis(np.tensordot(m, res, axes=([1], [a])), 0, a)
    res = lr.astype(np.float64) - res
    for a, m in mats.items():
        res = np.moveaxis(np.tensordot(np.linalg.pinv(m), res, axes=([1], [a])), 0, a)
    return out.astype(np.float64) + res


@pytest.mark.parametrize("scale", [(1, 1, 4), (2, 1, 1), (2, 2, 2)])
def test_slab_wise_projection_equals_whole_array_and_works_file_backed(hr, scale):
    """Many tiny slabs (slab_bytes forces one row each) on a file-backed output give the
    whole-array result, for a non-profiled slab axis (1x1x4, 2x1x1) and all axes profiled."""
    from arssr_rt.memory import is_file_backed, output_buffer

    lr = degrade(hr, scale, "slice")
    start = cubic_resample(lr, hr.shape)
    out = output_buffer(hr.shape, in_memory=False)
    out[...] = start
    assert is_file_backed(out)
    keep_acquired(out, lr, slab_bytes=1)
    np.testing.assert_allclose(out, _whole_projection(start, lr), atol=1e-4 * float(np.ptp(lr)))


def test_keep_acquired_over_budget_is_refused_up_front(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "o.nii.gz"
    r = subprocess.run([sys.executable, "-m", "arssr_rt", "upsample", str(FIXTURE_PATH), "-s", "1,1,4", "-o", str(out),
                        "--keep-acquired", "--max-memory", "0.32", "-q", "--backend", "onnxruntime"], capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "--max-memory" in r.stderr and "--keep-acquired" in r.stderr
    assert not out.exists()
