"""``python -m arssr_rt.bench.adapt``: how long ``upsample --adapt`` takes on a clinical-size scan.

The issue's budget: a 256x256x40 thick-slice scan adapts and up-samples in <= 5 minutes on 2
CPU cores. By default the scan is simulated at that size from Colin27 1 mm (found in
``$ARSSR_RT_DATA`` or the shared data folder): resampled to 256x256x160 (0.71 x 0.85 x 1.13 mm),
then acquired as 40 box-profile slices of 4.5 mm, and up-sampled x4 through-plane back to
256x256x160. ``--input`` times any other scan (e.g. the pyradiomics clinical volume with
``--scale 1,1,6.5``). The command runs as a user runs it (a fresh process, ``arssr-rt upsample
IN --scale ... --adapt --threads N``), timed from outside. Not a test: its number depends on
the machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA_DIRS = [os.environ.get("ARSSR_RT_DATA", ""), "/work/shared/data", str(Path(__file__).resolve().parents[3] / "shared" / "data")]


def find(name: str) -> Path | None:
    for folder in DATA_DIRS:
        if folder and (Path(folder) / name).is_file():
            return Path(folder) / name
    return None


def simulated_scan(out: Path) -> Path:
    """256x256x40 at 0.78 x 0.78 x 4 mm box slices from Colin27 1 mm (resampled in-plane)."""
    import nibabel as nib
    import numpy as np

    from ..degrade import cubic_resample, slice_profile
    from ..geometry import output_affine

    src = find("colin27_ch2_t1_1mm.nii.gz")
    if src is None:
        raise SystemExit("no input: pass --input (a thick-slice scan) or put colin27_ch2_t1_1mm.nii.gz in $ARSSR_RT_DATA")
    img = nib.load(str(src))
    hr = np.asarray(img.get_fdata(dtype=np.float32))
    fine = cubic_resample(hr, (256, 256, 160))  # 0.71 x 0.85 x 1.13 mm
    lr = slice_profile(fine, (256, 256, 40))
    nib.Nifti1Image(lr, output_affine(img.affine, hr.shape, lr.shape)).to_filename(out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m arssr_rt.bench.adapt", description=__doc__.splitlines()[0])
    p.add_argument("--input", type=Path, help="thick-slice scan (default: a simulated 256x256x40 one)")
    p.add_argument("--scale", default="1,1,4", help="upsample --scale (default 1,1,4)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--adapt-minutes", type=float, default=None, help="passed on (default: upsample's)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        scan = args.input or simulated_scan(Path(tmp) / "thick_256x256x40.nii.gz")
        cmd = [sys.executable, "-m", "arssr_rt", "upsample", str(scan), "--scale", args.scale, "--adapt",
               "--threads", str(args.threads), "-o", str(Path(tmp) / "out.nii.gz"), "-q"]
        if args.adapt_minutes is not None:
            cmd += ["--adapt-minutes", str(args.adapt_minutes)]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        t0 = time.perf_counter()
        run = subprocess.run(cmd, capture_output=True, text=True, env=env)
        seconds = time.perf_counter() - t0
        if run.returncode != 0:
            print(run.stderr.strip(), file=sys.stderr)
            return run.returncode
        import nibabel as nib

        from ..readers import read_volume

        shape_in = read_volume(scan).shape
        shape_out = nib.load(str(Path(tmp) / "out.nii.gz")).shape
        print(f"upsample --adapt {scan.name} {'x'.join(map(str, shape_in))} -> {'x'.join(map(str, shape_out))} "
              f"(--scale {args.scale}, --threads {args.threads}): {seconds:.1f} s wall, end to end "
              f"({'within' if seconds <= 300 else 'over'} the 300 s budget)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
