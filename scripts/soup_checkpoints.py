"""Weight average of two checkpoints of one lineage (a "model soup", Wortsman et al. 2022).

    python scripts/soup_checkpoints.py A.pt B.pt WEIGHT_OF_B RUN_DIR

A and B are run checkpoints or a bundle's weights.pt (e.g. the packaged default).

Writes RUN_DIR/checkpoint.pt with (1 - w) * A + w * B and B's spec and step, for
scripts/package_default_model.py (give RUN_DIR B's config.json and log). The default model is
0.35 x stage 10 + 0.65 x stage 12: see training-runs/default/README.md for why.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from arssr_rt.safe_load import load_checkpoint
from arssr_rt.training.train import model_weights


def main(a: str, b: str, weight: float, out: str) -> None:
    first, second = load_checkpoint(Path(a)), load_checkpoint(Path(b))
    wa, wb = model_weights(first, Path(a), "checkpoint"), model_weights(second, Path(b), "checkpoint")
    if wa.keys() != wb.keys() or any(wa[k].shape != v.shape for k, v in wb.items()):
        raise SystemExit("the two checkpoints have different parameters: not one architecture")
    soup = {k: ((1 - weight) * wa[k].float() + weight * v.float()).to(v.dtype) for k, v in wb.items()}
    Path(out).mkdir(parents=True, exist_ok=True)
    torch.save({"model": soup, "spec": second["spec"], "step": second.get("step", 0), "soup": {"a": a, "b": b, "weight_b": weight}},
               Path(out) / "checkpoint.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4])
