"""Intensity normalisation and output voxel types, on the real fixture."""

from __future__ import annotations

import math

import numpy as np
import pytest

from arssr_rt.errors import InputError
from conftest import REAL_VOLUMES
from arssr_rt.intensity import MAX_RANGE_RATIO, OUTLIER_FRACTION, Normalizer, choose_output_dtype, minmax_outliers, to_output_dtype
from arssr_rt.nifti_io import load_volume


@pytest.fixture(scope="module")
def colin(fixture_path) -> np.ndarray:
    return load_volume(fixture_path).data


def test_minmax_maps_to_unit_range_and_back(colin):
    norm = Normalizer().fit(colin)
    assert (norm.lo, norm.hi) == (float(colin.min()), float(colin.max()))
    unit = norm.normalize(colin)
    assert unit.dtype == np.float32
    assert unit.min() == pytest.approx(0.0, abs=1e-7) and unit.max() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(norm.restore(unit), colin, atol=1e-4)


def test_minmax_is_scale_invariant(colin):
    """The same image in other units normalises to the same network input (the reason for it)."""
    a = Normalizer().fit(colin).normalize(colin)
    scaled = colin * 37.5 - 1200.0
    b = Normalizer().fit(scaled).normalize(scaled)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_percentile_clips_outliers(colin):
    data = colin.copy()
    data[0, 0, 0] = 10_000.0  # one hot voxel
    norm = Normalizer(mode="percentile").fit(data)
    lo, hi = np.percentile(data, [0.5, 99.5])
    assert (norm.lo, norm.hi) == pytest.approx((lo, hi))
    unit = norm.normalize(data)
    assert unit.min() == 0.0 and unit.max() == 1.0
    assert unit[0, 0, 0] == 1.0
    # tissue keeps its contrast instead of being squeezed by the outlier
    squeezed = (data - data.min()) / (data.max() - data.min())  # what min-max would feed the network
    assert np.median(unit) > 5 * np.median(squeezed)
    np.testing.assert_allclose(norm.restore(norm.normalize(colin.clip(lo, hi))), colin.clip(lo, hi), atol=1e-4)


def test_percentile_falls_back_to_minmax_on_mostly_empty_image():
    data = np.zeros((16, 16, 16), np.float32)
    data[8, 8, 8] = 5.0  # 1 voxel of 4096: both percentiles are 0
    norm = Normalizer(mode="percentile").fit(data)
    assert (norm.lo, norm.hi) == (0.0, 5.0)


def test_fit_arguments_override():
    norm = Normalizer().fit(np.arange(1000, dtype=np.float32), mode="percentile", low=10, high=90)
    assert norm.mode == "percentile"
    assert (norm.lo, norm.hi) == pytest.approx(tuple(np.percentile(np.arange(1000), [10, 90])))


def test_constant_image_refused():
    with pytest.raises(InputError, match="constant"):
        Normalizer().fit(np.full((8, 8, 8), 3.0, np.float32))


@pytest.mark.parametrize("kwargs", [{"mode": "zscore"}, {"mode": "percentile", "low": 60, "high": 40}, {"mode": "percentile", "high": 101}])
def test_bad_settings_refused(colin, kwargs):
    with pytest.raises(InputError):
        Normalizer().fit(colin, **kwargs)


def test_use_before_fit_is_a_programming_error(colin):
    with pytest.raises(RuntimeError):
        Normalizer().normalize(colin)


# ----- outlier guard for min-max ---------------------------------------------------------------



def test_guard_keeps_the_fixture_exactly_as_before(colin):
    norm = Normalizer().fit(colin)
    assert minmax_outliers(colin) is None
    assert (norm.lo, norm.hi) == (float(colin.min()), float(colin.max()))
    expected = (colin.astype(np.float32) - np.float32(colin.min())) * np.float32(1.0 / (float(colin.max()) - float(colin.min())))
    np.testing.assert_array_equal(norm.normalize(colin), expected)  # bit-identical


@pytest.mark.parametrize("name", REAL_VOLUMES)
def test_guard_does_not_fire_on_real_volumes(name, shared):
    path = shared(name)
    if path.suffix == ".nrrd":
        pytest.importorskip("nrrd")
    from arssr_rt.readers import read_volume

    data = read_volume(path).data
    assert minmax_outliers(data) is None
    norm = Normalizer().fit(data)
    assert (norm.lo, norm.hi) == (float(data.min()), float(data.max()))


def spiked(colin, value: float, count: int = 1, seed: int = 0) -> np.ndarray:
    data = colin.astype(np.float32).copy()
    rng = np.random.default_rng(seed)
    flat = data.reshape(-1)
    flat[rng.choice(flat.size, size=count, replace=False)] = value
    return data


@pytest.mark.parametrize("value,count", [(1e6, 1), (5000.0, 1), (1e6, 7), (3000.0, 200), (-1e6, 1), (-5000.0, 20)])
def test_spikes_are_refused_with_advice(colin, value, count):
    data = spiked(colin, value, count)
    with pytest.raises(InputError) as info:
        Normalizer().fit(data)
    message = str(info.value)
    assert "\n" not in message and "--normalization percentile" in message
    assert message.startswith(f"{count:,} voxel(s) lie far outside")
    # the advice works: percentile mode takes the same image
    norm = Normalizer(mode="percentile").fit(data)
    assert norm.hi < 200 and norm.lo > -200


def test_bright_but_plausible_voxels_pass(colin):
    """A few voxels 2.5x the brightest tissue (vessels, fat) are real content, not outliers."""
    data = spiked(colin, 300.0, 30)
    assert minmax_outliers(data) is None
    assert Normalizer().fit(data).hi == 300.0


def test_guard_threshold_is_the_range_ratio(colin):
    k = math.ceil(colin.size * OUTLIER_FRACTION)
    lo, hi = np.partition(colin.ravel(), (k, colin.size - 1 - k))[[k, colin.size - 1 - k]]
    at = float(colin.min()) + MAX_RANGE_RATIO * float(hi - lo)
    assert minmax_outliers(spiked(colin, at - 1.0)) is None
    assert minmax_outliers(spiked(colin, at + 1.0)) is not None


def test_mostly_empty_image_is_not_an_outlier_case():
    data = np.zeros((16, 16, 16), np.float32)
    data[8, 8, 8] = 5.0  # the bulk is constant: min-max is the only sensible range
    assert minmax_outliers(data) is None
    assert (Normalizer().fit(data).lo, Normalizer().fit(data).hi) == (0.0, 5.0)


# ----- output voxel types -------------------------------------------------------------------


@pytest.mark.parametrize(
    "source,requested,expected",
    [
        ("uint8", None, "uint8"),
        ("int16", None, "int16"),
        (">i2", None, "int16"),
        ("float32", None, "float32"),
        ("float64", None, "float32"),
        ("float16", None, "float32"),
        ("uint8", "float32", "float32"),
        ("float32", "int16", "int16"),
        (None, None, "float32"),
    ],
)
def test_choose_output_dtype(source, requested, expected):
    assert choose_output_dtype(source, requested) == np.dtype(expected)


@pytest.mark.parametrize("requested", ["complex64", "rgb", "float", "bool"])
def test_choose_output_dtype_refuses(requested):
    with pytest.raises(InputError, match="--dtype"):
        choose_output_dtype("uint8", requested)


def test_to_uint8_rounds_and_clips():
    values = np.array([-3.0, 0.4, 0.6, 127.5, 254.6, 999.0], np.float32)
    np.testing.assert_array_equal(to_output_dtype(values, "uint8"), [0, 0, 1, 128, 255, 255])


def test_to_int16_with_scaling_decodes_back():
    values = np.array([10.0, 12.0, 13.2, 2 * 40000 + 10, -2 * 40000], np.float32)
    stored = to_output_dtype(values, "int16", slope=2.0, inter=10.0)
    assert stored.dtype == np.int16
    np.testing.assert_array_equal(stored, [0, 1, 2, 32767, -32768])
    np.testing.assert_allclose(stored[:3] * 2.0 + 10.0, [10, 12, 14])


def test_to_int32_clips_at_exact_limits():
    values = np.array([3e9, -3e9, 2147483646.6], np.float64)
    np.testing.assert_array_equal(to_output_dtype(values, "int32"), [2147483647, -2147483648, 2147483647])


def test_float_output_is_unchanged(colin):
    out = to_output_dtype(colin + 0.3, "float32")
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, colin + 0.3)


# ----- the CLI, with the embedded model: refused in one line, nothing written ----------------------


@pytest.mark.parametrize("value,count", [(1e6, 1), (-1e6, 1), (2e4, 5)])
def test_cli_refuses_a_spiked_real_image_and_percentile_takes_it(fixture_image, value, count, tmp_path, capsys):
    import nibabel as nib

    from arssr_rt.cli import main
    from conftest import listing

    data = np.ascontiguousarray(np.asarray(fixture_image.dataobj, dtype=np.float32)[:32, :32, :32])
    flat = data.reshape(-1)
    flat[np.random.default_rng(1).choice(flat.size, size=count, replace=False)] = value
    src = tmp_path / "in" / "spiked.nii.gz"
    src.parent.mkdir()
    nib.Nifti1Image(data, fixture_image.affine).to_filename(src)
    out = tmp_path / "out"
    out.mkdir()
    args = ["upsample", str(src), "-s", "2", "-o", str(out / "r.nii.gz"), "-q", "-b", "onnxruntime"]
    code = main(args)  # used to write an image 99.9 % negative with exit 0
    err = capsys.readouterr().err
    assert code == InputError.exit_code and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"arssr-rt: error: {src}: {count} voxel(s) lie far outside"), err
    assert "--normalization percentile" in lines[0]
    assert listing(out) == []
    assert main(args + ["--normalization", "percentile"]) == 0
    assert listing(out) == ["r.nii.gz"]
    assert main(["info", str(src)]) == 0 and "outliers" in capsys.readouterr().out
