"""Run batch tasks on a Ray cluster: one actor per worker, each loading the model once.

Actors ask for one GPU each when the cluster has GPUs (so Ray places one model per GPU) and
for ``threads`` CPUs otherwise. The inputs and OUT_DIR must be on a file system every node
sees (the usual shared /data on a cluster); results stream back to this process, which keeps
the report. Optional extra: ``pip install "arssr-rt[ray]"``.

Without --ray-address and $RAY_ADDRESS a local instance is started explicitly
(``address="local"``): Ray's own default joins the "latest cluster" named in
<tmp>/ray/ray_current_cluster and hangs for ever when that cluster is gone. A given address
is probed first with a bounded TCP connect, so a dead or wrong address is one line.
"""

from __future__ import annotations

import os
import re
import socket
from typing import Any, Callable, Sequence

from ..errors import ArssrError, BackendError
from ..extras import require
from .runner import BatchOptions, ItemResult, Task, make_upsampler, process_item


class BatchActor:
    """Holds one VolumeEngine for the actor's lifetime; a load failure is reported per call."""

    def __init__(self, options: BatchOptions):
        self.options = options
        self.error: str | None = None
        try:
            self.upsampler = make_upsampler(options)
        except ArssrError as exc:
            self.error = str(exc)

    def process(self, task: Task) -> tuple[str | None, ItemResult | None]:
        if self.error is not None:
            return self.error, None
        return None, process_item(task, self.options, self.upsampler)


def actor_resources(cluster: dict[str, float], options: BatchOptions) -> dict[str, Any]:
    """One GPU per actor when the cluster has any, else ``threads`` (default 1) CPUs."""
    if cluster.get("GPU", 0) >= 1:
        return {"num_gpus": 1, "num_cpus": 1}
    return {"num_gpus": 0, "num_cpus": max(1, int(options.threads or 1))}


def actor_count(cluster: dict[str, float], options: BatchOptions, workers: int, tasks: int) -> int:
    """--jobs when given (> 1); else one actor per GPU; never more actors than tasks."""
    if workers > 1:
        wanted = workers
    elif cluster.get("GPU", 0) >= 1:
        wanted = int(cluster["GPU"])
    else:
        wanted = 1
    return max(1, min(wanted, tasks))


CONNECT_TIMEOUT_S = 10.0


def ray_address(given: str | None) -> str:
    """What to pass to ray.init: the given address, else $RAY_ADDRESS, else ``"local"``."""
    return given or os.environ.get("RAY_ADDRESS") or "local"


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Refuse, in one line, a ``[ray://]host:port`` nobody answers on within ``timeout``.

    ("local" starts an instance; "auto" is left to Ray, which looks for a running one.)
    """
    if address in ("local", "auto"):
        return
    match = re.fullmatch(r"(?:ray://)?\[?([^\]/]+?)\]?:(\d+)/?", address.strip())
    if not match:
        raise BackendError(f"Ray address {address!r} is not [ray://]host:port")
    host, port = match.group(1), int(match.group(2))
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        why = "timed out" if isinstance(exc, (socket.timeout, TimeoutError)) else (exc.strerror or str(exc))
        raise BackendError(f"cannot reach the Ray cluster at {address} ({why} after at most {timeout:g} s); "
                           "check --ray-address / $RAY_ADDRESS, or leave both unset for a local instance") from None


def run_on_ray(
    tasks: Sequence[Task],
    options: BatchOptions,
    record: Callable[[ItemResult], None],
    *,
    fail_fast: bool = False,
    address: str | None = None,
    workers: int = 1,
    on_start: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Process ``tasks`` on Ray (a local instance when no address and no $RAY_ADDRESS).

    Returns (and passes ``on_start`` once the actors exist) what the report records: the
    address used (``"local"`` for an instance started here), actors, cluster resources, Ray's version."""
    ray = require("ray")
    from ray.util import ActorPool

    started_here = not ray.is_initialized()
    target = ray_address(address) if started_here else "already initialised"
    if started_here:
        check_reachable(target)
        try:
            ray.init(address=target, include_dashboard=False, logging_level="ERROR", configure_logging=False)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise BackendError(f"cannot start or join Ray at {target}: {' '.join(str(exc).split())[:300]}") from None
    try:
        cluster = ray.cluster_resources()
        resources = actor_resources(cluster, options)
        remote_actor = ray.remote(**resources)(BatchActor)
        actors = [remote_actor.remote(options) for _ in range(actor_count(cluster, options, workers, len(tasks)))]
        info = {"ray_address": target, "workers": len(actors), "actor_resources": resources,
                "ray_cluster": {k: cluster[k] for k in ("CPU", "GPU") if k in cluster}, "ray_version": getattr(ray, "__version__", None)}
        if on_start:
            on_start(info)
        pool = ActorPool(actors)
        try:
            for error, result in pool.map_unordered(lambda actor, task: actor.process.remote(task), list(tasks)):
                if error is not None:
                    raise BackendError(f"a Ray worker could not load the model: {error}")
                assert result is not None
                record(result)
                if fail_fast and result.status == "failed":
                    break
        finally:
            for actor in actors:
                ray.kill(actor)
    finally:
        if started_here:
            ray.shutdown()
    return info
