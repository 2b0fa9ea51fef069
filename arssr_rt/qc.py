"""QC montage: does the model output look like the input, only sharper?

Three orthogonal slices through the output's centre (sagittal, coronal, axial), each shown as
input nearest-up-sampled | tricubic | model | model - tricubic. All columns live on the output
grid, and every array is reoriented to the closest RAS+ axes first, so one row shows one world
plane in every column and the display orientation does not depend on how the file stores its
axes. The edge labels (L/R, P/A, I/S) and each row's slice position in mm are read from the
affine of what is displayed, so they name the anatomy whatever the stored order (for an oblique
affine: the closest anatomical axis, said in the title). The difference panel has its own
diverging, zero-centred colour scale: it shows what the network adds beyond interpolation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .atomic import atomic_write
from .errors import InputError, OutputError
from .extras import require
from .geometry import output_affine, spacing_of

VIEWS = ("sagittal", "coronal", "axial")
COLUMNS = ("input (nearest)", "tricubic", "model", "model - tricubic")
DIFFERENCE = COLUMNS[3]
# (horizontal, vertical) RAS array axes of each view's panel; drawn with origin="lower"
VIEW_AXES = {"sagittal": (1, 2), "coronal": (0, 2), "axial": (0, 1)}
NORMAL_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}
OPPOSITE = {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}
WORLD_AXIS = {"R": 0, "L": 0, "A": 1, "P": 1, "S": 2, "I": 2}
OBLIQUE_DEGREES = 1.0  # above this, labels and slice positions are along the closest axes
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


def displayed_affine(affine: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Affine of the reoriented array that the panels show (its index -> world mm)."""
    orientations = require("nibabel.orientations")
    ornt = orientations.io_orientation(affine)
    return np.asarray(affine, float) @ orientations.inv_ornt_aff(ornt, tuple(int(n) for n in shape))


@dataclass(frozen=True)
class ViewLayout:
    """What one row shows: edge labels (anatomical direction at each panel edge) and where."""

    view: str
    left: str
    right: str
    bottom: str
    top: str
    slice_axis: str  # world axis along the slice normal: "x" (R+), "y" (A+) or "z" (S+)
    slice_mm: float  # that world coordinate of the slice centre
    slice_index: int  # index of the slice in the displayed (RAS-reoriented) array

    @property
    def position(self) -> str:
        return f"{self.slice_axis} = {self.slice_mm:+.1f} mm"


def montage_layout(out_affine: np.ndarray, out_shape: Sequence[int]) -> dict[str, ViewLayout]:
    """Edge labels and slice positions of each view, from the affine of the displayed array
    (nibabel's aff2axcodes), so they are right for flipped, permuted and oblique storage."""
    orientations = require("nibabel.orientations")
    shown = displayed_affine(out_affine, out_shape)
    ras_shape = [int(out_shape[int(a)]) for a in np.argsort(orientations.io_orientation(out_affine)[:, 0])]
    codes = orientations.aff2axcodes(shown)
    layout = {}
    for view in VIEWS:
        h, v = VIEW_AXES[view]
        n = NORMAL_AXIS[view]
        centre = np.array([(size - 1) / 2 for size in ras_shape] + [1.0])
        centre[n] = ras_shape[n] // 2
        world = shown @ centre
        axis = WORLD_AXIS[codes[n]]
        layout[view] = ViewLayout(view, OPPOSITE[codes[h]], codes[h], OPPOSITE[codes[v]], codes[v],
                                  "xyz"[axis], float(world[axis]), int(ras_shape[n] // 2))
    return layout


def is_oblique(affine: np.ndarray) -> bool:
    affines = require("nibabel.affines")
    return bool(np.degrees(np.max(np.abs(affines.obliquity(np.asarray(affine, float))))) > OBLIQUE_DEGREES)


def montage_panels(
    in_data: np.ndarray, in_affine: np.ndarray, out_data: np.ndarray, out_affine: np.ndarray
) -> tuple[dict[tuple[str, str], np.ndarray], dict[str, float]]:
    """The nine 2-D panels (view, column) -> image (rows = display up) and each view's aspect."""
    degrade = require("arssr_rt.degrade")
    out_shape = tuple(int(n) for n in out_data.shape)
    check_same_field_of_view(in_data.shape, in_affine, out_shape, out_affine)
    tricubic = np.asarray(degrade.cubic_resample(in_data, out_shape), np.float32)
    model = np.asarray(out_data, np.float32)
    columns = {
        COLUMNS[0]: nearest_upsample(np.asarray(in_data, np.float32), out_shape),
        COLUMNS[1]: tricubic,
        COLUMNS[2]: model,
        DIFFERENCE: model - tricubic,
    }
    panels: dict[tuple[str, str], np.ndarray] = {}
    aspects: dict[str, float] = {}
    for column, volume in columns.items():
        ras, (sx, sy, sz) = _to_ras(volume, out_affine)
        for view in VIEWS:  # the slice montage_layout describes; transposed: vertical = 2nd axis, drawn bottom-up
            index = [slice(None)] * 3
            index[NORMAL_AXIS[view]] = ras.shape[NORMAL_AXIS[view]] // 2  # type: ignore[call-overload]
            panels[(view, column)] = ras[tuple(index)].T
        aspects.update(sagittal=sz / sy, coronal=sz / sx, axial=sy / sx)
    return panels, aspects


def difference_limit(panels: dict[tuple[str, str], np.ndarray]) -> float:
    """Symmetric colour limit of the difference panels: 99.5th percentile of |model - tricubic|."""
    values = np.concatenate([np.abs(panels[(view, DIFFERENCE)]).ravel() for view in VIEWS])
    limit = float(np.percentile(values, 99.5)) if values.size else 0.0
    return limit if limit > 0 else 1.0


def draw_montage(
    in_data: np.ndarray, in_affine: np.ndarray, out_data: np.ndarray, out_affine: np.ndarray, title: str = ""
) -> Any:
    """The montage as a matplotlib Figure (Agg canvas, constrained layout): 3 views x 4 columns,
    one grey colour bar for the intensity columns, one diverging bar for the difference."""
    require("matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels, aspects = montage_panels(in_data, in_affine, out_data, out_affine)
    layout = montage_layout(out_affine, out_data.shape)
    # one intensity window for every image panel, from the input, so differences are real
    vmin, vmax = (float(v) for v in np.percentile(in_data, [0.5, 99.5]))
    if vmax <= vmin:
        vmax = vmin + 1.0
    limit = difference_limit(panels)
    fig = Figure(figsize=(14.0, 10.5), dpi=100, facecolor="black", layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(VIEWS), len(COLUMNS), squeeze=False)
    images = {}
    for r, view in enumerate(VIEWS):
        where = layout[view]
        for c, column in enumerate(COLUMNS):
            ax = axes[r][c]
            style = dict(cmap="RdBu_r", vmin=-limit, vmax=limit) if column == DIFFERENCE else dict(cmap="gray", vmin=vmin, vmax=vmax)
            images[column] = ax.imshow(panels[(view, column)], origin="lower", aspect=aspects[view], interpolation="nearest", **style)
            ax.set_xticks([])
            ax.set_yticks([])
            for x, y, text, ha, va in ((0.02, 0.5, where.left, "left", "center"), (0.98, 0.5, where.right, "right", "center"),
                                       (0.5, 0.02, where.bottom, "center", "bottom"), (0.5, 0.98, where.top, "center", "top")):
                ax.text(x, y, text, transform=ax.transAxes, ha=ha, va=va, color="yellow", fontsize=10, fontweight="bold", gid="orientation",
                        bbox=dict(facecolor="black", alpha=0.6, edgecolor="none", pad=1.0))
            if r == 0:
                ax.set_title(column, color="white", fontsize=12)
            if c == 0:
                ax.set_ylabel(f"{view}\n{where.position}", color="white", fontsize=11)
    for image, targets, label in ((images[COLUMNS[0]], axes[:, :3], "intensity"), (images[DIFFERENCE], axes[:, 3], "model - tricubic")):
        bar = fig.colorbar(image, ax=targets, location="bottom", shrink=0.8, aspect=40)
        bar.set_label(label, color="white")
        bar.ax.tick_params(colors="white")
    in_sp = "x".join(f"{s:.3g}" for s in spacing_of(in_affine))
    out_sp = "x".join(f"{s:.3g}" for s in spacing_of(out_affine))
    shapes = f"{'x'.join(map(str, in_data.shape))} @ {in_sp} mm  ->  {'x'.join(map(str, out_data.shape))} @ {out_sp} mm"
    if is_oblique(out_affine):
        shapes += "  (oblique: labels and positions along the closest anatomical axes)"
    fig.suptitle(f"{title}\n{shapes}" if title else shapes, color="white", fontsize=11)
    return fig


def write_qc_montage(
    path: str | Path,
    in_data: np.ndarray,
    in_affine: np.ndarray,
    out_data: np.ndarray,
    out_affine: np.ndarray,
    title: str = "",
) -> Path:
    """Write the 3x4 PNG montage atomically (temp file + rename); returns the path."""
    require("matplotlib")
    path = Path(path)
    if not path.parent.is_dir():
        raise OutputError(f"{path}: output folder {path.parent} does not exist")
    fig = draw_montage(in_data, in_affine, out_data, out_affine, title)
    atomic_write(path, lambda tmp: fig.savefig(tmp, facecolor=fig.get_facecolor()), suffix=".png")
    return path
