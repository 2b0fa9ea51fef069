"""TensorRT backend: the bundle's encoder and decoder as cached TensorRT engines on one GPU.

Opening it probes the GPU first (no TensorRT object exists before that), then loads both
engines from the engine cache, building them once when missing (see arssr_rt/engines).
fp32 and fp16 (``BackendOptions.precision``); ``device`` picks the GPU.

Besides the Backend protocol (numpy in, numpy out) it offers the optional fast path

    decode_box(features, in_offset, in_shape, out_shape, out_start, out_stop) -> np.ndarray

features: (F, d, h, w) float32 block whose voxel 0 is global input voxel ``in_offset`` of a
volume of ``in_shape``; returns the float32 intensities of output voxels
[out_start, out_stop) of the output grid ``out_shape``, shape ``out_stop - out_start``. The
block must cover every input voxel those outputs need (ValueError otherwise). The points
never leave the GPU: the CUDA sampler writes the decoder's inputs (coords in the bundle's
``spec.coords`` mode, as the CPU pipeline) into device memory and
the decoder engine reads them there, chunk i+1 being sampled while chunk i decodes. When
``features`` is (a view of) the array the last ``encode`` returned, its device copy is
reused and nothing is uploaded; that array is returned read-only so it cannot silently
diverge from the copy.
"""

from __future__ import annotations

import logging
from itertools import product
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from ..errors import BackendError, MissingExtraError
from .. import bundle_format as contract
from ..extras import require
from .base import BackendOptions, register_backend

if TYPE_CHECKING:
    from ..bundle import ModelBundle
    from ..engines.cache import EngineCache
    from ..engines.device import DeviceApi
    from ..engines.device_decode import DeviceBoxDecoder, DeviceFeatures, Sampler
    from ..engines.gpu_probe import GpuInfo

DEFAULT_CHUNK = 262144
log = logging.getLogger(__name__)


def encode_in_tiles(encode_tile: Callable[[np.ndarray], np.ndarray], lr: np.ndarray, max_edge: Sequence[int], halo: int) -> np.ndarray:
    """Exact encoder output of a volume bigger than the engine's profile.

    Cores of ``max_edge - 2 * halo`` voxels are encoded with ``halo`` = receptive radius
    voxels of context each side (clipped at the volume, where the zero padding is the
    same as the whole volume's), and only the cores are kept.
    """
    core = [int(m) - 2 * halo for m in max_edge]
    if min(core) < 1:
        raise BackendError(f"the encoder engine's largest tile {tuple(max_edge)} leaves no core inside a halo of {halo}; rebuild with a larger --tile")
    out: np.ndarray | None = None
    for start in product(*(range(0, n, c) for n, c in zip(lr.shape, core))):
        stop = [min(s + c, n) for s, c, n in zip(start, core, lr.shape)]
        lo = [max(0, s - halo) for s in start]
        hi = [min(n, e + halo) for e, n in zip(stop, lr.shape)]
        feats = encode_tile(lr[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]])
        r = feats.shape[1] // (hi[0] - lo[0])  # feature grid r times finer (bundle feature_scale)
        if out is None:
            out = np.empty((feats.shape[0], *(r * n for n in lr.shape)), dtype=np.float32)
        keep = tuple(slice(r * (s - l), r * (e - l)) for s, e, l in zip(start, stop, lo))
        out[(slice(None), *(slice(r * s, r * e) for s, e in zip(start, stop)))] = feats[(slice(None), *keep)]
    assert out is not None
    return out


class TensorRTBackend:
    """Encoder + decoder engines on one GPU; see the module doc for decode_box."""

    name = "tensorrt"

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
        chunk: int = DEFAULT_CHUNK,
    ):
        from ..engines import builder, gpu_probe
        from ..engines.cache import EngineCache
        from ..engines.runner import TrtEngine

        if options.precision not in builder.PRECISIONS:
            raise BackendError(f"tensorrt backend supports precision fp32 or fp16, not {options.precision!r}")
        from ..engines.sampler import coord_mode_code

        coord_mode_code(bundle.coords_mode)  # an unknown mode is the bundle's fault: ModelError, before the GPU
        # the GPU probe comes before TensorRT exists in this process: a TensorRT runtime
        # without a usable GPU crashes on deserialisation instead of raising
        self.gpu = gpu or gpu_probe.require_gpu(options.device)
        self.trt = trt or require("tensorrt")
        if device is None:
            from ..engines.device import CudaRuntime

            device = CudaRuntime(options.device)
        self.device = device
        self.receptive_radius = bundle.receptive_radius
        self.feature_dim = bundle.feature_dim
        self.coords_mode = bundle.coords_mode  # what the decoder's coords input holds
        settings = builder.BuildSettings(precision=options.precision)
        blobs = builder.load_engines(self.trt, bundle, settings, self.gpu, cache or EngineCache())
        self.encoder = TrtEngine(self.trt, blobs["encoder"], device, "encoder")
        self.decoder = TrtEngine(self.trt, blobs["decoder"], device, "decoder")
        self.stream = device.create_stream()
        self._sampler = sampler
        self._chunk = chunk
        self._box: "DeviceBoxDecoder | None" = None
        self._last_features: np.ndarray | None = None  # what encode returned last, if its device copy is intact
        self._sampler_error: str | None = None  # why the CUDA sampler cannot run, once known

    # ------------------------------------------------------------ Backend protocol

    def _encode_tile(self, lr: np.ndarray) -> np.ndarray:
        out = self.encoder.infer({contract.ENCODER_INPUT: lr[None, None]}, self.stream)[contract.ENCODER_OUTPUT][0]
        return np.asarray(out, dtype=np.float32)

    def encode(self, lr: np.ndarray) -> np.ndarray:
        """(D, H, W) float32 in [0, 1] -> (F, D, H, W) float32 (read-only, see decode_box)."""
        if lr.ndim != 3:
            raise BackendError(f"encode expects a (D, H, W) tile, got shape {lr.shape}")
        max_edge = self.encoder.max_shape(contract.ENCODER_INPUT)[2:]
        if all(n <= m for n, m in zip(lr.shape, max_edge)):
            features = self._encode_tile(lr)
            features.flags.writeable = False
            self._last_features = features
        else:  # bigger than the engine's profile: exact halo tiling, no single device copy
            features = encode_in_tiles(self._encode_tile, lr, max_edge, self.receptive_radius)
            self._last_features = None
        return features

    def decode(self, features: np.ndarray, coords: np.ndarray) -> np.ndarray:
        """(N, F) sampled features + (N, 3) coords -> (N,) float32, in engine-sized pieces."""
        if features.ndim != 2 or features.shape[1] != self.feature_dim or coords.shape != (features.shape[0], 3):
            raise BackendError(f"decode expects (N, {self.feature_dim}) features and (N, 3) coords, got {features.shape} and {coords.shape}")
        step = int(self.decoder.max_shape(contract.DECODER_FEATURES)[0])
        out = np.empty(features.shape[0], dtype=np.float32)
        for a in range(0, features.shape[0], step):
            res = self.decoder.infer({contract.DECODER_FEATURES: features[a:a + step], contract.DECODER_COORDS: coords[a:a + step]}, self.stream)
            out[a:a + step] = res[contract.DECODER_OUTPUT][:, 0]
        return out

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

    def run_tile_on_device(self, features: "DeviceFeatures", in_offset: Sequence[int], in_shape: Sequence[int],
                           out_shape: Sequence[int], out_start: Sequence[int], out_stop: Sequence[int]) -> np.ndarray:
        """decode_box for a feature block already in device memory."""
        from ..engines.sampler import BoxSpec

        spec = BoxSpec.make(features.shape[1:], in_offset, in_shape, out_shape, out_start, out_stop, self.coords_mode)
        return self._box_decoder().decode(features, spec)

    def _decode_box_on_host(self, features: np.ndarray, in_offset: Sequence[int], in_shape: Sequence[int],
                            out_shape: Sequence[int], out_start: Sequence[int], out_stop: Sequence[int]) -> np.ndarray:
        """decode_box with the numpy sampler: used when the CUDA sampler cannot be loaded."""
        from ..sampling import box_coords, sample_box
        from ..tiling import output_chunks

        block = np.ascontiguousarray(np.moveaxis(np.asarray(features, dtype=np.float32), 0, -1))
        out = np.empty([b - a for a, b in zip(out_start, out_stop)], dtype=np.float32)
        for start, stop in output_chunks(tuple(zip(out_start, out_stop)), self._chunk):
            sampled = sample_box(block, in_offset, in_shape, out_shape, start, stop)
            coords = box_coords(out_shape, start, stop, in_shape, self.coords_mode)
            values = self.decode(sampled.reshape(-1, sampled.shape[-1]), coords)
            out[tuple(slice(a - o, b - o) for a, b, o in zip(start, stop, out_start))] = values.reshape(sampled.shape[:3])
        return out

    def decode_box(self, features: np.ndarray, in_offset: Sequence[int], in_shape: Sequence[int],
                   out_shape: Sequence[int], out_start: Sequence[int], out_stop: Sequence[int]) -> np.ndarray:
        """Sample + decode output box [out_start, out_stop) on the GPU; see the module doc."""
        if features.ndim != 4 or features.shape[0] != self.feature_dim:
            raise BackendError(f"decode_box expects a ({self.feature_dim}, d, h, w) feature block, got {features.shape}")
        if self._sampler_error is None:
            try:
                self._box_decoder()
            except (BackendError, MissingExtraError) as exc:  # e.g. NVRTC not installed: the engines still work
                self._sampler_error = str(exc)
                log.warning("CUDA sampler unavailable (%s); sampling on the CPU instead", exc)
        if self._sampler_error is not None:
            from ..engines.sampler import BoxSpec

            BoxSpec.make(features.shape[1:], in_offset, in_shape, out_shape, out_start, out_stop, self.coords_mode)  # same checks
            return self._decode_box_on_host(features, in_offset, in_shape, out_shape, out_start, out_stop)
        on_device = self._device_copy(features)
        if on_device is None:
            on_device = self._box_decoder().upload_features(features)
        return self.run_tile_on_device(on_device, in_offset, in_shape, out_shape, out_start, out_stop)

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

    def __enter__(self) -> "TensorRTBackend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@register_backend("tensorrt", priority=30)
def open_tensorrt(bundle: "ModelBundle", options: BackendOptions) -> TensorRTBackend:
    return TensorRTBackend(bundle, options)
