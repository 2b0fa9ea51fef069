"""Intensity normalisation and output voxel types, on the real fixture."""

from __future__ import annotations

import numpy as np
import pytest

from arssr_rt.errors import InputError
from arssr_rt.intensity import Normalizer, choose_output_dtype, to_output_dtype
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
    assert np.median(unit) > 5 * np.median(Normalizer().fit(data).normalize(data))
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
