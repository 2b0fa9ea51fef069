"""``arssr-rt info``: what a volume is and what ``upsample`` would make of it, without a model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import typer


def _read(path: Path):
    """readers.read_volume when present (NIfTI, NRRD, DICOM), else the NIfTI loader."""
    try:
        from ..readers import read_volume
    except ModuleNotFoundError as exc:
        if exc.name != "arssr_rt.readers":
            raise
        from ..nifti_io import load_volume as read_volume
    return read_volume(path)


def _header_codes(header: Any) -> dict[str, Any]:
    if header is None or not hasattr(header, "get"):
        return {}
    try:
        return {"qform_code": int(header["qform_code"]), "sform_code": int(header["sform_code"])}
    except (KeyError, TypeError, ValueError):
        return {}


def describe_volume(path: Path, scale: str | None, voxel_size: str | None, shape: str | None, dtype: str | None) -> dict[str, Any]:
    """Facts of the input and the planned output grid, as plain JSON-ready values."""
    import nibabel as nib

    from ..geometry import spacing_of
    from ..intensity import choose_output_dtype
    from ..options import output_grid

    volume = _read(path)
    data = volume.data
    if scale is None and voxel_size is None and shape is None:
        scale = "2"  # show the common case when no size option is given
    grid = output_grid(volume.shape, volume.affine, scale, voxel_size, shape)
    from ..intensity import minmax_outliers
    from ..labels import label_map_reason

    out_dtype = choose_output_dtype(volume.source_dtype, dtype)
    p1, p99 = np.percentile(data, [0.5, 99.5])
    return {
        "path": str(path),
        "format": volume.meta.get("format", "?"),
        "shape": list(volume.shape),
        "spacing_mm": [round(float(s), 6) for s in spacing_of(volume.affine)],
        "orientation": "".join(nib.aff2axcodes(volume.affine)),
        **_header_codes(volume.header),
        "dtype": str(np.dtype(volume.source_dtype)),
        "intensity_min": float(data.min()),
        "intensity_max": float(data.max()),
        "intensity_p0.5_p99.5": [float(p1), float(p99)],
        "label_map": label_map_reason(data, volume.header),  # why upsample would refuse it, or None
        "minmax_outliers": minmax_outliers(data),  # why --normalization minmax would refuse it, or None
        "output": {
            "shape": list(grid.shape),
            "spacing_mm": [round(float(s), 6) for s in grid.spacing],
            "voxels": grid.voxels,
            "dtype": str(out_dtype),
            "size_mib_uncompressed": round(grid.voxels * out_dtype.itemsize / 2**20, 2),
            "request": {"scale": scale, "voxel_size": voxel_size, "shape": shape},
        },
    }


def register(app: typer.Typer) -> None:
    @app.command("info")
    def info_command(
        input: Annotated[Path, typer.Argument(help="Input volume (NIfTI; NRRD or a DICOM folder with arssr-rt[io]).")],
        scale: Annotated[Optional[str], typer.Option("--scale", "-s", help="Scale S or SX,SY,SZ (default 2 when no size option is given).")] = None,
        voxel_size: Annotated[Optional[str], typer.Option("--voxel-size", help="Target spacing in mm: V or V1,V2,V3.")] = None,
        shape: Annotated[Optional[str], typer.Option("--shape", help="Output shape N1,N2,N3.")] = None,
        dtype: Annotated[Optional[str], typer.Option("--dtype", help="Output voxel type for the size estimate (default: follow the input).")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
    ) -> None:
        """Print shape, spacing, orientation, header codes, intensity range and the planned output.

        \b
        Example:
          arssr-rt info t1.nii.gz --voxel-size 0.5
        """
        facts = describe_volume(input, scale, voxel_size, shape, dtype)
        if as_json:
            typer.echo(json.dumps(facts, indent=2))
            return
        out = facts["output"]
        req = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in out["request"].items() if v is not None)

        def fmt(v: list) -> str:
            return " x ".join(f"{x:g}" for x in v)

        lines = [
            f"file         {facts['path']} ({facts['format']})",
            f"shape        {fmt(facts['shape'])}",
            f"spacing      {fmt(facts['spacing_mm'])} mm",
            f"orientation  {facts['orientation']}",
        ]
        if "qform_code" in facts:
            lines.append(f"codes        qform {facts['qform_code']}, sform {facts['sform_code']}")
        lines += [
            f"dtype        {facts['dtype']}",
            f"intensity    {facts['intensity_min']:g} .. {facts['intensity_max']:g} "
            f"(0.5-99.5%: {facts['intensity_p0.5_p99.5'][0]:g} .. {facts['intensity_p0.5_p99.5'][1]:g})",
        ]
        if facts["label_map"]:
            lines.append(f"labels       looks like a label map ({facts['label_map']}): upsample refuses it without --as-intensity")
        if facts["minmax_outliers"]:
            lines.append(f"outliers     {facts['minmax_outliers']}")
        lines += [
            f"upsample     {req} -> {fmt(out['shape'])} at {fmt(out['spacing_mm'])} mm, {out['voxels']:,} voxels, "
            f"{out['dtype']}, ~{out['size_mib_uncompressed']:g} MiB uncompressed",
        ]
        typer.echo("\n".join(lines))
