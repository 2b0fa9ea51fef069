"""A MONAI-style dictionary transform, without importing MONAI: ``ArssrUpsampled``.

Why here: MONAI and TorchIO pipelines pass dicts of channel-first images; super-resolution is
one more step there, and it must move the affine with the data (the output grid keeps the
field of view, so spacing and origin change). It follows MONAI's ``MapTransform`` conventions
(``keys``, ``meta_key_postfix``, ``allow_missing_keys``) so it drops into ``Compose``, but it is
a plain callable: arssr-rt has no MONAI dependency.
"""

from __future__ import annotations

from typing import Any, Hashable, Iterable, Mapping

import numpy as np

from .params import python_api


class ArssrUpsampled:
    """Super-resolve ``data[key]`` for each of ``keys`` and update its affine.

    Takes a dict whose ``data[key]`` is a channel-first (C, X, Y, Z) numpy array or torch
    tensor (or a 3-D array). The affine comes from, in this order: the ``affine`` of
    ``data[f"{key}_{meta_key_postfix}"]`` (MONAI's meta dict, ``image_meta_dict``; updated in a
    copy, same array type), else the tensor's own ``.affine`` (a MONAI MetaTensor comes back as
    a MetaTensor with the new affine), else 1 mm voxels (the affine is then not recorded).
    Each channel is normalised and super-resolved on its own; the output is float32 (a float
    tensor keeps its dtype) unless ``dtype``. Other entries pass through unchanged. Not
    invertible (MONAI's ``inverse`` does not apply).

    ``scale`` / ``voxel_size`` / ``shape``: exactly one, as in ``arssr_rt.upsample``; the other
    keyword options are ``arssr_rt.upsample``'s (model, backend, threads, tile, max_memory,
    dtype, interp, clip_to_input_range, ...). The model loads on the first call (so a
    transform can be built and pickled to DataLoader workers cheaply) and is kept; pass
    ``upsampler=`` to share one ``arssr_rt.Upsampler``; ``close()`` frees it.
    """

    CALL_OPTIONS = ("dtype", "interp", "clip_to_input_range", "progress", "max_output_voxels")

    def __init__(self, keys: Hashable | Iterable[Hashable], scale: Any = None, voxel_size: Any = None, shape: Any = None, *,
                 meta_key_postfix: str = "meta_dict", allow_missing_keys: bool = False, upsampler: Any = None, **options: Any):
        self.keys = (keys,) if isinstance(keys, (str, bytes)) or not isinstance(keys, Iterable) else tuple(keys)
        self.size = dict(scale=scale, voxel_size=voxel_size, shape=shape)
        self.meta_key_postfix, self.allow_missing_keys = meta_key_postfix, allow_missing_keys
        import inspect

        from .api import Upsampler

        self.call_options = {k: options.pop(k) for k in self.CALL_OPTIONS if k in options}
        inspect.signature(Upsampler).bind(**options)  # a misspelt option fails here, not on the first batch
        self.engine_options = options
        self._upsampler, self._owned = upsampler, upsampler is None

    @python_api
    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.keys:
            if key not in d:
                if self.allow_missing_keys:
                    continue
                raise KeyError(f"key {key!r} is not in the data (pass allow_missing_keys=True to skip it)")
            meta_key = f"{key}_{self.meta_key_postfix}"
            meta = d.get(meta_key)
            affine = meta.get("affine") if isinstance(meta, Mapping) else None
            if affine is None:
                d[key] = self._up()(d[key], **self.size, **self.call_options)
                continue
            out, out_affine = self._up()(d[key], _as_numpy(affine), **self.size, **self.call_options)
            d[key] = out
            d[meta_key] = {**meta, "affine": _like(affine, out_affine)}
        return d

    def _up(self) -> Any:
        if self._upsampler is None:
            from .api import Upsampler

            self._upsampler = Upsampler(**self.engine_options)
        return self._upsampler

    def close(self) -> None:
        """Free the model this transform loaded (a shared ``upsampler`` stays open)."""
        if self._owned and self._upsampler is not None:
            self._upsampler.close()
            self._upsampler = None

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers load their own model
        state = dict(self.__dict__)
        if self._owned:
            state["_upsampler"] = None
        return state


def _as_numpy(affine: Any) -> np.ndarray:
    detach = getattr(affine, "detach", None)
    return np.asarray(detach().cpu().numpy() if detach is not None else affine, dtype=np.float64)


def _like(template: Any, affine: np.ndarray) -> Any:
    """``affine`` as the same kind of array as ``template`` (torch tensor or numpy)."""
    if hasattr(template, "detach"):
        import torch

        return torch.as_tensor(affine, dtype=template.dtype, device=template.device)
    return np.asarray(affine, dtype=np.asarray(template).dtype)


__all__ = ["ArssrUpsampled"]
