"""``arssr-rt evaluate``: the model against the classical baselines on simulated low-resolution scans."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from .averaging import check_averaging, ensemble_option, resolve_passes, tta_option

from ..degrade import DEFAULT_SNR, DEGRADATIONS

HELP = f"""\
Down-sample each HR volume, up-sample it with the model and with both classical baselines
(tricubic B-spline and zero-filled k-space "sinc", the scanner's own interpolation) onto the
same HR grid, and score all against HR: PSNR and SSIM (3-D, Gaussian window) over the whole
volume and inside a head mask, per degradation and scale, with the model's gain over each
baseline and over the better one ("best", per metric).

The LR volume lies on the centre-aligned grid covering the HR field of view (h = round(H/s)
voxels per axis). Degradations (repeat -d for several): cubic (aliased point sampling),
kspace (magnitude of the central k-space crop), kspace-noise (the crop, complex Gaussian noise,
magnitude: Rician; noise sigma = 99.5th percentile of the HR voxels above 10 % of its range
divided by --snr, default {DEFAULT_SNR:g}; seeded by --seed), gaussian (PSF FWHM = LR spacing),
slice (thick slices along the reduced axes, --slice-profile box|gaussian, thickness = spacing
x (1 - --slice-gap)). PSNR uses the HR range (max - min) as its peak. The table goes to stdout
(--markdown for a Markdown table); --csv/--json/--figure/--montage write files atomically (an existing file only with --force,
never onto an input); the montage shows the first degradation.

Examples:

\b
  arssr-rt evaluate hr.nii.gz --scale 2 --scale 4
  arssr-rt evaluate a.nii.gz b.nii.gz -s 2 -s 3 -s 1,1,3 --degradation kspace --markdown
  arssr-rt evaluate hr.nii.gz -s 2 --model ./my-bundle --csv q.csv --figure q.png --montage m.png
  arssr-rt evaluate hr.nii.gz -s 2 -s 1,1,4 -d kspace -d kspace-noise --snr 30 -d slice --slice-gap 0.2
  arssr-rt evaluate hr.nii.gz -s 2 -s 4 --baseline-only      # tricubic and sinc numbers, no model
  arssr-rt evaluate hr.nii.gz -s 1,1,4 -s 1,1,6 -d slice --adapt --markdown   # + the model adapted to each LR

--adapt (needs arssr-rt[train]; --degradation slice only): for each case, fine-tune a copy of
the model on the simulated thick-slice LR itself, as upsample --adapt does with a real scan
(the degradation's slice profile and gap), and score it next to the shipped model.
"""


def register(app: typer.Typer) -> None:
    @app.command("evaluate", help=HELP)
    def evaluate_cmd(
        hr: list[Path] = typer.Argument(..., help="High-resolution reference volumes (NIfTI; NRRD/DICOM with arssr-rt[io])."),
        scale: list[str] = typer.Option(..., "--scale", "-s", help="Scale S or SX,SY,SZ (array axes); repeat for several."),
        degradation: list[str] = typer.Option(["cubic"], "--degradation", "-d", help=f"How LR is simulated: {' | '.join(DEGRADATIONS)}; repeat for several."),
        snr: Optional[float] = typer.Option(None, "--snr", help=f"kspace-noise: robust HR max / noise sigma (default {DEFAULT_SNR:g}, i.e. 2 % noise)."),
        seed: int = typer.Option(0, "--seed", help="kspace-noise: seed of each case's noise (the same case gives the same noise)."),
        slice_profile: Optional[str] = typer.Option(None, "--slice-profile", help="slice: box (default) | gaussian (FWHM = slice thickness)."),
        slice_gap: Optional[float] = typer.Option(None, "--slice-gap", help="slice: gap between slices as a fraction of the spacing, in [0, 1) (default 0)."),
        model: Optional[str] = typer.Option(None, "--model", "-m", help="Model name or bundle directory (default: the embedded default model; bandlimited: the embedded model for 3-D acquisitions at a reduced matrix)."),
        baseline_only: bool = typer.Option(False, "--baseline-only", help="Score the baselines (tricubic, sinc) only; load no model."),
        backend: str = typer.Option("auto", "--backend", "-b", help="auto | onnxruntime | torch | openvino | tensorrt | torch-cuda"),
        device: int = typer.Option(0, "--device", help="GPU index for GPU backends."),
        threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for CPU backends (default: all cores)."),
        tile: Optional[int] = typer.Option(None, "--tile", help="Encoder tile core size in voxels (default: from memory)."),
        csv_path: Optional[Path] = typer.Option(None, "--csv", help="Write the rows as CSV."),
        json_path: Optional[Path] = typer.Option(None, "--json", help="Write the rows (and the setup) as JSON."),
        figure: Optional[Path] = typer.Option(None, "--figure", help="PNG: PSNR/SSIM gain (head mask) vs scale per degradation."),
        montage: Optional[Path] = typer.Option(None, "--montage", help="PNG: HR | tricubic | model | errors, central slices."),
        montage_scale: Optional[str] = typer.Option(None, "--montage-scale", help="Scale shown in the montage (default: the first --scale)."),
        markdown: bool = typer.Option(False, "--markdown", help="Print a Markdown table instead of the terminal table."),
        region: str = typer.Option("both", "--region", help="Table lines: both | head | whole (files always hold both)."),
        force: bool = typer.Option(False, "--force", "-f", help="Overwrite existing --csv/--json/--figure/--montage files."),
        adapt: bool = typer.Option(False, "--adapt", help="Also score the model adapted to each simulated LR volume (upsample --adapt); slice only."),
        adapt_steps: Optional[int] = typer.Option(None, "--adapt-steps", help="--adapt: fine-tuning steps per case (default: --adapt-minutes)."),
        adapt_minutes: Optional[float] = typer.Option(None, "--adapt-minutes", help="--adapt: fine-tuning time budget per case in minutes (default 3)."),
        adapt_seed: int = typer.Option(0, "--adapt-seed", help="--adapt: seed of the fine-tuning."),
        tta: Optional[int] = tta_option(),
        ensemble: Optional[List[str]] = ensemble_option(),
        adapt_tta: Optional[int] = typer.Option(None, "--adapt-tta", help="--adapt: the same as --tta (kept for older scripts)."),
        adapt_mix: Optional[float] = typer.Option(None, "--adapt-mix", help="--adapt: keep this weight of the adapted model and 1 - it of the model it started from (weight-space mix, WiSE-FT; in (0, 1], default 1: the adapted model; 0 is refused, it would be the starting model)."),
        keep_acquired: bool = typer.Option(False, "--keep-acquired", help="Project the model's (and --adapt's) output onto the acquired data as upsample --keep-acquired does: slice with the degradation's own profile, kspace/kspace-noise with --acquisition kspace (cubic, gaussian: unchanged)."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress lines on stderr."),
    ) -> None:
        from rich.console import Console

        from .. import __version__
        from ..backends.base import BackendOptions
        from ..errors import InputError, OutputError
        from ..evaluation.report import describe_setup, markdown_table, rich_table, write_csv, write_figure, write_json, write_montage
        from ..evaluation.case import DegradationSpec
        from ..evaluation.runner import ScaleOutputs, evaluate_volume, parse_scales, scale_label

        # every cheap check before any model load or compute
        scales = parse_scales(scale)
        kinds = list(dict.fromkeys(degradation))
        for kind in kinds:
            if kind not in DEGRADATIONS:
                raise InputError(f"--degradation must be one of {', '.join(DEGRADATIONS)}, got {kind!r}")
        if snr is not None and "kspace-noise" not in kinds:
            raise InputError("--snr applies to --degradation kspace-noise only; add it or drop --snr")
        if (slice_profile is not None or slice_gap is not None) and "slice" not in kinds:
            raise InputError("--slice-profile/--slice-gap apply to --degradation slice only; add it or drop them")
        specs = [DegradationSpec(k, snr=snr if k == "kspace-noise" else None, seed=seed,
                                 profile=slice_profile if k == "slice" else None, gap=slice_gap if k == "slice" else None) for k in kinds]
        if keep_acquired and (not {"slice", "kspace", "kspace-noise"} & set(kinds) or baseline_only):
            raise InputError("--keep-acquired projects the model's output onto the acquired data: it needs --degradation slice, "
                             "kspace or kspace-noise and a model")
        plain_passes, adapt_passes = resolve_passes(tta, adapt_tta, adapt)
        extra_models = check_averaging(plain_passes, ensemble, adapt, None)
        adapt_opts = None
        if adapt:
            from dataclasses import replace

            from ..adapt.device import adapt_device
            from ..adapt.plan import AdaptOptions, check_adapt_options, given_options
            from ..adapt.session import require_torch

            if baseline_only:
                raise InputError("--adapt fine-tunes the model; it does not go with --baseline-only")
            if kinds != ["slice"]:
                raise InputError("--adapt evaluates thick-slice scans: use --degradation slice (only)")
            adapt_opts = AdaptOptions(steps=adapt_steps, minutes=adapt_minutes, seed=adapt_seed,
                                      **given_options(tta=adapt_passes, mix=adapt_mix))
            check_adapt_options(adapt_opts)
            require_torch("evaluate")
            adapt_opts = replace(adapt_opts, device=adapt_device(backend, device, "evaluate"))
        elif adapt_steps is not None or adapt_minutes is not None or adapt_tta is not None or adapt_mix is not None:
            raise InputError("--adapt-steps/--adapt-minutes/--adapt-tta/--adapt-mix apply to --adapt only; add --adapt or drop them")
        shown = scale_label(parse_scales([montage_scale])[0]) if montage_scale else scale_label(scales[0])
        regions = {"both": ("head", "whole"), "head": ("head",), "whole": ("whole",)}.get(region)
        if regions is None:
            raise InputError(f"--region must be both, head or whole, got {region!r}")
        if montage is not None and shown not in {scale_label(s) for s in scales}:
            raise InputError(f"--montage-scale {shown} is not one of the --scale values")
        for path in hr:
            if not path.exists():
                raise InputError(f"{path}: no such file or folder")
        from ..outputs import check_output, normalized

        seen: dict = {}
        for flag, path in (("--csv", csv_path), ("--json", json_path), ("--figure", figure), ("--montage", montage)):
            if path is None:
                continue
            check_output(path, inputs=hr, force=force)
            if normalized(path) in seen:
                raise OutputError(f"{path}: given to both {seen[normalized(path)]} and {flag}; give each its own file")
            seen[normalized(path)] = flag

        err = Console(stderr=True, soft_wrap=True, markup=False)  # file names may hold [ ]
        upsampler = None
        if not baseline_only:
            from ..pipeline import VolumeEngine

            upsampler = VolumeEngine(model, backend, BackendOptions(device=device, threads=threads), tile=tile, tta_passes=plain_passes,
                                     ensemble=extra_models)
        kept: list[ScaleOutputs] = []

        def keep(outputs: ScaleOutputs) -> None:
            if montage is not None and outputs.row.scale == shown and outputs.row.degradation == kinds[0]:
                kept.append(outputs)
            if not quiet:
                seconds = outputs.row.model_seconds
                err.print(f"  {outputs.row.volume} {outputs.row.degradation} {outputs.row.scale} done" + (f" (model {seconds:.1f} s)" if seconds else ""))

        rows = []
        try:
            for path in hr:
                if not quiet:
                    err.print(f"evaluating {path} ({', '.join(sp.label() for sp in specs)})")
                rows += evaluate_volume(path, scales, specs, upsampler, keep, adapt=adapt_opts, keep_acquired=keep_acquired)
        finally:
            if upsampler is not None:
                upsampler.close()

        if adapt_opts is not None:
            from ..evaluation.adapt_report import adapt_markdown, adapt_rich

            if markdown:
                sys.stdout.write(adapt_markdown(rows, regions[0]))
            else:
                out = Console() if Console().is_terminal else Console(width=320)
                out.print(adapt_rich(rows, regions[0]))
        elif markdown:
            sys.stdout.write(markdown_table(rows, regions))
            if not quiet:
                err.print(describe_setup(rows))
        else:
            out = Console()
            if not out.is_terminal:  # piped or captured: do not fold columns at 80 characters
                out = Console(width=320)  # 17 columns, none folded
            out.print(rich_table(rows, regions))
        meta = {
            "model": rows[0].model_name if rows else None,
            "backend": rows[0].backend if rows else None,
            "degradation": kinds[0] if len(kinds) == 1 else kinds,
            "degradations": [{"kind": sp.kind, "label": sp.label(), **sp.fields()} for sp in specs],
            "noise": "kspace-noise: complex Gaussian in the LR image, sigma = 99.5th pct of HR voxels > 10% of range / snr",
            "slice": "slice: thickness = spacing x (1 - gap), box = voxel overlap, gaussian FWHM = thickness",
            "baselines": "tricubic B-spline; sinc = zero-filled k-space; best = the better one per metric",
            "scales": [scale_label(s) for s in scales],
            "volumes": [str(p) for p in hr],
            "data_range": "HR max - min",
            "ssim": "3-D Gaussian window sigma 1.5 (11^3), K1 0.01, K2 0.03",
            "head_mask": "HR > min + 10% of range, dilated 2 voxels, holes filled",
            "arssr_rt_version": __version__,
            "keep_acquired": "model arms projected onto the acquired data (slice: its profile; kspace: its band)" if keep_acquired else False,
        }
        if plain_passes != 1:
            meta["tta"] = f"model arms average {plain_passes} passes over flips (tta.plain_symmetries)"
        if adapt_opts is not None:
            meta["adapt"] = {"steps": adapt_steps, "minutes": adapt_minutes, "seed": adapt_seed, "lr": adapt_opts.lr,
                             "batch": adapt_opts.batch, "tune": adapt_opts.tune, "context": adapt_opts.context,
                             "tta": adapt_opts.tta, "device": adapt_opts.device.partition(":")[0]}
        if upsampler is not None:
            meta["model_meta"] = {k: upsampler.bundle.meta.get(k) for k in ("name", "version", "spec", "training")}
            if upsampler.extra:
                meta["ensemble"] = {"models": upsampler.model_name, "how": "mean of the models' outputs"}
        written = []
        guard = {"force": force, "inputs": hr}
        if csv_path is not None:
            written.append(write_csv(csv_path, rows, **guard))
        if json_path is not None:
            written.append(write_json(json_path, rows, meta, **guard))
        if figure is not None:
            written.append(write_figure(figure, rows, **guard))
        if montage is not None:
            written.append(write_montage(montage, kept, **guard))
        if written and not quiet:
            err.print("wrote " + ", ".join(str(p) for p in written))
