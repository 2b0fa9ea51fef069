"""Distillation targets: what an ensemble of fixed models predicts at a training batch's points.

Why: averaging the default and bandlimited models (``--ensemble``) beats each of them on the
held-out subjects, but costs one pass per member at run time. Training one model towards the
members' mean as well as towards the ground truth (knowledge distillation, Hinton et al. 2015,
here for regression) tries to pack the ensemble into a single model's cost.

The teachers see exactly the student's batch: the same LR patch, query points, decoder
coordinates and base channels. So a teacher must read the same decoder coordinates (``coords``
and ``feature_scale``) and either need no base or the student's base; anything else is refused
before training starts, not discovered as a silently wrong target.
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
    """Fixed models in eval mode whose mean prediction is the distillation target."""

    models: list[ArSSR]
    identities: list[dict[str, str]]  # {"name", "weights_sha256"} per teacher, recorded in checkpoints

    @torch.no_grad()
    def mean_prediction(self, lr: torch.Tensor, coords: torch.Tensor, decoder_coords: torch.Tensor,
                        base: torch.Tensor, bf16: bool) -> torch.Tensor:
        """The teachers' mean intensity (B, K, 1) in fp32 at the batch's points."""
        total = None
        for model in self.models:
            with torch.autocast(lr.device.type, dtype=torch.bfloat16, enabled=bf16):
                pred = model(lr, coords, decoder_coords, base).float()
            total = pred if total is None else total + pred
        assert total is not None
        return total / len(self.models)


def check_fits(student: ModelSpec, teacher: ModelSpec, name: str) -> None:
    """Refuse a teacher that would need inputs the student's batches do not carry."""
    if (teacher.coords, teacher.feature_scale) != (student.coords, student.feature_scale):
        raise InputError(f"teacher {name!r} reads {teacher.coords} coordinates at feature scale {teacher.feature_scale}, "
                         f"the student {student.coords} at {student.feature_scale}: its batch inputs would differ")
    if teacher.base not in ("none", student.base):
        raise InputError(f"teacher {name!r} adds a {teacher.base} base the student's batches do not carry "
                         f"(student base: {student.base}); distil into a model with that base instead")


def load_teachers(names: Sequence[str], student: ModelSpec, device: torch.device) -> Teachers:
    """Resolve each name (an embedded or user model name, or a bundle folder) to its fixed
    torch model on ``device``; checked against the student's batch inputs."""
    models, identities = [], []
    for name in names:
        bundle = resolve_model(name)  # the bundle's own checks: file digests, safe weights load
        model = load_bundle_model(bundle)
        check_fits(student, model.spec, name)
        for p in model.parameters():
            p.requires_grad_(False)
        models.append(model.to(device).eval())
        identities.append({"name": str(name), "weights_sha256": str(bundle.meta.get("files", {}).get(WEIGHTS, ""))})
    return Teachers(models, identities)


def check_same_teachers(saved: Any, current: list[dict[str, str]]) -> None:
    """A resumed run must distil from the very weights it started with (a repackaged bundle
    under the same name would silently change the target mid-run)."""
    if saved is not None and saved != current:
        raise InputError(f"the run was distilled from {saved}, but the teachers now resolve to {current}: "
                         "restore those bundles or start a new run")
