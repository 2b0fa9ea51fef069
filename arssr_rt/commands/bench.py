"""``arssr-rt bench``: the CPU benchmark (reference torch pipeline vs exact and fast modes).

The benchmark is the ``arssr_rt.bench`` package (also ``python -m arssr_rt.bench``): it needs torch
for the reference and builds its own model bundles in the user cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..extras import require

HELP = """\
Time the straightforward torch pipeline (a), arssr-rt exact mode (b) and fast mode (c) on the
same weights and inputs, each in its own process; print times, speed-ups, points/s, peak RSS
and PSNR against (a), then the fast mode's quality on the held-out volume.

Needs torch (the reference). Examples:

\b
  arssr-rt bench
  arssr-rt bench --cases rdn-48-x2,rdn-32-x4 --threads 2 --json bench.json
"""


def register(app: typer.Typer) -> None:
    @app.command("bench", help=HELP)
    def bench_cmd(
        cases: str = typer.Option("all", "--cases", help="Comma list of case names (default all)."),
        threads: Optional[int] = typer.Option(None, "--threads", help="Threads for every mode (default: all cores)."),
        backend: Optional[str] = typer.Option(None, "--backend", help="Backend of the exact mode (b) (default: openvino if installed, else onnxruntime)."),
        fast_backend: Optional[str] = typer.Option(None, "--fast-backend", help="Backend of the fast mode (c) (default: as --backend)."),
        fast_precision: str = typer.Option("int8", "--fast-precision", help="Precision of the fast mode (c): int8 or bf16."),
        max_memory: float = typer.Option(2.0, "--max-memory", help="GiB budget for (b) and (c)."),
        default_model: Optional[Path] = typer.Option(None, "--default-model", help="Bundle for the default-model cases."),
        no_quality: bool = typer.Option(False, "--no-quality", help="Skip the fast-mode quality check."),
        clock: str = typer.Option("wall", "--clock", help="wall | cpu (process CPU time: steadier on a busy machine, with --threads 1)."),
        e2e: str = typer.Option("rdn-48-x2", "--e2e", help="Cases also timed end to end (arssr-rt upsample vs the authors'-style script, fresh processes), or none."),
        json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the results as JSON."),
    ) -> None:
        require("torch")
        from ..bench import cpu

        argv = ["--cases", cases, "--fast-precision", fast_precision, "--max-memory", str(max_memory), "--clock", clock, "--e2e", e2e]
        if backend:
            argv += ["--backend", backend]
        if fast_backend:
            argv += ["--fast-backend", fast_backend]
        if threads:
            argv += ["--threads", str(threads)]
        if default_model:
            argv += ["--default-model", str(default_model)]
        if no_quality:
            argv.append("--no-quality")
        if json_out:
            argv += ["--json", str(json_out)]
        code = cpu.main(argv)
        if code:
            raise typer.Exit(code)
