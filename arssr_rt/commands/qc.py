"""``arssr-rt qc IN OUT -o PNG``: a QC montage for an input and its super-resolved output."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

HELP = """\
Draw a QC montage: three orthogonal slices through the output's centre, each as
input nearest-up-sampled | tricubic | model output (one intensity window) | model minus
tricubic (diverging, symmetric colour scale), with colour bars, L/R, P/A, I/S edge labels
and each slice's world position in mm. OUT must be on the field-of-view-preserving grid of
IN (as arssr-rt writes it).

Example:

\b
  arssr-rt upsample t1.nii.gz --scale 2
  arssr-rt qc t1.nii.gz t1_x2.nii.gz -o t1_x2_qc.png
"""


def register(app: typer.Typer) -> None:
    @app.command("qc", help=HELP)
    def qc_cmd(
        input: Path = typer.Argument(..., help="The low-resolution input (NIfTI, NRRD or DICOM series folder)."),
        output: Path = typer.Argument(..., help="Its super-resolved output."),
        png: Optional[Path] = typer.Option(None, "-o", "--output", help="PNG to write (default <OUT stem>_qc.png)."),
        title: Optional[str] = typer.Option(None, "--title", help="Title line (default: the input's name)."),
    ) -> None:
        from ..batch.sidecar import sidecar_path
        from ..qc import write_qc_montage
        from ..readers import read_volume

        lr = read_volume(input)
        sr = read_volume(output)
        target = png if png is not None else sidecar_path(output).with_name(sidecar_path(output).stem + "_qc.png")
        path = write_qc_montage(target, lr.data, lr.affine, sr.data, sr.affine, title=title if title is not None else input.name)
        typer.echo(f"QC montage written to {path}", err=True)
