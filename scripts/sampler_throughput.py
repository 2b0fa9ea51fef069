"""Training batches per second from the patch sampler, in-process and with N worker processes.

    python scripts/sampler_throughput.py CONFIG.json [--workers 0 2 4 8] [--batch 32] [--steps 40]

Why: on a GPU the sampler, not the network, bounds a training step (training/prefetch.py);
this says how many ``--sampler-workers`` a machine needs for a batch size. Prints one line per
worker count with its rate as a ratio to the in-process sampler measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4, 8])
    ap.add_argument("--batch", type=int, default=None, help="default: the config's")
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()

    from arssr_rt.network import build_model
    from arssr_rt.training.config_check import checked_dataclass
    from arssr_rt.training.data import PatchSampler, SamplerConfig, expand_data_arg, load_training_volumes
    from arssr_rt.training.prefetch import BatchSource
    from arssr_rt.training.train import TrainConfig

    with open(args.config) as handle:
        cfg = checked_dataclass(TrainConfig, json.load(handle), args.config)
    spec = build_model(cfg.spec).spec
    sampler_cfg = replace(checked_dataclass(SamplerConfig, cfg.sampler, "sampler"), coords=spec.coords,
                          feature_scale=spec.feature_scale, base=spec.base)
    volumes = load_training_volumes(expand_data_arg(cfg.data), cfg.pyramid, kinds=cfg.pyramid_kinds, weights=cfg.data_weights)
    batch = args.batch or cfg.batch
    baseline = None
    for workers in args.workers:
        with BatchSource(PatchSampler(volumes, sampler_cfg, seed=cfg.seed), batch, seed=cfg.seed, rank=0, workers=workers, start=0) as source:
            source.get(0)  # workers start and fill their queue
            t = time.perf_counter()
            for step in range(1, args.steps + 1):
                source.get(step)
            rate = args.steps / (time.perf_counter() - t)
        baseline = baseline or rate
        print(f"workers {workers:2d}  batch {batch:3d}  {rate:7.1f} batches/s  {rate * batch:8.0f} patches/s  {rate / baseline:5.2f}x", flush=True)


if __name__ == "__main__":
    main()
