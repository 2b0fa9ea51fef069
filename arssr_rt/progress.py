"""Progress: what the pipeline reports while it works, and how the commands show it.

``WorkMeter`` (pipeline side) spreads a volume's output voxels over all of its work, the
encoder's included: counting decoded voxels alone left the bar still for the whole of each
tile's encoder call (11 % for a minute). Costs are estimated from the networks' sizes (a 3-D
conv or an MLP does about one multiply-add per weight per voxel or point), so the count still
ends at exactly the number of output voxels and callers keep ``progress(n_voxels)``.

``ProgressDisplay`` (command side, ``upsample`` and ``batch``): a rich bar on a terminal;
elsewhere (SLURM logs, pipes, files) plain timestamped lines without escape codes: a start
line, a line every 10 % or 30 s (whichever comes first; a heartbeat thread writes the 30 s
line even while one long encoder call runs) and an end line; nothing with -q.
"""

from __future__ import annotations

import datetime as _dt
import math
import threading
import time
from typing import Any, Callable, Sequence

ProgressFn = Callable[[int], None]
PLAIN_STEP = 0.10  # a plain line each time another 10 % is done ...
PLAIN_INTERVAL_S = 30.0  # ... or this long after the last line, whichever comes first


def network_costs(bundle: Any) -> tuple[float, float]:
    """(encoder multiply-adds per input voxel, decoder multiply-adds per output point),
    estimated from the fp32 graphs' sizes (4 bytes a weight) plus trilinear sampling (8 x F).
    Only the ratio matters; a bundle without ONNX files counts both as equal."""
    from . import bundle_format as contract

    def weights(name: str) -> float:
        try:
            return bundle.file(name).stat().st_size / 4.0 if bundle.has(name) else 0.0
        except (OSError, AttributeError):
            return 0.0

    encoder, decoder = weights(contract.ENCODER_FP32), weights(contract.DECODER_FP32)
    if encoder <= 0 or decoder <= 0:
        return 1.0, 1.0
    return encoder, decoder + 8.0 * float(getattr(bundle, "feature_dim", 0) or 0)


class WorkMeter:
    """Turns "tile t encoded" and "n voxels decoded" into output-voxel counts for ``report``.

    Each tile's work is its encoder cost (encoded voxels, halo included) plus its decoder cost
    (owned output voxels); the total maps onto ``out_voxels``, so the counts sum to exactly
    ``out_voxels`` once ``finish`` is called."""

    def __init__(self, encode_voxels: Sequence[int], decode_voxels: Sequence[int], out_voxels: int,
                 costs: tuple[float, float], report: ProgressFn | None):
        enc, dec = costs
        self.encode_work = [enc * n for n in encode_voxels]
        total = sum(self.encode_work) + dec * sum(decode_voxels)
        self.per_work = out_voxels / total if total > 0 else 0.0
        self.per_decoded = dec * self.per_work
        self.out_voxels, self.report = int(out_voxels), report
        self.done, self.sent = 0.0, 0

    def encoded(self, tile_index: int) -> None:
        self._add(self.encode_work[tile_index] * self.per_work)

    def decoded(self, voxels: int) -> None:
        self._add(voxels * self.per_decoded)

    def finish(self) -> None:
        self._send(self.out_voxels)

    def _add(self, amount: float) -> None:
        self.done += amount
        self._send(min(self.out_voxels, math.floor(self.done)))

    def _send(self, upto: int) -> None:
        if self.report is not None and upto > self.sent:
            self.report(upto - self.sent)
        self.sent = max(self.sent, upto)


def utc_stamp() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class ProgressDisplay:
    """One progress display for a command: ``start(total)``, ``advance(n)``, ``finish()``.

    ``console`` is a rich Console on stderr; off a terminal (``console.is_terminal`` false,
    or ``plain=True``) it writes plain lines to ``console.file``."""

    def __init__(self, label: str, console: Any, *, unit: str = "", quiet: bool = False, plain: bool | None = None,
                 step: float = PLAIN_STEP, interval_s: float = PLAIN_INTERVAL_S, clock: Callable[[], float] = time.monotonic):
        self.label, self.console, self.unit, self.quiet = label, console, unit, quiet
        self.plain = (not console.is_terminal) if plain is None else plain
        self.step, self.interval_s, self.clock = step, interval_s, clock
        self.total = self.done = 0
        self.started = self.last_line = clock()
        self.next_fraction = step
        self.bar: Any = None
        self.task: Any = None
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.heartbeat: threading.Thread | None = None

    # ---- context: the rich bar lives inside it
    def __enter__(self) -> "ProgressDisplay":
        if not self.quiet and not self.plain:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn(f"[bold]{self.label}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                                TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=True)
            self.bar.__enter__()
        elif not self.quiet:
            self.heartbeat = threading.Thread(target=self._beat, name="arssr-progress", daemon=True)
            self.heartbeat.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)
            self.bar = None
        self.stop.set()
        if self.heartbeat is not None:
            self.heartbeat.join()
            self.heartbeat = None

    def _beat(self) -> None:
        """Off a terminal: a line when ``interval_s`` passed without one (a long encoder call)."""
        while not self.stop.wait(min(1.0, self.interval_s)):
            with self.lock:
                due = self.total > 0 and self.done < self.total and self.clock() - self.last_line >= self.interval_s
            if due:
                self._progress_line()

    def line(self, text: str) -> None:
        """A plain, timestamped line (off a terminal only; -q: none)."""
        if self.quiet or not self.plain:
            return
        with self.lock:
            self.console.file.write(f"{utc_stamp()} {self.label}: {text}\n")
            self.console.file.flush()
            self.last_line = self.clock()

    def start(self, total: int, note: str | None = None) -> None:
        """Begin counting to ``total``; ``note`` (shapes, backend) starts the plain log."""
        self.total, self.done = int(total), 0
        self.started = self.last_line = self.clock()
        self.next_fraction = self.step
        if note:
            self.line(note)
        if self.bar is not None:
            self.task = self.bar.add_task(self.label, total=self.total)

    def advance(self, n: int) -> None:
        self.done += int(n)
        if self.bar is not None and self.task is not None:
            self.bar.advance(self.task, n)
            return
        if self.quiet or not self.plain or self.total <= 0:
            return
        fraction = min(1.0, self.done / self.total)
        if fraction >= 1.0:
            return  # the end line says it
        if fraction + 1e-12 >= self.next_fraction or self.clock() - self.last_line >= self.interval_s:
            self._progress_line()
            while self.next_fraction <= fraction + 1e-12:
                self.next_fraction += self.step

    def _progress_line(self) -> None:
        fraction = min(1.0, self.done / self.total) if self.total else 0.0
        self.line(f"{fraction * 100:3.0f}% ({self._count()}, {self.clock() - self.started:.1f} s)")

    def finish(self, note: str | None = None) -> None:
        """The end line: 100 % (or where it stopped), elapsed time, and ``note``."""
        fraction = self.done / self.total if self.total else 1.0
        tail = f"; {note}" if note else ""
        self.line(f"done {fraction * 100:3.0f}% ({self._count()}) in {self.clock() - self.started:.1f} s{tail}")

    def _count(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        return f"{self.done:,} of {self.total:,}{unit}"
