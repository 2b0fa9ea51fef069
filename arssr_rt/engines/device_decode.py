"""Decode one output box without the points leaving the GPU: sampler kernel -> decoder engine.

Per chunk of the box's points (C order): the sampler writes the decoder's inputs (features,
and coords in the mode the ``BoxSpec`` carries: the bundle's ``spec.coords``, "global" or
"phase") into one of two device buffer sets on the *sample* stream; the decoder runs from that set on the
*decode* stream and writes its intensities straight into a device array for the whole box.
Events order the two streams, so chunk i decodes while chunk i+1 is sampled, and a buffer
set is refilled only after the decode that read it finished. The host queues everything,
then copies the box's intensities back once.

Everything GPU-specific goes through ``DeviceApi`` (device.py), the ``Sampler`` and the
``ChunkDecoder`` protocols below, so tests can run this loop on the CPU with fakes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np

try:  # numpy >= 2.0 moved it out of the main namespace
    from numpy.lib.array_utils import byte_bounds
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy import byte_bounds  # type: ignore[attr-defined,no-redef]

from .device import DeviceApi, DeviceBuffer
from ..sampling import BoxSpec

ALIGN_POINTS = 256  # chunk starts stay 256-byte aligned in the box's result array


@dataclass(frozen=True)
class DeviceFeatures:
    """A feature block (F, b0, b1, b2) in device memory: pointer, dtype, element strides."""

    ptr: int
    dtype: np.dtype
    shape: tuple[int, int, int, int]
    strides: tuple[int, int, int, int]  # in elements, may come from a view of a bigger array

    @classmethod
    def contiguous(cls, ptr: int, dtype: Any, shape: Sequence[int]) -> "DeviceFeatures":
        f, a, b, c = (int(s) for s in shape)
        return cls(int(ptr), np.dtype(dtype), (f, a, b, c), (a * b * c, b * c, c, 1))


def view_in(base: np.ndarray, view: np.ndarray) -> tuple[int, tuple[int, ...]] | None:
    """(element offset, element strides) of ``view`` inside the C-contiguous ``base``, or None.

    Lets a backend reuse the device copy of an array it returned: the same offset and strides
    address the same logical elements there, whatever the device copy's item size.
    """
    if view.dtype != base.dtype or not base.flags.c_contiguous or view.size == 0:
        return None
    lo, hi = byte_bounds(view)
    blo, bhi = byte_bounds(base)
    if lo < blo or hi > bhi:
        return None
    item = base.itemsize
    offset = view.__array_interface__["data"][0] - base.__array_interface__["data"][0]
    if offset % item or any(s % item for s in view.strides):
        return None
    return offset // item, tuple(s // item for s in view.strides)


class Sampler(Protocol):
    def launch(self, stream_handle: int, feat_ptr: int, feat_dtype: Any, feat_strides: Sequence[int], feature_dim: int,
               spec: BoxSpec, first: int, count: int, rows_ptr: int, row_stride: int, coords_ptr: int, coord_stride: int,
               out_dtype: Any, status_ptr: int) -> None: ...


class ChunkDecoder(Protocol):
    """The decoder on the device: (count, F) rows + (count, 3) coords -> count intensities."""

    input_dtype: np.dtype
    output_dtype: np.dtype
    max_points: int

    def enqueue(self, rows_ptr: int, coords_ptr: int, count: int, out_ptr: int, stream: Any) -> None: ...


class CoverageError(ValueError):
    """The feature block lacked a corner the box needs (the sampler's status flag)."""


class DeviceBoxDecoder:
    """Streams, events and buffers for decoding boxes; reused across calls, grown on demand."""

    def __init__(self, device: DeviceApi, sampler: Sampler, decoder: ChunkDecoder, chunk: int):
        self.device, self.sampler, self.decoder = device, sampler, decoder
        chunk = max(1, min(int(chunk), int(decoder.max_points)))
        self.chunk = chunk - chunk % ALIGN_POINTS if chunk >= ALIGN_POINTS else chunk
        self.sample_stream = device.create_stream()
        self.decode_stream = device.create_stream()
        self.sampled = [device.create_event(), device.create_event()]
        self.decoded = [device.create_event(), device.create_event()]
        self.rows = [DeviceBuffer(device), DeviceBuffer(device)]
        self.coords = [DeviceBuffer(device), DeviceBuffer(device)]
        self.result = DeviceBuffer(device)
        self.status = DeviceBuffer(device, 4)
        self.staging = DeviceBuffer(device)  # features uploaded from the host
        self._keep: np.ndarray | None = None

    def upload_features(self, features: np.ndarray) -> DeviceFeatures:
        """Copy a host block (F, b0, b1, b2) to the device on the sample stream."""
        host = np.ascontiguousarray(features, dtype=np.float32)
        ptr = self.staging.ensure(host.nbytes)
        self.device.upload(ptr, host, self.sample_stream)
        self._keep = host  # alive until the stream has read it (synchronised in decode)
        return DeviceFeatures.contiguous(ptr, host.dtype, host.shape)

    def decode(self, features: DeviceFeatures, spec: BoxSpec) -> np.ndarray:
        """Intensities of the box (float32, shape spec.extents); features must cover it."""
        dev, dec = self.device, self.decoder
        if features.shape[1:] != spec.block_shape:
            raise ValueError(f"feature block {features.shape[1:]} does not match the box spec {spec.block_shape}")
        f = features.shape[0]
        total, chunk = spec.points, self.chunk
        in_item, out_item = dec.input_dtype.itemsize, dec.output_dtype.itemsize
        for k in range(2):
            self.rows[k].ensure(min(chunk, total) * f * in_item)
            self.coords[k].ensure(min(chunk, total) * 3 * in_item)
        result_ptr = self.result.ensure(total * out_item)
        status_ptr = self.status.ptr
        dev.memset(status_ptr, 0, 4, self.sample_stream)
        handle = dev.stream_handle(self.sample_stream)
        for i, first in enumerate(range(0, total, chunk)):
            k, count = i % 2, min(chunk, total - first)
            if i >= 2:
                dev.wait(self.sample_stream, self.decoded[k])  # set k is free once chunk i-2 is decoded
            self.sampler.launch(handle, features.ptr, features.dtype, features.strides, f, spec, first, count,
                                self.rows[k].ptr, f, self.coords[k].ptr, 3, dec.input_dtype, status_ptr)
            dev.record(self.sampled[k], self.sample_stream)
            dev.wait(self.decode_stream, self.sampled[k])
            dec.enqueue(self.rows[k].ptr, self.coords[k].ptr, count, result_ptr + first * out_item, self.decode_stream)
            dev.record(self.decoded[k], self.decode_stream)
        status = np.zeros(1, dtype=np.int32)
        out = np.empty(total, dtype=dec.output_dtype)
        # the decode stream has waited on every sampling step, so both copies see finished work
        dev.download(status, status_ptr, self.decode_stream)
        dev.download(out, result_ptr, self.decode_stream)
        dev.synchronize(self.decode_stream)
        self._keep = None
        if status[0]:
            raise CoverageError("the feature block does not cover every input voxel the output box needs")
        return out.astype(np.float32, copy=False).reshape(spec.extents)

    def close(self) -> None:
        for buf in (*self.rows, *self.coords, self.result, self.status, self.staging):
            buf.release()
        for ev in (*self.sampled, *self.decoded):
            self.device.destroy_event(ev)
        for s in (self.sample_stream, self.decode_stream):
            self.device.destroy_stream(s)
        self.sampled, self.decoded = [], []
