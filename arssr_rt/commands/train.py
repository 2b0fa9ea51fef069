"""``arssr-rt train``: the paper's recipe by default, resumable, DDP-ready (torch extra)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import InputError

HELP = """\
Train an ArSSR model on HR volumes (needs the train extra: pip install "torch==2.13.0" "arssr-rt[train]").

Defaults follow the paper: random HR crops, scale ~ U(2,4), LR made on the fly by centre-aligned
cubic down-sampling, K sampled points, L1, Adam with the learning rate halved every --lr-step
steps. Checkpoints (model + optimiser + RNG state) are written atomically every
--checkpoint-every steps; --resume continues exactly where the run stopped.

Examples:

\b
  arssr-rt train --data volumes/ --out runs/rdn --encoder rdn
  arssr-rt train --data train.csv --out runs/aniso --anisotropic --scales 1.5:4 --degradations cubic=0.7,kspace=0.1,slice=0.2
  arssr-rt train --out runs/rdn --resume
  arssr-rt train --data volumes/ --out runs/student --teacher default --teacher bandlimited --distill 0.5   # distil an ensemble
  arssr-rt train --out runs/rdn --resume --device cuda --precision bf16   # continue on a GPU
  torchrun --nproc-per-node 2 -m arssr_rt train --data volumes/ --out runs/ddp   # DDP (gloo on CPU, nccl on GPU)
"""


def _parse_scales(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(":"))
    except ValueError:
        raise InputError(f"--scales must look like 2:4, got {text!r}") from None
    if not (1.0 <= lo <= hi):
        raise InputError(f"--scales needs 1 <= min <= max, got {text!r}")
    return lo, hi


def _parse_mix(text: str) -> dict[str, float]:
    mix = {}
    for part in text.split(","):
        name, _, w = part.partition("=")
        mix[name.strip()] = float(w) if w else 1.0
    return mix


def register(app: typer.Typer) -> None:
    @app.command("train", help=HELP)
    def train_cmd(
        out: Path = typer.Option(..., "--out", help="Run directory (checkpoints, log.jsonl, config.json)."),
        data: Optional[List[str]] = typer.Option(None, "--data", help="HR volumes: folder, glob, CSV, or file (repeatable)."),
        val: Optional[List[str]] = typer.Option(None, "--val", help="Held-out HR volumes for validation PSNR (repeatable)."),
        encoder: str = typer.Option("rdn", "--encoder", help="rdn | rescnn | srresnet"),
        spec_json: Optional[str] = typer.Option(None, "--spec", help="Full model spec as JSON (overrides --encoder)."),
        scales: str = typer.Option("2:4", "--scales", help="Scale range min:max (paper: 2:4)."),
        anisotropic: float = typer.Option(0.0, "--anisotropic", help="Probability of per-axis scales incl. thick-slice 1x1xk."),
        degradations: str = typer.Option("cubic", "--degradations", help="Mix, e.g. cubic=0.7,kspace=0.1,slice=0.1,gaussian=0.1"),
        noise: float = typer.Option(0.0, "--noise", help="Probability of mild Gaussian noise on the LR."),
        intensity: float = typer.Option(0.0, "--intensity", help="Probability of a random gain (0.9-1.1) and offset (0-0.05) on a patch: "
                                        "teaches the model the range shifts that runtime min-max normalisation makes."),
        lr_patch: int = typer.Option(10, "--lr-patch", help="LR patch size (paper: 10)."),
        points: int = typer.Option(8000, "--points", help="Sampled HR points per patch (paper: 8000)."),
        batch: int = typer.Option(15, "--batch", help="Patches per step (paper: 15)."),
        steps: int = typer.Option(100_000, "--steps"),
        lr: float = typer.Option(1e-4, "--lr"),
        schedule: str = typer.Option("step", "--schedule", help="step (paper) | cosine"),
        lr_step: int = typer.Option(20_000, "--lr-step", help="Halve the learning rate every N steps (step schedule)."),
        checkpoint_every: int = typer.Option(200, "--checkpoint-every"),
        val_every: int = typer.Option(1000, "--val-every"),
        threads: Optional[int] = typer.Option(None, "--threads"),
        seed: int = typer.Option(0, "--seed"),
        device: Optional[str] = typer.Option(None, "--device", help="cpu | cuda (default cpu; with --resume: the run's, unless given)."),
        precision: Optional[str] = typer.Option(None, "--precision", help="fp32 | bf16 (autocast; about 2x faster on CPUs with native bf16, AVX512-BF16/AMX; emulated and far slower on others, which are warned)."),
        sampler_workers: Optional[int] = typer.Option(None, "--sampler-workers", help="Make batches ahead in N worker processes, each step's batch seeded by (seed, step) "
                                                      "(a GPU's lever: the sampler is one CPU core otherwise; default 0, with --resume: the run's)."),
        teacher: Optional[List[str]] = typer.Option(None, "--teacher", help="A fixed model (name or bundle folder) whose prediction the run "
                                                    "is also trained towards; repeatable, see --distill-mode (needs --distill)."),
        distill: float = typer.Option(0.0, "--distill", help="Weight of the teachers' target in the loss, in (0, 1]: "
                                      "(1 - W) L1 to the ground truth + W L1 to the teachers."),
        distill_mode: Optional[str] = typer.Option(None, "--distill-mode", help="mean (the teachers' mean; the default) | best (per patch, "
                                                   "the teacher closest to the ground truth: specialists each teach where they are best)."),
        resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
        quiet: bool = typer.Option(False, "--quiet"),
        trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint", help="Allow full unpickling of the --resume/--init checkpoint "
                                              "when torch.load(weights_only=True) refuses it (runs code from it: trusted files only)."),
    ) -> None:
        from ..extras import require

        require("torch")
        from ..training.data import SamplerConfig
        from ..training.config_check import checked_dataclass, load_config_json
        from ..training.train import TrainConfig, train

        if resume and (out / "config.json").exists():
            config_path = out / "config.json"
            fixed = [flag for flag, given in (("--data", data), ("--val", val), ("--spec", spec_json), ("--teacher", teacher),
                                               ("--distill", distill), ("--distill-mode", distill_mode)) if given]
            if fixed:  # silently training on the old settings would look like the new ones took effect
                raise InputError(f"{', '.join(fixed)} cannot change a resumed run: {config_path} fixes it "
                                 "(edit that file before the run's first step, or start a new run)")
            cfg = checked_dataclass(TrainConfig, load_config_json(config_path), str(config_path))
        else:
            if not data:
                raise InputError("--data is required for a new run")
            lo, hi = _parse_scales(scales)
            spec = json.loads(spec_json) if spec_json else {"encoder": encoder, "feature_dim": 128, "encoder_args": {}, "decoder_width": 256, "decoder_depth": 4}
            sampler = SamplerConfig(lr_patch=lr_patch, points=points, scale_min=lo, scale_max=hi, anisotropic=anisotropic,
                                    degradations=_parse_mix(degradations), noise=noise, intensity=intensity)
            cfg = TrainConfig(data=list(data), val=list(val or []), spec=spec, sampler=asdict(sampler), batch=batch, steps=steps,
                              lr=lr, schedule=schedule, lr_step=lr_step, checkpoint_every=checkpoint_every, val_every=val_every,
                              threads=threads, seed=seed, teachers=list(teacher or []), distill=distill,
                              distill_mode=distill_mode or "mean")
        # device and precision may change on resume (e.g. continue a CPU run on a lent GPU)
        if device is not None:
            cfg.device = device
        if precision is not None:
            cfg.precision = precision
        if sampler_workers is not None:
            cfg.sampler_workers = sampler_workers
        train(cfg, out, resume=resume, progress=not quiet, trust=trust_checkpoint)
