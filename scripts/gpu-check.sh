#!/usr/bin/env bash
# GPU check for arssr-rt: the GPU tests, then an end-to-end timing table.
#
#   scripts/gpu-check.sh [--model NAME|DIR] [--spec rdn|rescnn|srresnet] [--size 128] [--scale 2]
#                        [--repeat 3] [--tile 128] [--json PATH]
#
# 1. pytest -m gpu on tests/ (each GPU backend against onnxruntime on the CPU; the CUDA
#    sampler against its numpy mirror; a CUDA bf16 training run that resumes on the CPU).
# 2. Timing of a SIZE^3 -> (SIZE*SCALE)^3 up-sampling, numpy in -> numpy out (no file I/O),
#    for every GPU backend that opens here (tensorrt, torch-cuda; fp16 and fp32) and for the
#    fp32 torch reference: ArSSR.forward as published (whole-volume encoder, grid_sample
#    query, decoder in chunks of 262,144 points) on the same GPU. Median of --repeat runs after
#    one warm-up (engine builds and cuDNN autotuning are not timed). One Markdown table.
# Without --model the embedded default model is used; when there is none (or with --spec),
# a random-weight model of the published architecture is timed (weights do not change speed).
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"

echo "== GPU tests" >&2
"$PY" -m pytest -m gpu tests -q -rs -p no:cacheprovider
tests_status=$?

echo "== timing" >&2
"$PY" - "$@" <<'PYEOF'
import argparse, json, statistics, sys, tempfile, time
from pathlib import Path

import numpy as np

from arssr_rt.backends.base import BackendOptions
from arssr_rt.errors import ArssrError

p = argparse.ArgumentParser()
p.add_argument("--model")
p.add_argument("--spec", choices=["rdn", "rescnn", "srresnet"])
p.add_argument("--size", type=int, default=128)
p.add_argument("--scale", type=float, default=2.0)
p.add_argument("--repeat", type=int, default=3)
p.add_argument("--tile", type=int, default=128)
p.add_argument("--json")
args = p.parse_args()


def random_bundle(spec_name):
    """weights.pt + model.json of a random-weight published architecture (torch paths only)."""
    import torch
    from arssr_rt.bundle import load_bundle, write_model_json
    from arssr_rt.network import build_model

    torch.manual_seed(0)
    model = build_model(spec_name)
    folder = Path(tempfile.mkdtemp(prefix="arssr-gpu-check-")) / spec_name
    folder.mkdir()
    torch.save({"spec": model.spec.to_dict(), "state_dict": model.state_dict()}, folder / "weights.pt")
    write_model_json(folder, {"name": f"random-{spec_name}", "spec": model.spec.to_dict(),
                              "receptive_radius": model.receptive_radius, "files": {"weights.pt": ""}})
    return load_bundle(folder)


def get_bundle():
    from arssr_rt.bundle import resolve_model

    if args.spec:
        return random_bundle(args.spec)
    try:
        return resolve_model(args.model)
    except ArssrError as exc:
        if args.model:
            raise
        print(f"no default model ({exc}); timing a random-weight RDN", file=sys.stderr)
        return random_bundle("rdn")


def test_volume(n):
    """A real MR volume of n^3: the shipped Colin27 crop, repeated/cropped to size."""
    import nibabel as nib
    from importlib import resources

    data = np.asarray(nib.load(str(resources.files("arssr_rt") / "data" / "colin27_t1_crop64_1mm.nii.gz")).dataobj, dtype=np.float32)
    reps = -(-n // data.shape[0])
    big = np.repeat(np.repeat(np.repeat(data, reps, 0), reps, 1), reps, 2)
    return np.ascontiguousarray(big[:n, :n, :n]), np.diag([1.0, 1.0, 1.0, 1.0])


def timed(fn):
    fn()  # warm-up: engine load/build, cuDNN autotune, NVRTC compile
    runs = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def gpu_name():
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    from arssr_rt.engines.gpu_probe import probe

    r = probe()
    return r.gpus[0].name if r.gpus else f"no GPU ({r.reason})"


bundle = get_bundle()
data, affine = test_volume(args.size)
from arssr_rt.geometry import plan_output_grid
from arssr_rt.pipeline import Upsampler
from arssr_rt.volume import Volume

grid = plan_output_grid(data.shape, affine, scale=(args.scale,) * 3)
volume = Volume(data=data, affine=affine)
rows = []


def torch_reference():
    """fp32 torch, the published way: whole-volume encoder, grid_sample query, chunked decoder."""
    import torch
    from arssr_rt.backends.torch_backend import load_weights
    from arssr_rt.geometry import normalized_centres
    from arssr_rt.network import build_model

    if not torch.cuda.is_available():
        raise ArssrError("torch sees no CUDA GPU")
    payload = load_weights(bundle.file("weights.pt"))
    model = build_model(payload["spec"])
    model.load_state_dict(payload["state_dict"])
    model = model.cuda().eval()
    axes = [torch.from_numpy(normalized_centres(n)).cuda() for n in grid.shape]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(1, -1, 3)

    def run():
        lo, hi = float(data.min()), float(data.max())
        with torch.no_grad():
            lr = torch.from_numpy((data - lo) / (hi - lo)).cuda()[None, None]
            feats = model.encoder(lr)
            out = torch.empty(coords.shape[1], device="cuda")
            for a in range(0, coords.shape[1], 262144):
                c = coords[:, a:a + 262144]
                out[a:a + 262144] = model.decode(model.query(feats, c), c).view(-1)
            return (out.view(grid.shape) * (hi - lo) + lo).cpu().numpy()

    return run


try:
    seconds = timed(torch_reference())
    rows.append(("torch reference (published way)", "fp32", seconds))
except Exception as exc:  # report the row, keep going
    rows.append(("torch reference (published way)", "fp32", f"n/a: {str(exc).splitlines()[0][:80]}"))
reference = rows[0][2] if isinstance(rows[0][2], float) else None

for backend in ("tensorrt", "torch-cuda"):
    for precision in ("fp16", "fp32"):
        try:
            up = Upsampler(bundle, backend, BackendOptions(precision=precision), tile=args.tile, chunk=262144)
        except Exception as exc:
            rows.append((backend, precision, f"n/a: {str(exc).splitlines()[0][:80]}"))
            continue
        try:
            rows.append((backend, precision, timed(lambda: up.run(volume, grid))))
        except Exception as exc:
            rows.append((backend, precision, f"failed: {str(exc).splitlines()[0][:80]}"))
        finally:
            up.close()

name = gpu_name()
out_shape = "x".join(str(n) for n in grid.shape)
print(f"\nGPU: {name}; model: {bundle.name} ({bundle.spec.get('encoder')}); {args.size}^3 -> {out_shape}; median of {args.repeat}\n")
print("| backend | precision | seconds | output Mvoxel/s | speed-up vs torch fp32 reference |")
print("|---|---|---|---|---|")
for backend, precision, s in rows:
    if isinstance(s, float):
        speed = f"{reference / s:.1f}x" if reference else "-"
        print(f"| {backend} | {precision} | {s:.3f} | {np.prod(grid.shape) / s / 1e6:.1f} | {speed} |")
    else:
        print(f"| {backend} | {precision} | {s} | - | - |")
if args.json:
    Path(args.json).write_text(json.dumps({"gpu": name, "model": bundle.name, "size": args.size, "out_shape": grid.shape,
                                           "rows": [{"backend": b, "precision": pr, "seconds": s} for b, pr, s in rows]}, indent=2))
PYEOF
timing_status=$?
exit $(( tests_status != 0 && tests_status != 5 ? tests_status : timing_status ))
