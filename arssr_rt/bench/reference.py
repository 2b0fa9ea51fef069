"""Reference (a): the published pipeline done the straightforward way in torch.

Whole-volume encoder, ``F.grid_sample`` of every output point at once, the MLP decoder in
large chunks, fp32, torch's default threading. This is what a user would write from the
paper's code; arssr-rt's modes are timed and compared against it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from arssr_rt import windowed_sinc
from arssr_rt.geometry import normalized_centres
from arssr_rt.network import ArSSR
from arssr_rt.sampling import decoder_axis_coords

DECODER_CHUNK = 1 << 18  # points per decoder call ("large chunks")


def all_coords(out_shape: Sequence[int]) -> torch.Tensor:
    """(1, N, 3) network coordinates of every output voxel, C order, array axis order."""
    axes = [torch.from_numpy(normalized_centres(n)) for n in out_shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(1, -1, 3)


def decoder_coords(lr_shape: Sequence[int], out_shape: Sequence[int], mode: str, feature_scale: int = 1) -> torch.Tensor:
    """(1, N, 3) what the decoder sees for every output voxel: the model's coordinate mode (spec.coords)."""
    axes = [torch.from_numpy(decoder_axis_coords(h, n, 0, n, mode, feature_scale)) for h, n in zip(lr_shape, out_shape)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(1, -1, 3)


@torch.inference_mode()
def reference_upsample(model: ArSSR, lr: np.ndarray, out_shape: Sequence[int], chunk: int = DECODER_CHUNK) -> np.ndarray:
    """Normalised LR (D, H, W) -> normalised output of ``out_shape`` (float32), on the model's device."""
    model.eval()
    device = next(model.parameters()).device
    features = model.encoder(torch.from_numpy(np.ascontiguousarray(lr, dtype=np.float32))[None, None].to(device))
    coords = all_coords(out_shape).to(device)
    sampled = model.query(features, coords)  # (1, N, F): every point at once
    del features
    coords = decoder_coords(lr.shape, out_shape, model.spec.coords, model.spec.feature_scale).to(device)  # "global": as above
    base = base_channels(model, lr, out_shape)
    if base is not None:
        base = base.to(device)
    out = torch.empty(coords.shape[1], device=device)
    for start in range(0, coords.shape[1], chunk):
        stop = min(coords.shape[1], start + chunk)
        decoded = model.decode(sampled[:, start:stop], coords[:, start:stop])
        out[start:stop] = model.combine(decoded, base[:, start:stop] if base is not None else None)[0, :, 0]
    return out.reshape(tuple(out_shape)).cpu().numpy()


def base_channels(model: ArSSR, lr: np.ndarray, out_shape: Sequence[int]) -> torch.Tensor | None:
    """(1, N, C) windowed-sinc base of every output voxel for residual models (spec.base), None
    for direct ones: the residual is over this, so a reference without it is not the model."""
    bases = windowed_sinc.bases_on_grid(np.asarray(lr, dtype=np.float32), out_shape, model.spec.base)
    if not bases:
        return None
    return torch.from_numpy(np.stack([b.reshape(-1) for b in bases], axis=-1)[None])
