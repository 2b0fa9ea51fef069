"""The ``evaluate --adapt`` table: baselines, the default model and the adapted model side by side.

One line per (volume, degradation, scale), head mask: PSNR and SSIM of tricubic, sinc, the
model as shipped and the model adapted to that LR volume, and the adapted model's gain over
the shipped model and over the better classical baseline (per metric). The Markdown and the
terminal table share the cells, as the main tables do.
"""

from __future__ import annotations

from typing import Any, Sequence

from .runner import EvalRow

HEADERS = ("volume", "degradation", "scale", "PSNR tricubic", "PSNR sinc", "PSNR default", "PSNR adapted",
           "ΔPSNR vs default", "ΔPSNR vs best", "SSIM tricubic", "SSIM sinc", "SSIM default", "SSIM adapted",
           "ΔSSIM vs default", "ΔSSIM vs best", "steps", "adapt s")


def _f(value: float | None, digits: int, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def adapt_cells(rows: Sequence[EvalRow], region: str = "head") -> list[list[str]]:
    """Formatted cells of the rows that have adapted scores."""
    from .report import degradation_label

    cells = []
    for row in rows:
        if row.adapted is None:
            continue
        line = [row.volume, degradation_label(row), row.scale]
        for metric, digits in ((f"psnr_{region}", 2), (f"ssim_{region}", 4)):
            tri, sinc = row.baseline(metric, "tricubic"), row.baseline(metric, "sinc")
            model = float(getattr(row.model, metric)) if row.model else None
            adapted = float(getattr(row.adapted, metric))
            best = max(v for v in (tri, sinc) if v is not None)
            line += [_f(tri, digits), _f(sinc, digits), _f(model, digits), _f(adapted, digits),
                     _f(adapted - model if model is not None else None, digits, True), _f(adapted - best, digits, True)]
        line += [str(row.adapt_steps or "-"), _f(row.adapt_seconds, 0)]
        cells.append(line)
    return cells


def adapt_markdown(rows: Sequence[EvalRow], region: str = "head") -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(c) + " |" for c in adapt_cells(rows, region)]
    return "\n".join(lines) + "\n"


def adapt_rich(rows: Sequence[EvalRow], region: str = "head") -> Any:
    from rich.table import Table

    table = Table(title=f"adapted vs default vs classical ({'head mask' if region == 'head' else 'whole volume'})")
    for h in HEADERS:
        table.add_column(h, justify="left" if h in ("volume", "degradation", "scale") else "right")
    for c in adapt_cells(rows, region):
        table.add_row(*c)
    return table
