"""Run a batch: plan outputs, skip what is up to date, process the rest with one model load
per worker, and keep a JSON report that is correct even if the run is killed.

Per input, ``process_item`` reads, super-resolves and writes (output, QC picture, then the
sidecar last), catching the errors one bad file can cause; an error that escapes it is
systemic (the backend cannot open) and stops the batch. Work runs in this process
(``jobs=1``) or in a ProcessPoolExecutor whose initializer builds the VolumeEngine once per
worker; a worker that dies (OOM killer) is replaced and its file retried once.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .. import __version__
from ..atomic import remove_stale_temps
from ..errors import ArssrError, InputError, OutputError
from ..outputs import InputSet, is_inside, normalized
from ..writers import check_volume_output, output_name, reference_label, size_label
from .bids import BidsSource, bids_source, check_description, derivative_sidecar, res_label, resolution_text, write_description
from .discovery import BatchItem, discover, select_shard
from .report import BatchReport, ItemResult, Reporter, execution_context, now_utc
from .sidecar import (
    claim_path, input_sha256, model_sha256, output_size, owned_by, read_sidecar, sidecar_path, stale_reason, write_claim, write_sidecar,
)


@dataclass(frozen=True)
class BatchOptions:
    """Everything a worker needs to rebuild the VolumeEngine and process an item (picklable)."""

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
    allow_outside: bool = False  # CSV outputs may resolve outside OUT_DIR (--allow-outside-output-dir)
    as_intensity: bool = False  # take label-map-like inputs as intensities
    # the same meaning as upsample's options of these names (one code path: render.py)
    interp: str | None = None
    clip_to_input_range: bool = False
    reference: str | None = None  # an image whose grid every output takes (a CSV row's scale overrides it)
    reference_sha256: str | None = None  # set by run_batch: a changed reference makes outputs stale
    keep_samples: bool = True
    bids: bool = True  # BIDS-named NIfTI inputs get BIDS-derivative outputs (batch/bids.py)
    adapt: Any = None  # adapt.AdaptOptions: fine-tune a copy of the model on each input first
    tta: int = 1  # inference passes averaged over flips (tta.py; with adapt: AdaptOptions.tta)
    ensemble: tuple[str, ...] = ()  # more models averaged with `model` (pipeline.VolumeEngine)

    def fingerprint(self, scale: str | None) -> dict[str, Any]:
        """The options that change an output's content (the sidecar compares these)."""
        out = {
            "scale": scale, "voxel_size": self.voxel_size, "shape": self.shape, "precision": self.precision,
            "normalization": self.normalization, "dtype": self.dtype, "output_format": self.output_format, "qc": self.qc,
        }
        # added only when not the default, so sidecars of earlier runs stay up to date
        extra = {"interp": self.interp, "clip_to_input_range": self.clip_to_input_range or None,
                 "reference_sha256": self.reference_sha256 if scale is None else None,
                 "keep_samples": None if self.keep_samples else False, "tta": self.tta if self.tta != 1 else None,
                 "ensemble": list(self.ensemble) or None}
        out.update({k: v for k, v in extra.items() if v is not None})
        if self.adapt is not None:
            out["adapt"] = asdict(self.adapt)
        return out

    def reference_for(self, scale: str | None) -> str | None:
        """The reference an item uses: none when its CSV row gives a scale."""
        return self.reference if scale is None else None


@dataclass
class Task:
    """An item with its output planned and its fingerprints computed (sent to a worker)."""

    item: BatchItem
    output: Path
    scale: str | None
    input_digest: str
    model_digest: str
    fingerprint: dict[str, Any] = field(default_factory=dict)


def item_label(item: BatchItem, options: BatchOptions) -> str:
    """The name label of an item: its CSV row's scale, else --reference or the batch's size option."""
    if options.reference_for(item.scale) is not None:
        return reference_label(options.reference)  # type: ignore[arg-type]
    if item.scale is not None:
        return size_label(item.scale, None, None)
    return size_label(options.scale, options.voxel_size, options.shape)


def bids_place(item: BatchItem, options: BatchOptions) -> BidsSource | None:
    """The item's BIDS source when its output is a BIDS derivative (a BIDS-named NIfTI, NIfTI
    output, no CSV output, not --no-bids)."""
    if not options.bids or item.output is not None or item.kind != "nifti" or options.output_format != "nifti":
        return None
    return bids_source(item.input)


def output_for(item: BatchItem, out_dir: Path, options: BatchOptions) -> Path:
    """Where an item's output goes: the CSV's output (relative to OUT_DIR); for a BIDS input
    OUT_DIR/sub-<label>/[ses-<label>/]<datatype>/<entities>_res-<label>_<suffix>.nii.gz;
    else OUT_DIR/<relative folder>/<stem>_<label>[.nii.gz] (``writers.output_name``)."""
    if item.output is not None:
        return item.output if item.output.is_absolute() else out_dir / item.output
    label = item_label(item, options)
    place = bids_place(item, options)
    if place is not None:
        return out_dir / place.output_relative(res_label(label))
    return out_dir / item.relative.parent / output_name(item.input, label, options.output_format)


def qc_path_for(output: Path) -> Path:
    return sidecar_path(output).with_name(sidecar_path(output).stem + "_qc.png")


def remove_stale_temporaries(output: Path) -> None:
    """Delete temps a dead run left for this output, its QC picture and its sidecar (never
    those of a live writer: another batch may be writing to the same OUT_DIR)."""
    remove_stale_temps(output.parent, [p.name for p in (output, qc_path_for(output), sidecar_path(output), claim_path(output))])


# ------------------------------------------------------------------ one item


def make_upsampler(options: BatchOptions):
    """The VolumeEngine a worker keeps for the whole batch."""
    from ..backends.base import BackendOptions
    from ..pipeline import VolumeEngine

    # --adapt: the torch backend holds the base weights, loaded once; each input adapts a copy
    return VolumeEngine(
        options.model, "torch" if options.adapt is not None else options.backend, BackendOptions(device=options.device, threads=options.threads, precision=options.precision),
        tile=options.tile, chunk=options.chunk, normalization=options.normalization,
        as_intensity=options.as_intensity, keep_samples=options.keep_samples,
        tta_passes=options.tta if options.adapt is None else 1, ensemble=options.ensemble,
    )


def process_item(task: Task, options: BatchOptions, upsampler) -> ItemResult:
    """Read, super-resolve and write one item (a 3-D volume or a 4-D series, through
    render.py like ``upsample``); a per-file error becomes a failed result.

    The output may be replaced only when ``plan_tasks`` found it absent, made by an earlier
    run for this input (its sidecar says so), or ``--force`` was given."""
    from ..pipeline import DEFAULT_MAX_OUTPUT_VOXELS, choose_interp
    from ..provenance import describe
    from ..qc import write_qc_montage
    from ..render import plan_target, read_input, render_and_write

    t0 = time.perf_counter()
    result = ItemResult(input=str(task.item.input), status="failed", output=str(task.output))
    try:
        remove_stale_temporaries(task.output)
        volume, series = read_input(task.item.input, upsampler.max_memory)
        result.in_shape, result.in_spacing = list(volume.shape), _spacing(volume.affine)
        scale_given = task.scale is not None
        notes: list[str] = []  # upsample prints these; a batch keeps them in the item's report message
        method = choose_interp(volume, options.interp, options.as_intensity, notes.append)
        limit = (options.max_output_voxels or DEFAULT_MAX_OUTPUT_VOXELS) // (series.count if series is not None else 1)
        target = plan_target(volume, method, scale=task.scale, voxel_size=None if scale_given else options.voxel_size,
                             shape=None if scale_given else options.shape, reference=options.reference_for(task.scale),
                             max_output_voxels=limit, on_note=notes.append)
        grid = target.grid
        result.out_shape, result.out_spacing = list(grid.shape), [float(s) for s in grid.spacing]
        task.output.parent.mkdir(parents=True, exist_ok=True)
        replace = options.force or owned_by(task.output, task.item.input, task.input_digest)
        check_volume_output(task.output, options.output_format, inputs=[task.item.input], force=replace)
        shown: list = []
        label = item_label(task.item, options)
        descrip = describe(label, upsampler.model_name if method == "model" else None, method)

        def write() -> None:
            with adapted_upsampler(volume, options, upsampler, task.item.input, method, series is not None) as up:
                _, data = render_and_write(volume, series, target, method, task.output, options.output_format, upsampler=up,
                                           dtype=options.dtype, force=replace, inputs=[task.item.input],
                                           clip=options.clip_to_input_range, keep_first=options.qc, descrip=descrip)
            shown.append(data if options.qc else None)

        _write_claimed(task, write)
        if options.qc and target.world:  # the montage compares grids of one field of view
            notes.append("no QC montage: the reference grid is not a refinement of the input's field of view")
        elif options.qc and shown[0] is not None:  # a series: its first volume
            qc = write_qc_montage(qc_path_for(task.output), volume.data, volume.affine, shown[0], grid.affine, title=task.item.input.name,
                                  force=replace, inputs=[task.item.input])
            result.qc = str(qc)
        shown.clear()
        result.backend = str(getattr(upsampler.backend, "name", "?")) if method == "model" else "numpy"
        result.seconds = round(time.perf_counter() - t0, 3)
        place = bids_place(task.item, options)
        bids_fields = None if place is None else derivative_sidecar(
            place, task.item.input, res_label(label), resolution_text(res_label(label), result.in_shape, result.in_spacing,
                                                                    result.out_shape, result.out_spacing),
            f"ArSSR model {upsampler.model_name}" if method == "model" else f"{method} interpolation, no model")
        write_sidecar(sidecar_path(task.output), {
            "tool": f"arssr-rt {__version__}", "input": str(task.item.input), "input_path": os.path.realpath(task.item.input), "input_sha256": task.input_digest,
            "model": upsampler.model_name if method == "model" else f"interp {method}", "model_sha256": task.model_digest,
            "options": task.fingerprint, "output": task.output.name, "output_bytes": output_size(task.output),
            "qc": Path(result.qc).name if result.qc else None, "in_shape": result.in_shape, "out_shape": result.out_shape,
            "in_spacing": result.in_spacing, "out_spacing": result.out_spacing, "backend": result.backend, "seconds": result.seconds,
            **({"volumes": series.count} if series is not None else {}),
            **({"reference": str(options.reference_for(task.scale))} if options.reference_for(task.scale) else {}),
        }, bids=bids_fields)
        claim_path(task.output).unlink(missing_ok=True)
        result.status = "done"
        result.message = "; ".join(notes) or None
    except (ArssrError, OSError, MemoryError) as exc:
        result.message = _one_line(exc)
    except Exception as exc:  # a bug or an unforeseen library error must not sink 1000 other files
        result.message = f"unexpected {type(exc).__name__}: {_one_line(exc)}"
    if result.seconds is None:
        result.seconds = round(time.perf_counter() - t0, 3)
    return result


@contextlib.contextmanager
def adapted_upsampler(volume, options: BatchOptions, upsampler, where: Path, method: str, is_series: bool = False):
    """The worker's VolumeEngine, or with --adapt a copy of its base model fine-tuned on this
    input, run on the same pipeline (closed after this input)."""
    if options.adapt is None or method != "model":
        yield upsampler
        return
    from ..adapt.plan import check_adapt_input, plan_adaptation
    from ..adapt.session import adapt_volume
    from ..backends.base import BackendOptions
    from ..geometry import spacing_of
    from ..pipeline import VolumeEngine

    check_adapt_input(str(where), is_series, method)
    plan = plan_adaptation(spacing_of(volume.affine), volume.shape, options.adapt, str(where))
    adapted = adapt_volume(volume, upsampler.bundle, options.adapt, normalization=options.normalization, threads=options.threads,
                           plan=plan, base_model=getattr(upsampler.backend, "model", None))
    with VolumeEngine(upsampler.bundle, adapted.backend, BackendOptions(threads=options.threads), tile=options.tile,
                   chunk=options.chunk, normalization=options.normalization, max_memory=upsampler.max_memory,
                   as_intensity=options.as_intensity, keep_samples=options.keep_samples) as up:
        yield up


def _write_claimed(task: Task, write: Callable[[], object]) -> None:
    """Write the output under a claim (a kill between output and sidecar leaves an output
    this batch may redo without --force); a failed write leaves no claim behind."""
    write_claim(task.output, task.item.input, task.input_digest)
    try:
        write()
    except BaseException:
        claim_path(task.output).unlink(missing_ok=True)
        raise


def _spacing(affine) -> list[float]:
    import numpy as np

    return [float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)]


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.strerror}" + (f": {exc.filename}" if exc.filename else "")
    return " ".join(text.split())


# ------------------------------------------------------------------ the batch



def _where(item: BatchItem) -> str:
    return item.origin or str(item.input)


def plan_tasks(items: Sequence[BatchItem], out_dir: Path, options: BatchOptions, model_digest: str) -> tuple[list[Task], list[ItemResult]]:
    """Tasks to run, and results known without running (discovery errors, unsafe outputs, up to date).

    Every output is resolved and checked before any work: never an input of the batch, a
    CSV output inside OUT_DIR unless ``allow_outside``, and no two items on one output (a CSV
    row on the same output as another item stops the whole batch: the CSV is wrong).
    """
    tasks: list[Task] = []
    known: list[ItemResult] = []
    claimed: dict[Path, BatchItem] = {}
    # the --reference is read by every item: an output on it would rewrite it mid-batch
    protected = InputSet([*(i.input for i in items if not i.error), *([options.reference] if options.reference else [])])
    planned: list[tuple[BatchItem, Path]] = []
    for item in items:
        if item.error:
            known.append(ItemResult(input=str(item.input), status="failed", message=item.error))
            continue
        output = normalized(output_for(item, out_dir, options))
        first = claimed.get(output)
        if first is not None and (first.output is not None or item.output is not None):
            raise InputError(f"{_where(first)} and {_where(item)} both write {output}; give each its own output")
        if first is not None:
            known.append(ItemResult(input=str(item.input), status="failed", output=str(output),
                                    message=f"output name clashes with that of {first.input}; give outputs in a CSV"))
            continue
        claimed[output] = item
        planned.append((item, output))
    for item, output in planned:
        try:
            if item.output is not None and not options.allow_outside and not is_inside(output, out_dir):
                raise OutputError(f"{_where(item)}: output {item.output} resolves outside the output folder {out_dir} "
                                  "(a CSV may only name outputs under OUT_DIR; pass --allow-outside-output-dir to allow it)")
            conflict = protected.conflict(output, folder=options.output_format == "dicom")
            if conflict:
                raise OutputError(f"{output}: output {conflict}; an input is never overwritten")
            digest = input_sha256(item.input)
        except OutputError as exc:
            known.append(ItemResult(input=str(item.input), status="failed", output=str(output), message=str(exc)))
            continue
        except OSError as exc:
            known.append(ItemResult(input=str(item.input), status="failed", output=str(output), message=_one_line(exc)))
            continue
        scale = item.scale or options.scale
        fingerprint = options.fingerprint(scale)
        if not options.force and stale_reason(output, digest, model_digest, fingerprint) is None:
            known.append(_skipped(item, output, options))
            continue
        clash = None if options.force else _foreign_file(output, item, digest, options)
        if clash is not None:
            known.append(ItemResult(input=str(item.input), status="failed", output=str(output),
                                    message=f"{clash}: already exists and was not made by arssr-rt batch from this input (use --force to overwrite)"))
            continue
        tasks.append(Task(item, output, scale, digest, model_digest, fingerprint))
    return tasks, known


def _foreign_file(output: Path, item: BatchItem, digest: str, options: BatchOptions) -> Path | None:
    """The first of the output, its sidecar and QC picture that exists but is not this
    input's earlier batch output (replacing it needs --force); None when all may be written."""
    if owned_by(output, item.input, digest):
        return None
    side = sidecar_path(output)
    for path in (output, side, qc_path_for(output) if options.qc else None):
        if path is not None and (path.exists() or path.is_symlink()):
            return path
    return None


def check_report_path(path: Path, out_dir: Path, inputs: Sequence[Path], force: bool) -> None:
    """The report is rewritten during the run and by reruns, so an earlier batch report may be
    replaced; anything else there (an input, another file) is refused like any output."""
    import json

    key = normalized(path)
    conflict = InputSet(inputs).conflict(key)
    if conflict:
        raise OutputError(f"{path}: report {conflict}; choose another --report path")
    if not key.parent.is_dir() and key.parent != normalized(out_dir):
        raise OutputError(f"{path}: report folder {path.parent} does not exist (create it first)")
    if key.is_dir():
        raise OutputError(f"{path}: report is a folder")
    if key.exists() and not force:
        try:
            previous = json.loads(key.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            previous = None
        if not (isinstance(previous, dict) and {"items", "options", "model"} <= previous.keys()):
            raise OutputError(f"{path}: already exists and is not a batch report (use --force to overwrite)")


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
    from dataclasses import replace as with_fields

    from ..options import check_grid_options
    from ..reference import read_reference
    from ..resample import parse_interp

    check_grid_options(options.scale, options.voxel_size, options.shape, options.reference)  # before any work
    parse_interp(options.interp)
    if options.reference is not None:  # a bad reference fails the batch once, not every file
        read_reference(options.reference)
        options = with_fields(options, reference=str(options.reference), reference_sha256=input_sha256(Path(options.reference)))
    items = discover(inputs, exclude=[out_dir])  # a rerun never takes earlier outputs as inputs
    if shard is not None:
        items = select_shard(items, *shard)
    if report_path is not None:
        check_report_path(Path(report_path), out_dir, [i.input for i in items if not i.error], options.force)
    bundle = resolve_model(options.model)
    members = [bundle, *(resolve_model(m) for m in options.ensemble)]
    model_name = "+".join(b.name for b in members)
    # one model: its model.json digest (as before); an ensemble: the digest of the members' digests, in order
    model_digest = model_sha256(bundle.path) if len(members) == 1 else hashlib.sha256(
        " ".join(model_sha256(b.path) for b in members).encode()).hexdigest()
    bids_roots = [p.root for p in (bids_place(i, options) for i in items if not i.error) if p is not None]
    description = check_description(out_dir, bids_roots, options.force) if bids_roots else None
    tasks, known = plan_tasks(items, out_dir, options, model_digest)
    out_dir.mkdir(parents=True, exist_ok=True)
    if bids_roots:  # OUT_DIR is a BIDS derivative dataset from the start: a killed run leaves one too
        write_description(out_dir, bids_roots, model_name, model_digest, description)
    pending = [ItemResult(input=str(t.item.input), status="pending", output=str(t.output)) for t in tasks]
    by_input = {r.input: r for r in known + pending}
    report = BatchReport(
        options={k: v for k, v in asdict(options).items()}, model={"name": model_name, "path": str(bundle.path), "sha256": model_digest,
                                                           **({"ensemble": [str(b.path) for b in members]} if len(members) > 1 else {})},
        shard=f"{shard[0]}/{shard[1]}" if shard else None, items=[by_input[str(i.input)] for i in items],
    )
    runner = "ray" if executor == "ray" else "in process" if min(jobs, len(tasks)) <= 1 else "process pool"
    workers = 0 if executor == "ray" or not tasks else max(1, min(jobs, len(tasks)))  # Ray: filled in once its actors exist
    report.execution = execution_context(runner, jobs, workers, report.shard, _planned_ray_address(ray_address) if executor == "ray" else None)
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

                ray_info = run_on_ray(tasks, options, reporter.record, fail_fast=fail_fast, address=ray_address, workers=jobs,
                                      on_start=lambda info: (report.execution.update(info), reporter.flush()))
                report.execution.update(ray_info)
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


def _planned_ray_address(given: str | None) -> str:
    from .ray_runner import ray_address

    return ray_address(given)


def _stop_after(result: ItemResult, fail_fast: bool) -> bool:
    return fail_fast and result.status == "failed"


def _run_here(tasks: Sequence[Task], options: BatchOptions, record: Callable[[ItemResult], None], fail_fast: bool) -> None:
    with make_upsampler(options) as upsampler:
        for task in tasks:
            result = process_item(task, options, upsampler)
            record(result)
            if _stop_after(result, fail_fast):
                return
