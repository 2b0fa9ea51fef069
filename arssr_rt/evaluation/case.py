"""One evaluation case on arrays: degrade an HR volume, reconstruct it with both classical
baselines (tricubic B-spline and zero-filled k-space "sinc") and optionally a model, score all.

``arssr-rt evaluate`` (through ``runner``) and training validation call the same function,
so a gain in a training log is the gain ``evaluate`` reports.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ..degrade import DEFAULT_SNR, DEGRADATIONS, SLICE_PROFILES, cubic_resample, degrade
from ..errors import InputError
from ..fourier import sinc_upsample
from .metrics import default_data_range, head_mask, psnr, ssim_map

BASELINES = ("tricubic", "sinc")
METRICS = ("psnr_head", "psnr_whole", "ssim_head", "ssim_whole")
MIN_LR_VOXELS = 2  # the pipeline needs at least 2 voxels on every LR axis

ModelFn = Callable[[np.ndarray, tuple[int, ...]], np.ndarray]
"""``model_fn(lr, hr_shape) -> array of hr_shape`` on the centre-aligned grid covering the LR's field of view."""


@dataclass(frozen=True)
class DegradationSpec:
    """A degradation and the options it uses; an option the kind does not use is refused.

    ``seed`` seeds a fresh Generator for each case, so one case's noise does not depend on
    which cases ran before it.
    """

    kind: str = "cubic"
    snr: float | None = None  # kspace-noise only; None = DEFAULT_SNR
    seed: int = 0
    profile: str | None = None  # slice only; None = box
    gap: float | None = None  # slice only; None = 0

    def __post_init__(self) -> None:
        if self.kind not in DEGRADATIONS:
            raise InputError(f"--degradation must be one of {', '.join(DEGRADATIONS)}, got {self.kind!r}")
        if self.snr is not None and (self.kind != "kspace-noise" or not (self.snr > 0 and math.isfinite(self.snr))):
            raise InputError(f"--snr must be a positive number and applies to kspace-noise only (got {self.snr} for {self.kind})")
        if (self.profile is not None or self.gap is not None) and self.kind != "slice":
            raise InputError(f"--slice-profile/--slice-gap apply to slice only, not to {self.kind}")
        if self.profile is not None and self.profile not in SLICE_PROFILES:
            raise InputError(f"--slice-profile must be one of {', '.join(SLICE_PROFILES)}, got {self.profile!r}")
        if self.gap is not None and not 0.0 <= self.gap < 1.0:
            raise InputError(f"--slice-gap is a fraction of the slice spacing in [0, 1), got {self.gap}")

    def options(self) -> dict[str, Any]:
        """Keyword arguments for ``degrade``."""
        if self.kind == "kspace-noise":
            return {"snr": DEFAULT_SNR if self.snr is None else self.snr, "rng": np.random.default_rng(self.seed)}
        if self.kind == "slice":
            return {"profile": self.profile or "box", "gap": self.gap or 0.0}
        return {}

    def fields(self) -> dict[str, Any]:
        """The options as row fields (None where the kind has none)."""
        noisy, thick = self.kind == "kspace-noise", self.kind == "slice"
        return {
            "snr": (DEFAULT_SNR if self.snr is None else self.snr) if noisy else None,
            "seed": self.seed if noisy else None,
            "slice_profile": (self.profile or "box") if thick else None,
            "slice_gap": (self.gap or 0.0) if thick else None,
        }

    def label(self) -> str:
        """``kspace-noise (snr 50, seed 0)``, ``slice (box, gap 0.2)`` or just the kind."""
        f = self.fields()
        if f["snr"] is not None:
            return f"{self.kind} (snr {f['snr']:g}, seed {f['seed']})"
        if f["slice_profile"] is not None:
            return f"{self.kind} ({f['slice_profile']}, gap {f['slice_gap']:g})"
        return self.kind


def as_spec(degradation: "str | DegradationSpec") -> DegradationSpec:
    return degradation if isinstance(degradation, DegradationSpec) else DegradationSpec(str(degradation))


@dataclass
class MethodScores:
    """PSNR (dB) and SSIM of one reconstruction, inside the head mask and over the whole volume."""

    psnr_head: float
    psnr_whole: float
    ssim_head: float
    ssim_whole: float


def score(hr: np.ndarray, test: np.ndarray, mask: np.ndarray, data_range: float) -> MethodScores:
    """Both regions from one SSIM map (the expensive part)."""
    smap = ssim_map(hr, test, data_range)
    return MethodScores(
        psnr_head=psnr(hr, test, mask, data_range),
        psnr_whole=psnr(hr, test, None, data_range),
        ssim_head=float(np.mean(smap[mask])),
        ssim_whole=float(np.mean(smap)),
    )


def best_baseline(scores: dict[str, MethodScores | None], metric: str) -> tuple[str, float]:
    """(name, value) of the better classical baseline for one metric (higher is better for PSNR and SSIM)."""
    present = [(name, float(getattr(scores[name], metric))) for name in BASELINES if scores.get(name) is not None]
    return max(present, key=lambda item: item[1])


@dataclass
class CaseOutputs:
    """Arrays and scores of one case (volume x degradation x scale)."""

    lr: np.ndarray
    images: dict[str, np.ndarray]  # "tricubic", "sinc" and, with a model, "model"; all on the HR grid
    scores: dict[str, MethodScores]
    model_seconds: float | None


def run_case(
    hr: np.ndarray,
    scale: Sequence[float],
    degradation: "str | DegradationSpec",
    model_fn: ModelFn | None,
    mask: np.ndarray,
    data_range: float,
    name: str = "volume",
    extra: dict[str, ModelFn] | None = None,
) -> CaseOutputs:
    """Degrade ``hr``, reconstruct with both baselines (and ``model_fn``, and each of
    ``extra``'s named functions, e.g. "adapted"), score every method."""
    spec = as_spec(degradation)
    lr = degrade(hr, scale, spec.kind, **spec.options()).astype(np.float32, copy=False)
    if min(lr.shape) < MIN_LR_VOXELS:
        label = "x".join(f"{s:g}" for s in scale)
        raise InputError(f"{name}: --scale {label} leaves an LR volume of shape {lr.shape}; use a smaller scale")
    images = {"tricubic": cubic_resample(lr, hr.shape), "sinc": sinc_upsample(lr, hr.shape)}
    seconds = None
    if model_fn is not None:
        t0 = time.perf_counter()
        images["model"] = np.asarray(model_fn(lr, tuple(hr.shape)), dtype=np.float32)
        seconds = time.perf_counter() - t0
    for method, fn in (extra or {}).items():
        images[method] = np.asarray(fn(lr, tuple(hr.shape)), dtype=np.float32)
    scores = {method: score(hr, image, mask, data_range) for method, image in images.items()}
    return CaseOutputs(lr=lr, images=images, scores=scores, model_seconds=seconds)


def evaluate_case(
    hr: np.ndarray,
    model_fn: ModelFn | None,
    scale: Sequence[float],
    degradation: "str | DegradationSpec" = "cubic",
    *,
    mask: np.ndarray | None = None,
    data_range: float | None = None,
) -> dict[str, Any]:
    """The per-case evaluation as plain numbers (for training validation and scripts).

    ``mask`` defaults to ``head_mask(hr)`` and ``data_range`` to the HR's max - min, as in
    ``evaluate``. Returns ``{"lr_shape", "degradation", "scores": {method: {metric: value}},
    "best_baseline": {metric: method}, "gain": {"tricubic"|"sinc"|"best": {metric: model - it}}
    (empty without a model), "model_seconds"}``.

    Example:
        >>> r = evaluate_case(hr, lambda lr, shape: my_model(lr, shape), (2, 2, 2), "kspace")  # doctest: +SKIP
        >>> r["gain"]["best"]["psnr_head"]  # dB over the better of tricubic and sinc  # doctest: +SKIP
    """
    data = np.asarray(hr, dtype=np.float32)
    spec = as_spec(degradation)
    region = head_mask(data) if mask is None else np.asarray(mask, dtype=bool)
    rng = default_data_range(data) if data_range is None else float(data_range)
    out = run_case(data, scale, spec, model_fn, region, rng)
    scores = {method: {m: float(getattr(s, m)) for m in METRICS} for method, s in out.scores.items()}
    best = {m: best_baseline(out.scores, m) for m in METRICS}  # type: ignore[arg-type]
    gain: dict[str, dict[str, float]] = {}
    if "model" in scores:
        gain = {b: {m: scores["model"][m] - scores[b][m] for m in METRICS} for b in BASELINES}
        gain["best"] = {m: scores["model"][m] - best[m][1] for m in METRICS}
    return {
        "lr_shape": tuple(out.lr.shape),
        "degradation": spec.label(),
        "scores": scores,
        "best_baseline": {m: best[m][0] for m in METRICS},
        "gain": gain,
        "model_seconds": out.model_seconds,
    }
