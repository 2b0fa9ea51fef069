"""GPU timing table: every GPU backend that opens here against the fp32 torch reference.

``python -m arssr_rt.bench.gpu [--model NAME|DIR] [--spec rdn|rescnn|srresnet] [--size 128]
[--scale 2] [--repeat 3] [--tile 128] [--json PATH]`` (run by scripts/gpu-check.sh after the
GPU tests). A SIZE^3 -> (SIZE*SCALE)^3 up-sampling, numpy in -> numpy out (no file I/O), for
tensorrt and torch-cuda in fp16 and fp32, and for the published way in torch
(reference.py: whole-volume encoder, grid_sample query, chunked decoder, the model's own
decoder coordinates) on the same GPU. Median of --repeat runs after one warm-up (engine
builds, cuDNN autotuning and NVRTC compiles are not timed). One Markdown table.

Without --model the embedded default model is used; when there is none (or with --spec), a
random-weight model of the published architecture is timed (weights do not change speed).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..backends.base import BackendOptions
from ..bundle import ModelBundle
from ..errors import ArssrError

Row = tuple[str, str, Any]  # backend, precision, seconds or why not


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m arssr_rt.bench.gpu", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model")
    p.add_argument("--spec", choices=["rdn", "rescnn", "srresnet"])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--scale", type=float, default=2.0)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--tile", type=int, default=128)
    p.add_argument("--json")
    return p.parse_args(argv)


def random_bundle(spec_name: str) -> ModelBundle:
    """weights.pt + model.json of a random-weight published architecture (torch paths only)."""
    import torch

    from ..bundle import load_bundle, write_model_json
    from ..network import build_model

    torch.manual_seed(0)
    model = build_model(spec_name)
    folder = Path(tempfile.mkdtemp(prefix="arssr-gpu-check-")) / spec_name
    folder.mkdir()
    torch.save({"spec": model.spec.to_dict(), "state_dict": model.state_dict()}, folder / "weights.pt")
    write_model_json(folder, {"name": f"random-{spec_name}", "spec": model.spec.to_dict(),
                              "receptive_radius": model.receptive_radius, "files": {"weights.pt": ""}})
    return load_bundle(folder)


def get_bundle(args: argparse.Namespace) -> ModelBundle:
    from ..bundle import resolve_model

    if args.spec:
        return random_bundle(args.spec)
    try:
        return resolve_model(args.model)
    except ArssrError as exc:
        if args.model:
            raise
        print(f"no default model ({exc}); timing a random-weight RDN", file=sys.stderr)
        return random_bundle("rdn")


def timing_volume(n: int) -> tuple[np.ndarray, np.ndarray]:
    """A real MR volume of n^3: the shipped Colin27 crop, repeated/cropped to size."""
    from importlib import resources

    import nibabel as nib

    data = np.asarray(nib.load(str(resources.files("arssr_rt") / "data" / "colin27_t1_crop64_1mm.nii.gz")).dataobj, dtype=np.float32)
    reps = -(-n // data.shape[0])
    big = np.repeat(np.repeat(np.repeat(data, reps, 0), reps, 1), reps, 2)
    return np.ascontiguousarray(big[:n, :n, :n]), np.eye(4)


def median_seconds(fn: Callable[[], Any], repeat: int) -> float:
    fn()  # warm-up: engine load/build, cuDNN autotune, NVRTC compile
    runs = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def gpu_name() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    from ..engines.gpu_probe import probe

    r = probe()
    return r.gpus[0].name if r.gpus else f"no GPU ({r.reason})"


def torch_reference(bundle: ModelBundle, data: np.ndarray, out_shape: Sequence[int]) -> Callable[[], np.ndarray]:
    """fp32 torch on the GPU, the published way (reference.py), intensities restored."""
    import torch

    from ..backends.torch_backend import load_bundle_model
    from .reference import reference_upsample

    if not torch.cuda.is_available():
        raise ArssrError("torch sees no CUDA GPU")
    model = load_bundle_model(bundle).cuda().eval()
    lo, hi = float(data.min()), float(data.max())

    def run() -> np.ndarray:
        with torch.no_grad():
            return reference_upsample(model, (data - lo) / (hi - lo), out_shape) * (hi - lo) + lo

    return run


def time_backends(args: argparse.Namespace, bundle: ModelBundle) -> tuple[list[Row], Any]:
    from ..geometry import plan_output_grid
    from ..pipeline import VolumeEngine
    from ..volume import Volume

    data, affine = timing_volume(args.size)
    grid = plan_output_grid(data.shape, affine, scale=(args.scale,) * 3)
    volume = Volume(data=data, affine=affine)
    rows: list[Row] = []
    try:
        rows.append(("torch reference (published way)", "fp32", median_seconds(torch_reference(bundle, data, grid.shape), args.repeat)))
    except Exception as exc:  # report the row, keep going
        rows.append(("torch reference (published way)", "fp32", f"n/a: {str(exc).splitlines()[0][:80]}"))
    for backend in ("tensorrt", "torch-cuda"):
        for precision in ("fp16", "fp32"):
            try:
                up = VolumeEngine(bundle, backend, BackendOptions(precision=precision, chunk=262144), tile=args.tile)
            except Exception as exc:
                rows.append((backend, precision, f"n/a: {str(exc).splitlines()[0][:80]}"))
                continue
            try:
                rows.append((backend, precision, median_seconds(lambda: up.run(volume, grid), args.repeat)))
            except Exception as exc:
                rows.append((backend, precision, f"failed: {str(exc).splitlines()[0][:80]}"))
            finally:
                up.close()
    return rows, grid


def format_rows(rows: Sequence[Row], points: int) -> list[str]:
    reference = rows[0][2] if isinstance(rows[0][2], float) else None
    lines = ["| backend | precision | seconds | output Mvoxel/s | speed-up vs torch fp32 reference |", "|---|---|---|---|---|"]
    for backend, precision, s in rows:
        if isinstance(s, float):
            speed = f"{reference / s:.1f}x" if reference else "-"
            lines.append(f"| {backend} | {precision} | {s:.3f} | {points / s / 1e6:.1f} | {speed} |")
        else:
            lines.append(f"| {backend} | {precision} | {s} | - | - |")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    bundle = get_bundle(args)
    rows, grid = time_backends(args, bundle)
    name = gpu_name()
    out_shape = "x".join(str(n) for n in grid.shape)
    print(f"\nGPU: {name}; model: {bundle.name} ({bundle.spec.get('encoder')}); {args.size}^3 -> {out_shape}; median of {args.repeat}\n")
    print("\n".join(format_rows(rows, int(np.prod(grid.shape)))))
    if args.json:
        Path(args.json).write_text(json.dumps({"gpu": name, "model": bundle.name, "size": args.size, "out_shape": grid.shape,
                                               "rows": [{"backend": b, "precision": pr, "seconds": s} for b, pr, s in rows]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
