"""A/B: weight-space ensembling of the adapted model with the model it was adapted from.

WiSE-FT (Wortsman et al., CVPR 2022) found that interpolating a fine-tuned model's weights
with those of the model it started from, theta = a * adapted + (1 - a) * base, is often
better than either under distribution shift. ``--adapt`` has such a shift: it fine-tunes on
in-plane pairs and is applied through-plane. Per case (HR volume x thick-slice scale, box
profile along array axis 2): degrade as ``evaluate`` does, adapt once, then up-sample with
each mixing weight ``a`` (a = 0 is the default model, a = 1 the adapted one) and score against
HR (head mask), raw and after ``--keep-acquired``'s projection. One JSON line per case.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python scripts/adapt_wise_ab.py HR.nii.gz 1,1,6 --steps 600 --alphas 1 0.8 0.6 0
"""

from __future__ import annotations

import argparse
import copy
import json

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("hr")
    ap.add_argument("scales", nargs="+")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--alphas", type=float, nargs="+", default=[1.0, 0.8, 0.6, 0.4, 0.0])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    from arssr_rt.adapt.plan import AdaptOptions
    from arssr_rt.adapt.session import adapt_volume
    from arssr_rt.backends.torch_backend import load_bundle_model
    from arssr_rt.consistency import keep_acquired
    from arssr_rt.degrade import degrade
    from arssr_rt.evaluation.case import score
    from arssr_rt.evaluation.metrics import default_data_range, head_mask
    from arssr_rt.evaluation.runner import lr_volume
    from arssr_rt.pipeline import VolumeEngine, plan_grid
    from arssr_rt.readers import read_volume

    torch.set_num_threads(args.threads)
    hr = read_volume(args.hr)
    mask = head_mask(hr.data)
    rng = default_data_range(hr.data)
    with VolumeEngine("default", "torch") as base:
        start = {k: v.detach().clone() for k, v in load_bundle_model(base.bundle).state_dict().items()}
        for label in args.scales:
            scale = tuple(float(x) for x in label.split(","))
            lr = degrade(hr.data, scale, "slice", profile="box").astype(np.float32)
            low = lr_volume(hr, lr)
            grid = plan_grid(low, shape=list(hr.shape))
            adapted = adapt_volume(low, base.bundle, AdaptOptions(steps=args.steps, profile="box"), threads=args.threads)
            tuned = {k: v.detach().clone() for k, v in adapted.model.state_dict().items()}
            res = {"volume": args.hr.split("/")[-1], "scale": label, "steps": adapted.steps, "adapt_s": round(adapted.seconds, 1)}
            for a in args.alphas:
                mixed = copy.copy(adapted)
                model = copy.deepcopy(adapted.model)
                model.load_state_dict({k: (a * tuned[k] + (1 - a) * start[k]) if tuned[k].is_floating_point() else tuned[k] for k in tuned})
                mixed.model = model.eval()
                with VolumeEngine(base.bundle, mixed.backend) as up:
                    out = up.run(low, grid)
                raw = score(hr.data, out, mask, rng)
                dc = score(hr.data, keep_acquired(out.astype(np.float32).copy(), lr, "box", 0.0), mask, rng)
                res[f"a={a:g}"] = {"psnr": round(raw.psnr_head, 4), "ssim": round(raw.ssim_head, 5),
                                   "psnr_dc": round(dc.psnr_head, 4), "ssim_dc": round(dc.ssim_head, 5)}
                print(json.dumps({"scale": label, "a": a, **res[f"a={a:g}"]}), flush=True)
            print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
