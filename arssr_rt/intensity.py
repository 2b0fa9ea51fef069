"""Intensity normalisation for the network and the output voxel type.

The published ArSSR code min-max normalised each training patch to [0, 1] but applied no
normalisation at test time, so its results depend on the input's raw scale (a uint8 volume and
the same volume stored as float in [0, 4000] give different outputs). The runtime therefore
normalises every input to [0, 1] before the network and maps the result back to the input's
own units afterwards, so the output can be compared with (and stored like) the input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .errors import InputError
from .params import flag, setting

Mode = Literal["minmax", "percentile"]

# voxel types a user may ask for with --dtype (all are plain NIfTI types)
OUTPUT_DTYPES = ("uint8", "int8", "int16", "uint16", "int32", "uint32", "float32", "float64")

# Outlier guard for min-max: the "bulk" is the image without its OUTLIER_FRACTION brightest and
# darkest voxels. If the full range is over MAX_RANGE_RATIO times the bulk's, the bulk would get
# under a tenth of the network's [0, 1] input and the model's small absolute errors come back
# multiplied (one 1e6 voxel in a 0..130 image: 99.9 % of the output negative). Measured on the
# 14 real volumes in shared/data (the shipped fixture among them), the ratio is 1.00-2.32; a single spike at
# ratio 10 already shifts the output away from it by ~1 % of the tissue range on average.
OUTLIER_FRACTION = 1e-3
MAX_RANGE_RATIO = 10.0


def minmax_outliers(data: np.ndarray) -> str | None:
    """Why min-max normalisation would squeeze this image (a few extreme voxels), else None."""
    flat = np.asarray(data).ravel()
    n = flat.size
    k = math.ceil(n * OUTLIER_FRACTION)
    if n <= 2 * k + 1:
        return None
    part = np.partition(flat, (0, k, n - 1 - k, n - 1))
    data_min, lo, hi, data_max = (float(part[i]) for i in (0, k, n - 1 - k, n - 1))
    if hi <= lo:  # the bulk is constant (mostly-empty image): nothing to squeeze
        return None
    ratio = (data_max - data_min) / (hi - lo)
    if ratio <= MAX_RANGE_RATIO:
        return None
    spread = hi - lo
    far = int(np.count_nonzero(flat > hi + spread)) + int(np.count_nonzero(flat < lo - spread))
    return (f"{far:,} voxel(s) lie far outside the rest of the image (range {data_min:g}..{data_max:g}, but all "
            f"except {2 * k:,} voxels lie in {lo:g}..{hi:g}): min-max normalisation would squeeze the image into "
            f"{100 / ratio:.2g} % of the network's input range and the output would be wrong; use {setting('normalization', 'percentile')} "
            "(clips to the 0.5-99.5 percentiles) or remove the outlier voxels")


MODES = ("minmax", "percentile")


def check_mode(mode: str) -> None:
    """An unknown normalisation mode is one line before any work (the CLI, the Python API)."""
    if mode not in MODES:
        raise InputError(f"{flag('normalization')} must be 'minmax' or 'percentile', got {mode!r}")


@dataclass
class Normalizer:
    """Map input intensities to [0, 1] and back.

    ``minmax`` uses the volume's minimum and maximum (the training convention). ``percentile``
    uses the ``low``/``high`` percentiles and clips, which keeps a few hot voxels (vessels,
    fat, artefacts) from squeezing all tissue contrast into a small part of [0, 1]; clipped
    voxels come back at the percentile value.

    Example:
        >>> norm = Normalizer().fit(np.array([10.0, 20.0, 30.0]))
        >>> norm.normalize(np.array([20.0])).tolist()
        [0.5]
        >>> norm.restore(np.array([0.5], dtype=np.float32)).tolist()
        [20.0]
    """

    mode: Mode = "minmax"
    low: float = 0.5
    high: float = 99.5
    lo: float | None = None
    hi: float | None = None

    def fit(self, data: np.ndarray, mode: Mode | None = None, low: float | None = None, high: float | None = None) -> "Normalizer":
        """Measure ``lo``/``hi`` on ``data``; refuse a constant image (nothing to normalise) and,
        in minmax mode, one whose range a few extreme voxels make (see ``minmax_outliers``)."""
        if mode is not None:
            self.mode = mode
        if low is not None:
            self.low = float(low)
        if high is not None:
            self.high = float(high)
        check_mode(self.mode)
        if not (0.0 <= self.low < self.high <= 100.0):
            raise InputError(f"percentiles must satisfy 0 <= low < high <= 100, got {self.low}, {self.high}")
        data_min, data_max = float(np.min(data)), float(np.max(data))
        if not (np.isfinite(data_min) and np.isfinite(data_max)):
            raise InputError("the image has NaN/Inf voxels; cannot normalise it")
        if data_min == data_max:
            raise InputError(f"the image is constant (every voxel is {data_min:g}); there is nothing to normalise")
        lo, hi = data_min, data_max
        if self.mode == "minmax":
            why = minmax_outliers(data)
            if why is not None:
                raise InputError(why)
        if self.mode == "percentile":
            p_lo, p_hi = (float(v) for v in np.percentile(data, [self.low, self.high]))
            # a mostly-empty image can have equal percentiles; min-max is the only usable range then
            if p_hi > p_lo:
                lo, hi = p_lo, p_hi
        self.lo, self.hi = lo, hi
        return self

    def _range(self) -> tuple[float, float]:
        if self.lo is None or self.hi is None:
            raise RuntimeError("Normalizer.fit() must be called before normalize()/restore()")
        return self.lo, self.hi

    def normalize(self, data: np.ndarray) -> np.ndarray:
        """(data - lo) / (hi - lo) as float32; clipped to [0, 1] in percentile mode."""
        lo, hi = self._range()
        out = (np.asarray(data, dtype=np.float32) - np.float32(lo)) * np.float32(1.0 / (hi - lo))
        if self.mode == "percentile":
            np.clip(out, 0.0, 1.0, out=out)
        return out.astype(np.float32, copy=False)

    def restore(self, out: np.ndarray) -> np.ndarray:
        """Map network output in [0, 1] units back to the input's intensity units (float32)."""
        lo, hi = self._range()
        return (np.asarray(out, dtype=np.float32) * np.float32(hi - lo) + np.float32(lo)).astype(np.float32, copy=False)


def choose_output_dtype(source_dtype: np.dtype | str | None, requested: str | None = None) -> np.dtype:
    """The voxel type to write: ``requested`` if given, else follow the input.

    Float inputs (float16/32/64) are written as float32: the network computes in float32, so
    float64 would double the file without adding information, and float16 could overflow.
    Integer inputs keep their integer type (values are rounded and clipped). Anything else
    (or no source type) falls back to float32.
    """
    if requested is not None:
        name = str(requested).strip().lower()
        if name not in OUTPUT_DTYPES:
            raise InputError(f"{flag('dtype')} must be one of {', '.join(OUTPUT_DTYPES)}, got {requested!r}")
        return np.dtype(name)
    if source_dtype is None:
        return np.dtype(np.float32)
    dt = np.dtype(source_dtype).newbyteorder("=")
    if dt.kind in "iu" and dt.name in OUTPUT_DTYPES:
        return np.dtype(dt.name)
    if dt.kind == "b":
        return np.dtype(np.uint8)
    return np.dtype(np.float32)


def to_output_dtype(data: np.ndarray, dtype: np.dtype | str, slope: float = 1.0, inter: float = 0.0) -> np.ndarray:
    """Convert restored float intensities to the stored array of ``dtype``.

    Integer types store ``round((value - inter) / slope)`` clipped to the type's range, so a
    reader applying the header's scl_slope/scl_inter gets the value back (to one step). Float
    types store the value unchanged and the caller writes slope 1, inter 0.
    """
    dt = np.dtype(dtype)
    arr = np.asarray(data)
    if dt.kind == "f":
        return arr.astype(dt)
    if dt.kind not in "iu":
        raise ValueError(f"unsupported output dtype {dt}")
    info = np.iinfo(dt)
    # float32 is exact for every 8/16-bit integer; wider types need float64 to clip correctly
    work = np.float64 if dt.itemsize >= 4 else np.float32
    values = arr.astype(work, copy=True)
    if slope != 1.0 or inter != 0.0:
        values -= work(inter)
        values /= work(slope)
    np.rint(values, out=values)
    np.clip(values, info.min, info.max, out=values)
    return values.astype(dt)
