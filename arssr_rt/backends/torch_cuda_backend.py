"""torch-cuda backend: the bundle's torch weights on a CUDA GPU, fp32 or fp16 autocast.

The GPU path for machines with torch but no TensorRT, and the GPU reference the TensorRT
engines are compared with. fp32 means fp32: TF32 is switched off for the convolutions
while this backend runs them (cuDNN enables it by default). fp16 runs the networks under
``torch.autocast(float16)``; sampling and outputs stay float32.

It declares ``decodes_boxes_on_device`` (see base.BackendRunner.decode_box): a feature block
is sampled at an output box and decoded on the GPU, ``BackendOptions.chunk`` points at a
time, and the result is copied to the host once. Sampling is the CPU path's
separable formula (arssr_rt.sampling.axis_weights) run as torch ops in the same order, so
it matches the numpy sampler; the decoder's coords follow the bundle's ``spec.coords`` mode
("global" or "phase"), computed in float64 and rounded to float32 exactly as the CPU
pipeline does. A view of the last ``encode`` result reuses its GPU copy.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from ..errors import BackendError
from ..params import setting
from ..extras import require
from .base import BackendOptions, BackendRunner, register_backend

if TYPE_CHECKING:
    from ..bundle import ModelBundle
    from ..sampling import BoxSpec

DEFAULT_CHUNK = 262144  # device points per decoder call when --chunk is not given


class TorchCudaBackend(BackendRunner):
    """Reference model on one CUDA device; see the module doc for decode_box."""

    name = "torch-cuda"
    precisions = ("fp32", "fp16")
    decodes_boxes_on_device = True  # type: ignore[assignment]

    def __init__(self, bundle: "ModelBundle", options: BackendOptions, *, torch_device: str | None = None, model: Any = None):
        """``model``: a torch model to run instead of the bundle's weights (the --adapt copy, already
        on ``torch_device``); the bundle then gives feature_dim and coords mode only."""
        torch = self._torch = require("torch")
        self.check_precision(options.precision)
        from ..sampling import check_coords_mode

        check_coords_mode(bundle.coords_mode)  # an unknown mode is the bundle's fault: ModelError, before the GPU
        if torch_device is None:  # tests pass "cpu" to exercise the logic without a GPU
            if not torch.cuda.is_available():
                raise BackendError("torch-cuda needs a CUDA GPU visible to torch (torch.cuda.is_available() is False)")
            if not 0 <= options.device < torch.cuda.device_count():
                raise BackendError(f"{setting('device', options.device)} does not exist; torch sees {torch.cuda.device_count()} CUDA GPU(s)")
            torch_device = f"cuda:{options.device}"
        if model is None:
            from .torch_backend import load_bundle_model

            model = load_bundle_model(bundle)
        self.device = torch.device(torch_device)
        self.model = model.to(self.device).eval()
        self.fp16 = options.precision == "fp16"
        self.feature_dim = bundle.feature_dim
        self.coords_mode = bundle.coords_mode  # what the decoder's coords input holds
        self.chunk = int(options.chunk or DEFAULT_CHUNK)
        self._last_host: np.ndarray | None = None
        self._last_device: Any = None

    @contextlib.contextmanager
    def _run(self) -> Iterator[None]:
        """inference_mode + the precision policy (TF32 off for fp32, autocast for fp16)."""
        torch = self._torch
        with torch.inference_mode():
            if self.device.type != "cuda":
                yield
            elif self.fp16:
                with torch.autocast("cuda", dtype=torch.float16):
                    yield
            else:
                with torch.backends.cudnn.flags(enabled=True, benchmark=True, deterministic=False, allow_tf32=False):
                    yield

    def _tensor(self, array: np.ndarray) -> Any:
        return self._torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(self.device, non_blocking=False)

    # ------------------------------------------------------------ runner

    def _encode_impl(self, lr: np.ndarray) -> np.ndarray:
        with self._run():
            features = self.model.encoder(self._tensor(lr)[None, None])[0].float()
        host = features.cpu().numpy()
        host.flags.writeable = False  # decode_box may reuse the GPU copy of this exact array
        self._last_host, self._last_device = host, features
        return host

    def _decode_impl(self, features: np.ndarray, coords: np.ndarray) -> np.ndarray:
        with self._run():
            x = self._torch.cat([self._tensor(features), self._tensor(coords)], dim=-1)
            return self.model.decoder(x)[:, 0].float().cpu().numpy()

    # ------------------------------------------------------------ device fast path

    def _device_block(self, features: np.ndarray) -> Any:
        """GPU tensor of ``features``: a strided view of the last encoder output, or an upload."""
        from ..engines.device_decode import view_in

        if self._last_host is not None:
            found = view_in(self._last_host, features)
            if found is not None:
                offset, strides = found
                return self._torch.as_strided(self._last_device, features.shape, strides, self._last_device.storage_offset() + offset)
        return self._tensor(features)

    def _axis_weights(self, h: int, H: int, start: int, stop: int, offset: int, length: int) -> tuple[Any, Any, Any, Any]:
        """The CPU sampler's 1-D trilinear weights of one axis, uploaded once per box. Why: an
        upload from pageable memory waits for the GPU queue, so uploads inside the slab loop
        (18 per slab before) serialise the host and the GPU; the H200 run of 2026-12-04 had
        torch-cuda at 0.8x the published-way reference with them."""
        from ..sampling import axis_weights

        w = axis_weights(h, H, start, stop, offset, length)
        to = lambda a: self._torch.from_numpy(a).to(self.device)  # noqa: E731
        return to(w.lower), to(w.upper), to(w.w_lower), to(w.w_upper)

    def _blend(self, x: Any, dim: int, weights: tuple[Any, Any, Any, Any]) -> Any:
        """1-D trilinear blend along ``dim``: the CPU sampler's two-weight formula and op order."""
        lower, upper, w_lower, w_upper = weights
        shape = [1] * x.ndim
        shape[dim] = -1
        lo = x.index_select(dim, lower) * w_lower.view(shape)
        hi = x.index_select(dim, upper) * w_upper.view(shape)
        return lo + hi

    def _decode_box_impl(self, features: np.ndarray, spec: "BoxSpec") -> np.ndarray:
        from ..sampling import decoder_axis_coords

        torch = self._torch
        n0, n1, n2 = spec.extents
        slab = max(1, self.chunk // max(1, n1 * n2))  # output planes of axis 0 per step
        out = torch.empty((n0, n1, n2), dtype=torch.float32, device=self.device)
        # per-axis decoder coords of the box, float64 math rounded to float32 (the CPU pipeline's)
        axes = [torch.from_numpy(decoder_axis_coords(h, n, a, b, spec.coords_mode)).to(self.device)
                for h, n, a, b in zip(spec.in_shape, spec.out_shape, spec.out_start, spec.out_stop)]
        with self._run():
            block = self._device_block(features).float()
            w0, w1, w2 = (self._axis_weights(spec.in_shape[k], spec.out_shape[k], spec.out_start[k], spec.out_stop[k], spec.in_offset[k],
                                             block.shape[k + 1]) for k in range(3))
            # axis 0 first, then 1, then 2: the CPU sampler's order, so the blends agree bit for bit
            for s in range(0, n0, slab):
                e = min(s + slab, n0)
                x = self._blend(block, 1, tuple(t[s:e] for t in w0))
                x = self._blend(x, 2, w1)
                x = self._blend(x, 3, w2)
                rows = x.permute(1, 2, 3, 0).reshape(-1, self.feature_dim)  # (points, F) in C order
                g0, g1, g2 = torch.meshgrid(axes[0][s:e], axes[1], axes[2], indexing="ij")
                coords = torch.stack([g0.reshape(-1), g1.reshape(-1), g2.reshape(-1)], dim=1)
                values = torch.empty(rows.shape[0], dtype=torch.float32, device=self.device)
                for a in range(0, rows.shape[0], self.chunk):
                    x_in = torch.cat([rows[a:a + self.chunk], coords[a:a + self.chunk]], dim=-1)
                    values[a:a + self.chunk] = self.model.decoder(x_in)[:, 0].float()
                out[s:e] = values.view(e - s, n1, n2)
        return out.cpu().numpy()

    def close(self) -> None:
        self.model = None
        self._last_host = self._last_device = None
        if self.device.type == "cuda":
            self._torch.cuda.empty_cache()


def nvidia_driver_absent() -> bool:
    """True when a Linux machine shows no NVIDIA driver: then importing torch (0.2 GB, ~1 s)
    only to learn there is no GPU is skipped. Elsewhere torch is asked, as before."""
    import os
    import sys

    if not sys.platform.startswith("linux"):
        return False
    return not (os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidiactl"))


@register_backend("torch-cuda", priority=20)
def open_torch_cuda(bundle: "ModelBundle", options: BackendOptions) -> TorchCudaBackend:
    if nvidia_driver_absent():
        raise BackendError("torch-cuda needs a CUDA GPU; no NVIDIA driver is loaded on this machine")
    return TorchCudaBackend(bundle, options)
