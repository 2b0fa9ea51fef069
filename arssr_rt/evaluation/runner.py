"""Evaluate a model against the classical baselines on simulated low-resolution acquisitions.

For one HR volume, degradation and scale: LR = degrade(HR) on the centre-aligned grid; the LR
volume gets the affine of that grid (``geometry.output_affine``), so the model's target grid,
HR shape on the LR volume's field of view, is exactly the HR grid; tricubic is
``degrade.cubic_resample(LR, HR.shape)`` and sinc ``fourier.sinc_upsample(LR, HR.shape)`` on
the same grid. All are scored against HR with the metrics module, over the whole volume and
inside ``head_mask(HR)`` (``case.run_case`` does the work on arrays).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from ..consistency import KSPACE
from ..errors import InputError
from ..geometry import Triplet, output_affine
from ..options import parse_triplet
from ..volume import Volume
from .case import MIN_LR_VOXELS, DegradationSpec, MethodScores, as_spec, best_baseline, run_case, score
from .metrics import default_data_range, head_mask

if TYPE_CHECKING:
    from ..adapt.plan import AdaptOptions
    from ..pipeline import VolumeEngine

METHODS = ("tricubic", "sinc", "model", "adapted")
__all__ = ["DegradationSpec", "EvalRow", "MIN_LR_VOXELS", "MethodScores", "ScaleOutputs", "evaluate_scale", "evaluate_volume",
           "lr_volume", "parse_scales", "scale_label", "score", "volume_name"]  # MethodScores, score: re-exported from case


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
class EvalRow:
    """One (volume, degradation, scale) result: every method's scores and the model's gains.

    Fields after ``model_seconds`` are newer (defaults keep old positional constructions valid).
    """

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
    sinc: MethodScores | None = None
    snr: float | None = None
    seed: int | None = None
    slice_profile: str | None = None
    slice_gap: float | None = None
    adapted: MethodScores | None = None  # evaluate --adapt: the model fine-tuned on the LR itself
    adapt_steps: int | None = None
    adapt_seconds: float | None = None
    keep_acquired: bool = False  # model arms projected onto the acquired slices (the degradation's own profile)

    def baseline(self, metric: str, which: str = "best") -> float | None:
        """A baseline's value of ``metric``: ``tricubic``, ``sinc`` or ``best`` (the higher of the two)."""
        if which == "best":
            return best_baseline({"tricubic": self.tricubic, "sinc": self.sinc}, metric)[1]
        scores = getattr(self, which)
        return None if scores is None else float(getattr(scores, metric))

    def best_method(self, metric: str) -> str:
        return best_baseline({"tricubic": self.tricubic, "sinc": self.sinc}, metric)[0]

    def gain(self, metric: str, over: str = "tricubic") -> float | None:
        """model - baseline (``tricubic``, ``sinc`` or ``best``) for a MethodScores field; None without a model."""
        base = self.baseline(metric, over)
        if self.model is None or base is None:
            return None
        return float(getattr(self.model, metric)) - base

    def flat(self) -> dict[str, Any]:
        """One flat dict (CSV columns / JSON object): ``psnr_head_tricubic``, ``psnr_head_gain``...

        ``*_gain`` stays model - tricubic (as before the sinc baseline); ``*_gain_sinc`` and
        ``*_gain_best`` are over the sinc and over the better baseline, named by ``*_best``.
        """
        out: dict[str, Any] = {k: v for k, v in asdict(self).items() if k not in METHODS}
        for metric in MethodScores.__dataclass_fields__:
            out[f"{metric}_tricubic"] = getattr(self.tricubic, metric)
            out[f"{metric}_model"] = getattr(self.model, metric) if self.model else None
            out[f"{metric}_gain"] = self.gain(metric)
        for metric in MethodScores.__dataclass_fields__:
            out[f"{metric}_sinc"] = self.baseline(metric, "sinc")
            out[f"{metric}_best"] = self.best_method(metric)
            out[f"{metric}_gain_sinc"] = self.gain(metric, "sinc")
            out[f"{metric}_gain_best"] = self.gain(metric, "best")
        if self.adapted is not None:
            for metric in MethodScores.__dataclass_fields__:
                value = float(getattr(self.adapted, metric))
                out[f"{metric}_adapted"] = value
                out[f"{metric}_adapted_gain_model"] = value - float(getattr(self.model, metric)) if self.model else None
                out[f"{metric}_adapted_gain_best"] = value - float(self.baseline(metric, "best"))  # type: ignore[arg-type]
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
    sinc: np.ndarray | None = None
    adapted: np.ndarray | None = None


def lr_volume(hr: Volume, lr_data: np.ndarray) -> Volume:
    """The LR array as a Volume on the centre-aligned grid covering the HR field of view."""
    affine = output_affine(hr.affine, hr.shape, lr_data.shape)
    return Volume(data=np.ascontiguousarray(lr_data, dtype=np.float32), affine=affine, source_path=hr.source_path)


def consistent(out: np.ndarray, lr: np.ndarray, acquisition: tuple[str, float] | None) -> np.ndarray:
    """``out`` projected onto the acquired data (``--keep-acquired`` with the simulation's own
    profile and gap, or its k-space band), or ``out`` itself when ``acquisition`` is None."""
    if acquisition is None:
        return out
    from ..consistency import keep_acquired

    return keep_acquired(np.asarray(out, dtype=np.float32), lr, *acquisition)


def for_acquisition(upsampler: "VolumeEngine", acquisition: tuple[str, float] | None) -> "VolumeEngine":
    """``upsampler``, or a shallow copy (same backend, closed with the original) that does not
    keep point samples: ``upsample --keep-acquired`` projects the network's output, not one
    with coinciding samples already replaced (which moves an odd-scale result)."""
    if acquisition is None:
        return upsampler
    import copy

    plain = copy.copy(upsampler)
    plain.keep_samples = False
    return plain


def upsampler_fn(hr: Volume, upsampler: "VolumeEngine", acquisition: tuple[str, float] | None = None) -> Callable[[np.ndarray, tuple[int, ...]], np.ndarray]:
    """``model_fn`` for ``run_case``: the LR array as a Volume, up-sampled onto exactly the HR grid
    (then kept consistent with the acquired slices when ``acquisition`` = (profile, gap))."""
    from ..pipeline import plan_grid

    up = for_acquisition(upsampler, acquisition)

    def run(lr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        low = lr_volume(hr, lr)
        return consistent(up.run(low, plan_grid(low, shape=list(shape))), lr, acquisition)

    return run


def adapted_fn(hr: Volume, upsampler: "VolumeEngine", adapt: "AdaptOptions", stats: dict[str, Any],
               on_step: Callable[[int, int | None, float], None] | None = None, base_model: Any = None,
               acquisition: tuple[str, float] | None = None) -> Callable[[np.ndarray, tuple[int, ...]], np.ndarray]:
    """``model_fn`` that first adapts a copy of the upsampler's model to the LR volume itself
    (what ``upsample --adapt`` does with a real scan), then runs it onto the HR grid."""
    from ..adapt.session import adapt_volume
    from ..pipeline import VolumeEngine, plan_grid

    def run(lr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        low = lr_volume(hr, lr)
        adapted = adapt_volume(low, upsampler.bundle, adapt, normalization=upsampler.normalization, on_step=on_step,
                               base_model=base_model)
        stats.update(steps=adapted.steps, seconds=adapted.seconds)
        with VolumeEngine(upsampler.bundle, adapted.backend, tile=upsampler.tile, chunk=upsampler.chunk,
                       normalization=upsampler.normalization, max_memory=upsampler.max_memory, tta=adapted.symmetries(),
                       keep_samples=acquisition is None) as up:
            return consistent(up.run(low, plan_grid(low, shape=list(shape))), lr, acquisition)

    return run


def evaluate_scale(
    hr: Volume,
    scale: Triplet,
    degradation: "str | DegradationSpec",
    upsampler: "VolumeEngine | None",
    mask: np.ndarray,
    name: str,
    adapt: "AdaptOptions | None" = None,
    on_adapt_step: Callable[[int, int | None, float], None] | None = None,
    base_model: Any = None,
    keep_acquired: bool = False,
) -> ScaleOutputs:
    """Degrade, reconstruct with tricubic, sinc (and the model; with ``adapt`` also the model
    adapted to the LR, using the degradation's own slice profile and gap), score all.
    ``keep_acquired``: the model arms are projected onto the acquired data as ``upsample
    --keep-acquired`` does: slice degradations with their own profile and gap, k-space ones
    with ``--acquisition kspace`` (cubic and Gaussian LRs are not a linear acquisition the
    runtime models; their rows stay as without)."""
    spec = as_spec(degradation)
    data_range = default_data_range(hr.data)
    fields = spec.fields()
    acquisition = None
    if keep_acquired and spec.kind == "slice":
        acquisition = (fields["slice_profile"] or "box", fields["slice_gap"] or 0.0)
    elif keep_acquired and spec.kind in ("kspace", "kspace-noise"):  # the LR's own band (noise and magnitude included)
        acquisition = (KSPACE, 0.0)
    model_fn = upsampler_fn(hr, upsampler, acquisition) if upsampler is not None else None
    extra, stats = {}, {}  # type: ignore[var-annotated]
    if adapt is not None and upsampler is not None:
        adapt = replace(adapt, profile=fields["slice_profile"] or "box", gap=fields["slice_gap"] or 0.0)
        extra["adapted"] = adapted_fn(hr, upsampler, adapt, stats, on_adapt_step, base_model, acquisition)
    out = run_case(hr.data, scale, spec, model_fn, mask, data_range, name, extra=extra)
    row = EvalRow(
        volume=name,
        scale=scale_label(scale),
        degradation=spec.kind,
        hr_shape="x".join(map(str, hr.shape)),
        lr_shape="x".join(map(str, out.lr.shape)),
        mask_fraction=float(mask.mean()),
        data_range=data_range,
        tricubic=out.scores["tricubic"],
        model=out.scores.get("model"),
        model_name=upsampler.model_name if upsampler is not None else None,
        backend=getattr(upsampler.backend, "name", None) if upsampler is not None else None,
        model_seconds=out.model_seconds,
        sinc=out.scores["sinc"],
        **spec.fields(),
        adapted=out.scores.get("adapted"),
        adapt_steps=stats.get("steps"),
        adapt_seconds=stats.get("seconds"),
        keep_acquired=acquisition is not None,
    )
    return ScaleOutputs(row=row, hr=hr.data, affine=hr.affine, lr=out.lr, tricubic=out.images["tricubic"],
                        model=out.images.get("model"), sinc=out.images["sinc"], adapted=out.images.get("adapted"))


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
    degradation: "str | DegradationSpec | Sequence[str | DegradationSpec]",
    upsampler: "VolumeEngine | None",
    on_outputs: Callable[[ScaleOutputs], None] | None = None,
    adapt: "AdaptOptions | None" = None,
    on_adapt_step: Callable[[int, int | None, float], None] | None = None,
    keep_acquired: bool = False,
) -> list[EvalRow]:
    """Rows for one HR volume, one per degradation and scale (degradation-major); ``upsampler=None``
    scores the baselines only.

    ``on_outputs`` receives each scale's arrays (to keep one for a montage) before they are
    dropped, so memory stays at one scale's worth of volumes.

    Example:
        >>> with VolumeEngine("default") as up:  # doctest: +SKIP
        ...     rows = evaluate_volume("t1.nii.gz", ["2", "1,1,3"], "cubic", up)
    """
    from ..readers import read_volume

    path = Path(hr_path)
    hr = read_volume(path)
    mask = head_mask(hr.data)
    triplets = parse_scales(scales)
    specs = [as_spec(d) for d in ([degradation] if isinstance(degradation, (str, DegradationSpec)) else degradation)]
    base_model = None
    if adapt is not None and upsampler is not None:  # the base weights load once per volume, each case adapts a copy
        from ..adapt.session import require_torch
        from ..backends.torch_backend import load_bundle_model

        require_torch("evaluate")
        base_model = load_bundle_model(upsampler.bundle)
    rows = []
    for spec in specs:
        for scale in triplets:
            outputs = evaluate_scale(hr, scale, spec, upsampler, mask, volume_name(path), adapt, on_adapt_step, base_model,
                                     keep_acquired)
            if on_outputs is not None:
                on_outputs(outputs)
            rows.append(outputs.row)
    return rows
