"""The public Python API: ``arssr_rt.upsample``, ``arssr_rt.Upsampler``, ``arssr_rt.upsample_file``.

Why a layer over ``pipeline``: Python users hand over what their toolbox holds (a nibabel
image, a (X, Y, Z) array with its affine, a MONAI/TorchIO-style channel-first (C, X, Y, Z)
array or tensor) and expect the same kind back, with the geometry right and the same voxels
the CLI would write. Every entry point here runs inside ``params.python_names()``, so its
errors name parameters (``tile must be ...``), not CLI flags. Each input volume (channel,
time point) is validated and normalised on its own, exactly as a 3-D CLI run would be.
torch is imported only when a tensor is given (it is then already imported).
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .errors import InputError, OutputError
from .params import flag, python_api
from .pipeline import DEFAULT_MAX_MEMORY, DEFAULT_MAX_OUTPUT_VOXELS, choose_interp
from .volume import Volume

# progress(done, total): output voxels done so far and in all, after each decoded chunk
Progress = Callable[[int, int], None]


def _torch_tensor(x: Any) -> bool:
    """True for a torch.Tensor (MetaTensor included), without importing torch: a tensor exists
    only if torch is already imported."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _nibabel_image(x: Any) -> bool:
    if not type(x).__module__.startswith("nibabel"):
        return False
    from nibabel.spatialimages import SpatialImage

    return isinstance(x, SpatialImage)


@dataclass
class _Input:
    """An API input as validated 3-D volumes plus what it takes to give back the same kind."""

    kind: str  # "image" | "array" | "tensor"
    volumes: list[Volume]
    original: Any
    layout: str  # "3d" | "channels" (C, X, Y, Z) | "series" (X, Y, Z, T) of a nibabel image
    affine_given: bool = False  # affine= was passed: (data, affine) comes back
    own_affine: bool = False  # a MetaTensor-like tensor's .affine was used: it comes back on the tensor


def _check_array(where: str, arr: np.ndarray, affine: np.ndarray) -> None:
    from .validation import check_affine, check_voxels

    if min(arr.shape) < 2:
        raise InputError(f"{where}: every axis needs at least 2 voxels, got shape {arr.shape}")
    check_voxels(where, arr)
    check_affine(where, affine)


def _volumes_from_channels(where: str, data: np.ndarray, affine: np.ndarray, header: Any = None, part: str = "channel",
                           meta: dict[str, Any] | None = None, **kw: Any) -> list[Volume]:
    """One validated Volume per channel of a (C, X, Y, Z) float32 array; ``meta["name"]`` is
    what messages call it (``tensor (channel 2)``)."""
    volumes = []
    for c in range(data.shape[0]):
        name = where if data.shape[0] == 1 else f"{where} ({part} {c})"
        channel = np.ascontiguousarray(data[c])
        _check_array(name, channel, affine)
        volumes.append(Volume(data=channel, affine=affine, header=header, meta={**(meta or {}), "name": name}, **kw))
    return volumes


def _from_image(img: Any) -> _Input:
    """A nibabel spatial image: 3-D, or 4-D (X, Y, Z, T) done volume by volume (NIfTI)."""
    import nibabel as nib

    from .nifti_io import _quiet_nibabel, affine_in_mm
    from .validation import check_scalar_dtype

    where = img.get_filename() or "image"
    shape = tuple(int(n) for n in img.shape)
    on_disk = np.dtype(img.get_data_dtype())
    check_scalar_dtype(where, on_disk)
    if len(shape) < 3:
        raise InputError(f"{where}: is {len(shape)}-D (shape {shape}); a 3-D volume is needed")
    frames = int(np.prod(shape[3:]))
    if len(shape) > 4 and frames != 1:
        raise InputError(f"{where}: is {len(shape)}-D with shape {shape}; a 3-D volume or a 4-D series (x, y, z, t) is needed")
    if frames > 1 and not isinstance(img, nib.Nifti1Pair):
        raise InputError(f"{where}: a {type(img).__name__} with {frames} frames; 4-D series are taken as NIfTI images")
    with _quiet_nibabel():
        affine = np.asarray(img.affine, dtype=np.float64)
        data = np.asarray(img.get_fdata(dtype=np.float32), dtype=np.float32).reshape(shape[:3] + (frames,))
        header = img.header
        if isinstance(img, nib.Nifti1Pair) and not np.allclose(header.get_best_affine(), affine):
            header = type(img)(img.dataobj, affine, header).header  # an in-memory image whose header lags its affine
        affine = affine_in_mm(affine, header)  # xyzt_units metres/microns: grids are in mm
    # scaling as the file stores it (nibabel moves it from the header into the proxy on load)
    meta = {"scl_slope": float(getattr(img.dataobj, "slope", 1.0)), "scl_inter": float(getattr(img.dataobj, "inter", 0.0))}
    volumes = _volumes_from_channels(where, np.moveaxis(data, -1, 0), affine, header, part="volume", meta=meta,
                                     source_dtype=on_disk.newbyteorder("="))
    return _Input("image", volumes, img, "series" if frames > 1 else "3d")


def _prepare(x: Any, affine: Any) -> _Input:
    """Validate ``x`` (and ``affine``) before any model is loaded."""
    if _nibabel_image(x):
        if affine is not None:
            raise InputError("a nibabel image carries its own affine: drop affine=")
        return _from_image(x)
    if _torch_tensor(x):
        kind, own_affine = "tensor", getattr(x, "affine", None)
        import torch

        arr = x.detach().to(device="cpu", dtype=torch.float32).numpy()
    elif isinstance(x, np.ndarray) or hasattr(x, "__array__"):
        kind, own_affine = "array", None
        arr = np.asarray(x)
        if arr.dtype.kind not in "biuf":
            raise InputError(f"the array has {arr.dtype} values; a real-valued (grey-level) image is needed")
        arr = np.asarray(arr, dtype=np.float32)
    else:
        raise InputError(f"x must be a nibabel image, a numpy array or a torch tensor, got {type(x).__name__}")
    if arr.ndim not in (3, 4):
        raise InputError(f"expected a 3-D (X, Y, Z) or channel-first 4-D (C, X, Y, Z) {kind}, got shape {tuple(arr.shape)}")
    given = affine is not None
    if affine is None and own_affine is not None:  # a MONAI MetaTensor-like tensor
        affine = np.asarray(own_affine.detach().cpu().numpy() if _torch_tensor(own_affine) else own_affine, dtype=np.float64)
    aff = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4):
        raise InputError(f"affine must be a 4x4 matrix, got shape {aff.shape}")
    layout = "3d" if arr.ndim == 3 else "channels"
    volumes = _volumes_from_channels(kind, arr[None] if arr.ndim == 3 else arr, aff)
    return _Input(kind, volumes, x, layout, affine_given=given, own_affine=own_affine is not None and not given)


def _output_dtype(dtype: str | None) -> np.dtype | None:
    from .intensity import choose_output_dtype

    return None if dtype is None else choose_output_dtype(None, dtype)


def _progress(progress: Progress | bool | None, total: int):
    """(per-chunk callback taking a voxel count, closer): a callable gets (done, total);
    True draws a rich bar on stderr."""
    if not progress:
        return None, lambda: None
    if progress is True:
        from rich.console import Console
        from rich.progress import BarColumn, Progress as Bar, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        bar = Bar(TextColumn("[bold]upsampling"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=Console(stderr=True))
        task = bar.add_task("up", total=total)
        bar.start()
        return (lambda n: bar.advance(task, n)), bar.stop
    if not callable(progress):
        raise InputError(f"progress must be a callable (done, total), True or None, got {progress!r}")
    done = [0]

    def step(n: int) -> None:
        done[0] += n
        progress(done[0], total)

    return step, lambda: None


def _note(line: str) -> None:
    """Notes and warnings the CLI prints on stderr are Python warnings here, attributed to the
    caller's line (the first frame outside this package)."""
    package, frame, level = os.path.dirname(os.path.abspath(__file__)), sys._getframe(1), 2
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package + os.sep):
        frame, level = frame.f_back, level + 1
    warnings.warn(line.removeprefix("warning: "), UserWarning, stacklevel=level)


class Upsampler:
    """A model and backend loaded once, for many volumes: ``up(x, scale=2)`` takes and returns
    what ``arssr_rt.upsample`` does. Close it (or use ``with``) to free the backend.

    Options fixed for its lifetime: ``model`` (name, bundle folder or ModelBundle; default the
    embedded model), ``backend`` (``auto`` | onnxruntime | openvino | torch | tensorrt |
    torch-cuda), ``device`` (GPU index), ``threads`` (CPU threads, default all cores),
    ``precision`` (fp32 or a faster mode the backend supports), ``tile`` (encoder tile core in
    voxels, >= 8; default from ``max_memory``), ``chunk`` (points decoded per step),
    ``max_memory`` (peak bytes, or text such as ``"2G"``), ``normalization`` (minmax |
    percentile), ``as_intensity`` (take a label-map-like image as intensities),
    ``keep_acquired`` (True or a slice profile "box" | "gaussian": data consistency for
    thick slices, ``slice_gap`` as a fraction of the spacing; "kspace": for a band-limited
    input, keep its own k-space inside the acquired band), ``tta`` (1, 2, 4 or 8 inference passes
    over flips of the input, averaged: 2 adds the flip of the most up-sampled axis; each pass
    costs one up-sampling), ``ensemble`` (more models, names or bundle folders, whose outputs
    are averaged with ``model``'s; each costs one up-sampling).
    """

    @python_api
    def __init__(self, model: Any = None, *, backend: Any = "auto", device: int = 0, threads: int | None = None,
                 precision: str = "fp32", tile: int | None = None, chunk: int | None = None,
                 max_memory: int | str = DEFAULT_MAX_MEMORY, normalization: str = "minmax", as_intensity: bool = False,
                 keep_acquired: bool | str = False, slice_gap: float = 0.0, tta: int = 1, ensemble: Sequence[Any] = ()):
        from .backends.base import BackendOptions
        from .pipeline import VolumeEngine as Engine

        kwargs = _engine_settings(tile=tile, chunk=chunk, threads=threads, max_memory=max_memory, normalization=normalization,
                                  keep_acquired=keep_acquired, slice_gap=slice_gap, as_intensity=as_intensity, tta=tta,
                                  ensemble=ensemble)
        options = BackendOptions(device=device, threads=threads, precision=precision)
        self._engine = Engine(model, backend, options, **kwargs)

    @property
    def backend_name(self) -> str:
        """The backend that opened (``auto`` resolved)."""
        return self._engine.backend.name

    @property
    def model_name(self) -> str:
        return self._engine.model_name

    def __enter__(self) -> "Upsampler":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._engine.close()

    @python_api
    def __call__(self, x: Any, affine: Any = None, *, scale: Any = None, voxel_size: Any = None, shape: Any = None,
                 reference: Any = None, dtype: str | None = None, interp: str | None = None, clip_to_input_range: bool = False,
                 progress: Progress | bool | None = None, max_output_voxels: int = DEFAULT_MAX_OUTPUT_VOXELS) -> Any:
        """Super-resolve ``x``; see ``arssr_rt.upsample`` for inputs and what comes back."""
        return _run(x, affine, dict(scale=scale, voxel_size=voxel_size, shape=shape), dtype, interp, clip_to_input_range,
                    progress, max_output_voxels, lambda: self._engine, self._engine.as_intensity, reference)

    run = __call__


def _engine_settings(*, tile: Any, chunk: Any, threads: Any, max_memory: Any, normalization: str, keep_acquired: Any,
                     slice_gap: float, as_intensity: bool, tta: Any = 1, ensemble: Any = ()) -> dict[str, Any]:
    """pipeline.VolumeEngine keyword arguments, checked (one line naming the parameter)."""
    from .consistency import check_slice_profile
    from .intensity import check_mode
    from .options import check_tile, max_memory_bytes
    from .tta import check_passes

    check_tile(tile)
    for name, value in (("chunk", chunk), ("threads", threads)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
            raise InputError(f"{flag(name)} must be a whole number >= 1, got {value!r}")
    check_mode(normalization)
    check_passes(tta)
    profile = "box" if keep_acquired is True else (keep_acquired or None)
    if profile is not None:
        check_slice_profile(profile, slice_gap)
    return dict(tile=tile, chunk=chunk, max_memory=max_memory_bytes(max_memory), normalization=normalization,
                as_intensity=bool(as_intensity), keep_acquired=profile, slice_gap=slice_gap, tta_passes=tta,
                ensemble=tuple(ensemble or ()))


def _reference(reference: Any) -> Any:
    """A reference given as a path, or as a nibabel image (its grid; nothing is read twice)."""
    if reference is None or not _nibabel_image(reference):
        return reference
    from .geometry import OutputGrid, spacing_of
    from .reference import Reference

    shape = tuple(int(n) for n in reference.shape[:3])
    if len(shape) != 3 or min(shape) < 2:
        raise InputError(f"{flag('reference')}: needs a 3-D (or 4-D) image, got shape {reference.shape}")
    from .nifti_io import affine_in_mm

    affine = affine_in_mm(reference.affine, reference.header)  # a NIfTI in metres/microns: mm
    return Reference(path=Path(reference.get_filename() or "<reference image>"),
                     grid=OutputGrid(shape, affine, spacing_of(affine)),  # type: ignore[arg-type]
                     volumes=int(np.prod(reference.shape[3:])) if len(reference.shape) > 3 else 1)


def _run(x: Any, affine: Any, size: dict[str, Any], dtype: str | None, interp: str | None, clip: bool,
         progress: Progress | bool | None, max_output_voxels: int, engine: Callable[[], Any], as_intensity: bool,
         reference: Any = None) -> Any:
    """Every check first (input, size or reference, dtype, interp), then each volume through the
    model or the classical resampler (render.py: the CLI's path), then the result in the
    input's kind."""
    from .options import check_grid_options
    from .render import plan_target, render
    from .resample import parse_interp

    check_grid_options(reference=reference, **size)
    given = _prepare(x, affine)
    first = given.volumes[0]
    out_dtype = _output_dtype(dtype)
    parse_interp(interp)
    methods = []
    for v in given.volumes:
        methods.append(choose_interp(v, interp, as_intensity, _note))
    target = plan_target(first, "model" if "model" in methods else methods[0], reference=_reference(reference),
                         max_output_voxels=max_output_voxels // len(given.volumes), on_note=_note, **size)
    grid = target.grid
    up = engine() if "model" in methods else None
    step, stop = _progress(progress, target.model_grid.voxels * len(given.volumes))
    results = []
    try:
        for v, method in zip(given.volumes, methods):
            result = render(v, target, method, up, step if method == "model" else None, clip,
                            up.max_memory if up is not None else None)
            if method != "model" and step:
                step(target.model_grid.voxels)
            results.append(np.asarray(result, dtype=np.float32))
    finally:
        stop()
    from .provenance import describe
    from .writers import reference_label, size_label

    # an image comes back with the descrip the CLI writes into its file
    label = (reference_label(getattr(reference, "get_filename", lambda: None)() or "reference" if _nibabel_image(reference) else reference)
             if reference is not None else size_label(size["scale"], size["voxel_size"], size["shape"]))
    descrip = describe(label, up.model_name if up is not None else None, methods[0])
    return _give_back(given, results, grid, out_dtype, dtype, descrip)


def _give_back(given: _Input, results: list[np.ndarray], grid: Any, out_dtype: np.dtype | None, dtype: str | None,
               descrip: str | None = None) -> Any:
    """The input's kind: an image of the same family, or (data, affine) / data."""
    from .intensity import to_output_dtype
    from .memory import all_finite

    if not all(all_finite(r) for r in results):
        raise OutputError("the result has NaN/Inf voxels (model or backend fault)")
    if given.kind == "image":
        return _image_like(given, results, grid, dtype, descrip)
    data = results[0] if given.layout == "3d" else np.stack(results)
    if given.kind == "tensor":
        data = _tensor_like(given.original, data, grid.affine, out_dtype, given.own_affine)
    elif out_dtype is not None:
        data = to_output_dtype(data, out_dtype)
    return (data, grid.affine) if given.affine_given else data


def _image_like(given: _Input, results: list[np.ndarray], grid: Any, dtype: str | None, descrip: str | None = None) -> Any:
    """NIfTI in -> NIfTI (1 or 2; pairs come back single-file) with the CLI's header rules;
    MGH in -> MGH; other formats -> NIfTI-1 with a fresh header. float32 unless ``dtype``."""
    import nibabel as nib

    from .io_mgh import mgh_image
    from .nifti_write import nifti_image

    source = given.volumes[0]
    data = results[0] if given.layout == "3d" else np.stack(results, axis=-1)
    dtype = dtype or "float32"
    if isinstance(given.original, nib.MGHImage):
        image = mgh_image(data, grid, source, dtype)
    else:
        header_source = source if isinstance(given.original, nib.Nifti1Pair) else Volume(source.data, source.affine)
        image = nifti_image(data, grid, header_source, dtype, descrip)
    if np.dtype(image.get_data_dtype()).kind in "iu":  # stored integers + scaling: decode as a reader would
        image = type(image).from_bytes(image.to_bytes())
    return image


def _tensor_like(x: Any, data: np.ndarray, out_affine: np.ndarray, out_dtype: np.dtype | None, with_affine: bool) -> Any:
    """A tensor on ``x``'s device: ``x``'s dtype when floating (else float32) unless ``dtype``;
    a MetaTensor-like ``x`` (has ``.affine``) gets the output affine on its own class."""
    import torch

    from .intensity import to_output_dtype

    if out_dtype is not None:
        data = to_output_dtype(data, out_dtype)
        target = torch.from_numpy(np.empty(0, out_dtype)).dtype
    else:
        target = x.dtype if x.dtype.is_floating_point else torch.float32
    out = torch.from_numpy(np.ascontiguousarray(data)).to(device=x.device, dtype=target)
    if with_affine:
        meta = {k: v for k, v in dict(getattr(x, "meta", {}) or {}).items() if k != "affine"}
        out = type(x)(out, affine=torch.as_tensor(out_affine, dtype=torch.float64), meta=meta)
    return out


@python_api
def upsample(x: Any, affine: Any = None, *, scale: Any = None, voxel_size: Any = None, shape: Any = None,
             reference: Any = None, model: Any = None,
             backend: Any = "auto", device: int = 0, threads: int | None = None, precision: str = "fp32",
             tile: int | None = None, chunk: int | None = None, max_memory: int | str = DEFAULT_MAX_MEMORY,
             normalization: str = "minmax", dtype: str | None = None, interp: str | None = None,
             clip_to_input_range: bool = False, keep_acquired: bool | str = False, slice_gap: float = 0.0,
             progress: Progress | bool | None = None, as_intensity: bool = False,
             max_output_voxels: int = DEFAULT_MAX_OUTPUT_VOXELS, tta: int = 1, ensemble: Sequence[Any] = ()) -> Any:
    """Super-resolve a volume onto the grid of exactly one of ``scale`` / ``voxel_size`` (mm) /
    ``shape``, keeping the field of view (the CLI's geometry and voxels), or onto the grid of
    ``reference`` (a path or a nibabel image: its shape and affine, like ``--reference``).

    ``x`` and what comes back:

    - a nibabel image (NIfTI-1/2, MGH/MGZ, ...) -> a nibabel image of that family with the
      header ``arssr-rt upsample`` would write (qform/sform carried to the new grid, codes,
      zooms, units); a 4-D NIfTI is done volume by volume (TR kept);
    - a 3-D (X, Y, Z) array with ``affine`` -> ``(array, affine)``; without ``affine`` ->
      the array (1 mm voxels assumed);
    - a channel-first (C, X, Y, Z) array or torch tensor (MONAI/TorchIO layout) -> the same
      layout, each channel done on its own; a tensor comes back on its device and dtype, a
      MetaTensor-like one (``.affine``) with the output affine.

    Intensities are in the input's units, float32 unless ``dtype`` (integers are rounded and
    clipped). ``interp`` nearest | linear | cubic resamples without the model (label maps);
    ``progress``: True for a bar on stderr or a callable ``(done, total)`` in output voxels.
    The other options are ``Upsampler``'s. Errors are ``arssr_rt.ArssrError`` (one line).
    """
    size = dict(scale=scale, voxel_size=voxel_size, shape=shape)
    settings = dict(backend=backend, device=device, threads=threads, precision=precision, tile=tile, chunk=chunk,
                    max_memory=max_memory, normalization=normalization, as_intensity=as_intensity,
                    keep_acquired=keep_acquired, slice_gap=slice_gap, tta=tta, ensemble=ensemble)
    _engine_settings(**{k: settings[k] for k in ("tile", "chunk", "threads", "max_memory", "normalization", "keep_acquired",
                                                 "slice_gap", "as_intensity", "tta", "ensemble")})
    opened: list[Upsampler] = []

    def engine() -> Any:  # the model loads only if a volume goes through it
        opened.append(Upsampler(model, **settings))
        return opened[0]._engine

    try:
        return _run(x, affine, size, dtype, interp, clip_to_input_range, progress, max_output_voxels, engine, as_intensity,
                    reference)
    finally:
        for up in opened:
            up.close()


@python_api
def upsample_file(in_path: str | Path, out_path: str | Path | None = None, *, threads: int | None = None, device: int = 0,
                  precision: str = "fp32", max_memory: int | str = DEFAULT_MAX_MEMORY, progress: Progress | bool | None = None,
                  keep_acquired: bool | str = False, upsampler: Upsampler | None = None, **kwargs: Any):
    """Read, super-resolve and atomically write one file, as ``arssr-rt upsample`` does
    (``pipeline.upsample_file``'s options: scale / voxel_size / shape, model, backend, tile,
    chunk, normalization, dtype (default: follow the input), force, output_format, interp,
    clip_to_input_range, as_intensity, slice_gap, ...); returns an UpsampleResult."""
    from .backends.base import BackendOptions
    from .options import check_tile, max_memory_bytes
    from .pipeline import upsample_file as run_file

    check_tile(kwargs.get("tile"))  # the CLI's floor, not the engine's
    profile = "box" if keep_acquired is True else (keep_acquired or None)
    stops: list[Callable[[], None]] = []

    def bar(grid: Any):
        step, stop = _progress(progress, grid.voxels)
        stops.append(stop)
        return step

    try:
        return run_file(in_path, out_path, options=BackendOptions(device=device, threads=threads, precision=precision),
                        max_memory=max_memory_bytes(max_memory), keep_acquired=profile,
                        upsampler=upsampler._engine if upsampler is not None else None,
                        progress=bar if progress else None, on_note=_note, **kwargs)
    finally:
        for stop in stops:
            stop()


__all__ = ["Upsampler", "upsample", "upsample_file"]
