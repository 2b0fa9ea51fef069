"""Progress: the count moves with the encoder's work too, and off a terminal (SLURM logs,
pipes) the commands write plain timestamped lines without escape codes; -q writes none."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from arssr_rt.geometry import plan_output_grid
from arssr_rt.pipeline import VolumeEngine
from arssr_rt.progress import ProgressDisplay, WorkMeter
from arssr_rt.volume import Volume

from conftest import FIXTURE_PATH

ROOT = Path(__file__).resolve().parents[1]
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeConsole:
    """What ProgressDisplay needs of a rich Console off a terminal."""

    is_terminal = False

    def __init__(self) -> None:
        self.file = io.StringIO()


def test_work_meter_counts_encoder_work_and_ends_exactly_at_the_output_voxels():
    sent: list[int] = []
    meter = WorkMeter([1000, 1000], [300, 700], 1000, (8.0, 1.0), sent.append)
    meter.encoded(0)
    assert sent and sent[0] > 0  # the encoder of tile 0 moved the count before any decode
    meter.decoded(300)
    meter.encoded(1)
    meter.decoded(699)
    meter.finish()
    assert sum(sent) == 1000 and all(n > 0 for n in sent)
    assert sent[0] == 1000 * 8000 // (16000 + 1000)  # the encoder's share of the estimated work (floored)


def test_progress_moves_during_encoding_in_the_pipeline(tiny_bundle):
    """Several tiles: each encoder call advances the count before its tile's decoding starts."""
    img = nib.load(FIXTURE_PATH)
    data = np.asarray(img.dataobj, dtype=np.float32)[16:40, 16:40, 16:40]
    volume = Volume(data=data, affine=img.affine)
    grid = plan_output_grid(volume.shape, volume.affine, scale=(2.0, 2.0, 2.0))
    events: list[tuple[str, int]] = []
    with VolumeEngine(tiny_bundle, "onnxruntime", tile=8) as up:
        encode, decode = up.backend.encode, up.backend.decode
        up.backend.encode = lambda x: (events.append(("encode", 0)), encode(x))[1]
        up.backend.decode = lambda f, c: (events.append(("decode", 0)), decode(f, c))[1]
        up.run(volume, grid, lambda n: events.append(("progress", n)))
    kinds = [k for k, _ in events]
    assert kinds.count("encode") == 27  # 24^3 in 8^3 cores
    for i, kind in enumerate(kinds):  # after every encoder call, the count moves before the next decode
        if kind == "encode":
            assert kinds[i + 1] == "progress", kinds[i:i + 3]
    first_decode = kinds.index("decode")
    assert sum(n for k, n in events[:first_decode] if k == "progress") > 0
    assert sum(n for k, n in events if k == "progress") == grid.voxels


def test_plain_lines_every_10_percent_or_30_seconds_and_none_when_quiet():
    clock, console = FakeClock(), FakeConsole()
    with ProgressDisplay("upsampling", console, unit="voxels", clock=clock) as display:
        display.start(1000, "start: a -> b, backend x")
        for _ in range(10):
            display.advance(25)  # 25 % in small steps: one line at 10 % and at 20 %
        clock.now = 31.0
        display.advance(1)  # 30 s since the last line: a line though no 10 % step was crossed
        display.advance(749)
        display.finish("out.nii.gz")
    lines = console.file.getvalue().splitlines()
    assert [re.sub(STAMP, "T", line) for line in lines] == [
        "T upsampling: start: a -> b, backend x",
        "T upsampling:  10% (100 of 1,000 voxels, 0.0 s)",
        "T upsampling:  20% (200 of 1,000 voxels, 0.0 s)",
        "T upsampling:  25% (251 of 1,000 voxels, 31.0 s)",
        "T upsampling: done 100% (1,000 of 1,000 voxels) in 31.0 s; out.nii.gz",
    ]
    quiet = FakeConsole()
    with ProgressDisplay("batch", quiet, quiet=True, clock=clock) as display:
        display.start(10, "start")
        display.advance(10)
        display.finish()
    assert quiet.file.getvalue() == ""


def test_heartbeat_line_while_a_long_call_runs():
    """No advance for 30 s (one long encoder call): the heartbeat thread writes a line anyway."""
    clock, console = FakeClock(), FakeConsole()
    with ProgressDisplay("upsampling", console, clock=clock, interval_s=0.02) as display:
        display.start(100)
        display.advance(5)
        clock.now = 40.0
        for _ in range(500):  # bounded wait for the thread; nothing is asserted on time
            if "5%" in console.file.getvalue():
                break
            time.sleep(0.01)
    assert re.search(rf"{STAMP} upsampling:   5% \(5 of 100, 40.0 s\)", console.file.getvalue())


def _run(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("FORCE_COLOR", None)
    return subprocess.run([sys.executable, "-m", "arssr_rt", *args], capture_output=True, text=True, env=env, timeout=300)


def test_upsample_off_a_terminal_logs_plain_progress(tmp_path, tiny_bundle):
    out = tmp_path / "out.nii.gz"
    proc = _run(["upsample", str(FIXTURE_PATH), "--scale", "2", "-o", str(out), "--model", str(tiny_bundle), "--threads", "1",
                 "--tile", "32"])
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stderr  # no ANSI escape codes in a log
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("backend: ")  # as before: scripts read it
    lines = lines[1:]
    assert re.fullmatch(rf"{STAMP} upsampling: start: .*64x64x64 \(1,1,1 mm\) -> .*128x128x128 \(0.5,0.5,0.5 mm\), "
                        r"backend \w+, model tiny-random-test", lines[0]), lines[0]
    percents = [int(m[1]) for m in (re.fullmatch(rf"{STAMP} upsampling: +(\d+)% \(.* voxels, .* s\)", line) for line in lines) if m]
    assert len(percents) >= 5 and percents == sorted(percents) and percents[-1] < 100, lines
    assert any(re.fullmatch(rf"{STAMP} upsampling: done 100% \(2,097,152 of 2,097,152 voxels\) in .*", line) for line in lines)
    quiet = _run(["upsample", str(FIXTURE_PATH), "--scale", "2", "-o", str(out), "--model", str(tiny_bundle), "--threads", "1",
                  "--force", "-q"])
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout == ""


def test_batch_off_a_terminal_logs_plain_progress(tmp_path, tiny_bundle):
    img = nib.load(FIXTURE_PATH)
    data = np.asarray(img.dataobj)
    for n in range(3):
        (tmp_path / "in").mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(data[16 * n:16 * n + 16, :16, :16], img.affine), tmp_path / "in" / f"s{n}.nii.gz")
    args = ["batch", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--scale", "2", "--model", str(tiny_bundle), "--threads", "1"]
    proc = _run(args)
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert re.fullmatch(rf"{STAMP} batch: start: 3 inputs -> .*, in process, --jobs 1, model tiny-random-test, host .*", lines[0])
    assert sum(bool(re.fullmatch(rf"{STAMP} +done .*s\d\.nii\.gz -> .*", line)) for line in lines) == 3
    assert any(re.fullmatch(rf"{STAMP} batch:  67% \(2 of 3 inputs, .* s\)", line) for line in lines), lines
    assert any(re.fullmatch(rf"{STAMP} batch: done 100% \(3 of 3 inputs\) in .* s; 3 done", line) for line in lines)
    quiet = _run(args + ["-q"])  # everything up to date: nothing to say
    assert quiet.returncode == 0 and quiet.stderr == ""
