"""End-to-end rows: what a user waits for, each run a fresh process timed from outside.

r = the authors'-style script, e = ``arssr-rt upsample``.

(e) ``arssr-rt upsample IN --shape ... -o OUT``: interpreter start, imports, model load and
compile, first inference, read and write. (r) the authors'-style script: import torch, load
the weights, read the NIfTI, whole-volume torch inference (reference.py), write the NIfTI
(``python -m arssr_rt.bench.e2e reference JOB.json``). Each is repeated and the minimum kept
(the machine may be shared). The in-process compute of (a) from the main table is shown
next to them, as the issue that asked for these rows compared against it.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np


@dataclass
class EndToEnd:
    case: str
    reference_s: float  # (r) min wall seconds
    arssr_s: float  # (e) min wall seconds
    reference_cpu_s: float  # (r) min CPU seconds of the process (user + sys, all threads)
    arssr_cpu_s: float
    backend: str
    repeats: int

    @property
    def ratio(self) -> float:
        return self.reference_s / self.arssr_s

    @property
    def cpu_ratio(self) -> float:
        return self.reference_cpu_s / self.arssr_cpu_s


def write_input(lr: np.ndarray, path: Path) -> Path:
    """The case's LR crop as a float32 NIfTI with 1 mm voxels (intensities 0..1000)."""
    import nibabel as nib

    nib.save(nib.Nifti1Image((lr * 1000).astype(np.float32), np.eye(4)), str(path))
    return path


def timed(cmd: Sequence[str], env: dict[str, str], timeout: float) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one fresh process running ``cmd``.

    CPU time (the child's user + sys) is the steadier clock when other work shares the machine.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(list(cmd), env=env, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed:\n{proc.stderr[-2000:]}")
    return seconds, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def upsample_command(in_path: Path, out_path: Path, bundle: str, out_shape: Sequence[int], backend: str, threads: int) -> list[str]:
    return [sys.executable, "-m", "arssr_rt", "upsample", str(in_path), "--shape", ",".join(map(str, out_shape)),
            "--model", bundle, "--backend", backend, "--threads", str(threads), "-o", str(out_path), "--force", "--quiet",
            "--dtype", "float32"]


def run_end_to_end(name: str, lr: np.ndarray, bundle: str, out_shape: Sequence[int], backend: str, threads: int, work: Path,
                   repeats: int = 3, timeout: float = 1800, env: dict[str, str] | None = None) -> EndToEnd:
    """(r) and (e) for one case, interleaved so both see the same machine load."""
    env = dict(env or os.environ)
    env.setdefault("OMP_NUM_THREADS", str(threads))
    src = write_input(lr, work / f"{name}-in.nii.gz")
    job = work / f"{name}-e2e.json"
    job.write_text(json.dumps({"bundle": bundle, "in": str(src), "out": str(work / f"{name}-ref.nii.gz"),
                               "out_shape": list(out_shape), "threads": threads}))
    ref_cmd = [sys.executable, "-m", "arssr_rt.bench.e2e", "reference", str(job)]
    arssr_cmd = upsample_command(src, work / f"{name}-arssr.nii.gz", bundle, out_shape, backend, threads)
    ref, ours = [], []
    for _ in range(repeats):
        ref.append(timed(ref_cmd, env, timeout))
        ours.append(timed(arssr_cmd, env, timeout))
    return EndToEnd(name, min(r[0] for r in ref), min(o[0] for o in ours), min(r[1] for r in ref), min(o[1] for o in ours),
                    backend, repeats)


def format_end_to_end(rows: Sequence[EndToEnd], in_process_a: dict[str, float]) -> str:
    lines = ["End to end (fresh process each, min of repeats; start + read + model load + compile + inference + write):", "",
             "| case | r s | e s | r/e | r cpu-s | e cpu-s | r/e cpu | a: reference compute only s | a/e |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a = in_process_a.get(r.case)
        extra = f"{a:.2f} | {a / r.arssr_s:.2f}x" if a else "- | -"
        lines.append(f"| {r.case} | {r.reference_s:.2f} | {r.arssr_s:.2f} | {r.ratio:.2f}x | {r.reference_cpu_s:.2f} | {r.arssr_cpu_s:.2f} "
                     f"| {r.cpu_ratio:.2f}x | {extra} |")
    if rows:
        lines.append(f"\ne = {rows[0].backend} fp32, {rows[0].repeats} repeats.")
    return "\n".join(lines)


def reference_main(job: dict[str, Any]) -> None:
    """(r): the authors' way, start to finish, in this process."""
    import nibabel as nib
    import torch

    from ..backends.torch_backend import load_weights
    from ..network import build_model
    from .reference import reference_upsample

    torch.set_num_threads(int(job["threads"]))
    payload = load_weights(Path(job["bundle"]) / "weights.pt")
    model = build_model(payload["spec"])
    model.load_state_dict(payload["state_dict"])
    img = nib.load(job["in"])
    data = np.asarray(img.get_fdata(dtype=np.float32))
    lo, hi = float(data.min()), float(data.max())
    out = reference_upsample(model, (data - lo) / (hi - lo), job["out_shape"]) * (hi - lo) + lo
    nib.save(nib.Nifti1Image(out.astype(np.float32), img.affine), job["out"])


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "reference":
        sys.exit("usage: python -m arssr_rt.bench.e2e reference JOB.json")
    reference_main(json.loads(Path(sys.argv[2]).read_text()))
