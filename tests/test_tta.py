"""Test-time averaging (arssr_rt/tta.py, ``--adapt-tta``): the symmetries are exact array
transforms, the pipeline's average equals the passes run by hand on flipped / swapped inputs,
progress still totals the output, and ``--keep-acquired`` still holds after averaging.
Real data: the shipped Colin27 fixture."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from arssr_rt.degrade import degrade
from arssr_rt.geometry import output_affine
from arssr_rt.tta import Symmetry, symmetries

from conftest import FIXTURE_PATH


def test_symmetries_are_exact_and_undo_themselves():
    rng = np.random.default_rng(0)
    lr = rng.random((5, 6, 3)).astype(np.float32)
    group = symmetries(8, (0, 1))
    assert group[0] == Symmetry() and len(set(group)) == 8
    assert [s.swap for s in group[:4]] == [None] * 4 and all(s.swap == (0, 1) for s in group[4:])
    for sym in group:
        t = sym.apply(lr)
        assert t.shape == sym.shape(lr.shape) and t.flags.c_contiguous
        assert np.array_equal(sym.undo(t), lr)
    assert symmetries(2, (0, 2))[1] == Symmetry((1,)) and symmetries(4, (0, 1))[2:] == [Symmetry((0, 1)), Symmetry((0, 1, 2))]
    with pytest.raises(ValueError, match="1, 2, 4, 8"):
        symmetries(3, (0, 1))


@pytest.fixture(scope="module")
def thick():
    img = nib.load(str(FIXTURE_PATH))
    hr = np.asarray(img.get_fdata(dtype=np.float32))
    lr = degrade(hr, (1, 1, 4), "slice")[:40, :48]  # unequal in-plane sizes: a swap that forgot the shape would fail
    from arssr_rt.volume import Volume

    return Volume(data=lr.astype(np.float32), affine=output_affine(img.affine, hr.shape, degrade(hr, (1, 1, 4), "slice").shape))


def test_pipeline_average_equals_the_passes_run_by_hand(thick):
    from arssr_rt.pipeline import VolumeEngine, plan_grid
    from arssr_rt.volume import Volume

    grid = plan_grid(thick, shape=[40, 48, 64])
    group = symmetries(8, (0, 1))
    sent = []
    with VolumeEngine("default", "onnxruntime", tta=group) as up:
        averaged = up.run(thick, grid, progress=sent.append)
    assert sum(sent) == 40 * 48 * 64  # one bar for all passes, reaching the output's voxel count once
    passes = []
    with VolumeEngine("default", "onnxruntime") as plain:
        for sym in group:
            flipped = Volume(data=sym.apply(thick.data), affine=thick.affine)
            passes.append(sym.undo(plain.run(flipped, plan_grid(flipped, shape=list(sym.shape(grid.shape))))))
        single = plain.run(thick, grid)
    span = float(np.ptp(single))
    np.testing.assert_allclose(averaged, np.mean(passes, axis=0), atol=1e-5 * span)
    assert np.abs(averaged - single).max() > 1e-3 * span  # the passes differ: averaging is not a no-op
    with VolumeEngine("default", "onnxruntime", tta=symmetries(1, (0, 1))) as one:
        assert np.array_equal(one.run(thick, grid), single)  # one pass is the plain path, bit for bit


def test_adapt_tta_keeps_acquired_slices_and_refuses_bad_counts(cli, thick, tmp_path):
    pytest.importorskip("torch")
    src = tmp_path / "thick.nii.gz"
    nib.Nifti1Image(thick.data, thick.affine).to_filename(src)
    out = tmp_path / "k.nii.gz"
    code, err = cli("upsample", src, "--scale", "1,1,4", "--adapt", "--adapt-steps", "2", "--adapt-tta", "4",
                    "--keep-acquired", "--dtype", "float32", "--threads", "1", "-q", "-o", out)
    assert code == 0, err
    means = np.asarray(nib.load(str(out)).dataobj, dtype=np.float64).reshape(40, 48, 16, 4).mean(axis=3)
    assert np.abs(means - thick.data).max() < 1e-4 * float(np.ptp(thick.data))  # the average is still consistent
    code, err = cli("upsample", src, "--scale", "1,1,4", "--adapt", "--adapt-tta", "3", "-q", "-o", tmp_path / "x.nii.gz")
    assert code != 0 and "--adapt-tta must be one of 1, 2, 4, 8" in err and "Traceback" not in err
    code, err = cli("upsample", src, "--scale", "1,1,4", "--adapt-tta", "2", "-q", "-o", tmp_path / "y.nii.gz")
    assert code != 0 and "--adapt-tta" in err and "--adapt only" in err
    assert not (tmp_path / "x.nii.gz").exists() and not (tmp_path / "y.nii.gz").exists()


def test_plain_passes_put_the_most_up_sampled_axis_in_the_thick_role():
    from arssr_rt.tta import plain_symmetries

    assert plain_symmetries(1, (10, 10, 10), (20, 20, 20)) == []  # one pass: the plain path
    assert plain_symmetries(2, (10, 10, 10), (20, 20, 40))[1] == Symmetry((2,))
    assert plain_symmetries(2, (10, 10, 10), (40, 20, 20))[1] == Symmetry((0,))
    assert plain_symmetries(2, (20, 10, 10), (40, 40, 20))[1] == Symmetry((1,))  # x4 beats x2, the last of equals otherwise
    assert plain_symmetries(4, (10, 10, 10), (20, 20, 20)) == symmetries(4, (0, 1))


def test_tta_passes_average_the_flip_of_the_thick_axis(thick):
    """``VolumeEngine(tta_passes=2)`` (``--tta 2``) = the plain run and the run on the input flipped
    along the most up-sampled axis (undone), averaged; keep_samples still holds."""
    from arssr_rt.pipeline import VolumeEngine, plan_grid
    from arssr_rt.volume import Volume

    grid = plan_grid(thick, shape=[40, 48, 64])
    with VolumeEngine("default", "onnxruntime", tta_passes=2) as up:
        averaged = up.run(thick, grid)
    with VolumeEngine("default", "onnxruntime") as plain:
        single = plain.run(thick, grid)
        flipped = Volume(data=np.ascontiguousarray(thick.data[:, :, ::-1]), affine=thick.affine)
        mirrored = plain.run(flipped, grid)[:, :, ::-1]
    span = float(np.ptp(single))
    np.testing.assert_allclose(averaged, (single + mirrored) / 2, atol=1e-5 * span)
    assert np.abs(averaged - single).max() > 1e-3 * span
    with pytest.raises(ValueError, match="not both"):
        VolumeEngine("default", "onnxruntime", tta=symmetries(2, (0, 1)), tta_passes=2)


def test_tta_option_errors_are_one_line(cli, tmp_path):
    out = str(tmp_path / "o.nii.gz")
    for args, text in ((["--tta", "3"], "--tta must be one of 1, 2, 4, 8"),
                       (["--tta", "2", "--interp", "cubic"], "does not apply to --interp cubic"),
                       (["--tta", "2", "--adapt", "--adapt-tta", "4"], "--tta 2 and --adapt-tta 4 disagree")):
        code, err = cli("upsample", FIXTURE_PATH, "--scale", "2", "-o", out, *args)
        assert code == 2 and text in err and "Traceback" not in err, (args, err)
    assert not (tmp_path / "o.nii.gz").exists()


def test_batch_fingerprint_records_tta():
    from arssr_rt.batch.runner import BatchOptions

    assert "tta" not in BatchOptions().fingerprint("2")  # earlier sidecars stay up to date
    assert BatchOptions(tta=2).fingerprint("2")["tta"] == 2
