"""Evaluate a model against tricubic interpolation on simulated low-resolution acquisitions.

For one HR volume and one scale: LR = degrade(HR) on the centre-aligned grid; the LR volume
gets the affine of that grid (``geometry.output_affine``), so the model's target grid, HR
shape on the LR volume's field of view, is exactly the HR grid; tricubic is
``degrade.cubic_resample(LR, HR.shape)`` on the same grid. Both are scored against HR with
the metrics module, over the whole volume and inside ``head_mask(HR)``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from ..degrade import DEGRADATIONS, cubic_resample, degrade
from ..errors import InputError
from ..geometry import Triplet, output_affine
from ..options import parse_triplet
from ..volume import Volume
from .metrics import default_data_range, head_mask, psnr, ssim_map

if TYPE_CHECKING:
    from ..pipeline import Upsampler

METHODS = ("tricubic", "model")
MIN_LR_VOXELS = 2  # the pipeline needs at least 2 voxels on every LR axis


def scale_label(scale: Triplet) -> str:
    """``x2``, ``x2.5`` or ``x1x1x3``: the requested factor, as tables and files show it."""
    if len({f"{v:g}" for v in scale}) == 1:
        return f"x{scale[0]:g}"
    return "x" + "x".join(f"{v:g}" for v in scale)


def parse_scales(values: Sequence[str | float | Sequence[float]]) -> list[Triplet]:
    """``["2", "1,1,3"]`` -> triplets; at least one, each > 1 on some axis."""
    if not values:
        raise InputError("give at least one --scale")
    scales = [parse_triplet(v, "--scale") for v in values]
    for s in scales:
        if max(s) <= 1.0:
            raise InputError(f"--scale {scale_label(s)} does not reduce the resolution; use a factor > 1 on some axis")
    return scales


@dataclass
class MethodScores:
    """PSNR (dB) and SSIM of one reconstruction, inside the head mask and over the whole volume."""

    psnr_head: float
    psnr_whole: float
    ssim_head: float
    ssim_whole: float


@dataclass
class EvalRow:
    """One (volume, scale) result: both methods' scores and the model's gain over tricubic."""

    volume: str
    scale: str
    degradation: str
    hr_shape: str
    lr_shape: str
    mask_fraction: float
    data_range: float
    tricubic: MethodScores
    model: MethodScores | None
    model_name: str | None
    backend: str | None
    model_seconds: float | None

    def gain(self, metric: str) -> float | None:
        """model - tricubic for a field of MethodScores (e.g. ``psnr_head``); None without a model."""
        if self.model is None:
            return None
        return float(getattr(self.model, metric)) - float(getattr(self.tricubic, metric))

    def flat(self) -> dict[str, Any]:
        """One flat dict (CSV columns / JSON object): ``psnr_head_tricubic``, ``psnr_head_gain``..."""
        out: dict[str, Any] = {k: v for k, v in asdict(self).items() if k not in METHODS}
        for metric in MethodScores.__dataclass_fields__:
            out[f"{metric}_tricubic"] = getattr(self.tricubic, metric)
            out[f"{metric}_model"] = getattr(self.model, metric) if self.model else None
            out[f"{metric}_gain"] = self.gain(metric)
        return out


@dataclass
class ScaleOutputs:
    """The arrays behind one row, on the HR grid (for montages); handed out, never stored."""

    row: EvalRow
    hr: np.ndarray
    affine: np.ndarray
    lr: np.ndarray
    tricubic: np.ndarray
    model: np.ndarray | None


def score(hr: np.ndarray, test: np.ndarray, mask: np.ndarray, data_range: float) -> MethodScores:
    """Both regions from one SSIM map (the expensive part)."""
    smap = ssim_map(hr, test, data_range)
    return MethodScores(
        psnr_head=psnr(hr, test, mask, data_range),
        psnr_whole=psnr(hr, test, None, data_range),
        ssim_head=float(np.mean(smap[mask])),
        ssim_whole=float(np.mean(smap)),
    )


def lr_volume(hr: Volume, lr_data: np.ndarray) -> Volume:
    """The LR array as a Volume on the centre-aligned grid covering the HR field of view."""
    affine = output_affine(hr.affine, hr.shape, lr_data.shape)
    return Volume(data=np.ascontiguousarray(lr_data, dtype=np.float32), affine=affine, source_path=hr.source_path)


def evaluate_scale(
    hr: Volume,
    scale: Triplet,
    degradation: str,
    upsampler: "Upsampler | None",
    mask: np.ndarray,
    name: str,
) -> ScaleOutputs:
    """Degrade, reconstruct with tricubic (and the model), score both."""
    from ..pipeline import plan_grid

    if degradation not in DEGRADATIONS:
        raise InputError(f"--degradation must be one of {', '.join(DEGRADATIONS)}, got {degradation!r}")
    data_range = default_data_range(hr.data)
    lr = degrade(hr.data, scale, degradation).astype(np.float32, copy=False)
    if min(lr.shape) < MIN_LR_VOXELS:
        raise InputError(f"{name}: --scale {scale_label(scale)} leaves an LR volume of shape {lr.shape}; use a smaller scale")
    tricubic = cubic_resample(lr, hr.shape)
    model_out, model_scores, seconds = None, None, None
    if upsampler is not None:
        low = lr_volume(hr, lr)
        grid = plan_grid(low, shape=list(hr.shape))
        t0 = time.perf_counter()
        model_out = upsampler.run(low, grid)
        seconds = time.perf_counter() - t0
        model_scores = score(hr.data, model_out, mask, data_range)
    row = EvalRow(
        volume=name,
        scale=scale_label(scale),
        degradation=degradation,
        hr_shape="x".join(map(str, hr.shape)),
        lr_shape="x".join(map(str, lr.shape)),
        mask_fraction=float(mask.mean()),
        data_range=data_range,
        tricubic=score(hr.data, tricubic, mask, data_range),
        model=model_scores,
        model_name=upsampler.bundle.name if upsampler is not None else None,
        backend=getattr(upsampler.backend, "name", None) if upsampler is not None else None,
        model_seconds=seconds,
    )
    return ScaleOutputs(row=row, hr=hr.data, affine=hr.affine, lr=lr, tricubic=tricubic, model=model_out)


def volume_name(path: Path) -> str:
    """File name without .nii/.nii.gz/.nrrd, for tables."""
    name = path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def evaluate_volume(
    hr_path: str | Path,
    scales: Sequence[Triplet | str | float],
    degradation: str,
    upsampler: "Upsampler | None",
    on_outputs: Callable[[ScaleOutputs], None] | None = None,
) -> list[EvalRow]:
    """Rows for one HR volume, one per scale; ``upsampler=None`` scores tricubic only.

    ``on_outputs`` receives each scale's arrays (to keep one for a montage) before they are
    dropped, so memory stays at one scale's worth of volumes.

    Example:
        >>> with Upsampler("default") as up:  # doctest: +SKIP
        ...     rows = evaluate_volume("t1.nii.gz", ["2", "1,1,3"], "cubic", up)
    """
    from ..readers import read_volume

    path = Path(hr_path)
    hr = read_volume(path)
    mask = head_mask(hr.data)
    triplets = parse_scales(scales)
    rows = []
    for scale in triplets:
        outputs = evaluate_scale(hr, scale, degradation, upsampler, mask, volume_name(path))
        if on_outputs is not None:
            on_outputs(outputs)
        rows.append(outputs.row)
    return rows
