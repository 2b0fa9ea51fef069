"""``arssr-rt batch`` (many volumes, resumable) and ``arssr-rt export-triton`` (serving)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .averaging import check_averaging, ensemble_option, resolve_passes, tta_option

from ..engines.builder import DEFAULT_TILE
from ..errors import ArssrError

BATCH_HELP = """\
Super-resolve many volumes: files, folders (recursive: .nii, .nii.gz (3-D, or 4-D series done
volume by volume), .mgz, .mgh, .nrrd and DICOM series folders) or a CSV list with columns
input[,output,scale]. --interp, --clip-to-input-range, --reference and --no-keep-samples mean
what they mean for upsample (the same code); a CSV row's scale replaces --reference for it.

The model loads once per worker. A broken input is reported and skipped; the exit code is 1
if any input failed, 0 otherwise. Each output gets a sidecar JSON (input sha256, model
sha256, options) written last, so a rerun skips complete, up-to-date outputs and a killed
run resumes where it stopped. Outputs mirror the input folders under OUT_DIR as
<name>_<label>.nii.gz (label: x2, x1x1x3, 0.5mm, 256x256x100), .mgz or .nrrd with
--output-format mgh or nrrd, or, with --output-format dicom, as a new derived DICOM series
folder.

BIDS inputs (sub-<label>[_ses-<label>]..._<suffix>.nii[.gz]) make OUT_DIR a BIDS derivative
dataset: sub-01/[ses-1/]anat/sub-01[_ses-1]_res-x2_T1w.nii.gz (res label: the size label
with . written p, e.g. res-0p5mm), a BIDS sidecar (Sources, Resolution, SkullStripped) and
OUT_DIR/dataset_description.json (GeneratedBy, SourceDatasets); --no-bids for plain names.
A BIDS dataset's derivatives/, sourcedata/ and code/ folders are not walked. The report (default OUT_DIR/batch_report.json)
lists every input with its status, output, shapes, spacing, backend, time and error.

Nothing is overwritten without --force except this batch's own earlier outputs (their sidecar
names the same input); an input is never overwritten. Folder walks skip OUT_DIR. A CSV's
relative outputs are relative to OUT_DIR and must stay inside it (--allow-outside-output-dir
to allow other paths); two rows on one output stop the batch before any work.

Examples:

\b
  arssr-rt batch scans/ -o sr/ --scale 2 --jobs 2 --qc
  arssr-rt batch list.csv -o sr/ --voxel-size 0.7 --report sr/report.json
  arssr-rt batch bids_dataset/ -o bids_dataset/derivatives/arssr-rt --voxel-size 0.5
  arssr-rt batch dicom_study/ -o sr/ --scale 1,1,3 --output-format dicom
  arssr-rt batch scans/ -o sr/ --scale 2 --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT
  arssr-rt batch scans/ -o sr/ --scale 2 --ray --ray-address ray://head:10001
  arssr-rt batch flair/ -o on_t1/ --reference t1.nii.gz --clip-to-input-range
  arssr-rt batch labels/ -o sr/ --scale 2 --interp nearest
"""

TRITON_HELP = """\
Write a Triton Inference Server model repository for a model bundle: the encoder and
decoder as ONNX models with dynamic shapes, and a Python-backend model "arssr" that takes a
volume, its affine and an output shape and does the tiling and trilinear sampling, calling
the two networks through Triton (BLS). See docs/batch.md, "Serving with Triton".

The server's Python environment needs arssr-rt: --wheel copies a wheel of it into the
repository (arssr/wheels/) to pip install there.

Example:

\b
  pip wheel --no-deps -w dist .
  arssr-rt export-triton --model default -o triton_repo --wheel dist/arssr_rt-0.1.0-py3-none-any.whl
  docker run --gpus all -v $PWD/triton_repo:/models nvcr.io/nvidia/tritonserver:<tag>-py3 \\
      bash -c "pip install /models/arssr/wheels/*.whl && tritonserver --model-repository /models"
"""

class BatchFailures(ArssrError):
    """Some inputs failed (each is in the report); the others were processed."""

    exit_code = 1


STATUS_STYLE = {"done": "green", "skipped": "cyan", "failed": "bold red", "pending": "yellow"}


def register(app: typer.Typer) -> None:
    @app.command("batch", help=BATCH_HELP)
    def batch_cmd(
        inputs: List[Path] = typer.Argument(..., help="Files, folders or .csv lists."),
        out_dir: Path = typer.Option(..., "-o", "--output-dir", help="Output folder (created if missing)."),
        scale: Optional[str] = typer.Option(None, "--scale", "-s", help="Scale factor: S or SX,SY,SZ."),
        voxel_size: Optional[str] = typer.Option(None, "--voxel-size", help="Target spacing in mm: V or V1,V2,V3."),
        shape: Optional[str] = typer.Option(None, "--shape", help="Output shape N1,N2,N3."),
        reference: Optional[Path] = typer.Option(None, "--reference", help="Every output takes this image's grid (shape, affine, qform/sform), as in upsample; instead of --scale/--voxel-size/--shape."),
        interp: Optional[str] = typer.Option(None, "--interp", help="model (default) | nearest | linear | cubic, as in upsample (nearest is the default for a NIfTI with intent label)."),
        clip_to_input_range: bool = typer.Option(False, "--clip-to-input-range", help="Clip each output to its input's [min, max]."),
        keep_samples: bool = typer.Option(True, "--keep-samples/--no-keep-samples", help="Model path: output voxels on an input voxel centre keep the acquired value (default)."),
        model: Optional[str] = typer.Option(None, "--model", "-m", help="Model name or bundle directory (default: the embedded default model; bandlimited: the embedded model for 3-D acquisitions at a reduced matrix)."),
        backend: str = typer.Option("auto", "--backend", "-b", help="auto | onnxruntime | torch | openvino | tensorrt | torch-cuda"),
        device: int = typer.Option(0, "--device", help="GPU index for GPU backends."),
        threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads per worker."),
        precision: str = typer.Option("fp32", "--precision", help="fp32 or a faster mode the backend supports."),
        tile: Optional[int] = typer.Option(None, "--tile", help="Encoder tile core size in voxels."),
        dtype: Optional[str] = typer.Option(None, "--dtype", help="Output voxel type (default: follow the input)."),
        jobs: int = typer.Option(1, "--jobs", "-j", help="Worker processes (each loads the model once)."),
        shard: Optional[str] = typer.Option(None, "--shard", help="I/N: process only shard I of N (0-based) of the sorted inputs."),
        report: Optional[Path] = typer.Option(None, "--report", help="Report JSON (default OUT_DIR/batch_report[.shard-I-of-N].json)."),
        force: bool = typer.Option(False, "--force", "-f", help="Redo outputs even when they are up to date, and overwrite files not made by an earlier batch."),
        allow_outside: bool = typer.Option(False, "--allow-outside-output-dir", help="Let a CSV's output column name paths outside OUT_DIR."),
        fail_fast: bool = typer.Option(False, "--fail-fast", help="Stop at the first failed input."),
        qc: bool = typer.Option(False, "--qc", help="Write a QC montage PNG next to each output."),
        output_format: str = typer.Option("nifti", "--output-format", help="nifti | mgh (.mgz) | nrrd | dicom (a new derived series)."),
        as_intensity: bool = typer.Option(False, "--as-intensity", help="Super-resolve inputs that look like label maps as intensities anyway."),
        no_bids: bool = typer.Option(False, "--no-bids", help="Plain <name>_<label>.nii.gz outputs for BIDS inputs too (no BIDS derivative dataset)."),
        ray: bool = typer.Option(False, "--ray", help="Run on a Ray cluster (local instance, or $RAY_ADDRESS / --ray-address)."),
        ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster address, e.g. ray://head:10001 (implies --ray)."),
        adapt: bool = typer.Option(False, "--adapt", help="Thick-slice scans: fine-tune a copy of the model on each input first (upsample --adapt; needs arssr-rt[train]; the base model loads once)."),
        adapt_steps: Optional[int] = typer.Option(None, "--adapt-steps", help="--adapt: exactly this many fine-tuning steps per input (default: --adapt-minutes)."),
        adapt_minutes: Optional[float] = typer.Option(None, "--adapt-minutes", help="--adapt: fine-tuning time budget per input in minutes (default 3)."),
        thick_axis: Optional[int] = typer.Option(None, "--thick-axis", help="--adapt: the through-plane array axis (default: the largest spacing)."),
        tta: Optional[int] = tta_option(),
        ensemble: Optional[List[str]] = ensemble_option(),
        adapt_tta: Optional[int] = typer.Option(None, "--adapt-tta", help="--adapt: the same as --tta (kept for older scripts)."),
        adapt_mix: Optional[float] = typer.Option(None, "--adapt-mix", help="--adapt: keep this weight of the adapted model and 1 - it of the model it started from (weight-space mix, WiSE-FT; in (0, 1], default 1: the adapted model; 0 is refused, it would be the starting model)."),
        slice_profile: str = typer.Option("box", "--slice-profile", help="--adapt: box | gaussian | a Gaussian FWHM in mm."),
        slice_gap: float = typer.Option(0.0, "--slice-gap", help="--adapt: gap between slices as a fraction of the slice spacing, in [0, 1)."),
        seed: int = typer.Option(0, "--seed", help="--adapt: seed of the fine-tuning."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only errors (failed inputs) on stderr: no progress, no per-file lines, no summary."),
    ) -> None:
        from rich.console import Console
        from rich.text import Text

        from ..batch.discovery import parse_shard
        from ..batch.runner import BatchOptions, run_batch
        from ..errors import InputError
        from ..options import check_grid_options, check_tile
        from ..resample import parse_interp
        from ..progress import ProgressDisplay, utc_stamp

        check_grid_options(scale, voxel_size, shape, reference)  # one bad option fails the batch once, not every file
        parse_interp(interp)
        check_tile(tile)
        from ..extras import require
        from ..writers import FORMATS, NEEDS

        if output_format not in FORMATS[1:]:  # no "auto": OUT_DIR names have no suffix to go by
            raise InputError(f"--output-format must be one of {', '.join(FORMATS[1:])}, got {output_format!r}")
        if output_format in NEEDS:  # a missing writer fails the batch once, not every file
            require(NEEDS[output_format])
        if jobs < 1:
            raise InputError(f"--jobs must be >= 1, got {jobs}")
        plain_passes, adapt_passes = resolve_passes(tta, adapt_tta, adapt)
        extra_models = check_averaging(plain_passes, ensemble, adapt, interp)
        adapt_opts = None
        if adapt:
            from dataclasses import replace

            from ..adapt.device import adapt_device
            from ..adapt.plan import AdaptOptions, check_adapt_options, given_options
            from ..adapt.session import require_torch
            from .upsample import ADAPT_BACKENDS

            adapt_opts = AdaptOptions(steps=adapt_steps, minutes=adapt_minutes, thick_axis=thick_axis, profile=slice_profile,
                                      gap=slice_gap, seed=seed, **given_options(tta=adapt_passes, mix=adapt_mix))
            check_adapt_options(adapt_opts)
            if backend not in ADAPT_BACKENDS or precision != "fp32":
                raise InputError("--adapt runs each adapted model on the torch or torch-cuda backend in fp32; drop --backend/--precision")
            if ray or ray_address:
                raise InputError("--adapt runs in local workers; drop --ray")
            require_torch("batch")
            adapt_opts = replace(adapt_opts, device=adapt_device(backend, device, "batch"))
        elif adapt_steps is not None or adapt_minutes is not None or thick_axis is not None or adapt_tta is not None or adapt_mix is not None:
            raise InputError("--adapt-steps/--adapt-minutes/--thick-axis/--adapt-tta/--adapt-mix apply to --adapt only; add --adapt or drop them")
        shard_pair = parse_shard(shard) if shard else None
        if report is None:
            name = f"batch_report.shard-{shard_pair[0]}-of-{shard_pair[1]}.json" if shard_pair else "batch_report.json"
            report = out_dir / name
        options = BatchOptions(
            scale=scale, voxel_size=voxel_size, shape=shape, model=model, backend=backend, device=device, threads=threads,
            precision=precision, tile=tile, dtype=dtype, output_format=output_format, qc=qc, force=force,
            allow_outside=allow_outside,
            as_intensity=as_intensity, interp=interp, clip_to_input_range=clip_to_input_range,
            reference=str(reference) if reference is not None else None, keep_samples=keep_samples, bids=not no_bids, adapt=adapt_opts, tta=plain_passes, ensemble=extra_models,
        )
        console = Console(stderr=True, highlight=False)
        # a bar on a terminal; plain timestamped lines in SLURM logs and pipes (progress.py)
        display = ProgressDisplay("batch", console, unit="inputs", quiet=quiet)

        def on_plan(plan) -> None:
            ex = plan.execution
            where = f", Ray {ex['ray_address']}" if ex.get("ray_address") else ""
            display.start(len(plan.items), f"start: {len(plan.items)} inputs -> {out_dir}, {ex.get('runner')}, --jobs {ex.get('jobs')}"
                          f"{where}{f', shard {plan.shard}' if plan.shard else ''}, model {plan.model['name']}, host {ex.get('host')}")

        def on_result(result) -> None:
            print_result(result)
            display.advance(1)  # after the file's own line: the percentage line follows it

        def print_result(result) -> None:
            if quiet and result.status != "failed":  # --quiet: only errors reach stderr
                return
            detail = f" -> {result.output}" if result.output and result.status != "failed" else ""
            timing = f" ({result.seconds:.1f} s)" if result.status == "done" and result.seconds is not None else ""
            message = result.message or ""
            if message.startswith(f"{result.input}: "):  # reader messages name the file already
                message = message[len(result.input) + 2:]
            why = f": {message}" if result.status in ("failed", "done") and message else ""  # done: notes (e.g. --interp nearest chosen)
            # paths and messages are plain text: an install hint's "arssr-rt[eval]" is not markup
            line = Text(f"{utc_stamp()} " if display.plain else "")
            line.append(f"{result.status:>7}", style=STATUS_STYLE.get(result.status, ""))
            line.append(f" {result.input}{detail}{timing}{why}")
            console.print(line, soft_wrap=True)

        with display:
            outcome = run_batch(
                inputs, out_dir, options, jobs=jobs, shard=shard_pair, report_path=report, fail_fast=fail_fast,
                on_plan=on_plan, on_result=on_result, executor="ray" if (ray or ray_address) else "process",
                ray_address=ray_address,
            )
        counts = outcome.counts()
        summary = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
        display.finish(summary or "nothing to do")
        if not quiet:
            console.print(f"{len(outcome.items)} inputs: {summary or 'nothing to do'}; report: {report}", soft_wrap=True, markup=False)
        if counts.get("failed") or counts.get("pending"):
            raise BatchFailures(f"{counts['failed']} of {len(outcome.items)} inputs failed"
                                + (f", {counts['pending']} not run (--fail-fast)" if counts.get("pending") else "") + f"; see {report}")

    @app.command("export-triton", help=TRITON_HELP)
    def export_triton_cmd(
        model: Optional[str] = typer.Option(None, "--model", "-m", help="Model name or bundle directory (default: the embedded default model; bandlimited: the embedded model for 3-D acquisitions at a reduced matrix)."),
        out: Path = typer.Option(..., "-o", "--output", help="Model repository folder to create."),
        precision: str = typer.Option("fp32", "--precision", help="fp32 or fp16 (uses the bundle's fp16 ONNX files)."),
        max_batch_points: int = typer.Option(1 << 17, "--chunk", help="Decoder points per Triton request."),
        tensorrt: bool = typer.Option(False, "--tensorrt", help="Serve the networks through ONNX Runtime's TensorRT accelerator (engines built in the server)."),
        force: bool = typer.Option(False, "--force", "-f", help="Replace an existing repository."),
        tile: int = typer.Option(DEFAULT_TILE, "--tile", help="Encoder tile core (LR voxels per axis) of every encoder call; bounds the TensorRT profile."),
        wheel: Optional[Path] = typer.Option(None, "--wheel", help="arssr-rt wheel (pip wheel --no-deps .) to copy to arssr/wheels/ for pip install in the server."),
    ) -> None:
        from ..batch.triton import export_triton_repository

        path = export_triton_repository(model, out, precision=precision, chunk=max_batch_points, tensorrt=tensorrt, force=force,
                                        tile=tile, wheel=wheel)
        typer.echo(f"Triton model repository written to {path} (models: arssr, arssr_encoder, arssr_decoder)", err=True)
