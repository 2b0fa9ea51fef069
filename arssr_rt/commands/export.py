"""``arssr-rt export`` and ``arssr-rt import-checkpoint``: torch checkpoints -> model bundles."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

TRUST_HELP = "Allow full unpickling when torch.load(weights_only=True) refuses the file (runs code from it: trusted files only)."


def _summary(path: Path, seconds: float) -> str:
    from ..bundle import load_bundle

    bundle = load_bundle(path)
    v = bundle.meta.get("validation", {})

    def worst(precision: str) -> str:
        rec = v.get(precision, {})
        vals = [rec[k] for k in ("encoder_max_abs", "decoder_max_abs", "forward_max_abs") if k in rec]
        return f"{max(vals):.2g}" if vals else "n/a"

    spec = bundle.spec
    return (
        f"wrote bundle {path} ({spec['encoder']}, F={spec['feature_dim']}, axis order {bundle.axis_order}) in {seconds:.1f} s; "
        f"max abs diff vs torch: fp32 {worst('fp32')}, fp16 {worst('fp16')}"
    )


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export_command(
        checkpoint: Annotated[Path, typer.Argument(help="A bundle's weights.pt or a training run's checkpoint.pt / best.pt.")],
        out: Annotated[Path, typer.Option("-o", "--out", help="Bundle directory to write (must be absent or empty).")],
        name: Annotated[Optional[str], typer.Option("--name", help="Bundle name (default: the checkpoint's folder name).")] = None,
        force: Annotated[bool, typer.Option("--force", help="Replace an existing bundle in OUT.")] = False,
        trust_checkpoint: Annotated[bool, typer.Option("--trust-checkpoint", help=TRUST_HELP)] = False,
    ) -> None:
        """Export a torch checkpoint to a bundle: weights.pt + fp32/fp16 encoder and decoder ONNX + model.json.

        Every ONNX file passes the ONNX checker and is compared with torch on random and real
        [0, 1] inputs (fp32 must agree to 1e-4); the differences are stored in model.json.

        \b
        Example:
          arssr-rt export runs/rdn/checkpoint.pt -o bundles/rdn --name rdn-colin
        """
        from ..export.checkpoint_import import export_checkpoint

        start = time.perf_counter()
        path = export_checkpoint(checkpoint, out, name=name, force=force, trust=trust_checkpoint)
        print(_summary(path, time.perf_counter() - start), file=sys.stderr)

    @app.command("import-checkpoint")
    def import_command(
        checkpoint: Annotated[Path, typer.Argument(help="A published ArSSR state dict, e.g. ArSSR_RDN.pkl.")],
        encoder: Annotated[str, typer.Option("--encoder", help="Which published encoder: rdn, rescnn or srresnet.")],
        out: Annotated[Path, typer.Option("-o", "--out", help="Bundle directory to write (must be absent or empty).")],
        name: Annotated[Optional[str], typer.Option("--name", help="Bundle name (default: arssr-ENCODER-published).")] = None,
        force: Annotated[bool, typer.Option("--force", help="Replace an existing bundle in OUT.")] = False,
        trust_checkpoint: Annotated[bool, typer.Option("--trust-checkpoint", help=TRUST_HELP)] = False,
    ) -> None:
        """Import the authors' published ArSSR weights into a bundle (axis order zyx).

        The state dict must match the published layout exactly (strict load); the bundle is
        validated like `export`.

        \b
        Example:
          arssr-rt import-checkpoint ArSSR_RDN.pkl --encoder rdn -o bundles/arssr-rdn
        """
        from ..export.checkpoint_import import import_published

        start = time.perf_counter()
        path = import_published(checkpoint, encoder.lower(), out, name=name, force=force, trust=trust_checkpoint)
        print(_summary(path, time.perf_counter() - start), file=sys.stderr)
