"""``python -m arssr_rt.bench.train_step``: a training step and an ``--adapt`` step of the
embedded default model in the default memory layout and in channels-last 3-D, as a ratio.

It is why ``network.memory_format.training_layout`` picks channels-last on a CPU in fp32 (and
the place to measure bf16 or a GPU before extending it). Same weights, same batches, the two
layouts' steps alternated so that a shared machine's load falls on both alike; median of ``--reps``.
Not a test: its numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time


def _timed_pair(first, second, reps: int) -> tuple[float, float]:
    """Median seconds of two steps run alternately (a shared machine's load falls on both)."""
    first(), second()  # first calls: allocation and oneDNN primitive creation
    a, b = [], []
    for _ in range(reps):
        for step, times in ((first, a), (second, b)):
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
    return statistics.median(a), statistics.median(b)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=_positive, default=1)
    ap.add_argument("--reps", type=_positive, default=7)
    ap.add_argument("--batch", type=_positive, default=8, help="training batch (patches of 16^3 LR voxels, 4,096 points each)")
    args = ap.parse_args(argv)

    import numpy as np

    from ..errors import MissingExtraError
    from ..extras import require

    try:
        torch = require("torch")
    except MissingExtraError as exc:
        print(f"arssr-rt: {exc}", file=sys.stderr)
        return 2

    from ..adapt.finetune import dense_forward
    from ..adapt.pairs import PairConfig, ScanPairSampler
    from ..adapt.plan import AdaptPlan
    from ..backends.torch_backend import load_bundle_model
    from ..bundle import resolve_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    plain = load_bundle_model(resolve_model("default")).float().train()
    last = copy.deepcopy(plain).to(memory_format=torch.channels_last_3d)
    rng = np.random.default_rng(0)
    lr = torch.from_numpy(rng.random((args.batch, 1, 16, 16, 16), dtype=np.float32))
    coords = torch.from_numpy(rng.uniform(-1, 1, (args.batch, 4096, 3)).astype(np.float32))
    volume = rng.random((96, 96, 24), dtype=np.float32)
    plan = AdaptPlan(thick_axis=2, spacing=(1.0, 1.0, 6.0), ratios={0: 6.0, 1: 6.0}, profile="box", gap=0.0)
    pairs = ScanPairSampler(volume, plan, PairConfig(coords=plain.spec.coords), seed=0).batch(4)

    def train_step(model):
        def step():
            model.zero_grad(set_to_none=True)
            model(lr, coords).abs().mean().backward()
        return step

    def adapt_step(model):
        def step():
            model.zero_grad(set_to_none=True)
            dense_forward(model, pairs).abs().mean().backward()
        return step

    def forward(model):
        def step():
            with torch.inference_mode():
                model(lr, coords)
        return step

    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.reps}")
    print(f"{'step':<34}{'default ms':>12}{'channels-last ms':>18}{'speed-up':>10}")
    for name, make in (("training (batch %d x 16^3)" % args.batch, train_step), ("--adapt (batch 4, x6)", adapt_step),
                       ("inference forward (teacher)", forward)):
        a, b = _timed_pair(make(plain), make(last), args.reps)
        print(f"{name:<34}{a * 1e3:>12.0f}{b * 1e3:>18.0f}{a / b:>9.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
