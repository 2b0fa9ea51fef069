"""Worker processes for a batch: a spawn-context ProcessPoolExecutor whose initializer loads
the model once per worker; a worker that dies is replaced and its input retried once."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Sequence

from ..errors import ArssrError
from .report import ItemResult
from .runner import BatchOptions, Task, make_upsampler, process_item

_WORKER: dict[str, Any] = {}


def _init_worker(options: BatchOptions) -> None:
    """Pool initializer: load the model once; remember a failure to report it per task."""
    try:
        _WORKER["upsampler"] = make_upsampler(options)
    except ArssrError as exc:
        _WORKER["error"] = exc
    _WORKER["options"] = options


def _run_in_worker(task: Task) -> ItemResult:
    if "error" in _WORKER:
        raise _WORKER["error"]
    return process_item(task, _WORKER["options"], _WORKER["upsampler"])


def run_in_pool(tasks: Sequence[Task], options: BatchOptions, record: Callable[[ItemResult], None], fail_fast: bool, jobs: int) -> None:
    """At most 2 x jobs tasks in flight; a dead worker's task is retried once in a fresh pool."""
    queue = list(tasks)
    attempts: dict[str, int] = {}
    context = multiprocessing.get_context("spawn")  # no forked copies of threads or sessions
    while queue:
        pool = ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_init_worker, initargs=(options,))
        in_flight: dict[Future, Task] = {}
        broken = False
        try:
            while queue or in_flight:
                while queue and len(in_flight) < 2 * jobs and not broken:
                    task = queue.pop(0)
                    in_flight[pool.submit(_run_in_worker, task)] = task
                if not in_flight:
                    break
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    task = in_flight.pop(future)
                    try:
                        result = future.result()
                    except BrokenProcessPool:
                        broken = True
                        key = str(task.item.input)
                        attempts[key] = attempts.get(key, 0) + 1
                        if attempts[key] >= 2:
                            record(ItemResult(input=key, status="failed", output=str(task.output),
                                              message="worker process died twice on this input (out of memory or killed)"))
                        else:
                            queue.insert(0, task)
                        continue
                    record(result)
                    if fail_fast and result.status == "failed":
                        # let files already running finish and be reported; start nothing new
                        for f in in_flight:
                            f.cancel()
                        for f, t in in_flight.items():
                            if not f.cancelled():
                                try:
                                    record(f.result())
                                except (BrokenProcessPool, ArssrError):
                                    pass
                        return
                if broken and not in_flight:
                    break
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

