"""A/B: test-time averaging (arssr_rt/tta.py) of an adapted model, TTA off vs on, same adapted model.

Per case (HR volume x thick-slice scale, box profile along array axis 2): degrade as
``evaluate`` does, adapt once on the LR, then up-sample once per symmetry (one pass each) and
score the averages of the first 1, 2, 4 and 8 passes against HR (head mask, PSNR peak =
HR range, as ``evaluate``). Prints one JSON line per case.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python scripts/adapt_tta_ab.py HR.nii.gz 1,1,6 --steps 600
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("hr")
    ap.add_argument("scales", nargs="+")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--passes", type=int, default=8)
    ap.add_argument("--thick-flip", action="store_true", help="passes: identity, thick flip, in-plane flips, all three")
    args = ap.parse_args()

    from arssr_rt.adapt.plan import AdaptOptions
    from arssr_rt.adapt.session import adapt_volume
    from arssr_rt.degrade import degrade
    from arssr_rt.evaluation.case import score
    from arssr_rt.evaluation.metrics import default_data_range, head_mask
    from arssr_rt.evaluation.runner import lr_volume
    from arssr_rt.pipeline import VolumeEngine, plan_grid
    from arssr_rt.readers import read_volume
    from arssr_rt.tta import symmetries

    hr = read_volume(args.hr)
    mask = head_mask(hr.data)
    rng = default_data_range(hr.data)
    with VolumeEngine("default", "torch") as base:
        for label in args.scales:
            scale = tuple(float(x) for x in label.split(","))
            lr = degrade(hr.data, scale, "slice", profile="box").astype(np.float32)
            low = lr_volume(hr, lr)
            grid = plan_grid(low, shape=list(hr.shape))
            adapted = adapt_volume(low, base.bundle, AdaptOptions(steps=args.steps, profile="box"), threads=1)
            syms = symmetries(args.passes, adapted.plan.in_plane)
            if args.thick_flip:  # the sampler flips the thick position too; is that a useful extra pass?
                from arssr_rt.tta import Symmetry

                a, b = adapted.plan.in_plane
                t = adapted.plan.thick_axis
                syms = [Symmetry(), Symmetry((t,)), Symmetry((a, b)), Symmetry((a, b, t))][: args.passes]
            outs, secs = [], []
            for sym in syms:
                with VolumeEngine(base.bundle, adapted.backend, tta=[sym]) as up:
                    t0 = time.perf_counter()
                    outs.append(up.run(low, grid))
                    secs.append(time.perf_counter() - t0)
            res = {"volume": args.hr.split("/")[-1], "scale": label, "steps": adapted.steps,
                   "adapt_s": round(adapted.seconds, 1), "pass_s": [round(s, 1) for s in secs],
                   "single": {str(s): round(score(hr.data, o, mask, rng).psnr_head, 4) for s, o in zip(syms, outs)}}
            for n in (1, 2, 4, 8):
                if n <= len(outs):
                    sc = score(hr.data, np.mean(outs[:n], axis=0), mask, rng)
                    res[f"tta{n}"] = {"psnr_head": round(sc.psnr_head, 4), "ssim_head": round(sc.ssim_head, 5)}
            print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
