"""TensorRT backend: the bundle's encoder and decoder as cached TensorRT engines on one GPU.

Opening it probes the GPU first (no TensorRT object exists before that), then loads both
engines from the engine cache, building them once when missing (see arssr_rt/engines).
fp32 and fp16 (``BackendOptions.precision``); ``device`` picks the GPU.

Only device work lives here. The engines' profiles are declared as ``max_encode_tile`` and
``max_decode_points``, so the pipeline tiles and chunks below them. ``decode_box`` (declared
by ``decodes_boxes_on_device``) keeps the points on the GPU: the CUDA sampler writes the
decoder's inputs (coords in the bundle's ``spec.coords`` mode) into device memory and the
decoder engine reads them there, chunk i+1 (``BackendOptions.chunk`` points) being sampled
while chunk i decodes. When the block is (a view of) the array the last ``encode`` returned,
its device copy is reused and nothing is uploaded; that array is returned read-only so it
cannot silently diverge from the copy. Without a loadable CUDA sampler (e.g. no NVRTC) the
backend declares no box decoding and the pipeline samples on the host.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BackendError, MissingExtraError
from .. import bundle_format as contract
from ..extras import require
from .base import BackendOptions, BackendRunner, register_backend

if TYPE_CHECKING:
    from ..bundle import ModelBundle
    from ..engines.cache import EngineCache
    from ..engines.device import DeviceApi
    from ..engines.device_decode import DeviceBoxDecoder, DeviceFeatures, Sampler
    from ..engines.gpu_probe import GpuInfo
    from ..sampling import BoxSpec

DEFAULT_CHUNK = 262144  # device points per sampler/decoder step when --chunk is not given
log = logging.getLogger(__name__)


class TensorRTBackend(BackendRunner):
    """Encoder + decoder engines on one GPU; see the module doc for decode_box."""

    name = "tensorrt"
    precisions = ("fp32", "fp16")  # engines/builder.PRECISIONS

    def __init__(
        self,
        bundle: "ModelBundle",
        options: BackendOptions,
        *,
        trt: Any = None,
        device: "DeviceApi | None" = None,
        gpu: "GpuInfo | None" = None,
        cache: "EngineCache | None" = None,
        sampler: "Sampler | None" = None,
    ):
        from ..engines import builder, gpu_probe
        from ..engines.cache import EngineCache
        from ..engines.runner import TrtEngine

        self.check_precision(options.precision)
        from ..sampling import check_coords_mode

        check_coords_mode(bundle.coords_mode)  # an unknown mode is the bundle's fault: ModelError, before the GPU
        # the GPU probe comes before TensorRT exists in this process: a TensorRT runtime
        # without a usable GPU crashes on deserialisation instead of raising
        self.gpu = gpu or gpu_probe.require_gpu(options.device)
        self.trt = trt or require("tensorrt")
        if device is None:
            from ..engines.device import CudaRuntime

            device = CudaRuntime(options.device)
        self.device = device
        self.feature_dim = bundle.feature_dim
        self.coords_mode = bundle.coords_mode  # what the decoder's coords input holds
        settings = builder.BuildSettings(precision=options.precision)
        blobs = builder.load_engines(self.trt, bundle, settings, self.gpu, cache or EngineCache())
        self.encoder = TrtEngine(self.trt, blobs["encoder"], device, "encoder")
        self.decoder = TrtEngine(self.trt, blobs["decoder"], device, "decoder")
        self.stream = device.create_stream()
        self._sampler = sampler
        self._chunk = options.chunk or DEFAULT_CHUNK
        self._box: "DeviceBoxDecoder | None" = None
        self._last_features: np.ndarray | None = None  # what encode returned last, if its device copy is intact
        self._sampler_error: str | None = None  # why the CUDA sampler cannot run, once known

    # ------------------------------------------------------------ declared limits

    @property
    def max_encode_tile(self) -> tuple[int, int, int]:  # type: ignore[override]
        return tuple(int(n) for n in self.encoder.max_shape(contract.ENCODER_INPUT)[2:])  # type: ignore[return-value]

    @property
    def max_decode_points(self) -> int:  # type: ignore[override]
        return int(self.decoder.max_shape(contract.DECODER_FEATURES)[0])

    # ------------------------------------------------------------ runner

    def _encode_impl(self, lr: np.ndarray) -> np.ndarray:
        out = self.encoder.infer({contract.ENCODER_INPUT: lr[None, None]}, self.stream)[contract.ENCODER_OUTPUT][0]
        features = np.asarray(out, dtype=np.float32)
        features.flags.writeable = False  # decode_box may reuse the device copy of this exact array
        self._last_features = features
        return features

    def _decode_impl(self, features: np.ndarray, coords: np.ndarray) -> np.ndarray:
        res = self.decoder.infer({contract.DECODER_FEATURES: features, contract.DECODER_COORDS: coords}, self.stream)
        return res[contract.DECODER_OUTPUT][:, 0]

    # ------------------------------------------------------------ device fast path

    def _box_decoder(self) -> "DeviceBoxDecoder":
        if self._box is None:
            from ..engines.device_decode import DeviceBoxDecoder
            from ..engines.runner import TrtChunkDecoder

            if self._sampler is None:
                from ..engines.sampler import SamplerKernel

                self._sampler = SamplerKernel(self.gpu.sm)
            chunk_decoder = TrtChunkDecoder(self.decoder, contract.DECODER_FEATURES, contract.DECODER_COORDS, contract.DECODER_OUTPUT)
            self._box = DeviceBoxDecoder(self.device, self._sampler, chunk_decoder, self._chunk)
        return self._box

    def _device_copy(self, features: np.ndarray) -> "DeviceFeatures | None":
        """The device address of ``features`` when it is a view of the last encoder output."""
        from ..engines.device_decode import DeviceFeatures, view_in

        base = self._last_features
        if base is None:
            return None
        found = view_in(base, features)
        if found is None:
            return None
        offset, strides = found
        dtype = self.encoder.tensor(contract.ENCODER_OUTPUT).dtype
        ptr = self.encoder.buffer_ptr(contract.ENCODER_OUTPUT) + offset * dtype.itemsize  # (1,F,D,H,W) == (F,D,H,W) layout
        return DeviceFeatures(ptr, dtype, tuple(features.shape), tuple(strides))  # type: ignore[arg-type]

    @property
    def decodes_boxes_on_device(self) -> bool:
        """True once the CUDA sampler loads; False (logged once) when it cannot."""
        if self._sampler_error is None:
            try:
                self._box_decoder()
            except (BackendError, MissingExtraError) as exc:  # e.g. NVRTC not installed: the engines still work
                self._sampler_error = str(exc)
                log.warning("CUDA sampler unavailable (%s); sampling on the CPU instead", exc)
        return self._sampler_error is None

    def _decode_box_impl(self, features: np.ndarray, spec: "BoxSpec") -> np.ndarray:
        on_device = self._device_copy(features)
        if on_device is None:
            on_device = self._box_decoder().upload_features(features)
        return self._box_decoder().decode(on_device, spec)

    def close(self) -> None:
        if self._box is not None:
            self._box.close()
            self._box = None
        if self._sampler is not None and hasattr(self._sampler, "close"):
            self._sampler.close()
        self._sampler = None
        for engine in (getattr(self, "encoder", None), getattr(self, "decoder", None)):
            if engine is not None:
                engine.close()
        if getattr(self, "stream", None) is not None:
            self.device.destroy_stream(self.stream)
            self.stream = None
        self._last_features = None


@register_backend("tensorrt", priority=30)
def open_tensorrt(bundle: "ModelBundle", options: BackendOptions) -> TensorRTBackend:
    return TensorRTBackend(bundle, options)
