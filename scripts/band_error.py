"""Where a checkpoint loses to zero-filled sinc on a k-space crop: in-band vs out-of-band error.

    python scripts/band_error.py HR.nii.gz CKPT [CKPT ...] [--scale 2] [--threads 1]

Splits each estimate's error with the HR into the LR's band (what the acquisition kept: sinc
reproduces it, up to the magnitude) and beyond it (what only a model can add), and scores each
checkpoint raw and with the band kept (`consistency.keep_kspace`, as `upsample --keep-acquired
--acquisition kspace`). Session 8 on MyConnectome x2: the default model's in-band rms error is
8.5 vs sinc's 5.0 while it lowers the out-of-band error from 17.3 to 16.4; a k-space-only
fine-tune did not lower the in-band error (9.2). PSNR is the head mask's (ab_eval's metric).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from arssr_rt.consistency import keep_kspace  # noqa: E402
from arssr_rt.degrade import cubic_resample, lr_shape_for  # noqa: E402
from arssr_rt.fourier import sinc_upsample  # noqa: E402
from arssr_rt.evaluation.metrics import head_mask, psnr  # noqa: E402
from arssr_rt.network import build_model  # noqa: E402
from arssr_rt.training.acquisition import acquire  # noqa: E402
from arssr_rt.training.train import model_weights, predict_volume  # noqa: E402


def band_split(x: np.ndarray, lr_shape) -> tuple[np.ndarray, np.ndarray]:
    """``x`` inside and outside the centred band of ``lr_shape`` (per axis |k| <= h / 2)."""
    spectrum = np.fft.fftn(x)
    inside = np.ones(x.shape, bool)
    for axis, (H, h) in enumerate(zip(x.shape, lr_shape)):
        shape = [1, 1, 1]
        shape[axis] = H
        inside &= (np.abs(np.fft.fftfreq(H) * H) <= h / 2).reshape(shape)
    return np.real(np.fft.ifftn(spectrum * inside)), np.real(np.fft.ifftn(spectrum * ~inside))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("hr")
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--scale", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    hr = np.squeeze(np.asarray(nib.load(args.hr).get_fdata(dtype=np.float32)))
    mask, rng = head_mask(hr), float(hr.max() - hr.min())
    lr = acquire(hr, lr_shape_for(hr.shape, (args.scale,) * 3), "kspace", np.random.default_rng(0))
    lo, hi = float(lr.min()), float(lr.max())

    def report(name: str, est: np.ndarray) -> None:
        inside, outside = band_split(est - hr, lr.shape)
        print(f"{name:28s} psnr head {psnr(hr, est, mask, rng):6.2f}  in-band rms {np.sqrt((inside ** 2).mean()):7.3f}  "
              f"out-of-band rms {np.sqrt((outside ** 2).mean()):7.3f}", flush=True)

    print(f"HR out-of-band rms {np.sqrt((band_split(hr, lr.shape)[1] ** 2).mean()):.3f}")
    report("sinc", sinc_upsample(lr, hr.shape))
    report("tricubic", cubic_resample(lr, hr.shape))
    for ck in args.checkpoints:
        state = torch.load(ck, map_location="cpu", weights_only=True)
        model = build_model(state["spec"])
        model.load_state_dict(model_weights(state, Path(ck), "checkpoint"))
        with torch.no_grad():
            pred = predict_volume(model.eval(), (lr - lo) / (hi - lo), hr.shape) * (hi - lo) + lo
        name = Path(ck).parent.name
        report(name, pred)
        report(name + " + band kept", keep_kspace(pred, lr))


if __name__ == "__main__":
    main()
