"""Turn torch checkpoints into bundles: our own weights/run checkpoints and the published ones.

The authors' ArSSR files are plain state dicts (keys ``encoder.*`` / ``decoder.*``) for arrays
in SimpleITK (z, y, x) order, so their bundles record ``axis_order: zyx``. Checkpoints are read
with ``torch.load(weights_only=True)``; anything that needs full unpickling (which can run code
from the file) is refused unless the caller says it trusts the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..bundle import sha256_file
from ..errors import InputError, ModelError
from ..extras import require
from ..safe_load import load_checkpoint
from .bundle_writer import write_bundle

if TYPE_CHECKING:
    from ..network import ArSSR

PUBLISHED_ENCODERS = ("rdn", "rescnn", "srresnet")
FIXTURE = "colin27_t1_crop64_1mm.nii.gz"
SHOWN_KEYS = 3  # how many offending keys a one-line error lists


def read_checkpoint(path: str | Path, trust: bool = False) -> Any:
    """The checkpoint's payload through the one safe loader (see ``safe_load``)."""
    return load_checkpoint(path, trust)


STATE_KEYS = ("state_dict", "model")  # bundle weights.pt / training-run checkpoint.pt and best.pt


def extract_state_dict(payload: Any, path: Path) -> dict[str, Any]:
    """The model state dict from a plain state dict or a {"state_dict"|"model": ...} checkpoint."""
    torch = require("torch")
    for key in STATE_KEYS:
        if isinstance(payload, Mapping) and isinstance(payload.get(key), Mapping):
            payload = payload[key]
            break
    if not isinstance(payload, Mapping) or not payload or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise ModelError(f"{path} holds no model state dict (expected tensors keyed encoder.*/decoder.*)")
    keys = list(payload)
    if all(k.startswith("module.") for k in keys):  # saved from DataParallel/DDP
        payload = {k[len("module."):]: v for k, v in payload.items()}
    return dict(payload)


def _few(keys: set[str]) -> str:
    shown = sorted(keys)[:SHOWN_KEYS]
    more = len(keys) - len(shown)
    return ", ".join(shown) + (f" (+{more} more)" if more > 0 else "")


def load_strict(model: "ArSSR", state: dict[str, Any], path: Path) -> "ArSSR":
    """Load ``state`` with strict=True after a key/shape check that fits on one line."""
    expected = model.state_dict()
    missing, unexpected = set(expected) - set(state), set(state) - set(expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {_few(unexpected)}")
        raise ModelError(f"{path} does not fit the {model.spec.encoder} model: " + "; ".join(parts))
    wrong = {k for k in expected if tuple(state[k].shape) != tuple(expected[k].shape)}
    if wrong:
        k = sorted(wrong)[0]
        raise ModelError(
            f"{path} does not fit the {model.spec.encoder} model: {len(wrong)} tensors have other shapes, "
            f"e.g. {k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
        )
    model.load_state_dict(state, strict=True)
    return model.float().eval()


def fixture_volume(axis_order: str) -> np.ndarray | None:
    """The shipped 64^3 Colin27 crop as a real validation input, in the weights' axis order."""
    nib = require("nibabel")
    from importlib import resources

    path = Path(str(resources.files("arssr_rt") / "data" / FIXTURE))
    if not path.is_file():
        return None
    data = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
    return data.transpose(2, 1, 0).copy() if axis_order == "zyx" else data


def import_published(
    checkpoint: str | Path, encoder: str, out_dir: str | Path, name: str | None = None, force: bool = False, trust: bool = False
) -> Path:
    """Published ArSSR state dict -> bundle (axis order zyx, validated against torch)."""
    from ..network import build_model

    if encoder not in PUBLISHED_ENCODERS:
        raise InputError(f"--encoder must be one of {', '.join(PUBLISHED_ENCODERS)}, got {encoder!r}")
    checkpoint = Path(checkpoint)
    state = extract_state_dict(read_checkpoint(checkpoint, trust), checkpoint)
    model = load_strict(build_model(encoder), state, checkpoint)
    training = {
        "source": "published ArSSR checkpoint (Wu et al., IEEE JBHI 2022), HCP-1200 per the paper",
        "checkpoint": checkpoint.name,
        "checkpoint_sha256": sha256_file(checkpoint),
        "note": "trained on SimpleITK (z, y, x) arrays; no documented input range",
    }
    return write_bundle(
        model, out_dir, name=name or f"arssr-{encoder}-published", axis_order="zyx",
        extra_meta={"training": training}, real_input=fixture_volume("zyx"), force=force,
        inputs=[checkpoint],
    )


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, name: str | None = None, force: bool = False, trust: bool = False) -> Path:
    """A bundle's weights.pt ({"spec", "state_dict"}) or a training run's checkpoint.pt /
    best.pt ({"spec", "model", "step", ...}) -> bundle."""
    from ..network import build_model

    checkpoint = Path(checkpoint)
    payload = read_checkpoint(checkpoint, trust)
    if not isinstance(payload, Mapping) or "spec" not in payload or not any(k in payload for k in STATE_KEYS):
        raise ModelError(
            f"{checkpoint} has no 'spec' and 'state_dict' (or 'model'); for the published ArSSR files use "
            "`arssr-rt import-checkpoint FILE --encoder rdn|rescnn|srresnet`"
        )
    try:
        model = build_model(dict(payload["spec"]))
    except (TypeError, ValueError, KeyError, ModelError) as exc:
        raise ModelError(f"{checkpoint} has an unusable spec: {exc}") from None
    model = load_strict(model, extract_state_dict(payload, checkpoint), checkpoint)
    axis_order = str(payload.get("axis_order", "xyz"))
    training = dict(payload["training"]) if isinstance(payload.get("training"), Mapping) else {}
    for key in ("step", "epoch", "loss"):
        if key in payload and isinstance(payload[key], (int, float)):
            training.setdefault(key, payload[key])
    training.setdefault("checkpoint", checkpoint.name)
    return write_bundle(
        model, out_dir, name=name or checkpoint.parent.name or checkpoint.stem, axis_order=axis_order,
        extra_meta={"training": training}, real_input=fixture_volume(axis_order), force=force,
        inputs=[checkpoint],
    )
