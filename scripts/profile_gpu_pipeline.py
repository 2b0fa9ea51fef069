"""Where the time of one GPU up-sampling goes: phases timed with device syncs, then cProfile.

    python scripts/profile_gpu_pipeline.py [--backend torch-cuda] [--size 128] [--scale 2] [--precision fp16]

Why: arssr_rt.bench.gpu measured torch-cuda at 0.8x the published-way torch reference on an
H200 (0.539 s vs 0.408 s, 128^3 -> 256^3), fp16 no faster than fp32, so the time is not in
the networks. This splits a run into encoder, host copy of the features, decode_box, host
post-processing and the rest, to say which to remove. A diagnosis tool, not a benchmark.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--backend", default="torch-cuda")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--scale", type=float, default=2.0)
    p.add_argument("--precision", default="fp16")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--on-cpu", action="store_true", help="torch-cuda's code on torch's CPU device: checks this script without a GPU")
    args = p.parse_args()

    import torch

    from arssr_rt.backends.base import BackendOptions
    from arssr_rt.bench.gpu import timing_volume
    from arssr_rt.bundle import resolve_model
    from arssr_rt.geometry import plan_output_grid
    from arssr_rt.intensity import Normalizer
    from arssr_rt.pipeline import VolumeEngine
    from arssr_rt.volume import Volume

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    bundle = resolve_model(None)
    data, affine = timing_volume(args.size)
    grid = plan_output_grid(data.shape, affine, scale=(args.scale,) * 3)
    volume = Volume(data=data, affine=affine)
    backend_spec = args.backend
    if args.on_cpu:
        from arssr_rt.backends.torch_cuda_backend import TorchCudaBackend

        backend_spec = lambda b, o: TorchCudaBackend(b, o, torch_device="cpu")  # noqa: E731
    up = VolumeEngine(bundle, backend_spec, BackendOptions(precision=args.precision, chunk=262144), tile=128)
    up.run(volume, grid)  # warm-up

    def timed(label: str, fn):
        best = 1e9
        result = None
        for _ in range(args.repeat):
            sync()
            t = time.perf_counter()
            result = fn()
            sync()
            best = min(best, time.perf_counter() - t)
        print(f"{label:<42} {best * 1e3:9.1f} ms")
        return result

    timed("whole run (numpy in, numpy out)", lambda: up.run(volume, grid))
    lr = Normalizer(mode=up.normalization).fit(data).normalize(data)
    timed("infer (no normalise / restore)", lambda: up.infer(lr, grid.shape))
    backend = up.backend
    runner = getattr(backend, "runner", backend)
    model = getattr(runner, "model", None)
    if model is not None and hasattr(runner, "_tensor"):
        x = runner._tensor(lr)[None, None]
        with runner._run():
            timed("encoder network only (on device)", lambda: model.encoder(x))
    features = timed("backend.encode (network + host copy)", lambda: backend.encode(np.ascontiguousarray(lr)))
    print(f"{'features':<42} {features.nbytes / 2**20:9.1f} MiB {features.shape}")
    if getattr(backend, "decodes_boxes_on_device", False):
        shape = tuple(bundle.feature_scale * n for n in lr.shape)
        timed("decode_box, whole output", lambda: backend.decode_box(features, (0, 0, 0), shape, grid.shape, (0, 0, 0), grid.shape))
    out = np.zeros(grid.shape, np.float32)
    from arssr_rt.background import flatten_flat_background

    timed("flatten_flat_background", lambda: flatten_flat_background(lr, out))
    norm = Normalizer(mode=up.normalization).fit(data)
    timed("Normalizer fit + normalize", lambda: norm.fit(data).normalize(data))

    prof = cProfile.Profile()
    prof.enable()
    up.run(volume, grid)
    sync()
    prof.disable()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(18)
    print(s.getvalue())
    up.close()


if __name__ == "__main__":
    main()
