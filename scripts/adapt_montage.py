"""Through-plane montage of a real thick-slice scan: tricubic | default model | adapted model.

    PYTHONPATH=. python scripts/adapt_montage.py /work/shared/data/pyradiomics_brain1_image.nrrd \
        --scale 1,1,6.5 -o docs/quality/adapt/montage_brain1.png [--adapt-minutes 3] [--threads 2]

Rows are the two views that cut through the slices (coronal and sagittal), reoriented to RAS
with qc.py's helpers, so edge labels and slice positions come from the affine; columns share
one intensity window (from the input). The adapted column is what ``upsample --adapt`` writes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from arssr_rt.adapt.plan import AdaptOptions
from arssr_rt.adapt.session import adapt_volume
from arssr_rt.atomic import atomic_write
from arssr_rt.bundle import resolve_model
from arssr_rt.degrade import cubic_resample
from arssr_rt.outputs import check_output
from arssr_rt.pipeline import VolumeEngine, plan_grid
from arssr_rt.qc import NORMAL_AXIS, _to_ras, montage_layout, nearest_upsample
from arssr_rt.readers import read_volume

VIEWS = ("coronal", "sagittal")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("input", type=Path)
    p.add_argument("--scale", default="1,1,6.5")
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--adapt-minutes", type=float, default=None)
    p.add_argument("--adapt-steps", type=int, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--force", action="store_true")
    a = p.parse_args()
    check_output(a.output, inputs=[a.input], force=a.force)
    vol = read_volume(a.input)
    grid = plan_grid(vol, scale=[float(s) for s in a.scale.split(",")])
    bundle = resolve_model(None)
    from arssr_rt.backends.base import BackendOptions

    opts = BackendOptions(threads=a.threads)
    with VolumeEngine(bundle, "auto", opts) as up:
        default = up.run(vol, grid)
    adapted_model = adapt_volume(vol, bundle, AdaptOptions(steps=a.adapt_steps, minutes=a.adapt_minutes), threads=a.threads)
    with VolumeEngine(bundle, adapted_model.backend, opts) as up:
        adapted = up.run(vol, grid)
    columns = {"input (nearest)": nearest_upsample(vol.data, grid.shape), "tricubic": cubic_resample(vol.data, grid.shape),
               "default model": default, f"adapted ({adapted_model.steps} steps, {adapted_model.seconds:.0f} s)": adapted}
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    layout = montage_layout(grid.affine, grid.shape)
    vmin, vmax = (float(v) for v in np.percentile(vol.data, [0.5, 99.5]))
    fig = Figure(figsize=(4.2 * len(columns), 4.4 * len(VIEWS)), dpi=100, facecolor="black", layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(VIEWS), len(columns), squeeze=False)
    for c, (name, data) in enumerate(columns.items()):
        ras, (sx, sy, sz) = _to_ras(np.asarray(data, np.float32), grid.affine)
        aspects = {"sagittal": sz / sy, "coronal": sz / sx}
        for r, view in enumerate(VIEWS):
            index = [slice(None)] * 3
            index[NORMAL_AXIS[view]] = ras.shape[NORMAL_AXIS[view]] // 2
            ax = axes[r][c]
            ax.imshow(ras[tuple(index)].T, origin="lower", cmap="gray", vmin=vmin, vmax=vmax, aspect=aspects[view], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            where = layout[view]
            for x, y, text, ha, va in ((0.02, 0.5, where.left, "left", "center"), (0.98, 0.5, where.right, "right", "center"),
                                       (0.5, 0.02, where.bottom, "center", "bottom"), (0.5, 0.98, where.top, "center", "top")):
                ax.text(x, y, text, transform=ax.transAxes, ha=ha, va=va, color="yellow", fontsize=10, fontweight="bold")
            if r == 0:
                ax.set_title(name, color="white", fontsize=12)
            if c == 0:
                ax.set_ylabel(f"{view}\n{where.position}", color="white", fontsize=11)
    sp_in = "x".join(f"{s:.3g}" for s in grid.spacing)
    fig.suptitle(f"{a.input.name}: {'x'.join(map(str, vol.shape))} thick slices -> {'x'.join(map(str, grid.shape))} @ {sp_in} mm "
                 "(through-plane views)", color="white", fontsize=12)
    a.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(a.output, lambda tmp: fig.savefig(tmp, facecolor=fig.get_facecolor()), suffix=".png")
    print(f"wrote {a.output}")


if __name__ == "__main__":
    main()
