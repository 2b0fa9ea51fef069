"""Training batches made ahead of the optimiser, in worker processes (``--sampler-workers N``).

Why: on a GPU the step is cheap and the patch sampler (cropping and degrading patches in
numpy, one CPU core) is what a step waits for. On the lent H200 (2026-12-04) the bandlimited
recipe ran 22 steps/s at batch 8, while a batch of 8 takes ~14 ms to sample on one core; a
bigger batch would make the sampler the whole step. Workers sample the next steps' batches
while the GPU runs this one.

Each step's batch comes from its own generator, seeded by (run seed, rank, step), so it does
not depend on how many workers make it, on their timing, or on where a run was resumed. With
``workers = 0`` the sampler keeps its one stream (the generator state saved in checkpoints),
so runs made before this option continue exactly as they began.
"""

from __future__ import annotations

import multiprocessing
import sys
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

import numpy as np

from .data import PatchSampler

Batch = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]

_WORKER_SAMPLER: PatchSampler | None = None  # one per worker process, set by _init_worker


def step_seed(seed: int, rank: int, step: int) -> list[int]:
    """The generator seed of one step's batch (numpy SeedSequence entropy)."""
    return [int(seed), int(rank), int(step)]


def step_batch(sampler: PatchSampler, batch: int, seed: int, rank: int, step: int) -> Batch:
    """The batch of ``step``, whoever makes it: the sampler drawn from that step's generator."""
    sampler.rng = np.random.default_rng(step_seed(seed, rank, step))
    return sampler.batch(batch)


def _init_worker(sampler: PatchSampler) -> None:
    global _WORKER_SAMPLER
    _WORKER_SAMPLER = sampler


def _worker_batch(batch: int, seed: int, rank: int, step: int) -> Batch:
    assert _WORKER_SAMPLER is not None, "worker not initialised"
    return step_batch(_WORKER_SAMPLER, batch, seed, rank, step)


class BatchSource:
    """``get(step)`` -> that step's batch, for consecutive steps from ``start``.

    ``workers = 0``: drawn here from the sampler's own stream (the pre-existing behaviour).
    ``workers > 0``: step-seeded batches made by that many processes, ``depth`` steps ahead.
    """

    def __init__(self, sampler: PatchSampler, batch: int, *, seed: int, rank: int, workers: int, start: int, depth: int | None = None):
        if workers < 0:
            raise ValueError(f"sampler workers must be >= 0, got {workers}")
        self.sampler, self.batch, self.seed, self.rank, self.workers = sampler, batch, seed, rank, workers
        self.next_step = start
        self._pending: deque[tuple[int, Future]] = deque()
        self._pool: ProcessPoolExecutor | None = None
        if workers:
            # fork shares the loaded volumes without pickling them; elsewhere they are pickled once per worker
            method = "fork" if sys.platform.startswith("linux") else "spawn"
            self._pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method),
                                             initializer=_init_worker, initargs=(sampler,))
            self.depth = depth or 2 * workers

    def get(self, step: int) -> Batch:
        if step != self.next_step:
            raise ValueError(f"batches are made in step order: expected step {self.next_step}, got {step}")
        self.next_step += 1
        if self._pool is None:
            return self.sampler.batch(self.batch)
        while len(self._pending) < self.depth:
            ahead = self._pending[-1][0] + 1 if self._pending else step
            self._pending.append((ahead, self._pool.submit(_worker_batch, self.batch, self.seed, self.rank, ahead)))
        made, future = self._pending.popleft()
        assert made == step
        return future.result()

    def close(self) -> None:
        if self._pool is not None:
            for _, future in self._pending:
                future.cancel()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> "BatchSource":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
