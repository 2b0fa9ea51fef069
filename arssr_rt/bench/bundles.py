"""The model bundles the benchmark runs: published architectures with seeded random weights,
and the embedded default model.

Speed does not depend on the weights, so the published RDN and ResCNN (full size, 128
features, 256-wide decoder) run with random weights from a fixed seed; they are exported once
with ``write_bundle`` into the user cache and reused. Quality claims use the default model.
"""

from __future__ import annotations

from pathlib import Path

from arssr_rt.bundle import ModelBundle, load_bundle
from arssr_rt.errors import ModelError
from arssr_rt.quantize import cache_dir

SEED = 0
PUBLISHED = ("rdn", "rescnn")


def bench_bundle_dir() -> Path:
    path = cache_dir().parent / "bench-bundles"
    path.mkdir(parents=True, exist_ok=True)
    return path


def published_bundle(encoder: str) -> ModelBundle:
    """The published ``encoder`` architecture with random weights (seed 0), exported once."""
    target = bench_bundle_dir() / f"{encoder}-random-seed{SEED}"
    if (target / "model.json").is_file():
        return load_bundle(target)
    import torch

    from arssr_rt.export.bundle_writer import write_bundle
    from arssr_rt.network import build_model

    torch.manual_seed(SEED)
    model = build_model(encoder).eval()
    return load_bundle(write_bundle(model, target, name=f"{encoder}-random-TEST", force=True))


def default_bundle(model: str | Path | None = None) -> ModelBundle | None:
    """``model`` (a bundle folder or a model name such as ``bandlimited``), else the embedded
    default model; None only when no default is embedded (a checkout before one was packaged).
    A ``model`` that does not load is an error (ModelError), not a skipped case."""
    from arssr_rt.bundle import resolve_model

    if model:
        return resolve_model(str(model))
    try:
        return resolve_model(None)
    except ModelError:
        return None


def bundle_for(model: str, default_path: str | Path | None = None) -> ModelBundle | None:
    if model in PUBLISHED:
        return published_bundle(model)
    return default_bundle(default_path)
