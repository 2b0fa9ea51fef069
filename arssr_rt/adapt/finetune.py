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

from .pairs import ScanPairSampler

WARMUP_STEPS = 3  # steps timed before a time budget is turned into a step count


@dataclass
class FinetuneResult:
    model: torch.nn.Module
    steps: int
    seconds: float
    loss_first: float
    loss_last: float  # exponential moving average at the end


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
    lr: float = 2e-4,
    batch: int = 4,
    tune: str = "all",
    seed: int = 0,
    on_step: Callable[[int, int | None, float], None] | None = None,
) -> FinetuneResult:
    """A fine-tuned deep copy of ``base`` (left untouched). ``on_step(step, total, loss_ema)``
    after each step; ``total`` is None until a time budget has been turned into a step count."""
    torch.manual_seed(seed)
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
        for g in opt.param_groups:
            g["lr"] = lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))
        lr_t, coords_t, dec_t, target_t, base_t = (torch.from_numpy(np.ascontiguousarray(a)) for a in sampler.batch(batch))
        pred = model(lr_t, coords_t, dec_t, base_t)
        loss = F.l1_loss(pred, target_t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        value = float(loss.detach())
        first = value if step == 1 else first
        ema = value if step == 1 else 0.9 * ema + 0.1 * value
        if on_step:
            on_step(step, total if planned else None, ema)
        if budget_seconds is not None and time.perf_counter() - t0 >= budget_seconds:
            break
    for p in model.parameters():
        p.requires_grad_(False)
    return FinetuneResult(model=model.eval(), steps=step, seconds=time.perf_counter() - t0, loss_first=first, loss_last=ema)
