"""Write a complete, validated model bundle from a torch ArSSR model.

The bundle is assembled in a staging folder next to ``out_dir`` and moved into place only
after every ONNX file passed the checker and the comparison with torch, so a failed export
never leaves a bundle that looks valid.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .. import __version__
from ..atomic import atomic_write_folder
from ..bundle import MODEL_JSON, WEIGHTS, write_model_json
from ..errors import ModelError, OutputError
from ..extras import require
from .. import bundle_format as contract
from ..outputs import InputSet
from .onnx_export import export_all
from .validate import validate_exports, validation_inputs

if TYPE_CHECKING:
    from ..network import ArSSR

AXIS_ORDERS = ("xyz", "zyx")
# keys write_bundle owns; extra_meta may not override them
RESERVED_KEYS = {"schema_version", "files", "spec", "receptive_radius", "validation", "onnx", "opset", "axis_order", "created", "parameters"}


def prepare_out_dir(out_dir: Path, force: bool) -> None:
    """Refuse to clobber: a non-empty ``out_dir`` needs ``force`` and must be a bundle."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not force:
            raise OutputError(f"{out_dir} exists and is not empty; pass --force to replace the bundle")
        if not (out_dir / MODEL_JSON).is_file():
            raise OutputError(f"{out_dir} is not a model bundle (no {MODEL_JSON}); refusing to replace it")
    if not out_dir.parent.is_dir():
        raise OutputError(f"the folder {out_dir.parent} does not exist")


def count_parameters(model: "ArSSR") -> dict[str, int]:
    enc = sum(p.numel() for p in model.encoder.parameters())
    dec = sum(p.numel() for p in model.decoder.parameters())
    return {"encoder": int(enc), "decoder": int(dec), "total": int(enc + dec)}


def bundle_meta(model: "ArSSR", name: str, axis_order: str, extra_meta: dict[str, Any] | None) -> dict[str, Any]:
    extra = dict(extra_meta or {})
    clash = RESERVED_KEYS.intersection(extra)
    if clash:
        raise ModelError(f"extra_meta may not set {', '.join(sorted(clash))}")
    meta: dict[str, Any] = {
        "name": name,
        "version": str(extra.pop("version", "1")),
        "spec": model.spec.to_dict(),
        "receptive_radius": model.receptive_radius,
        "axis_order": axis_order,
        "normalization": extra.pop("normalization", {"mode": "minmax"}),
        "opset": contract.OPSET,
        "onnx": {**contract.contract_names(), "fp16_io_dtype": "float16", "fp32_io_dtype": "float32"},
        "training": extra.pop("training", {}),
        "parameters": count_parameters(model),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "arssr_rt_version": __version__,
    }
    meta.update(extra)
    return meta


def save_weights(model: "ArSSR", path: Path) -> None:
    """weights.pt = {"spec", "state_dict"}: rebuildable with build_model(spec) alone."""
    torch = require("torch")
    state = {k: v.detach().to("cpu", torch.float32).clone() for k, v in model.state_dict().items()}
    torch.save({"spec": model.spec.to_dict(), "state_dict": state}, path)


def write_bundle(
    model: "ArSSR",
    out_dir: str | Path,
    name: str = "arssr",
    axis_order: str = "xyz",
    extra_meta: dict[str, Any] | None = None,
    validate: bool = True,
    real_input: np.ndarray | None = None,
    force: bool = False,
    inputs: Sequence[str | Path] = (),
) -> Path:
    """Export ``model`` to a bundle directory and return its path.

    Args:
        model: a torch ArSSR (fp32; it is put in eval mode and left unchanged otherwise).
        out_dir: bundle folder; must be absent or empty unless ``force`` (then it must be a bundle).
        name: the bundle's name in model.json and ``arssr-rt models``.
        axis_order: "xyz" (nibabel arrays, ours) or "zyx" (SimpleITK arrays, published weights).
        extra_meta: more model.json keys; ``training`` holds the training summary.
        validate: compare every ONNX file with torch via onnxruntime (fp32 <= 1e-4 or ModelError).
        real_input: a real volume (D, H, W) in the weights' axis order, for validation.
        force: replace an existing bundle in ``out_dir``.
        inputs: files the bundle is made from (the checkpoint): ``out_dir`` may not hold them.

    Example:
        >>> write_bundle(build_model("rescnn"), "bundles/rescnn", name="rescnn")  # doctest: +SKIP
    """
    if axis_order not in AXIS_ORDERS:
        raise ModelError(f"axis_order must be one of {', '.join(AXIS_ORDERS)}, got {axis_order!r}")
    contract.check_runtime_base(model.spec.base, f"bundle {name!r}")  # before any export work
    out_dir = Path(out_dir)
    conflict = InputSet(inputs).conflict(out_dir, folder=True)
    if conflict:
        raise OutputError(f"{out_dir}: bundle folder {conflict}; choose another -o (an input is never replaced)")
    prepare_out_dir(out_dir, force)
    meta = bundle_meta(model, name, axis_order, extra_meta)
    if validate and real_input is not None:
        validation_inputs(real_input)  # refuse a bad validation volume before minutes of export
    model.eval()

    def build(stage: Path) -> None:
        save_weights(model, stage / WEIGHTS)
        export_all(model, stage)
        if validate:
            try:
                meta["validation"] = validate_exports(model, stage, real_input)
            except ModelError as exc:  # name the file where it will be, not the staging path
                raise ModelError(str(exc).replace(str(stage), str(out_dir))) from None
        meta["files"] = {n: "" for n in (WEIGHTS, *contract.ONNX_FILES)}
        write_model_json(stage, meta)

    # staged in a hidden sibling and moved into place whole (atomic.atomic_write_folder)
    return atomic_write_folder(out_dir, build, fsync=False)
