"""``arssr-rt upsample``: one volume in, one super-resolved volume out."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import List, Optional

import typer

from .averaging import check_averaging, ensemble_option, resolve_passes, tta_option

from ..backends.base import BackendOptions
from ..pipeline import DEFAULT_CHUNK, DEFAULT_MAX_MEMORY, DEFAULT_MAX_OUTPUT_VOXELS

HELP = """\
Super-resolve a 3-D volume or a 4-D series (NIfTI, FreeSurfer MGZ/MGH; NRRD and DICOM folders
with the io extra) at any scale; a 4-D series is done volume by volume into one 4-D NIfTI.

Give exactly one of --scale (2.5 or per axis 1,1,3), --voxel-size (mm, 0.5 or 0.7,0.7,1),
--shape (N1,N2,N3) or --reference REF. The field of view is kept exactly: spacing = old * h / H
and the origin moves to the new first voxel centre, for any orientation. --reference takes
REF's grid instead (shape, affine, qform/sform; like flirt -ref or mri_convert -rl): an oblique
or shifted grid is super-resolved at REF's spacing on the input's grid, then resampled onto it
(cubic B-spline; outside the input's field of view: 0). Where an output voxel centre falls on
an input voxel centre the acquired value is kept (--scale 1 is the identity). Intensities come back in the
input's units and voxel type (integer types rounded and clipped; --dtype float32 to keep
fractions). Nothing is overwritten without --force; the write is atomic.

Examples:

\b
  arssr-rt upsample t1.nii.gz --scale 2                 # -> t1_x2.nii.gz next to the input
  arssr-rt upsample thick.nii.gz --scale 1,1,3 -o iso.nii.gz
  arssr-rt upsample t1.nii.gz --voxel-size 0.5 --dtype float32 --force
  arssr-rt upsample t1.nii.gz --scale 2 --backend onnxruntime --threads 2 --tile 64
  arssr-rt upsample t1.nii.gz --scale 1,1,2 --output-format dicom -o t1_sr_dicom
  arssr-rt upsample flair.nii.gz --reference t1.nii.gz -o flair_on_t1.nii.gz
  arssr-rt upsample t1.nii.gz --scale 2 -o t1_x2.nrrd   # 3D Slicer: gzip NRRD in LPS
  arssr-rt upsample thick.nii.gz --voxel-size 0.8 --adapt --save-adapted thick_model   # learn from this scan
  arssr-rt upsample thick_run2.nii.gz --voxel-size 0.8 --model thick_model              # its other series

--adapt (thick-slice scans; needs arssr-rt[train]): fine-tune a copy of the model on the scan
itself (in-plane crops degraded along one in-plane axis with --slice-profile and --slice-gap
at the through-plane ratio), then super-resolve with it on the torch backend. It runs on GPU
--device with --backend torch-cuda (an error when torch sees no GPU) or --backend auto when
torch sees one, else on the CPU.
"""


ADAPT_BACKENDS = ("auto", "torch", "torch-cuda")  # where an adapted copy can run (adapt/device.py)


def register(app: typer.Typer) -> None:
    @app.command("upsample", help=HELP)
    def upsample_cmd(
        input: Path = typer.Argument(..., help="Input volume (.nii, .nii.gz, 4-D series, .mgz, .mgh; .nrrd or a DICOM series folder with arssr-rt[io])."),
        output: Optional[Path] = typer.Option(None, "-o", "--output", help="Output .nii/.nii.gz, .mgz/.mgh or .nrrd (with arssr-rt[io]), or a DICOM series folder with --output-format dicom (default <stem>_<label>.nii.gz next to the input)."),
        scale: Optional[str] = typer.Option(None, "--scale", "-s", help="Scale factor: S or SX,SY,SZ (array axes)."),
        voxel_size: Optional[str] = typer.Option(None, "--voxel-size", help="Target spacing in mm: V or V1,V2,V3."),
        shape: Optional[str] = typer.Option(None, "--shape", help="Output shape N1,N2,N3."),
        reference: Optional[Path] = typer.Option(None, "--reference", help="Take the output grid (shape, affine, qform/sform) from this image (NIfTI, MGZ, NRRD, DICOM; a 4-D one: its first three axes); instead of --scale/--voxel-size/--shape."),
        model: Optional[str] = typer.Option(None, "--model", "-m", help="Model name or bundle directory (default: the embedded default model; bandlimited: the embedded model for 3-D acquisitions at a reduced matrix)."),
        backend: str = typer.Option("auto", "--backend", "-b", help="auto | onnxruntime | torch | openvino | tensorrt | torch-cuda"),
        device: int = typer.Option(0, "--device", help="GPU index for GPU backends."),
        threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for CPU backends (default: all cores)."),
        precision: str = typer.Option("fp32", "--precision", help="fp32 (exact) or a faster mode the backend supports (fp16, bf16, int8)."),
        tile: Optional[int] = typer.Option(None, "--tile", help="Encoder tile core size in voxels (default: from --max-memory)."),
        chunk: Optional[int] = typer.Option(None, "--chunk", help=f"Output points sampled + decoded per step (default {DEFAULT_CHUNK:,} on the CPU path, 262,144 on a GPU); each network call takes at most the backend's declared maximum (onnxruntime 2,048, openvino 4,096 rows, TensorRT its engine profile)."),
        max_memory: str = typer.Option(f"{DEFAULT_MAX_MEMORY / 1024**3:g}", "--max-memory", help="GiB of peak memory for the whole run: sets the tile size and keeps a large output in a temporary file."),
        normalization: str = typer.Option("minmax", "--normalization", help="minmax | percentile (0.5-99.5, clipped)."),
        dtype: Optional[str] = typer.Option(None, "--dtype", help="Output voxel type (default: follow the input), e.g. float32."),
        max_output_voxels: int = typer.Option(DEFAULT_MAX_OUTPUT_VOXELS, "--max-output-voxels", help="Refuse outputs with more voxels than this."),
        force: bool = typer.Option(False, "--force", "-f", help="Overwrite an existing output."),
        output_format: str = typer.Option("auto", "--output-format", help="auto (from the -o suffix) | nifti | mgh | nrrd | dicom (a new derived series folder)."),
        as_intensity: bool = typer.Option(False, "--as-intensity", help="Super-resolve an image that looks like a label map (intent label, or piecewise-constant whole numbers) as intensities anyway."),
        keep_acquired: bool = typer.Option(False, "--keep-acquired", help="Data consistency for thick-slice scans: project the output so that its average over each acquired voxel's slice profile equals that voxel (exact in float output: use --dtype float32)."),
        acquisition: str = typer.Option("slices", "--acquisition", help="How the input was acquired, for --keep-acquired: slices (thick slices with --slice-profile/--slice-gap) | kspace (a smaller acquisition matrix, zero-filled or not: the output keeps the input's own k-space inside the acquired band, the model adds what lies beyond it)."),
        slice_profile: str = typer.Option("box", "--slice-profile", help="box | gaussian (FWHM = slice thickness): the acquired slice profile for --keep-acquired and --adapt; with --adapt also a number, the Gaussian FWHM in mm."),
        slice_gap: float = typer.Option(0.0, "--slice-gap", help="Gap between acquired slices, as a fraction of the slice spacing (0 <= gap < 1), for --keep-acquired and --adapt."),
        adapt: bool = typer.Option(False, "--adapt", help="Thick-slice scans: fine-tune a copy of the model on this scan's in-plane detail first (needs arssr-rt[train])."),
        adapt_steps: Optional[int] = typer.Option(None, "--adapt-steps", help="--adapt: exactly this many fine-tuning steps (reproducible with --seed; default: as many as --adapt-minutes allow)."),
        adapt_minutes: Optional[float] = typer.Option(None, "--adapt-minutes", help="--adapt: time budget of the fine-tuning in minutes (default 3, sized for 2 CPU cores)."),
        thick_axis: Optional[int] = typer.Option(None, "--thick-axis", help="--adapt: the through-plane array axis (default: the largest spacing, if >= 1.5x the in-plane one)."),
        tta: Optional[int] = tta_option(),
        ensemble: Optional[List[str]] = ensemble_option(),
        adapt_tta: Optional[int] = typer.Option(None, "--adapt-tta", help="--adapt: the same as --tta (kept for older scripts)."),
        adapt_mix: Optional[float] = typer.Option(None, "--adapt-mix", help="--adapt: keep this weight of the adapted model and 1 - it of the model it started from (weight-space mix, WiSE-FT; in (0, 1], default 1: the adapted model; 0 is refused, it would be the starting model)."),
        save_adapted: Optional[Path] = typer.Option(None, "--save-adapted", help="--adapt: also write the adapted model as a bundle folder (reuse with --model DIR)."),
        seed: int = typer.Option(0, "--seed", help="--adapt: seed of the patch draws and the fine-tuning."),
        interp: Optional[str] = typer.Option(None, "--interp", help="model (default) | nearest | linear | cubic: classical resampling on the same grid, no model (nearest: label maps, the default for a NIfTI with intent label)."),
        keep_samples: bool = typer.Option(True, "--keep-samples/--no-keep-samples", help="Model path: output voxels whose centre is an input voxel centre keep the acquired value (default; off: the network's estimate everywhere)."),
        clip_to_input_range: bool = typer.Option(False, "--clip-to-input-range", help="Clip the output to [input min, input max] (a non-negative input gives a non-negative output)."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
    ) -> None:
        from rich.console import Console

        from ..consistency import KSPACE, check_slice_profile
        from ..errors import InputError
        from ..options import check_grid_options, check_tile, parse_max_memory
        from ..pipeline import upsample_file
        from ..progress import ProgressDisplay
        from ..resample import parse_interp

        check_grid_options(scale, voxel_size, shape, reference)  # bad option text fails before the volume is read
        check_tile(tile)
        parse_interp(interp)
        plain_passes, adapt_passes = resolve_passes(tta, adapt_tta, adapt)
        extra_models = check_averaging(plain_passes, ensemble, adapt, interp)
        if acquisition not in ("slices", "kspace"):
            raise InputError(f"--acquisition must be slices or kspace, got {acquisition!r}")
        if acquisition == "kspace" and not keep_acquired:
            raise InputError("--acquisition kspace says how to keep the acquired data: add --keep-acquired (or drop --acquisition)")
        if acquisition == "kspace" and adapt:
            raise InputError("--adapt learns from thick slices; it does not go with --acquisition kspace")
        profile = KSPACE if acquisition == "kspace" else slice_profile  # what --keep-acquired keeps
        adapt_opts = None
        if adapt:
            from dataclasses import replace

            from ..adapt.device import adapt_device
            from ..adapt.plan import AdaptOptions, check_adapt_options, given_options

            adapt_opts = AdaptOptions(steps=adapt_steps, minutes=adapt_minutes, thick_axis=thick_axis, profile=slice_profile,
                                      gap=slice_gap, seed=seed, **given_options(tta=adapt_passes, mix=adapt_mix))
            check_adapt_options(adapt_opts)
            if interp not in (None, "model"):
                raise InputError(f"--adapt fine-tunes the model; it does not apply to --interp {interp}")
            if backend not in ADAPT_BACKENDS:
                raise InputError(f"--adapt runs the adapted model on the torch or torch-cuda backend, not {backend}; save it with "
                                 "--save-adapted and run that bundle with --model DIR --backend " + backend)
            if precision != "fp32":
                raise InputError("--adapt runs in fp32; drop --precision (or run the --save-adapted bundle with it)")
            adapt_opts = replace(adapt_opts, device=adapt_device(backend, device, "upsample"))
        else:
            given = [flag for flag, v in (("--adapt-steps", adapt_steps), ("--adapt-minutes", adapt_minutes),
                                          ("--thick-axis", thick_axis), ("--adapt-tta", adapt_tta), ("--adapt-mix", adapt_mix), ("--save-adapted", save_adapted)) if v is not None]
            if given:
                raise InputError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to --adapt only; add --adapt or drop {'it' if len(given) == 1 else 'them'}")
            if keep_acquired:
                check_slice_profile(profile, slice_gap)
        max_memory_bytes = parse_max_memory(max_memory)
        console = Console(stderr=True)
        options = BackendOptions(device=device, threads=threads, precision=precision)
        # a bar on a terminal; plain timestamped lines in SLURM logs and pipes (progress.py)
        display = ProgressDisplay("upsampling", console, unit="voxels", quiet=quiet)

        def on_plan(info) -> None:
            if not quiet:  # scripts read this line (which backend "auto" chose)
                console.print(f"backend: {info['backend']}", highlight=False, markup=False)
            if display.plain:
                display.line(f"start: {info['input']} {_shape(info['in_shape'])} ({_mm(info['in_spacing'])} mm) -> "
                             f"{info['output']} {_shape(info['out_shape'])} ({_mm(info['out_spacing'])} mm)"
                             + (f" x {info['volumes']} volumes" if info["volumes"] > 1 else "")
                             + f", backend {info['backend']}, model {info['model']}")

        # --adapt: the fine-tuning's own display (steps and L1), closed when up-sampling starts
        adapting = ProgressDisplay("adapting", console, unit="steps", quiet=quiet) if adapt else None
        adapt_state = {"open": False, "loss": None, "shown": False}

        def on_adapt_step(step: int, total: Optional[int], loss: float) -> None:
            adapt_state["loss"] = loss
            if total is None or adapting is None:
                return  # a time budget: the step count is known after the first timed steps
            if not adapt_state["open"]:
                adapting.__enter__()  # before the upsampling display is entered (progress below)
                adapting.start(total)
                adapt_state["open"] = True
            adapting.advance(step - adapting.done)

        def close_adapting() -> None:
            if adapt_state["open"] and adapting is not None:
                adapting.finish(f"L1 {adapt_state['loss']:.4f}" if adapt_state["loss"] is not None else None)
                adapting.__exit__(None, None, None)
                adapt_state["open"] = False

        stack = contextlib.ExitStack()  # one live display at a time: adapting, then upsampling
        stack.callback(lambda: adapting.__exit__(None, None, None) if adapt_state["open"] and adapting is not None else None)

        def progress(grid):
            close_adapting()
            if not adapt_state["shown"]:
                stack.enter_context(display)
                adapt_state["shown"] = True
            display.start(grid.voxels)
            return display.advance

        with stack:
            result = upsample_file(
                input, output, scale=scale, voxel_size=voxel_size, shape=shape, reference=reference, model=model, backend=backend,
                options=options, tile=tile, chunk=chunk, normalization=normalization, dtype=dtype, force=force, output_format=output_format,
                max_output_voxels=max_output_voxels, progress=progress,
                max_memory=max_memory_bytes, as_intensity=as_intensity,
                keep_acquired=profile if keep_acquired else None, slice_gap=slice_gap,
                interp=interp, clip_to_input_range=clip_to_input_range, keep_samples=keep_samples,
                on_note=lambda line: console.print(line, highlight=False, markup=False, soft_wrap=True),
                on_plan=on_plan,
                adapt=adapt_opts, save_adapted=save_adapted, on_adapt_step=on_adapt_step if adapt else None, tta=plain_passes,
                ensemble=extra_models,
                on_adapt_info=None if quiet else lambda line: console.print(line, highlight=False, markup=False, soft_wrap=True),
            )
            close_adapting()
        display.finish(f"{result.out_path}")
        if not quiet:
            i, o = result.in_shape, result.out_shape
            isp = ",".join(f"{v:.3g}" for v in result.in_spacing)
            osp = ",".join(f"{v:.3g}" for v in result.out_spacing)
            print(
                f"{input} {i[0]}x{i[1]}x{i[2]} ({isp} mm) -> {result.out_path} {o[0]}x{o[1]}x{o[2]} ({osp} mm) "
                f"in {result.seconds:.1f} s [{result.backend}, model {result.model}]",
                file=sys.stderr,
            )


def _shape(shape) -> str:
    return "x".join(str(int(n)) for n in shape)


def _mm(spacing) -> str:
    return ",".join(f"{v:.3g}" for v in spacing)
