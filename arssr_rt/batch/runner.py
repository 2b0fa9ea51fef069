"""Run a batch: plan outputs, skip what is up to date, process the rest with one model load
per worker, and keep a JSON report that is correct even if the run is killed.

Per input, ``process_item`` reads, super-resolves and writes (output, QC picture, then the
sidecar last), catching the errors one bad file can cause; an error that escapes it is
systemic (the backend cannot open) and stops the batch. Work runs in this process
(``jobs=1``) or in a ProcessPoolExecutor whose initializer builds the Upsampler once per
worker; a worker that dies (OOM killer) is replaced and its file retried once.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .. import __version__
from ..errors import ArssrError, InputError
from .discovery import BatchItem, discover, select_shard
from .report import BatchReport, ItemResult, Reporter, now_utc
from .sidecar import input_sha256, model_sha256, output_size, read_sidecar, sidecar_path, stale_reason, write_sidecar


@dataclass(frozen=True)
class BatchOptions:
    """Everything a worker needs to rebuild the Upsampler and process an item (picklable)."""

    scale: str | None = None
    voxel_size: str | None = None
    shape: str | None = None
    model: str | None = None
    backend: str = "auto"
    device: int = 0
    threads: int | None = None
    precision: str = "fp32"
    tile: int | None = None
    chunk: int | None = None
    normalization: str = "minmax"
    dtype: str | None = None
    output_format: str = "nifti"
    qc: bool = False
    force: bool = False
    max_output_voxels: int | None = None
    as_intensity: bool = False  # take label-map-like inputs as intensities

    def fingerprint(self, scale: str | None) -> dict[str, Any]:
        """The options that change an output's content (the sidecar compares these)."""
        return {
            "scale": scale, "voxel_size": self.voxel_size, "shape": self.shape, "precision": self.precision,
            "normalization": self.normalization, "dtype": self.dtype, "output_format": self.output_format, "qc": self.qc,
        }


@dataclass
class Task:
    """An item with its output planned and its fingerprints computed (sent to a worker)."""

    item: BatchItem
    output: Path
    scale: str | None
    input_digest: str
    model_digest: str
    fingerprint: dict[str, Any] = field(default_factory=dict)


def size_label(scale: str | None, voxel_size: str | None, shape: str | None) -> str:
    """Output-name label from the size option: ``x2``, ``x1x1x3``, ``0.5mm``, ``256x256x100``."""
    def parts(text: str) -> list[str]:
        values = [p.strip() for p in text.replace("x", ",").split(",") if p.strip()]
        return values if len(set(values)) > 1 else values[:1]

    if scale:
        return "x" + "x".join(parts(scale))
    if voxel_size:
        return "x".join(parts(voxel_size)) + "mm"
    if shape:
        return "x".join(p.strip() for p in shape.replace("x", ",").split(",") if p.strip())
    raise InputError("give exactly one of --scale, --voxel-size or --shape")


def output_for(item: BatchItem, out_dir: Path, options: BatchOptions) -> Path:
    """Where an item's output goes: the CSV's output, else OUT_DIR/<relative>_<label>[.nii.gz]."""
    if item.output is not None:
        return item.output if item.output.is_absolute() else out_dir / item.output
    label = size_label(item.scale or options.scale, options.voxel_size if not item.scale else None, options.shape if not item.scale else None)
    suffix = "" if options.output_format == "dicom" else ".nii.gz"
    return out_dir / item.relative.parent / f"{item.stem}_{label}{suffix}"


def qc_path_for(output: Path) -> Path:
    return sidecar_path(output).with_name(sidecar_path(output).stem + "_qc.png")


def remove_stale_temporaries(output: Path) -> None:
    """Delete temp files an earlier, killed run left for this output (save_volume's
    ``.<name>.*.tmp.nii.gz``, DICOM ``.<name>.partial-*`` folders, QC and sidecar temps)."""
    import shutil

    folder = output.parent
    if not folder.is_dir():
        return
    prefixes = tuple(f".{p.name}." for p in (output, qc_path_for(output), sidecar_path(output)))
    for entry in os.scandir(folder):
        if entry.name.startswith(prefixes) and (".tmp" in entry.name or ".partial-" in entry.name):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                Path(entry.path).unlink(missing_ok=True)


# ------------------------------------------------------------------ one item


def make_upsampler(options: BatchOptions):
    """The Upsampler a worker keeps for the whole batch."""
    from ..backends.base import BackendOptions
    from ..pipeline import DEFAULT_CHUNK, Upsampler

    return Upsampler(
        options.model, options.backend, BackendOptions(device=options.device, threads=options.threads, precision=options.precision),
        tile=options.tile, chunk=options.chunk or DEFAULT_CHUNK, normalization=options.normalization,
        as_intensity=options.as_intensity,
    )


def process_item(task: Task, options: BatchOptions, upsampler) -> ItemResult:
    """Read, super-resolve and write one item; a per-file error becomes a failed result."""
    from ..io_dicom import write_dicom_series
    from ..nifti_io import save_volume
    from ..pipeline import DEFAULT_MAX_OUTPUT_VOXELS, plan_grid
    from ..qc import write_qc_montage
    from ..readers import read_volume

    t0 = time.perf_counter()
    result = ItemResult(input=str(task.item.input), status="failed", output=str(task.output))
    try:
        remove_stale_temporaries(task.output)
        volume = read_volume(task.item.input)
        result.in_shape, result.in_spacing = list(volume.shape), _spacing(volume.affine)
        scale_given = task.scale is not None
        grid = plan_grid(
            volume, task.scale, None if scale_given else options.voxel_size, None if scale_given else options.shape,
            options.max_output_voxels or DEFAULT_MAX_OUTPUT_VOXELS,
        )
        result.out_shape, result.out_spacing = list(grid.shape), [float(s) for s in grid.spacing]
        task.output.parent.mkdir(parents=True, exist_ok=True)
        data = upsampler.run(volume, grid)
        if options.output_format == "dicom":
            write_dicom_series(task.output, data, grid, volume, f"ArSSR {grid.shape[0]}x{grid.shape[1]}x{grid.shape[2]}", force=True)
        else:
            save_volume(task.output, data, grid, volume, dtype=options.dtype, force=True)
        if options.qc:
            qc = write_qc_montage(qc_path_for(task.output), volume.data, volume.affine, data, grid.affine, title=task.item.input.name)
            result.qc = str(qc)
        result.backend = str(getattr(upsampler.backend, "name", "?"))
        result.seconds = round(time.perf_counter() - t0, 3)
        write_sidecar(sidecar_path(task.output), {
            "tool": f"arssr-rt {__version__}", "input": str(task.item.input), "input_sha256": task.input_digest,
            "model": upsampler.bundle.name, "model_sha256": task.model_digest, "options": task.fingerprint,
            "output": task.output.name, "output_bytes": output_size(task.output),
            "qc": Path(result.qc).name if result.qc else None, "in_shape": result.in_shape, "out_shape": result.out_shape,
            "in_spacing": result.in_spacing, "out_spacing": result.out_spacing, "backend": result.backend, "seconds": result.seconds,
        })
        result.status = "done"
    except (ArssrError, OSError, MemoryError) as exc:
        result.message = _one_line(exc)
    except Exception as exc:  # a bug or an unforeseen library error must not sink 1000 other files
        result.message = f"unexpected {type(exc).__name__}: {_one_line(exc)}"
    if result.seconds is None:
        result.seconds = round(time.perf_counter() - t0, 3)
    return result


def _spacing(affine) -> list[float]:
    import numpy as np

    return [float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)]


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.strerror}" + (f": {exc.filename}" if exc.filename else "")
    return " ".join(text.split())


# ------------------------------------------------------------------ the batch



def plan_tasks(items: Sequence[BatchItem], out_dir: Path, options: BatchOptions, model_digest: str) -> tuple[list[Task], list[ItemResult]]:
    """Tasks to run, and results known without running (discovery errors, name clashes, up to date)."""
    tasks: list[Task] = []
    known: list[ItemResult] = []
    claimed: dict[Path, str] = {}
    for item in items:
        if item.error:
            known.append(ItemResult(input=str(item.input), status="failed", message=item.error))
            continue
        output = output_for(item, out_dir, options)
        if output in claimed:
            known.append(ItemResult(input=str(item.input), status="failed", output=str(output),
                                    message=f"output name clashes with that of {claimed[output]}; give outputs in a CSV"))
            continue
        claimed[output] = str(item.input)
        scale = item.scale or options.scale
        fingerprint = options.fingerprint(scale)
        try:
            digest = input_sha256(item.input)
        except OSError as exc:
            known.append(ItemResult(input=str(item.input), status="failed", output=str(output), message=_one_line(exc)))
            continue
        if not options.force and stale_reason(output, digest, model_digest, fingerprint) is None:
            known.append(_skipped(item, output, options))
            continue
        tasks.append(Task(item, output, scale, digest, model_digest, fingerprint))
    return tasks, known


def _skipped(item: BatchItem, output: Path, options: BatchOptions) -> ItemResult:
    """An up-to-date item, described from its sidecar (shapes, backend, time of the run that made it)."""
    record = read_sidecar(sidecar_path(output)) or {}
    return ItemResult(
        input=str(item.input), status="skipped", output=str(output), message="up to date",
        in_shape=record.get("in_shape"), out_shape=record.get("out_shape"), in_spacing=record.get("in_spacing"),
        out_spacing=record.get("out_spacing"), backend=record.get("backend"), seconds=record.get("seconds"),
        qc=str(output.parent / record["qc"]) if record.get("qc") else None,
    )


def run_batch(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    options: BatchOptions,
    *,
    jobs: int = 1,
    shard: tuple[int, int] | None = None,
    report_path: str | os.PathLike | None = None,
    fail_fast: bool = False,
    on_plan: Callable[[BatchReport], None] | None = None,
    on_result: Callable[[ItemResult], None] | None = None,
    executor: str = "process",
    ray_address: str | None = None,
) -> BatchReport:
    """Process every input; returns the report (also written to ``report_path``).

    Raises ArssrError only for problems of the whole batch (no inputs, model or backend
    unusable); per-file problems are failed items in the report.
    """
    from ..bundle import resolve_model

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: output folder is a file")
    out_dir.mkdir(parents=True, exist_ok=True)
    size_label(options.scale, options.voxel_size, options.shape)  # exactly one size option, before any work
    if sum(x is not None for x in (options.scale, options.voxel_size, options.shape)) != 1:
        raise InputError("give exactly one of --scale, --voxel-size or --shape")
    items = discover(inputs)
    if shard is not None:
        items = select_shard(items, *shard)
    bundle = resolve_model(options.model)
    model_digest = model_sha256(bundle.path)
    tasks, known = plan_tasks(items, out_dir, options, model_digest)
    pending = [ItemResult(input=str(t.item.input), status="pending", output=str(t.output)) for t in tasks]
    by_input = {r.input: r for r in known + pending}
    report = BatchReport(
        options={k: v for k, v in asdict(options).items()}, model={"name": bundle.name, "path": str(bundle.path), "sha256": model_digest},
        shard=f"{shard[0]}/{shard[1]}" if shard else None, items=[by_input[str(i.input)] for i in items],
    )
    reporter = Reporter(report, Path(report_path) if report_path else None, on_result)
    if on_plan:
        on_plan(report)
    for result in known:
        if on_result:
            on_result(result)
    reporter.flush()
    try:
        if tasks:
            if executor == "ray":
                from .ray_runner import run_on_ray

                run_on_ray(tasks, options, reporter.record, fail_fast=fail_fast, address=ray_address, workers=jobs)
            elif min(jobs, len(tasks)) <= 1:
                _run_here(tasks, options, reporter.record, fail_fast)
            else:
                from .pool import run_in_pool

                run_in_pool(tasks, options, reporter.record, fail_fast, min(jobs, len(tasks)))
        report.complete = all(r.status != "pending" for r in report.items)
    finally:
        report.finished = now_utc()
        reporter.flush()
    return report


def _stop_after(result: ItemResult, fail_fast: bool) -> bool:
    return fail_fast and result.status == "failed"


def _run_here(tasks: Sequence[Task], options: BatchOptions, record: Callable[[ItemResult], None], fail_fast: bool) -> None:
    with make_upsampler(options) as upsampler:
        for task in tasks:
            result = process_item(task, options, upsampler)
            record(result)
            if _stop_after(result, fail_fast):
                return
