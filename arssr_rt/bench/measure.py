"""One measurement in a fresh process: ``python -m arssr_rt.bench.measure JOB.json``.

A fresh process per measurement makes peak RSS (VmHWM) belong to that mode alone and keeps
one mode's allocator state and thread pools from helping or hurting the next. The job reads
a normalised LR ``.npy``, runs one mode once, saves the output ``.npy`` and prints one JSON
line: load seconds (model, sessions), run seconds (wall and process CPU time), peak RSS
bytes, backend name and the backend's per-call timings (encode / decode / decode_box). CPU time is the steadier clock on a shared machine (one thread).

Modes: ``reference`` (torch, see reference.py) and ``arssr`` (the VolumeEngine with a backend and
precision). The arssr mode never imports torch, so its RSS is the runtime's own.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import numpy as np


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (VmHWM; ru_maxrss where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


TIMINGS: dict[str, dict[str, float]] = {}


def run_reference(job: dict, lr: np.ndarray) -> tuple[float, float, float, np.ndarray, str]:
    import torch

    from arssr_rt.backends.torch_backend import load_weights
    from arssr_rt.network import build_model

    from .reference import reference_upsample

    t0 = time.perf_counter()
    torch.set_num_threads(int(job["threads"]))
    payload = load_weights(Path(job["bundle"]) / "weights.pt")
    model = build_model(payload["spec"])
    model.load_state_dict(payload["state_dict"])
    model.eval()
    t1, c1 = time.perf_counter(), time.process_time()
    out = reference_upsample(model, lr, job["out_shape"])
    return t1 - t0, time.perf_counter() - t1, time.process_time() - c1, out, "torch (reference)"


def run_arssr(job: dict, lr: np.ndarray) -> tuple[float, float, float, np.ndarray, str]:
    from arssr_rt.backends.base import BackendOptions
    from arssr_rt.bundle import load_bundle
    from arssr_rt.pipeline import DEFAULT_MAX_MEMORY, VolumeEngine

    t0 = time.perf_counter()
    options = BackendOptions(threads=int(job["threads"]), precision=job.get("precision", "fp32"))
    up = VolumeEngine(load_bundle(job["bundle"]), backend=job.get("backend", "auto"), options=options,
                   max_memory=int(job.get("max_memory", DEFAULT_MAX_MEMORY)))
    t1, c1 = time.perf_counter(), time.process_time()
    out = up.infer(lr, job["out_shape"])
    seconds, cpu = time.perf_counter() - t1, time.process_time() - c1
    name = f"{up.backend.name} {options.precision}"
    TIMINGS.update(up.backend.timings())  # per-call counts and seconds: where the run went
    up.close()
    return t1 - t0, seconds, cpu, out, name


def main(argv: list[str]) -> int:
    job = json.loads(Path(argv[0]).read_text())
    lr = np.load(job["lr"])
    runner = run_reference if job["mode"] == "reference" else run_arssr
    load_s, run_s, cpu_s, out, backend = runner(job, lr)
    rss = peak_rss_bytes()
    np.save(job["out"], out)
    print(json.dumps({"load_s": load_s, "run_s": run_s, "cpu_s": cpu_s, "peak_rss": rss, "backend": backend, "timings": TIMINGS}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
