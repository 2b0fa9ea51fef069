"""Adapt a bundle's model to one scan and hand the result to the normal pipeline.

``adapt_volume`` fine-tunes a copy of the bundle's torch weights (``weights.pt``, loaded
weights-only) on pairs from the scan; ``Adapted.backend`` is a backend factory for
``VolumeEngine``, so the adapted model runs through the one pipeline (tiling, headers,
``--keep-acquired``, dtype, output guard). ``Adapted.save`` writes it as a normal bundle with
the existing bundle writer, which ``--model DIR`` loads for the scan's other series.
torch is imported inside the functions: importing this module costs nothing.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from ..errors import InputError, MissingExtraError
from ..intensity import Normalizer
from .pairs import PairConfig
from .plan import AdaptOptions, AdaptPlan, plan_adaptation

if TYPE_CHECKING:
    from ..backends.base import BackendOptions, BackendRunner
    from ..bundle import ModelBundle
    from ..volume import Volume


def require_torch(command: str = "upsample") -> Any:
    """torch, or the one line that says how to get it."""
    try:
        import torch
    except ImportError:
        raise MissingExtraError(f"arssr-rt {command} --adapt needs the train extra: pip install 'arssr-rt[train]'") from None
    return torch


def check_save_target(out_dir: Path, force: bool, inputs: Sequence[str | Path]) -> None:
    """--save-adapted: refuse a bad bundle folder (an input, a non-bundle, no --force) and a
    missing export extra before minutes of adaptation."""
    from ..errors import OutputError
    from ..extras import require
    from ..export.bundle_writer import prepare_out_dir
    from ..outputs import InputSet

    conflict = InputSet(inputs).conflict(out_dir, folder=True)
    if conflict:
        raise OutputError(f"--save-adapted {out_dir}: {conflict}; choose another folder (an input is never replaced)")
    prepare_out_dir(Path(out_dir), force)
    require("onnx")
    require("onnxscript")


def model_order(plan: AdaptPlan, axis_order: str) -> AdaptPlan:
    """The plan in the bundle's array order (published zyx weights see transposed arrays)."""
    if axis_order != "zyx":
        return plan
    return replace(plan, thick_axis=2 - plan.thick_axis, spacing=plan.spacing[::-1],
                   ratios={2 - a: r for a, r in plan.ratios.items()})


@dataclass
class Adapted:
    """An adapted torch model, what it was adapted on, and how to run or save it."""

    model: Any  # torch ArSSR in eval mode, fp32, on ``device``
    base: "ModelBundle"
    plan: AdaptPlan
    options: AdaptOptions
    steps: int
    seconds: float
    loss_first: float
    loss_last: float
    precision: str = "fp32"  # the fine-tuning arithmetic actually used
    source: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"  # where it was fine-tuned and runs: "cpu" or "cuda:N"

    def backend(self, bundle: "ModelBundle", options: "BackendOptions") -> "BackendRunner":
        """Backend factory for ``VolumeEngine``: the adapted weights on the torch backend, or on a
        GPU the torch-cuda backend on the adaptation's device (not ``options.device``: the
        model is already there)."""
        if self.device != "cpu":
            return self.cuda_backend(bundle, options)
        from ..backends.torch_backend import TorchBackend

        class AdaptedTorchBackend(TorchBackend):
            name = "torch"

            def __init__(self, model: Any, feature_dim: int, opts: "BackendOptions"):
                self._torch = torch = require_torch()
                self.check_precision(opts.precision)
                if opts.threads:
                    torch.set_num_threads(int(opts.threads))
                self.model = model.eval()
                self.feature_dim = feature_dim

        return AdaptedTorchBackend(self.model, bundle.feature_dim, options)

    def cuda_backend(self, bundle: "ModelBundle", options: "BackendOptions") -> "BackendRunner":
        """The adapted weights on the torch-cuda backend, on ``self.device`` (a GPU run's backend;
        on "cpu" it runs the same torch-cuda logic on the CPU, which tests use)."""
        from ..backends.torch_cuda_backend import TorchCudaBackend

        class AdaptedTorchCudaBackend(TorchCudaBackend):
            """torch-cuda (GPU sampling + decode_box, TF32 off in fp32) on the adapted weights."""

            def __init__(self, model: Any, device: str, opts: "BackendOptions"):
                super().__init__(bundle, opts, torch_device=device, model=model)

        return AdaptedTorchCudaBackend(self.model, self.device, options)

    def cpu_model(self) -> Any:
        """The adapted model on the CPU (a copy when it lives on a GPU): what export writes."""
        if self.device == "cpu":
            return self.model
        import copy

        return copy.deepcopy(self.model).cpu()

    def symmetries(self) -> list[Any]:
        """The inference passes to average (``VolumeEngine(tta=...)``): the flips / in-plane swap adapted under."""
        from ..tta import symmetries

        return symmetries(self.options.tta, self.plan.in_plane)

    def summary(self) -> dict[str, Any]:
        """What model.json's ``training`` says about this adaptation."""
        return {
            "adapted_from": {"name": self.base.name, "weights_sha256": self.base.meta.get("files", {}).get("weights.pt")},
            "adapted_on": self.source,
            "thick_axis": self.plan.thick_axis, "ratios": {str(a): round(r, 4) for a, r in self.plan.ratios.items()},
            "slice_profile": self.plan.profile, "slice_gap": round(self.plan.gap, 6),
            "steps": self.steps, "seconds": round(self.seconds, 1), "seed": self.options.seed, "lr": self.options.lr,
            "batch": self.options.batch, "tune": self.options.tune, "context": self.options.context, "mix": self.options.mix,
            "precision": self.precision, "device": self.device.partition(":")[0],
            "warmup": self.options.warmup, "loss": self.options.loss,
            "loss_first": round(self.loss_first, 6), "loss_last": round(self.loss_last, 6),
        }

    def save(self, out_dir: str | Path, *, force: bool = False, inputs: Sequence[str | Path] = (),
             real_input: np.ndarray | None = None) -> Path:
        """Write the adapted model as a normal bundle (checked against torch through onnxruntime)."""
        from ..export.bundle_writer import write_bundle

        name = f"{self.base.name}-adapted"
        if self.source.get("file"):
            name += f"-{Path(self.source['file']).name.split('.')[0]}"
        meta = {"normalization": self.base.normalization, "training": self.summary(),
                "intended_use": self.base.meta.get("intended_use", "research; not for diagnosis")}
        return write_bundle(self.cpu_model(), out_dir, name=name, axis_order=self.base.axis_order, extra_meta=meta,
                            real_input=real_input, force=force, inputs=inputs)


def mix_weights(tuned: Any, start: Any, mix: float) -> None:
    """Set ``tuned``'s floating-point weights to ``mix * tuned + (1 - mix) * start`` in place
    (WiSE-FT). Why: the adaptation learns on in-plane pairs and is applied through-plane; on the
    noisy MyConnectome scan a partial step back towards the population model scored higher than
    either end (docs/quality/adapt/variants.md)."""
    torch = require_torch()
    start_state = start.state_dict()
    with torch.no_grad():
        for name, value in tuned.state_dict().items():
            if value.is_floating_point():
                value.mul_(mix).add_(start_state[name].to(value.device, value.dtype), alpha=1.0 - mix)


def file_sha256(path: Path) -> str | None:
    try:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    except OSError:
        return None


def adapt_volume(
    volume: "Volume",
    bundle: "ModelBundle",
    options: AdaptOptions,
    *,
    normalization: str = "minmax",
    threads: int | None = None,
    on_step: Callable[[int, int | None, float], None] | None = None,
    plan: AdaptPlan | None = None,
    base_model: Any = None,
) -> Adapted:
    """Fine-tune a copy of ``bundle``'s model on ``volume`` (a thick-slice scan).

    ``base_model``: the bundle's torch model, already loaded (a batch loads it once); it is
    copied, never changed. ``on_step(step, total, loss)`` reports progress (see finetune)."""
    torch = require_torch()
    from ..backends.torch_backend import load_bundle_model
    from ..geometry import spacing_of
    from .device import torch_device
    from .finetune import finetune
    from .pairs import ScanPairSampler

    where = str(volume.source_path or "input")
    plan = plan or plan_adaptation(spacing_of(volume.affine), volume.shape, options, where)
    device = torch_device(options.device, torch)  # a GPU torch cannot see: one line, before the weights load
    try:
        norm = Normalizer(mode=normalization).fit(volume.data)  # type: ignore[arg-type]
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None
    data = norm.normalize(volume.data)
    if bundle.axis_order == "zyx":
        data = np.ascontiguousarray(data.transpose(2, 1, 0))
    mplan = model_order(plan, bundle.axis_order)
    if threads:
        torch.set_num_threads(int(threads))
    base = base_model if base_model is not None else load_bundle_model(bundle)
    spec = base.spec
    pairs = PairConfig(**{"context": options.context, "coords": spec.coords, "feature_scale": spec.feature_scale,
                          "base": spec.base, **options.extra})
    sampler = ScanPairSampler(data, mplan, pairs, seed=options.seed)
    t0 = time.perf_counter()
    result = finetune(base, sampler, steps=options.steps, budget_seconds=options.budget_seconds, lr=options.lr,
                      batch=options.batch, tune=options.tune, seed=options.seed, precision=options.precision,
                      loss=options.loss, warmup=options.warmup, device=device, on_step=on_step)
    if options.mix < 1.0:
        mix_weights(result.model, base, options.mix)
    source: dict[str, Any] = {}
    if volume.source_path is not None:
        source = {"file": Path(volume.source_path).name, "sha256": file_sha256(Path(volume.source_path))}
    return Adapted(model=result.model, base=bundle, plan=plan, options=options, steps=result.steps,
                   seconds=time.perf_counter() - t0, loss_first=result.loss_first, loss_last=result.loss_last,
                   precision=result.precision, source=source, device=str(device))
