"""Tell a label map (segmentation, mask, parcellation) from an intensity image.

The network interpolates intensities: fed a label map it blends labels 2 and 41 into a 20
that names some third structure, a silently wrong image. ``--interp nearest``
takes them (resample.py); the model and the blending kernels refuse them, and info says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError
from .params import setting

# NIfTI intent codes whose voxel values are indices into a list of names, not intensities
LABEL_INTENTS = {1002: "NIFTI_INTENT_LABEL", 1003: "NIFTI_INTENT_NEURONAME"}
# A label map is piecewise constant: measured on masks, tissue classes and a parcellation made
# from a real T1, 85-97 % of neighbouring voxel pairs (outside the background) are equal; on the
# 14 real intensity volumes in shared/data at most 23 %, 57 % for one resliced nearest-neighbour x2.
LABEL_EQUAL_NEIGHBOURS = 0.8
# A few-class segmentation of a noisy image (e.g. 4 tissue classes cut at quantiles) is
# fragmented (77 % equal neighbours for 4 classes of the fixture) but has only a handful of
# values; the real intensity volumes in shared/data have 81 to 880,000 distinct values.
LABEL_MAX_CLASSES = 16
SLAB_VOXELS = 1 << 22


def _slabs(data: np.ndarray, extra: int = 0):
    step = max(1, SLAB_VOXELS // max(1, int(np.prod(data.shape[1:]))))
    for a in range(0, data.shape[0], step):
        yield data[a : a + step + extra]


def _is_whole_numbers(data: np.ndarray) -> bool:
    return all(bool(np.all(block == np.floor(block))) for block in _slabs(data))


def distinct_values_at_most(data: np.ndarray, limit: int) -> int | None:
    """The number of distinct values when it is <= ``limit``, else None (a strided sample
    answers first, so an intensity image costs one small ``np.unique``)."""
    flat = data.reshape(-1)
    if len(np.unique(flat[:: max(1, flat.size // 65536)])) > limit:
        return None
    found: set[float] = set()
    for block in _slabs(data):
        found.update(np.unique(block).tolist())
        if len(found) > limit:
            return None
    return len(found)


def equal_neighbour_fraction(data: np.ndarray) -> float:
    """Share of neighbouring voxel pairs (3 axes) with equal values, ignoring background pairs
    (both at the image minimum): ~1 for a label map, far lower for an intensity image."""
    background = data.min()
    equal = total = 0
    for axis in range(3):
        for block in _slabs(data, extra=1 if axis == 0 else 0):
            b = np.moveaxis(block, axis, 0)
            p, q = b[1:], b[:-1]
            counted = ~((p == background) & (q == background))
            equal += int(np.count_nonzero((p == q) & counted))
            total += int(np.count_nonzero(counted))
    return equal / total if total else 1.0


def label_intent(header: object) -> str | None:
    """The label intent's name when a NIfTI header declares one, else None."""
    try:
        intent = int(header["intent_code"]) if header is not None else 0  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        return None
    return LABEL_INTENTS.get(intent)


def label_map_reason(data: np.ndarray, header: object = None) -> str | None:
    """Why this image looks like a label map (an intent code or piecewise-constant whole
    numbers), or None for an intensity image."""
    try:
        intent = int(header["intent_code"]) if header is not None else 0  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        intent = 0
    if intent in LABEL_INTENTS:
        return f"its NIfTI header says {LABEL_INTENTS[intent]} (intent code {intent})"
    if not _is_whole_numbers(data):
        return None
    fraction = equal_neighbour_fraction(data)
    if fraction < LABEL_EQUAL_NEIGHBOURS:
        classes = distinct_values_at_most(data, LABEL_MAX_CLASSES)
        if classes is not None:
            return f"only {classes} distinct whole-number values, as in a segmentation or mask"
        return None
    return f"whole-number values and {fraction:.0%} of neighbouring voxels equal, as in a segmentation or mask"


def check_intensity_image(path: Path | str, data: np.ndarray, header: object = None) -> None:
    """Refuse a label map: an intensity model would blend labels into values between them."""
    reason = label_map_reason(data, header)
    if reason is not None:
        raise InputError(
            f"{path}: looks like a label map ({reason}); super-resolving it as intensities would invent "
            f"labels between regions: pass {setting('interp', 'nearest')} to resample it as labels (the label set is kept exactly), "
            f"or {setting('as_intensity')} if it really is an intensity image"
        )
