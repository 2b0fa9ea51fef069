"""``arssr-rt models``: list model bundles (embedded, user dir, --model DIRs) and verify them."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..bundle import MODEL_JSON, embedded_models_dir, load_bundle, sha256_file, user_models_dir
from ..errors import ModelError


@dataclass
class BundleRow:
    """One line of the table; ``status`` is "ok" or the one-line reason the bundle fails.

    Counts stay numbers (None when unknown) so ``--json`` gives JSON numbers; only the table
    formats them.
    """

    name: str
    source: str
    path: str
    encoder: str | None = None
    feature_dim: int | None = None
    receptive_radius: int | None = None
    axis_order: str | None = None
    params: int | None = None  # total parameter count
    sha256: str | None = None
    status: str = "ok"

    def cells(self) -> list[str]:
        """The table's text cells ("?" for unknown, parameters in millions)."""
        params = f"{self.params / 1e6:.2f} M" if self.params is not None else None
        values = (self.name, self.source, self.encoder, self.feature_dim, self.receptive_radius, self.axis_order, params, self.sha256)
        return ["?" if v is None else str(v) for v in values]


def find_bundles(extra_dirs: list[Path]) -> list[tuple[str, Path]]:
    """(source, dir) for every bundle folder: embedded first, then the user dir, then given dirs."""
    found: list[tuple[str, Path]] = []
    for source, root in (("embedded", embedded_models_dir()), ("user", user_models_dir())):
        if root.is_dir():
            found += [(source, d) for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    found += [("--model", Path(d)) for d in extra_dirs]
    return found


def describe_bundle(source: str, path: Path) -> BundleRow:
    """Verify one bundle (schema + every sha256) and summarise it; never raises ModelError."""
    row = BundleRow(name=path.name, source=source, path=str(path))
    try:
        bundle = load_bundle(path)
    except ModelError as exc:
        row.status = f"error: {exc}"
        return row
    spec, meta = bundle.spec, bundle.meta
    params = meta.get("parameters", {}).get("total")
    row.name = bundle.name
    row.encoder = str(spec["encoder"]) if "encoder" in spec else None
    row.feature_dim = int(bundle.feature_dim)
    row.receptive_radius = int(bundle.receptive_radius)
    row.axis_order = bundle.axis_order
    row.params = int(params) if isinstance(params, (int, float)) and not isinstance(params, bool) else None
    # model.json lists the sha256 of every file, so its own hash identifies the whole bundle
    row.sha256 = sha256_file(path / MODEL_JSON)[:12]
    return row


def _raise_if_failed(rows: list[BundleRow]) -> None:
    """The table is the report; the error (exit code 2) lets scripts notice a bad bundle."""
    bad = [r for r in rows if r.status != "ok"]
    if bad:
        raise ModelError(f"{len(bad)} of {len(rows)} bundles failed verification: {', '.join(r.path for r in bad)}")


def register(app: typer.Typer) -> None:
    @app.command("models")
    def models_command(
        model: Annotated[Optional[list[Path]], typer.Option("--model", "-m", help="Extra bundle directory to list (repeatable).")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    ) -> None:
        """List model bundles: the embedded default, the user models dir and any --model DIR.

        Every bundle is verified (schema version and the sha256 of every file); the sha256
        column is the short hash of model.json, which pins every file of the bundle. Exit
        code 2 when any listed bundle fails verification.
        The user models dir is $ARSSR_RT_MODELS or ~/.local/share/arssr-rt/models.

        \b
        Example:
          arssr-rt models --model bundles/rdn
        """
        rows = [describe_bundle(source, path) for source, path in find_bundles(list(model or []))]
        if as_json:
            typer.echo(json.dumps([asdict(r) for r in rows], indent=2))
            _raise_if_failed(rows)
            return
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        # a pipe or CI log has no width; do not fold paths and hashes into 80 columns
        console = Console() if sys.stdout.isatty() else Console(width=200)
        if not rows:
            console.print(f"no model bundles found (embedded: {embedded_models_dir()}, user: {user_models_dir()})", highlight=False, markup=False)
            return
        table = Table(title="arssr-rt model bundles")
        for col in ("name", "source", "encoder", "F", "radius", "axes", "params", "sha256", "status"):
            table.add_column(col, overflow="fold")
        for r in rows:
            # cells are plain Text: a path or message with [brackets] is not rich markup
            status = Text(r.status, style="green" if r.status == "ok" else "red")
            table.add_row(*(Text(c) for c in r.cells()), status)
        console.print(table)
        _raise_if_failed(rows)
