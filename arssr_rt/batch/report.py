"""The batch report: one line per input, kept current on disk while the batch runs, so even
a killed run leaves a correct account of what it finished."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from .. import __version__
from ..atomic import atomic_write_text

REPORT_SCHEMA = 1
REPORT_INTERVAL_S = 2.0  # rewrite the report at most this often while running (and at the end)

@dataclass
class ItemResult:
    """One input's line in the report."""

    input: str
    status: str  # done | skipped | failed | pending
    output: str | None = None
    message: str | None = None
    in_shape: list[int] | None = None
    out_shape: list[int] | None = None
    in_spacing: list[float] | None = None
    out_spacing: list[float] | None = None
    backend: str | None = None
    seconds: float | None = None
    qc: str | None = None



@dataclass
class BatchReport:
    """The JSON report: every input with its status, plus what ran and how it ended."""

    options: dict[str, Any]
    model: dict[str, str]
    shard: str | None
    items: list[ItemResult]
    execution: dict[str, Any] = field(default_factory=dict)  # where and how it ran (execution_context)
    started: str = field(default_factory=lambda: now_utc())
    finished: str | None = None
    complete: bool = False

    def counts(self) -> dict[str, int]:
        out = {"done": 0, "skipped": 0, "failed": 0, "pending": 0}
        for item in self.items:
            out[item.status] = out.get(item.status, 0) + 1
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": REPORT_SCHEMA, "tool": f"arssr-rt {__version__}", "started": self.started, "finished": self.finished,
            "complete": self.complete, "shard": self.shard, "execution": self.execution, "model": self.model, "options": self.options,
            "counts": self.counts(), "items": [asdict(i) for i in self.items],
        }


VERSIONED = ("arssr-rt", "numpy", "nibabel", "onnxruntime", "onnxruntime-gpu", "openvino", "tensorrt", "torch", "ray")
SLURM_VARIABLES = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_JOB_NODELIST",
                   "SLURM_CPUS_PER_TASK")


def execution_context(runner: str, jobs: int, workers: int, shard: str | None, ray_address: str | None = None) -> dict[str, Any]:
    """Where and how a batch ran, for reading a report later: the runner (``in process``,
    ``process pool`` or ``ray``), --jobs and the workers started, the Ray address (or None),
    the shard, host, pid, Python, platform, SLURM job variables and installed versions."""
    from importlib import metadata

    versions = {}
    for name in VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    versions.setdefault("arssr-rt", __version__)
    slurm = {k: os.environ[k] for k in SLURM_VARIABLES if k in os.environ}
    return {
        "runner": runner, "jobs": jobs, "workers": workers, "ray_address": ray_address, "shard": shard,
        "host": socket.gethostname(), "pid": os.getpid(), "python": platform.python_version(), "platform": platform.platform(),
        "cpus": os.cpu_count(), **({"slurm": slurm} if slurm else {}), "versions": versions,
    }


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def write_report(path: Path, report: BatchReport) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(report.to_json(), indent=2) + "\n")


class Reporter:
    """Keeps the report file current (throttled) and forwards results to the caller."""

    def __init__(self, report: BatchReport, path: Path | None, on_result: Callable[[ItemResult], None] | None):
        self.report, self.path, self.on_result = report, path, on_result
        self.index = {r.input: i for i, r in enumerate(report.items)}
        self.last_write = 0.0

    def record(self, result: ItemResult) -> None:
        self.report.items[self.index[result.input]] = result
        if self.on_result:
            self.on_result(result)
        self.flush(force=False)

    def flush(self, force: bool = True) -> None:
        if self.path is None:
            return
        now = time.monotonic()
        if force or now - self.last_write >= REPORT_INTERVAL_S:
            write_report(self.path, self.report)
            self.last_write = now

