"""Evaluation reports: a terminal table, a Markdown table, CSV/JSON files and two PNG figures.

Every writer is atomic (temp file in the target folder + ``os.replace``), so a report file is
either the previous one or the complete new one. Numbers are formatted once
(``table_cells``) for both tables, so the README table is the terminal table.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..atomic import atomic_write
from ..errors import OutputError
from ..extras import require
from ..geometry import spacing_of
from .case import DegradationSpec
from .runner import EvalRow, ScaleOutputs

HEADERS = ("volume", "scale", "LR shape", "region", "PSNR tricubic", "PSNR model", "ΔPSNR tricubic",
           "SSIM tricubic", "SSIM model", "ΔSSIM tricubic", "PSNR sinc", "ΔPSNR sinc", "ΔPSNR best",
           "SSIM sinc", "ΔSSIM sinc", "ΔSSIM best", "degradation")
GAIN_COLUMNS = (6, 9, 11, 12, 14, 15)
REGION_LABELS = {"head": "head mask", "whole": "whole volume"}
REGIONS = ("head", "whole")


def _fmt(value: float | None, digits: int, signed: bool = False) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def degradation_label(row: EvalRow) -> str:
    """``kspace-noise (snr 50, seed 0)``, ``slice (box, gap 0)`` or the kind, from a row's fields."""
    spec = DegradationSpec(row.degradation, snr=row.snr, seed=row.seed or 0, profile=row.slice_profile, gap=row.slice_gap)
    return spec.label()


def table_cells(rows: Sequence[EvalRow], regions: Sequence[str] = REGIONS) -> list[list[str]]:
    """Formatted cells, one line per row and region (head mask first, then whole volume).

    The first ten columns are the tricubic-only table of earlier versions, in the same order;
    the sinc baseline, the gains over it and over the better baseline ("best", per metric)
    and the degradation follow.
    """
    cells = []
    for row in rows:
        for region in regions:
            p, s = f"psnr_{region}", f"ssim_{region}"
            cells.append([
                row.volume, row.scale, row.lr_shape, REGION_LABELS[region],
                _fmt(getattr(row.tricubic, p), 2), _fmt(getattr(row.model, p) if row.model else None, 2), _fmt(row.gain(p), 2, True),
                _fmt(getattr(row.tricubic, s), 4), _fmt(getattr(row.model, s) if row.model else None, 4), _fmt(row.gain(s), 4, True),
                _fmt(row.baseline(p, "sinc"), 2), _fmt(row.gain(p, "sinc"), 2, True), _fmt(row.gain(p, "best"), 2, True),
                _fmt(row.baseline(s, "sinc"), 4), _fmt(row.gain(s, "sinc"), 4, True), _fmt(row.gain(s, "best"), 4, True),
                degradation_label(row),
            ])
    return cells


def describe_setup(rows: Sequence[EvalRow]) -> str:
    """One line saying what was compared (model, backend, degradations)."""
    if not rows:
        return "no results"
    first = rows[0]
    model = f"model {first.model_name} [{first.backend}]" if first.model_name else "baselines only (no model)"
    kinds = ", ".join(dict.fromkeys(degradation_label(r) for r in rows))
    return (f"{model}; degradation {kinds}; baselines tricubic and zero-filled k-space (sinc), best = the better one "
            "per metric; PSNR data range = HR max - min")


def rich_table(rows: Sequence[EvalRow], regions: Sequence[str] = REGIONS) -> Any:
    """A rich Table for the terminal (numbers right-aligned, gains coloured)."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(describe_setup(rows)), title_justify="left")
    for i, header in enumerate(HEADERS):
        table.add_column(header, justify="right" if 4 <= i < len(HEADERS) - 1 else "left", no_wrap=True)
    for cells in table_cells(rows, regions):
        styled = list(cells)
        for i in GAIN_COLUMNS:
            if cells[i].startswith("+"):
                styled[i] = f"[green]{cells[i]}[/green]"
            elif cells[i].startswith("-") and cells[i] != "-":
                styled[i] = f"[red]{cells[i]}[/red]"
        table.add_row(*styled)
    return table


def markdown_table(rows: Sequence[EvalRow], regions: Sequence[str] = REGIONS) -> str:
    """A GitHub Markdown table of the same cells as the terminal table."""
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "|".join(["---"] * 4 + ["---:"] * 12 + ["---"]) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_cells(rows, regions)]
    return "\n".join(lines) + "\n"


def _atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp)`` then rename onto ``path``; a failure leaves nothing behind."""
    return atomic_write(path, write)


def _json_safe(value: Any) -> Any:
    """inf/nan are not JSON: identical volumes (PSNR inf) are written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def write_csv(path: str | Path, rows: Sequence[EvalRow]) -> Path:
    """One CSV line per (volume, scale), columns from ``EvalRow.flat`` (empty = no model)."""
    flat = [row.flat() for row in rows]
    buffer = io.StringIO()
    if flat:
        writer = csv.DictWriter(buffer, fieldnames=list(flat[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows([{k: "" if v is None else v for k, v in r.items()} for r in flat])
    return _atomic_write(path, lambda tmp: tmp.write_text(buffer.getvalue(), encoding="utf-8"))


def write_json(path: str | Path, rows: Sequence[EvalRow], meta: dict[str, Any] | None = None) -> Path:
    """``{"meta": {...}, "rows": [flat rows]}``; PSNR inf becomes null."""
    doc = _json_safe({"meta": dict(meta or {}), "rows": [row.flat() for row in rows]})
    text = json.dumps(doc, indent=2, allow_nan=False) + "\n"
    return _atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _new_figure(width: float, height: float, facecolor: str = "white") -> Any:
    """A pyplot-free Agg figure: no global backend state, safe in libraries and threads."""
    require("matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, facecolor=facecolor)
    FigureCanvasAgg(fig)
    return fig


def _scale_volume_ratio(label: str) -> float:
    """Sort key: LR voxel volume / HR voxel volume (x2 -> 8, x1x1x3 -> 3)."""
    factors = [float(v) for v in label[1:].split("x")]
    return float(np.prod(factors * 3 if len(factors) == 1 else factors))


def _gain_series(rows: Sequence[EvalRow], metric: str) -> list[tuple[bool, list[float | None]]]:
    """(filled, values) to plot: gains over the best baseline (filled) and over tricubic (hollow), or sinc - tricubic."""
    if all(r.model is not None for r in rows):
        return [(True, [r.gain(metric, "best") for r in rows]), (False, [r.gain(metric, "tricubic") for r in rows])]
    return [(True, [None if r.sinc is None else float(getattr(r.sinc, metric)) - float(getattr(r.tricubic, metric)) for r in rows])]


def write_figure(path: str | Path, rows: Sequence[EvalRow]) -> Path:
    """Gain in PSNR and SSIM (head mask) versus scale, one colour per degradation, one row of plots per volume.

    With a model: filled markers, solid lines = model - the better classical baseline (per
    metric); hollow markers, dotted lines = model - tricubic. Baselines only: sinc - tricubic.
    Scales are placed in order of the LR voxel volume they imply and labelled as requested, so
    isotropic and thick-slice (x1x1x3) factors share one axis; lines join isotropic scales
    only, per-axis scales are square markers.
    """
    volumes = list(dict.fromkeys(r.volume for r in rows))
    labels = sorted(dict.fromkeys(r.scale for r in rows), key=_scale_volume_ratio)
    position = {label: i for i, label in enumerate(labels)}
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive"]
    with_model = all(r.model is not None for r in rows)
    fig = _new_figure(10.0, 3.4 * max(1, len(volumes)) + 0.4)
    axes = fig.subplots(max(1, len(volumes)), 2, squeeze=False)
    for v, volume in enumerate(volumes):
        mine = [r for r in rows if r.volume == volume]
        kinds = list(dict.fromkeys(degradation_label(r) for r in mine))
        for c, (metric, unit) in enumerate((("psnr_head", "ΔPSNR (dB)"), ("ssim_head", "ΔSSIM"))):
            ax = axes[v][c]
            ax.axhline(0.0, color="black", linewidth=0.8)
            for k, kind in enumerate(kinds):
                series = sorted((r for r in mine if degradation_label(r) == kind), key=lambda r: position[r.scale])
                x = np.array([position[r.scale] for r in series])
                iso = np.array([r.scale.count("x") == 1 for r in series], dtype=bool)
                colour = colours[k % len(colours)]
                for filled, values in _gain_series(series, metric):
                    y = np.array([np.nan if g is None else g for g in values], dtype=np.float64)
                    style = {"color": colour, "markerfacecolor": colour if filled else "none", "linewidth": 1.6 if filled else 0.9}
                    ax.plot(x[iso], y[iso], "o" + ("-" if filled else ":"), label=kind if filled else None, **style)
                    ax.plot(x[~iso], y[~iso], "s", **style)
            ax.set_xticks(np.arange(len(labels)))
            ax.set_xticklabels(labels)
            ax.set_xlabel("scale")
            ax.set_ylabel(f"{unit}, head mask")
            ax.set_title(volume, fontsize=10)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
    key = ("model gain: filled = over the better baseline (tricubic or sinc), hollow = over tricubic" if with_model
           else "no model: sinc - tricubic")
    fig.suptitle(key, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return _atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def _ras_slices(data: np.ndarray, affine: np.ndarray) -> tuple[list[np.ndarray], list[float]]:
    """Central sagittal, coronal and axial slices in RAS+ display orientation, with aspects."""
    orientations = require("nibabel.orientations")
    ornt = orientations.io_orientation(affine)
    ras = orientations.apply_orientation(data, ornt)
    spacing = spacing_of(affine)
    sx, sy, sz = (spacing[int(a)] for a in np.argsort(ornt[:, 0]))
    cx, cy, cz = (n // 2 for n in ras.shape)
    return [ras[cx, :, :].T, ras[:, cy, :].T, ras[:, :, cz].T], [sz / sy, sz / sx, sy / sx]


def write_montage(path: str | Path, outputs: Sequence[ScaleOutputs]) -> Path:
    """HR | tricubic | model | |tricubic - HR| | |model - HR|, three views per volume.

    Grey panels share the HR's 0.5-99.5 percentile window; both error panels share one colour
    scale (the larger 99.5th percentile of the two errors), so the darker one is the better one.
    """
    if not outputs:
        raise OutputError(f"{path}: nothing to draw")
    with_model = all(o.model is not None for o in outputs)
    columns = ["HR", "tricubic"] + (["model"] if with_model else []) + ["|tricubic - HR|"] + (["|model - HR|"] if with_model else [])
    n_rows = 3 * len(outputs)
    fig = _new_figure(2.2 * len(columns), 2.3 * n_rows, facecolor="black")
    axes = fig.subplots(n_rows, len(columns), squeeze=False)
    for v, out in enumerate(outputs):
        images = {"HR": out.hr, "tricubic": out.tricubic, "|tricubic - HR|": np.abs(out.tricubic - out.hr)}
        if with_model:
            assert out.model is not None
            images.update({"model": out.model, "|model - HR|": np.abs(out.model - out.hr)})
        vmin, vmax = (float(x) for x in np.percentile(out.hr, [0.5, 99.5]))
        emax = max(float(np.percentile(images[c], 99.5)) for c in columns if c.startswith("|")) or 1.0
        for c, column in enumerate(columns):
            slices, aspects = _ras_slices(images[column], out.affine)
            is_error = column.startswith("|")
            for k, (view, panel, aspect) in enumerate(zip(("sagittal", "coronal", "axial"), slices, aspects)):
                ax = axes[3 * v + k][c]
                ax.imshow(panel, cmap="magma" if is_error else "gray", vmin=0.0 if is_error else vmin,
                          vmax=emax if is_error else max(vmax, vmin + 1e-6), origin="lower", aspect=aspect, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if 3 * v + k == 0:
                    ax.set_title(column, color="white", fontsize=10)
                if c == 0:
                    ax.set_ylabel(f"{out.row.volume}\n{view}" if k == 0 else view, color="white", fontsize=9)
    first = outputs[0].row
    fig.suptitle(f"{first.scale}, {first.degradation} degradation" + (f", model {first.model_name}" if with_model else ""),
                 color="white", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return _atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", facecolor=fig.get_facecolor()))
