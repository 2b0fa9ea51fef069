"""QC montage: does the model output look like the input, only sharper?

Three orthogonal slices through the output's centre (sagittal, coronal, axial), each shown as
input nearest-up-sampled | tricubic | model. All three columns live on the output grid, and
every array is reoriented to the closest RAS+ axes first, so one row shows one world plane in
every column and the display orientation does not depend on how the file stores its axes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .atomic import atomic_write
from .errors import InputError
from .extras import require
from .geometry import output_affine, spacing_of
from .outputs import check_output

VIEWS = ("sagittal", "coronal", "axial")
COLUMNS = ("input (nearest)", "tricubic", "model")
# world-position mismatch (in output voxels) above which OUT is not a resampling of IN
GRID_TOLERANCE = 0.05


def nearest_upsample(data: np.ndarray, out_shape: Sequence[int]) -> np.ndarray:
    """Each output voxel takes the input voxel whose cell contains its centre (FOV-preserving)."""
    out = np.asarray(data)
    for axis, (h, H) in enumerate(zip(data.shape, out_shape)):
        index = np.minimum(((np.arange(H) + 0.5) * h / H).astype(np.int64), h - 1)
        out = np.take(out, index, axis=axis)
    return out


def check_same_field_of_view(in_shape: Sequence[int], in_affine: np.ndarray, out_shape: Sequence[int], out_aff: np.ndarray) -> None:
    """Refuse an output that is not on the FOV-preserving grid of the input (the slices would lie)."""
    expected = output_affine(in_affine, in_shape, out_shape)
    corners = np.array([[i, j, k, 1.0] for i in (0, out_shape[0] - 1) for j in (0, out_shape[1] - 1) for k in (0, out_shape[2] - 1)])
    error_mm = np.abs((corners @ np.asarray(out_aff, float).T) - (corners @ expected.T))[:, :3].max()
    if error_mm > GRID_TOLERANCE * min(spacing_of(expected)):
        raise InputError(
            f"the output grid is not a field-of-view-preserving resampling of the input "
            f"(voxel centres off by up to {error_mm:.3g} mm); was it made from this input?"
        )


def _to_ras(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The array with axes permuted/flipped to the closest RAS+ orientation, and its spacing."""
    orientations = require("nibabel.orientations")
    ornt = orientations.io_orientation(affine)
    reoriented = orientations.apply_orientation(data, ornt)
    spacing = spacing_of(affine)
    order = np.argsort(ornt[:, 0])  # input axis that lands on each RAS axis
    return reoriented, tuple(spacing[int(a)] for a in order)  # type: ignore[return-value]


def montage_panels(
    in_data: np.ndarray, in_affine: np.ndarray, out_data: np.ndarray, out_affine: np.ndarray
) -> tuple[dict[tuple[str, str], np.ndarray], dict[str, float]]:
    """The nine 2-D panels (view, column) -> image (rows = display up) and each view's aspect."""
    degrade = require("arssr_rt.degrade")
    out_shape = tuple(int(n) for n in out_data.shape)
    check_same_field_of_view(in_data.shape, in_affine, out_shape, out_affine)
    columns = {
        COLUMNS[0]: nearest_upsample(np.asarray(in_data, np.float32), out_shape),
        COLUMNS[1]: degrade.cubic_resample(in_data, out_shape),
        COLUMNS[2]: np.asarray(out_data, np.float32),
    }
    panels: dict[tuple[str, str], np.ndarray] = {}
    aspects: dict[str, float] = {}
    for column, volume in columns.items():
        ras, (sx, sy, sz) = _to_ras(volume, out_affine)
        cx, cy, cz = (n // 2 for n in ras.shape)
        # transpose so the vertical display axis is S (or A for axial), drawn bottom-up
        panels[("sagittal", column)] = ras[cx, :, :].T
        panels[("coronal", column)] = ras[:, cy, :].T
        panels[("axial", column)] = ras[:, :, cz].T
        aspects.update(sagittal=sz / sy, coronal=sz / sx, axial=sy / sx)
    return panels, aspects


def write_qc_montage(
    path: str | Path,
    in_data: np.ndarray,
    in_affine: np.ndarray,
    out_data: np.ndarray,
    out_affine: np.ndarray,
    title: str = "",
    *,
    force: bool = False,
    inputs: Iterable[str | Path] = (),
) -> Path:
    """Write the 3x3 PNG montage through the output guard, atomically; returns the path."""
    require("matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = check_output(path, inputs=inputs, force=force)
    panels, aspects = montage_panels(in_data, in_affine, out_data, out_affine)
    # one intensity window for every panel, from the input, so differences are real
    vmin, vmax = (float(v) for v in np.percentile(in_data, [0.5, 99.5]))
    if vmax <= vmin:
        vmax = vmin + 1.0
    fig = Figure(figsize=(10.5, 10.5), dpi=100, facecolor="black")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(VIEWS), len(COLUMNS), squeeze=False)
    for r, view in enumerate(VIEWS):
        for c, column in enumerate(COLUMNS):
            ax = axes[r][c]
            ax.imshow(panels[(view, column)], cmap="gray", vmin=vmin, vmax=vmax, origin="lower",
                      aspect=aspects[view], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(column, color="white", fontsize=12)
            if c == 0:
                ax.set_ylabel(view, color="white", fontsize=12)
    in_sp = "x".join(f"{s:.3g}" for s in spacing_of(in_affine))
    out_sp = "x".join(f"{s:.3g}" for s in spacing_of(out_affine))
    shapes = f"{'x'.join(map(str, in_data.shape))} @ {in_sp} mm  ->  {'x'.join(map(str, out_data.shape))} @ {out_sp} mm"
    fig.suptitle(f"{title}\n{shapes}" if title else shapes, color="white", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    atomic_write(path, lambda tmp: fig.savefig(tmp, facecolor=fig.get_facecolor()), suffix=".png")
    return path
