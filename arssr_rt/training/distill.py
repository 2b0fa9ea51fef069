"""Distillation targets: what an ensemble of fixed models predicts at a training batch's points.

Why: averaging the default and bandlimited models (``--ensemble``) beats each of them on the
held-out subjects, but costs one pass per member at run time. Training one model towards the
members' mean as well as towards the ground truth (knowledge distillation, Hinton et al. 2015,
here for regression) tries to pack the ensemble into a single model's cost.

The teachers see exactly the student's batch: the same LR patch, query points, decoder
coordinates and base channels. So a teacher must read the same decoder coordinates (``coords``
and ``feature_scale``) and need no base or the batches' base (``batch_base``: the student's, or
for a base-free student the one base its teachers share); anything else is refused before
training starts, not discovered as a silently wrong target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..backends.torch_backend import load_bundle_model
from ..bundle import WEIGHTS, resolve_model
from ..errors import InputError
from ..network import ArSSR, ModelSpec


@dataclass
class Teachers:
    """Fixed models in eval mode whose predictions make the distillation target (``target``)."""

    models: list[ArSSR]
    identities: list[dict[str, str]]  # {"name", "weights_sha256"} per teacher, recorded in checkpoints
    base: str = "none"  # the base channels the batches must carry for them (batch_base)

    @torch.no_grad()
    def predictions(self, lr: torch.Tensor, coords: torch.Tensor, decoder_coords: torch.Tensor,
                    base: torch.Tensor, bf16: bool) -> torch.Tensor:
        """Every teacher's intensity at the batch's points: (teachers, B, K, 1), fp32."""
        preds = []
        for model in self.models:
            with torch.autocast(lr.device.type, dtype=torch.bfloat16, enabled=bf16):
                preds.append(model(lr, coords, decoder_coords, base).float())
        return torch.stack(preds)

    def target(self, mode: str, lr: torch.Tensor, coords: torch.Tensor, decoder_coords: torch.Tensor,
               base: torch.Tensor, truth: torch.Tensor, bf16: bool) -> torch.Tensor:
        """The distillation target (B, K, 1): the teachers' mean ("mean"), or per patch the
        teacher closest to the ground truth on that patch ("best"). Why "best": the members are
        specialists (the default model on aliased input and thick slices, the bandlimited one on
        k-space and PSF input), and their mean is below the better one on each kind (session 15
        A/B); the patch's own error picks the specialist without the sampler naming the kind."""
        preds = self.predictions(lr, coords, decoder_coords, base, bf16)
        if mode == "mean":
            return preds.mean(dim=0)
        errors = (preds - truth.reshape(preds.shape[1:])).abs().mean(dim=(2, 3))  # (teachers, B)
        pick = errors.argmin(dim=0)
        return preds[pick, torch.arange(preds.shape[1], device=preds.device)]


MODES = ("mean", "best")


def batch_base(student: ModelSpec, teachers: Sequence[ModelSpec]) -> str:
    """The base channels the batches carry: the student's own, or, for a base-free student,
    the one base its teachers add (the student's forward ignores them)."""
    if student.base != "none":
        return student.base
    bases = sorted({t.base for t in teachers} - {"none"})
    return bases[0] if len(bases) == 1 else "none"


def check_fits(student: ModelSpec, teacher: ModelSpec, name: str, base: str | None = None) -> None:
    """Refuse a teacher that would need inputs the batches do not carry (``base``: the batches'
    base channels, by default the student's)."""
    base = student.base if base is None else base
    if (teacher.coords, teacher.feature_scale) != (student.coords, student.feature_scale):
        raise InputError(f"teacher {name!r} reads {teacher.coords} coordinates at feature scale {teacher.feature_scale}, "
                         f"the student {student.coords} at {student.feature_scale}: its batch inputs would differ")
    if teacher.base not in ("none", base):
        raise InputError(f"teacher {name!r} adds a {teacher.base} base the batches do not carry "
                         f"(they carry: {base}); give teachers one base, or distil into a model with that base")


def load_teachers(names: Sequence[str], student: ModelSpec, device: torch.device) -> Teachers:
    """Resolve each name (an embedded or user model name, or a bundle folder) to its fixed
    torch model on ``device``; checked against the student's batch inputs."""
    models, identities = [], []
    for name in names:
        bundle = resolve_model(name)  # the bundle's own checks: file digests, safe weights load
        models.append(load_bundle_model(bundle))
        identities.append({"name": str(name), "weights_sha256": str(bundle.meta.get("files", {}).get(WEIGHTS, ""))})
    base = batch_base(student, [m.spec for m in models])
    for name, model in zip(names, models):
        check_fits(student, model.spec, name, base)
        for p in model.parameters():
            p.requires_grad_(False)
        model.to(device).eval()
    return Teachers(models, identities, base)


def check_same_teachers(saved: Any, current: list[dict[str, str]]) -> None:
    """A resumed run must distil from the very weights it started with (a repackaged bundle
    under the same name would silently change the target mid-run)."""
    if saved is not None and saved != current:
        raise InputError(f"the run was distilled from {saved}, but the teachers now resolve to {current}: "
                         "restore those bundles or start a new run")
