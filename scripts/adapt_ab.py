"""A/B: `--adapt` recipe variants on one simulated thick-slice case, each also with data consistency.

Degrades HR as ``evaluate`` does (box profile along array axis 2), scores the default model
once, then per variant adapts a fresh copy on the LR alone and scores its output, raw and after
``--keep-acquired``'s projection (``consistency.keep_acquired``: exact for the simulation's own
operator), with TTA passes if asked. Head mask, PSNR peak = HR range (as ``evaluate``).
A variant is ``name`` or ``key=value,key=value``: AdaptOptions fields (lr, batch, loss, warmup,
tta, tune, context) or PairConfig fields (lr_thick, fine, native, points, margin).

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python scripts/adapt_ab.py HR.nii.gz 1,1,6 --steps 600 base loss=l2
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import fields, replace

import numpy as np

PAIR_KEYS = {"lr_thick", "fine", "native", "points", "margin", "foreground_bias"}


def parse_variant(text: str, base):
    from arssr_rt.adapt.plan import AdaptOptions

    if text == "base":
        return base
    known = {f.name: f.type for f in fields(AdaptOptions)}
    changes, extra = {}, dict(base.extra)
    for item in text.split(","):
        key, value = item.split("=")
        cast = int if value.lstrip("-").isdigit() else (float if value.replace(".", "").replace("e-", "").isdigit() else str)
        if key in PAIR_KEYS:
            extra[key] = cast(value)
        elif key in known:
            changes[key] = cast(value)
        else:
            raise SystemExit(f"unknown variant key {key}")
    return replace(base, extra=extra, **changes)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("hr")
    ap.add_argument("scale")
    ap.add_argument("variants", nargs="+")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from arssr_rt.adapt.plan import AdaptOptions
    from arssr_rt.adapt.session import adapt_volume
    from arssr_rt.consistency import keep_acquired
    from arssr_rt.degrade import degrade
    from arssr_rt.evaluation.case import score
    from arssr_rt.evaluation.metrics import default_data_range, head_mask
    from arssr_rt.evaluation.runner import lr_volume
    from arssr_rt.pipeline import VolumeEngine, plan_grid
    from arssr_rt.readers import read_volume

    hr = read_volume(args.hr)
    mask, rng = head_mask(hr.data), default_data_range(hr.data)
    scale = tuple(float(x) for x in args.scale.split(","))
    lr = degrade(hr.data, scale, "slice", profile="box").astype(np.float32)
    low = lr_volume(hr, lr)
    grid = plan_grid(low, shape=list(hr.shape))

    def scores(out: np.ndarray) -> dict:
        raw = score(hr.data, out, mask, rng)
        dc = score(hr.data, keep_acquired(out.astype(np.float32).copy(), lr, "box", 0.0), mask, rng)
        return {"psnr": round(raw.psnr_head, 4), "ssim": round(raw.ssim_head, 5),
                "psnr_dc": round(dc.psnr_head, 4), "ssim_dc": round(dc.ssim_head, 5)}

    with VolumeEngine("default", "torch") as base:
        print(json.dumps({"volume": args.hr.split("/")[-1], "scale": args.scale, "variant": "default model",
                          **scores(base.run(low, grid))}), flush=True)
        base_opts = AdaptOptions(steps=args.steps, profile="box", seed=args.seed)
        for text in args.variants:
            opts = parse_variant(text, base_opts)
            adapted = adapt_volume(low, base.bundle, opts, threads=1)
            t0 = time.perf_counter()
            with VolumeEngine(base.bundle, adapted.backend, tta=adapted.symmetries()) as up:
                out = up.run(low, grid)
            print(json.dumps({"variant": text, "steps": adapted.steps, "adapt_s": round(adapted.seconds, 1),
                              "infer_s": round(time.perf_counter() - t0, 1), "loss_last": round(adapted.loss_last, 5),
                              **scores(out)}), flush=True)


if __name__ == "__main__":
    main()
