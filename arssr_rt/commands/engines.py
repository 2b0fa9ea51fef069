"""``arssr-rt engines build|list``: TensorRT engines of a bundle, built once per GPU and version."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

ENGINES_HELP = """\
TensorRT engines for the tensorrt backend (needs an NVIDIA GPU and TensorRT 10.x or 11.x:
pip install tensorrt --extra-index-url https://pypi.nvidia.com).

Engines are cached under ~/.cache/arssr-rt/engines ($ARSSR_RT_ENGINE_CACHE), keyed on the
ONNX file's sha256, the TensorRT version, the GPU model and compute capability, the precision
and the shape profiles; an engine that does not match is never loaded. `upsample --backend
tensorrt` builds missing engines itself with the defaults below; `engines build` builds them
ahead of time or with other limits.

Examples:

\b
  arssr-rt engines build --model default --precision fp16
  arssr-rt engines build --model bundles/rdn --tile 64 --max-points 131072 --device 1
  arssr-rt engines list
"""


def _profile_text(role: str, profiles: dict) -> str:
    shapes = {name: s[2] for name, s in profiles.items()}
    if role == "encoder":
        (dims,) = shapes.values()
        return "tile <= " + "x".join(str(d) for d in dims[2:])
    return f"N <= {next(iter(shapes.values()))[0]}"


def register(app: typer.Typer) -> None:
    engines = typer.Typer(help=ENGINES_HELP, no_args_is_help=True, rich_markup_mode=None)
    app.add_typer(engines, name="engines")

    @engines.command("build")
    def build_command(
        model: Annotated[Optional[str], typer.Option("--model", "-m", help="Model name or bundle directory (default: the embedded model).")] = None,
        precision: Annotated[str, typer.Option("--precision", help="fp32 (TF32 off) or fp16 (FP16 flag on TensorRT 10, the fp16 ONNX on 11).")] = "fp32",
        max_points: Annotated[int, typer.Option("--max-points", help="Largest decoder batch (points) the engine accepts.")] = 262144,
        tile: Annotated[int, typer.Option("--tile", help="Encoder tile core edge (LR voxels); the engine takes tile + 2*(receptive radius + 1).")] = 96,
        device: Annotated[int, typer.Option("--device", help="CUDA device index to build for.")] = 0,
        cache_dir: Annotated[Optional[Path], typer.Option("--cache-dir", help="Engine cache folder.")] = None,
        rebuild: Annotated[bool, typer.Option("--rebuild", help="Build even when a matching engine is cached.")] = False,
    ) -> None:
        """Build (or find) the encoder and decoder engines of a bundle for one GPU."""
        from ..bundle import resolve_model
        from ..engines.builder import BuildSettings, encoder_edge, ensure_engines
        from ..engines.cache import EngineCache
        from ..engines.device import CudaRuntime
        from ..engines.gpu_probe import require_gpu
        from ..extras import require

        bundle = resolve_model(model)
        settings = BuildSettings(precision=precision, max_points=max_points, tile=tile)
        gpu = require_gpu(device)  # before any TensorRT object: without a GPU TensorRT crashes later
        trt = require("tensorrt")
        CudaRuntime(device)  # make the chosen GPU current for the builder
        cache = EngineCache(cache_dir)
        edge = encoder_edge(bundle, tile)
        typer.echo(f"{bundle.name}: TensorRT {trt.__version__} on GPU {device} {gpu.name} ({gpu.sm}), {precision}, "
                   f"encoder tile <= {edge}^3, decoder N <= {max_points}", err=True)
        for role, (entry, built) in ensure_engines(trt, bundle, settings, gpu, cache, rebuild=rebuild, exact=True).items():
            what = f"built in {entry.meta.get('build_seconds', '?')} s" if built else "cached"
            typer.echo(f"{role}: {entry.engine_path} ({entry.meta.get('engine_bytes', 0) / 1e6:.1f} MB, {what})")

    @engines.command("list")
    def list_command(
        cache_dir: Annotated[Optional[Path], typer.Option("--cache-dir", help="Engine cache folder.")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the sidecars as JSON.")] = False,
    ) -> None:
        """List cached engines with the key each one is valid for (no GPU or TensorRT needed)."""
        from ..engines.cache import EngineCache

        cache = EngineCache(cache_dir)
        entries = list(cache.entries())
        if as_json:
            typer.echo(json.dumps([{**e.meta, "engine_path": str(e.engine_path)} for e in entries], indent=2, sort_keys=True))
            return
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        # markup=False: cache paths and model names are text, "[...]" in them is not a style
        console = Console(markup=False) if sys.stdout.isatty() else Console(width=200, markup=False)
        if not entries:
            console.print(f"no cached engines in {cache.root}", highlight=False)
            return
        table = Table(title=Text(f"TensorRT engines in {cache.root}"))
        for col in ("role", "model", "precision", "TensorRT", "GPU", "shapes", "MB", "created", "file"):
            table.add_column(col, overflow="fold")
        for e in entries:
            k = e.key
            cells = (k.role, str(e.meta.get("model", "?")), k.precision, k.trt_version, f"{k.gpu_name} ({k.gpu_sm})",
                     _profile_text(k.role, k.profiles), f"{e.meta.get('engine_bytes', 0) / 1e6:.1f}",
                     str(e.meta.get("created", "?")), e.engine_path.name)
            table.add_row(*(Text(c) for c in cells))
        console.print(table)
