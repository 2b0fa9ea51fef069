"""Training loop: paper recipe by default, checkpoints that resume exactly, DDP via torchrun.

A run directory holds ``config.json``, ``checkpoint.pt`` (model + optimiser + scheduler +
sampler RNG state, written atomically every ``checkpoint_every`` steps), ``best.pt`` (best
validation PSNR gain over tricubic) and ``log.jsonl`` (one JSON object per logged step or
validation).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..atomic import atomic_write, atomic_write_text
from ..cpu_features import cpu_has_native_bf16
from ..degrade import cubic_resample, degrade
from ..errors import InputError
from ..evaluation.metrics import head_mask, psnr  # one definition for training, evaluate and the README
from .. import windowed_sinc
from ..geometry import normalized_centres
from ..network.memory_format import training_layout
from ..safe_load import load_checkpoint
from ..sampling import decoder_axis_coords
from .config_check import checked_dataclass
from .distill import MODES as DISTILL_MODES, check_same_teachers, load_teachers
from .data import PatchSampler, SamplerConfig, expand_data_arg, load_training_volumes
from .prefetch import BatchSource
from ..network import ArSSR, ModelSpec, build_model


@dataclass
class TrainConfig:
    data: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)
    spec: dict[str, Any] = field(default_factory=lambda: ModelSpec("rdn").to_dict())
    sampler: dict[str, Any] = field(default_factory=lambda: asdict(SamplerConfig()))
    batch: int = 15
    steps: int = 100_000
    lr: float = 1e-4
    schedule: str = "step"  # "step": halve every lr_step steps (paper); "cosine": warmup + cosine
    lr_step: int = 20_000
    warmup: int = 200
    min_lr_ratio: float = 0.05
    pyramid: int = 1
    pyramid_kinds: list[str] = field(default_factory=lambda: ["gaussian"])  # see data.coarser
    data_weights: dict[str, float] = field(default_factory=dict)  # file name -> sampling weight
    seed: int = 0
    checkpoint_every: int = 200
    val_every: int = 1000
    val_scales: list[float] = field(default_factory=lambda: [2.0, 4.0])
    log_every: int = 20
    threads: int | None = None
    init: str | None = None  # checkpoint whose model weights start a new run (fine-tuning)
    gate_logit: float = 0.0  # a gated base grown by `init` from a one-channel model starts its gate here
    start_as_base: bool = False  # after `init`, zero the decoder's output layers: a residual model starts as its base
    stop_at: int | None = None  # pause here (checkpointed) although the schedule spans `steps`
    device: str = "cpu"  # "cpu" | "cuda" (DDP: each process takes cuda:LOCAL_RANK)
    precision: str = "fp32"  # "fp32" | "bf16" (autocast: fp32 master weights, ~2x faster CPU steps)
    sampler_workers: int = 0  # > 0: batches made ahead in this many processes, seeded per step (prefetch.py)
    teachers: list[str] = field(default_factory=list)  # fixed models (names or bundle dirs) distilled into the run (distill.py)
    distill: float = 0.0  # loss = (1 - distill) L1(target) + distill L1(teachers' target); 0 = no teachers
    distill_mode: str = "mean"  # teachers' target: "mean", or "best" (per patch, the teacher closest to the truth)


PRECISIONS = ("fp32", "bf16")


def training_device(cfg: TrainConfig) -> torch.device:
    """The device to train on; a CUDA request without a visible GPU is a clear error."""
    if cfg.device == "cpu":
        return torch.device("cpu")
    if cfg.device == "cuda":
        if not torch.cuda.is_available():
            raise InputError("--device cuda: torch sees no CUDA GPU (torch.cuda.is_available() is False)")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    raise InputError(f"--device must be cpu or cuda, got {cfg.device!r}")


def lr_at(cfg: TrainConfig, step: int) -> float:
    if cfg.schedule == "cosine":
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))
    return cfg.lr * (0.5 ** (step // cfg.lr_step))


def decoded_slabs(model: ArSSR, lr: np.ndarray, out_shape: Sequence[int], chunk: int = 1 << 18
                  ) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor | None]]:
    """The decoder's raw output over the whole output grid, a slab of rows at a time:
    (a, b, decoded (1, K, C) for rows [a, b), base channels (1, K, C') or None). Shared by
    ``predict_volume`` and diagnostics that read a channel, e.g. the gated base's gate."""
    device = next(model.parameters()).device
    feats = model.encoder(torch.from_numpy(np.ascontiguousarray(lr, dtype=np.float32))[None, None].to(device))
    axes = [torch.from_numpy(normalized_centres(n)).to(device) for n in out_shape]
    mode = model.spec.coords
    r = model.spec.feature_scale
    dec_axes = [torch.from_numpy(decoder_axis_coords(h * r, n, 0, n, mode)).to(device) for h, n in zip(lr.shape, out_shape)]
    bases = windowed_sinc.bases_on_grid(lr, out_shape, model.spec.base)
    rows = max(1, chunk // (out_shape[1] * out_shape[2]))
    for a in range(0, out_shape[0], rows):
        b = min(out_shape[0], a + rows)
        g = torch.stack(torch.meshgrid(axes[0][a:b], axes[1], axes[2], indexing="ij"), dim=-1).reshape(1, -1, 3)
        d = torch.stack(torch.meshgrid(dec_axes[0][a:b], dec_axes[1], dec_axes[2], indexing="ij"), dim=-1).reshape(1, -1, 3)
        base = torch.from_numpy(np.stack([x[a:b].reshape(-1) for x in bases], axis=-1)[None]).to(device) if bases else None
        yield a, b, model.decode(model.query(feats, g), d), base


@torch.inference_mode()
def predict_volume(model: ArSSR, lr: np.ndarray, out_shape: Sequence[int], chunk: int = 1 << 18) -> np.ndarray:
    """Whole-volume reference inference in torch (normalised LR in, normalised HR out), fp32,
    on the model's device."""
    model.eval()
    out = np.zeros(tuple(out_shape), dtype=np.float32)
    for a, b, decoded, base in decoded_slabs(model, lr, out_shape, chunk):
        out[a:b] = model.combine(decoded, base).reshape(b - a, out_shape[1], out_shape[2]).cpu().numpy()
    return out


def validate(model: ArSSR, volumes: list[tuple[str, np.ndarray]], scales: Sequence[float]) -> dict[str, float]:
    """PSNR (head mask) of model and tricubic on centre-aligned cubic down-sampling."""
    res: dict[str, float] = {}
    gains = []
    for name, hr in volumes:
        mask = head_mask(hr)
        rng = float(hr.max() - hr.min())
        for s in scales:
            lr = degrade(hr, [s] * 3, "cubic")
            lo, hi = float(lr.min()), float(lr.max())
            pred = predict_volume(model, (lr - lo) / (hi - lo), hr.shape) * (hi - lo) + lo
            cub = cubic_resample(lr, hr.shape)
            pm, pc = psnr(hr, pred, mask, rng), psnr(hr, cub, mask, rng)
            res[f"{name}/x{s:g}/model"] = round(pm, 3)
            res[f"{name}/x{s:g}/tricubic"] = round(pc, 3)
            gains.append(pm - pc)
    res["mean_gain_db"] = round(float(np.mean(gains)), 3) if gains else float("nan")
    return res


GROWN_BLOCK_SCALE = 1e-3  # a grown encoder block's last convolution starts at this fraction of its init


def load_init(model: ArSSR, state: dict[str, Any], gate_logit: float = 0.0) -> None:
    """Start ``model`` from another run's weights (fine-tuning, or growing the architecture).

    Only parameters the new spec adds may start fresh: a modulator (zero-initialised, so the
    decoder starts as before), a sub-voxel expansion (initialised to copy each feature
    vector to its r^3 sub-sites), or extra ResCNN residual blocks (a deeper encoder, wider
    receptive field: each new block's last convolution starts at 1e-3 of its random weights,
    so the grown model starts within ~1e-3 of the trained one and the block still trains).
    A published-grid encoder moves under ``encoder.body``.
    """
    if model.spec.feature_scale > 1 and not any(k.startswith("encoder.body.") for k in state):
        state = {("encoder.body." + k[len("encoder."):] if k.startswith("encoder.") else k): v for k, v in state.items()}
    new_blocks = _new_residual_blocks(model, state)
    state = _with_gate_row(model, state, gate_logit)
    missing, unexpected = model.load_state_dict(state, strict=False)
    fresh = ("decoder.modulator.", "encoder.expand.") + tuple(f"{prefix}." for prefix in new_blocks)
    if unexpected or any(not k.startswith(fresh) for k in missing):
        raise InputError(f"--init checkpoint does not fit the spec: missing {missing[:3]}, unexpected {unexpected[:3]}")
    modules = dict(model.named_modules())
    for prefix in new_blocks:
        last = [m for m in modules[prefix].modules() if isinstance(m, torch.nn.Conv3d)][-1]
        with torch.no_grad():  # not zero: the ReLU after it would pass no gradient (Adam rescales the small steps)
            last.weight.mul_(GROWN_BLOCK_SCALE)
            last.bias.zero_()


def _with_gate_row(model: ArSSR, state: dict[str, Any], gate_logit: float) -> dict[str, Any]:
    """Grow a one-channel decoder read-out to the gated base's two (residual, gate logit): the
    residual row is kept and the gate starts constant (zero weights) at ``gate_logit``.

    0 (halfway) is the default: a gate started at -3 (95 % on its source's Lanczos-3 base)
    had not moved after 1,000 steps (mean 0.048 +- 0.004 on every input kind, session 10);
    sigmoid' is 0.045 there against 0.25 at 0."""
    if windowed_sinc.decoder_outputs(model.spec.base) != 2:
        return state
    last = [name for name, m in model.decoder.stage_two.named_modules() if isinstance(m, torch.nn.Linear)][-1]
    w_key, b_key = f"decoder.stage_two.{last}.weight", f"decoder.stage_two.{last}.bias"
    if w_key not in state or state[w_key].shape[0] != 1:
        return state
    w, b = state[w_key], state[b_key]
    return {**state, w_key: torch.cat([w, torch.zeros_like(w)]), b_key: torch.cat([b, torch.full_like(b, float(gate_logit))])}


def _new_residual_blocks(model: ArSSR, state: dict[str, Any]) -> list[str]:
    """Module names of ResCNN blocks ``model`` has and ``state`` lacks, when the blocks it has
    are block1..blockN and the state holds a prefix of them (growing the encoder's depth)."""
    if model.spec.encoder != "rescnn":
        return []
    blocks = sorted({name for name, _ in model.named_modules() if re.fullmatch(r"encoder(\.body)?\.block\d+", name)},
                    key=lambda n: int(n.rsplit("block", 1)[1]))
    held = [b for b in blocks if any(k.startswith(b + ".") for k in state)]
    return blocks[len(held):] if held == blocks[:len(held)] and held else []


def model_weights(payload: Any, path: Path, role: str = "--init") -> dict[str, Any]:
    """The model weights of a loaded checkpoint: a run's {"model": ...} or a bundle's weights.pt
    ({"state_dict": ...}); ``role`` names the file in the error (--init, or a script's)."""
    for key in ("model", "state_dict"):
        if isinstance(payload, dict) and isinstance(payload.get(key), dict):
            return payload[key]
    raise InputError(f"{role} {path} holds no model weights (expected a training checkpoint or a bundle's weights.pt)")


def _cpu(obj: Any) -> Any:
    """A state dict with every tensor on the CPU, so checkpoints load on any machine."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_cpu(v) for v in obj]
    return obj


def _atomic_torch_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def train(cfg: TrainConfig, run_dir: Path, resume: bool = False, progress: bool = True, trust: bool = False) -> Path:
    """Train (or resume) into ``run_dir``; returns the path of the last checkpoint.

    ``trust`` allows full unpickling of the --resume / --init checkpoint (see safe_load)."""
    checked_dataclass(TrainConfig, asdict(cfg), "training config")  # one line for a mistyped setting, before any work
    sampler_cfg = checked_dataclass(SamplerConfig, cfg.sampler, "training config", prefix="sampler.")
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.precision not in PRECISIONS:
        raise InputError(f"--precision must be one of {', '.join(PRECISIONS)}, got {cfg.precision!r}")
    if isinstance(cfg.sampler_workers, bool) or not isinstance(cfg.sampler_workers, int) or cfg.sampler_workers < 0:
        raise InputError(f"--sampler-workers must be a whole number >= 0, got {cfg.sampler_workers!r}")
    if not 0.0 <= cfg.distill <= 1.0 or bool(cfg.teachers) != (cfg.distill > 0):
        raise InputError(f"distill must be in (0, 1] with at least one teacher, or 0 without teachers; got distill {cfg.distill} "
                         f"with {len(cfg.teachers)} teacher(s)")
    if cfg.distill_mode not in DISTILL_MODES:
        raise InputError(f"distill_mode must be one of {', '.join(DISTILL_MODES)}, got {cfg.distill_mode!r}")
    device = training_device(cfg)
    if cfg.precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():  # measured 80 s vs 2.3 s a step
        import sys

        print("arssr-rt train: warning: this CPU has no native bf16 (AVX512-BF16 / AMX), so bf16 autocast is "
              "emulated (measured ~30x slower than fp32 on an AVX2 CPU); use --precision fp32",
              file=sys.stderr, flush=True)
    ddp = "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1
    owns_group = ddp and not dist.is_initialized()
    if owns_group:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        ckpt = _train_loop(cfg, sampler_cfg, run_dir, resume, progress, device, ddp, trust)
        if ddp:
            dist.barrier()  # every rank is done before any closes its connections
        return ckpt
    finally:
        if owns_group and dist.is_initialized():
            # Close the connections ourselves: a rank that just exits can make gloo's reader
            # thread on a slower rank abort (SIGABRT) on "connection closed by peer".
            dist.destroy_process_group()


def _train_loop(cfg: TrainConfig, sampler_cfg: SamplerConfig, run_dir: Path, resume: bool, progress: bool, device: torch.device,
                ddp: bool, trust: bool = False) -> Path:
    """The optimisation loop proper; ``train`` owns the process group around it and has
    checked ``sampler_cfg`` (the model's coords / feature scale / base are filled in here)."""
    rank = dist.get_rank() if ddp else 0
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.spec).to(device)  # before the optimiser, so its state lives there too
    if not cfg.teachers:  # a distilling student keeps its teachers' layout: the same batch then gives the same numbers
        training_layout(model, device, cfg.precision)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)
    teachers = load_teachers(cfg.teachers, model.spec, device) if cfg.teachers else None
    sampler_cfg = replace(sampler_cfg, coords=model.spec.coords, feature_scale=model.spec.feature_scale, base=teachers.base if teachers else model.spec.base)
    sampler = PatchSampler(load_training_volumes(expand_data_arg(cfg.data), cfg.pyramid, kinds=cfg.pyramid_kinds, weights=cfg.data_weights), sampler_cfg, seed=cfg.seed + rank)
    val_volumes = []
    for p in cfg.val:
        import nibabel as nib

        v = np.squeeze(np.asarray(nib.load(p).get_fdata(dtype=np.float32)))
        val_volumes.append((Path(p).name.split(".")[0], v))
    step, best = 0, -1e9
    ckpt = run_dir / "checkpoint.pt"
    if resume and ckpt.exists():
        state = load_checkpoint(ckpt, trust)  # tensors and plain types only; device-free
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, best = int(state["step"]), float(state.get("best", -1e9))
        if teachers:
            check_same_teachers(state.get("teachers"), teachers.identities)
        sampler.rng.bit_generator.state = state["sampler_rng"][rank] if isinstance(state["sampler_rng"], list) else state["sampler_rng"]
        torch.set_rng_state(state["torch_rng"])
    else:
        if cfg.init:
            load_init(model, model_weights(load_checkpoint(cfg.init, trust), Path(cfg.init)), cfg.gate_logit)
            if cfg.start_as_base:
                model.start_as_base()
        if _is_main():
            atomic_write_text(run_dir / "config.json", json.dumps(asdict(cfg), indent=2))
    net: torch.nn.Module = model
    if ddp:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    log = open(run_dir / "log.jsonl", "a") if _is_main() else None

    def save(path: Path) -> None:
        rngs: Any = sampler.rng.bit_generator.state
        if ddp:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, rngs)
            rngs = gathered
        if _is_main():
            _atomic_torch_save({"model": _cpu(model.state_dict()), "optimizer": _cpu(opt.state_dict()), "step": step, "best": best,
                                "sampler_rng": rngs, "torch_rng": torch.get_rng_state(), "spec": cfg.spec, "config": asdict(cfg),
                                "teachers": teachers.identities if teachers else None}, path)

    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                   TextColumn("{task.fields[info]}"), TimeRemainingColumn(), disable=not (progress and _is_main()))
    t0, ema, start_step = time.time(), None, step
    source = BatchSource(sampler, cfg.batch, seed=cfg.seed, rank=rank, workers=cfg.sampler_workers, start=step)
    with bar, source:
        task = bar.add_task("train", total=cfg.steps, completed=step, info="")
        last = min(cfg.steps, cfg.stop_at or cfg.steps)
        while step < last:
            net.train()
            for g in opt.param_groups:
                g["lr"] = lr_at(cfg, step)
            lr_t, coords_t, dec_t, target_t, base_t = (torch.from_numpy(a).to(device, non_blocking=True) for a in source.get(step))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
                pred = net(lr_t, coords_t, dec_t, base_t)
            loss = F.l1_loss(pred.float(), target_t)
            if teachers:
                taught = teachers.target(cfg.distill_mode, lr_t, coords_t, dec_t, base_t, target_t, bf16=cfg.precision == "bf16")
                loss = (1 - cfg.distill) * loss + cfg.distill * F.l1_loss(pred.float(), taught)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            value = float(loss.detach())
            ema = value if ema is None else 0.98 * ema + 0.02 * value
            rate = (step - start_step) / max(1e-9, time.time() - t0)
            bar.update(task, completed=step, info=f"L1 {ema:.4f}  {rate:.2f} step/s")
            if log and step % cfg.log_every == 0:
                log.write(json.dumps({"step": step, "loss": round(ema, 5), "lr": lr_at(cfg, step), "time": round(time.time() - t0, 1)}) + "\n")
                log.flush()
            if step % cfg.checkpoint_every == 0 or step == last:
                save(ckpt)
            if val_volumes and (step % cfg.val_every == 0 or step == last) and _is_main():
                res = validate(model, val_volumes, cfg.val_scales)
                if res["mean_gain_db"] > best:
                    best = res["mean_gain_db"]
                    _atomic_torch_save({"model": _cpu(model.state_dict()), "spec": cfg.spec, "step": step, "validation": res}, run_dir / "best.pt")
                if log:
                    log.write(json.dumps({"step": step, "validation": res}) + "\n")
                    log.flush()
    if log:
        log.close()
    return ckpt

