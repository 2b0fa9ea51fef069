"""ArSSR MLP decoders: the published two-stage MLP and the coordinate-modulated variant."""

from __future__ import annotations

import torch
from torch import nn


def mlp(sizes: list[int], final_relu: bool = True) -> nn.Sequential:
    """Linear layers with a ReLU after every one, the last too (published decoder) unless told."""
    mods: list[nn.Module] = []
    for k, (cin, cout) in enumerate(zip(sizes[:-1], sizes[1:])):
        mods.append(nn.Linear(cin, cout))
        if final_relu or k < len(sizes) - 2:
            mods.append(nn.ReLU(inplace=True))
    return nn.Sequential(*mods)


class Decoder(nn.Module):
    """Two-stage MLP: y = stage_two(x + stage_one(x)), x = [feature, coord]."""

    def __init__(self, in_dim: int = 131, width: int = 256, depth: int = 4, final_relu: bool = True, outputs: int = 1):
        super().__init__()
        self.stage_one = mlp([in_dim] + [width] * (depth - 1) + [in_dim])
        self.stage_two = mlp([in_dim] + [width] * (depth - 1) + [outputs], final_relu=final_relu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage_two(x + self.stage_one(x))


class ModulatedDecoder(Decoder):
    """ArSSR decoder plus a coordinate-modulated linear read-out of the features.

    y = stage_two(x + stage_one(x)) + <feature, modulator(coord)>. With phase coordinates the
    modulator turns the trilinearly blended features into phase-dependent interpolation
    weights, which a ReLU MLP over [feature, coord] can only approximate with many pieces
    (it would need products of coordinates and intensities). Same I/O as the ArSSR decoder;
    with ``outputs`` 2 (gated base) the read-out adds to the first channel, the intensity.
    """

    def __init__(self, in_dim: int, width: int, depth: int, feature_dim: int, mod_width: int = 64, outputs: int = 1):
        super().__init__(in_dim, width, depth, final_relu=False, outputs=outputs)
        self.feature_dim = feature_dim
        self.modulator = mlp([3, mod_width, mod_width, feature_dim], final_relu=False)
        nn.init.zeros_(self.modulator[-1].weight)  # starts as the plain decoder (warm starts)
        nn.init.zeros_(self.modulator[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats, coords = x[..., : self.feature_dim], x[..., self.feature_dim :]
        y = super().forward(x)
        read_out = (feats * self.modulator(coords)).sum(dim=-1, keepdim=True)
        if y.shape[-1] == 1:
            return y + read_out
        return torch.cat([y[..., :1] + read_out, y[..., 1:]], dim=-1)
