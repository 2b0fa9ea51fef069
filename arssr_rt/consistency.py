"""Data consistency (``--keep-acquired``): the output, averaged over each acquired voxel's
profile, gives back exactly the acquired value.

Why: super-resolution should add detail between and within the acquired samples, never change
what the scanner measured. With the acquisition written as a separable linear operator
``A = A0 (x) A1 (x) A2`` (per axis, ``Ai`` is (h, H): slice profile of input voxel i over the
output voxels; identity on axes that are not up-sampled), the closest output (least squares)
that reproduces the input is ``Y + pinv(A) (X - A Y)``, and ``pinv(A)`` is separable too:
``pinv(A0) (x) pinv(A1) (x) pinv(A2)``. Each factor is a small dense matrix: ``degrade.slice_matrix``.

``keep_samples`` (the model path's default) is the point-sample counterpart: an output voxel
whose centre coincides with an input voxel centre on all three axes gets that input value
exactly, so ``--scale 1`` is the identity on that axis and an odd integer scale reproduces
every acquired sample at its coinciding output voxel (centre-aligned even scales have none).

``keep_kspace`` (``--acquisition kspace``) is the counterpart for a band-limited input (a
smaller acquisition matrix, zero-filled or not): ``A`` is the central k-space crop onto the
input grid (``fourier.fourier_resample``), ``pinv(A)`` its zero-filling, so the output keeps
the input's own spectrum inside the acquired band and the model's detail outside it: the
scanner's sinc interpolation plus what the model adds beyond the band.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .degrade import slice_matrix  # the acquisition's own profile weights, shared with evaluate
from .geometry import input_index_of_output
from .memory import release_pages

KSPACE = "kspace"  # the acquisition "profile" of a band-limited input (keep_kspace)
COINCIDE_TOLERANCE = 1e-6  # input voxels: an output centre this close to an input centre is on it
SLAB_BYTES = 16 * 1024**2  # float64 slab of the output the projection holds at a time


def check_slice_profile(profile: str, gap: float) -> None:
    """InputError (one line, before any work) for an unknown profile or a gap outside [0, 1)."""
    from .errors import InputError
    from .params import flag

    if profile == KSPACE:
        if gap:
            raise InputError(f"{flag('slice_gap')} applies to thick slices, not to a k-space acquisition; drop it")
        return
    try:
        slice_matrix(8, 4, profile, gap)
    except ValueError as exc:
        raise InputError(f"{flag('keep_acquired')}: {exc}") from None


def check_up_sampled(in_shape: Sequence[int], out_shape: Sequence[int]) -> None:
    """InputError (before any work) when a resized axis gets fewer voxels: there are no
    acquired slices to reproduce by averaging over a coarser output."""
    from .errors import InputError
    from .params import flag

    down = [f"axis {a} ({h} -> {H})" for a, (h, H) in enumerate(zip(in_shape, out_shape)) if H < h]
    if down:
        raise InputError(f"{flag('keep_acquired')} needs every resized axis up-sampled, but this request down-samples "
                         f"{', '.join(down)}")


def _apply(matrix: np.ndarray, data: np.ndarray, axis: int) -> np.ndarray:
    return np.moveaxis(np.tensordot(matrix, data, axes=([1], [axis])), 0, axis)


def _slab_axis(out_shape: Sequence[int], axes: Sequence[int]) -> int:
    """The axis the projection runs slab-wise along: a non-profiled one when there is one
    (its slabs are independent), else axis 0."""
    return next((a for a in range(3) if a not in axes), 0)


def profiled_axes(out_shape: Sequence[int], in_shape: Sequence[int]) -> list[int]:
    return [a for a in range(3) if int(out_shape[a]) != int(in_shape[a])]


def keep_acquired_bytes(out_shape: Sequence[int], in_shape: Sequence[int], slab_bytes: int = SLAB_BYTES,
                        profile: str = "box") -> int:
    """Peak bytes ``keep_acquired`` adds: two float64 arrays of the input's size (times the
    scale of the slab axis when every axis is profiled) and a few slabs. ``kspace``: the
    float32 up-sampled correction and the complex64 spectra of the per-axis transforms, about
    three output-sized float32 arrays."""
    if profile == KSPACE:
        return 3 * 4 * int(np.prod([int(n) for n in out_shape])) + 4 * 4 * int(np.prod([int(n) for n in in_shape]))
    axes = profiled_axes(out_shape, in_shape)
    u = _slab_axis(out_shape, axes)
    rest = [int(in_shape[a]) for a in range(3) if a != u]
    slab = min(slab_bytes, 8 * int(np.prod([int(n) for n in out_shape])))
    return 2 * 8 * int(out_shape[u]) * rest[0] * rest[1] + 4 * slab


def keep_acquired(out: np.ndarray, acquired: np.ndarray, profile: str = "box", gap: float = 0.0,
                  axes: Sequence[int] | None = None, slab_bytes: int = SLAB_BYTES) -> np.ndarray:
    """Project ``out`` in place so that its profile averages equal ``acquired`` (float output).

    ``axes``: the axes the acquisition averaged over (default: every up-sampled axis). Other
    axes must match in size (in-plane samples stay as they are modulo the correction of the
    through-plane residual, which is exact for separable acquisitions).

    Bounded memory: the operator is separable, so ``out`` is read and corrected in float64
    slabs along one axis (``_slab_axis``) with the other axes' factors applied per slab; only
    the residual (input-sized, see ``keep_acquired_bytes``) is whole, never an output-sized
    float64 copy (a file-backed ``out`` is never read whole).

    ``profile="kspace"``: a band-limited acquisition instead (``keep_kspace``; no gap, all axes).
    """
    if profile == KSPACE:
        return keep_kspace(out, acquired)
    if out.ndim != 3 or acquired.ndim != 3:
        raise ValueError("keep_acquired needs 3-D arrays")
    axes = profiled_axes(out.shape, acquired.shape) if axes is None else list(axes)
    for a in range(3):
        if a not in axes and out.shape[a] != acquired.shape[a]:
            raise ValueError(f"axis {a}: output {out.shape[a]} vs input {acquired.shape[a]} voxels, but it is not a profiled axis")
        if a in axes and out.shape[a] < acquired.shape[a]:
            raise ValueError(f"axis {a}: keep_acquired needs an up-sampled axis, got {acquired.shape[a]} -> {out.shape[a]}")
    mats = {a: slice_matrix(out.shape[a], acquired.shape[a], profile, gap) for a in axes}
    u = _slab_axis(out.shape, axes)
    view, acq = np.moveaxis(out, u, 0), np.moveaxis(np.asarray(acquired), u, 0)  # views: writes reach ``out``
    inner = {i + 1: mats[a] for i, a in enumerate(a for a in range(3) if a != u) if a in mats}
    lead = mats.get(u)
    rows = max(1, slab_bytes // max(1, 8 * view.shape[1] * view.shape[2]))
    parts = [slice(r, r + rows) for r in range(0, view.shape[0], rows)]
    forward = np.empty((view.shape[0], acq.shape[1], acq.shape[2]), dtype=np.float64)
    for s in parts:  # A_inner(out), slab by slab
        block = np.asarray(view[s], dtype=np.float64)
        for axis, m in inner.items():
            block = _apply(m, block, axis)
        forward[s] = block
        release_pages(out)
    if lead is not None:
        forward = _apply(lead, forward, 0)
    residual = np.asarray(acq, dtype=np.float64) - forward
    del forward
    if lead is not None:
        residual = _apply(np.linalg.pinv(lead), residual, 0)
    pinvs = {axis: np.linalg.pinv(m) for axis, m in inner.items()}
    for s in parts:  # out += pinv(A) residual, slab by slab
        block = residual[s]
        for axis, m in pinvs.items():
            block = _apply(m, block, axis)
        view[s] += block.astype(out.dtype)
        release_pages(out)
    return out


def keep_kspace(out: np.ndarray, acquired: np.ndarray) -> np.ndarray:
    """Make ``out``'s spectrum inside the acquired band equal ``acquired``'s, in place.

    ``out + pinv(A) (X - A out)`` with ``A`` the centre-aligned k-space crop onto the input grid
    (``fourier_resample``): afterwards ``A out == X`` to float32 precision. Resized axes only
    (an axis kept at its size is its own band). float32 work (~1e-6 of the range).
    """
    from .fourier import fourier_resample

    if out.ndim != 3 or np.ndim(acquired) != 3:
        raise ValueError("keep_kspace needs 3-D arrays")
    for a in range(3):
        if out.shape[a] < np.shape(acquired)[a]:
            raise ValueError(f"axis {a}: keep_kspace needs an up-sampled axis, got {np.shape(acquired)[a]} -> {out.shape[a]}")
    residual = np.asarray(acquired, dtype=np.float32) - fourier_resample(out, np.shape(acquired), dtype=np.float32)
    out += fourier_resample(residual, out.shape, dtype=np.float32).astype(out.dtype, copy=False)
    return out


def coinciding(h: int, H: int, tolerance: float = COINCIDE_TOLERANCE) -> tuple[np.ndarray, np.ndarray]:
    """(output indices, input indices) of one axis h -> H whose voxel centres coincide."""
    pos = input_index_of_output(np.arange(int(H)), int(h), int(H))
    nearest = np.rint(pos)
    hit = (np.abs(pos - nearest) <= tolerance) & (nearest >= 0) & (nearest <= h - 1)
    return np.nonzero(hit)[0], nearest[hit].astype(np.int64)


def keep_samples(out: np.ndarray, acquired: np.ndarray) -> int:
    """Copy ``acquired`` into ``out`` (its FOV-preserving up-sampled grid) wherever an output
    centre coincides with an input centre on all three axes, in place, one output plane at a
    time (a file-backed ``out`` is never read whole). Returns the number of voxels set."""
    hits = [coinciding(h, H) for h, H in zip(acquired.shape, out.shape)]
    if any(o.size == 0 for o, _ in hits):
        return 0
    (o0, i0), (o1, i1), (o2, i2) = hits
    rows, cols = np.ix_(o1, o2), np.ix_(i1, i2)
    for j, i in zip(o0, i0):
        out[j][rows] = acquired[i][cols]
        release_pages(out)
    return int(o0.size * o1.size * o2.size)
