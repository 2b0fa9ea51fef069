"""ArSSR encoders (RDN, ResCNN, SRResNet) in a name registry, plus the sub-pixel wrapper.

Parameter names and shapes follow the published checkpoint layout exactly (see ARSSR.md),
so the authors' state dicts load with ``strict=True``.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

ENCODERS: dict[str, Callable[..., nn.Module]] = {}


def register_encoder(name: str) -> Callable[[type], type]:
    """Add an encoder class to the registry under ``name`` (LIIF-style)."""

    def wrap(cls: type) -> type:
        ENCODERS[name] = cls
        return cls

    return wrap


def conv3(cin: int, cout: int) -> nn.Conv3d:
    return nn.Conv3d(cin, cout, 3, padding=1)


def conv1(cin: int, cout: int) -> nn.Conv3d:
    return nn.Conv3d(cin, cout, 1)


class DenseLayer(nn.Module):
    """conv3 + ReLU whose output is concatenated onto its input (RDN dense connection)."""

    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.conv = conv3(cin, growth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, F.relu(self.conv(x))], dim=1)


class ResidualDenseBlock(nn.Module):
    def __init__(self, channels: int, growth: int, layers: int):
        super().__init__()
        self.layers = nn.Sequential(*[DenseLayer(channels + growth * i, growth) for i in range(layers)])
        self.lff = conv1(channels + growth * layers, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.lff(self.layers(x))


@register_encoder("rdn")
class RDN(nn.Module):
    """Residual dense network encoder (published: G0=G=64, 8 blocks x 3 layers, 128 out)."""

    def __init__(self, feature_dim: int = 128, width: int = 64, growth: int = 64, blocks: int = 8, layers: int = 3):
        super().__init__()
        self.sfe1 = conv3(1, width)
        self.sfe2 = conv3(width, width)
        self.rdbs = nn.ModuleList([ResidualDenseBlock(width, growth, layers) for _ in range(blocks)])
        self.gff = nn.Sequential(conv1(width * blocks, width), conv3(width, width))
        self.output = conv3(width, feature_dim)
        self.receptive_radius = 2 + blocks * layers + 1 + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sfe1 = self.sfe1(x)
        h = self.sfe2(sfe1)
        outs = []
        for block in self.rdbs:
            h = block(h)
            outs.append(h)
        h = self.gff(torch.cat(outs, dim=1)) + sfe1
        return self.output(h)


def conv_relu_stack(channels: int, convs: int) -> nn.Sequential:
    mods: list[nn.Module] = []
    for _ in range(convs):
        mods += [conv3(channels, channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*mods)


@register_encoder("rescnn")
class ResCNN(nn.Module):
    """Residual CNN encoder (published: 64 wide, 3 blocks x 6 convs); output = input + convs."""

    def __init__(self, feature_dim: int = 128, width: int = 64, blocks: int = 3, convs: int = 6):
        super().__init__()
        self.conv_start = nn.Sequential(conv3(1, width), nn.ReLU(inplace=True))
        for i in range(blocks):
            setattr(self, f"block{i + 1}", conv_relu_stack(width, convs))
        self.blocks = blocks
        self.conv_end = nn.Sequential(conv3(width, feature_dim))
        self.receptive_radius = 1 + blocks * convs + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_start(x)
        for i in range(self.blocks):
            h = getattr(self, f"block{i + 1}")(h) + h
        return x + self.conv_end(h)


class SRResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.m = nn.Sequential(
            nn.Sequential(conv3(channels, channels), nn.ReLU(inplace=True)),
            nn.Sequential(conv3(channels, channels)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.m(x)


@register_encoder("srresnet")
class SRResnet(nn.Module):
    """SRResNet-style encoder (published: 18 residual blocks, 64 wide, no global skip)."""

    def __init__(self, feature_dim: int = 128, width: int = 64, blocks: int = 18):
        super().__init__()
        mods: list[nn.Module] = [nn.Sequential(conv3(1, width))]
        mods += [SRResBlock(width) for _ in range(blocks)]
        mods += [nn.Sequential(conv3(width, width)), nn.Sequential(conv3(width, feature_dim))]
        self.features = nn.Sequential(*mods)
        self.receptive_radius = 1 + 2 * blocks + 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class SubpixelEncoder(nn.Module):
    """Encoder whose feature map is ``r`` times finer than the LR grid (3-D pixel shuffle).

    Why: the decoder sees a *linear blend* of the 8 nearest feature vectors, which it cannot
    un-blend; on a grid r times finer, the output voxels of scale r fall exactly on feature
    sites, and at other scales the blend spans half a cell. The fine grid covers the same
    field of view (align_corners=False), so sampling, tiling and the ONNX contract only see a
    feature map whose shape is r times the input tile's.
    """

    def __init__(self, body: nn.Module, feature_dim: int, scale: int):
        super().__init__()
        self.body = body
        self.scale = scale
        self.expand = nn.Conv3d(feature_dim, feature_dim * scale**3, 1)
        self.receptive_radius = body.receptive_radius
        with torch.no_grad():  # start as nearest-neighbour copies of the body's features
            self.expand.weight.zero_()
            self.expand.bias.zero_()
            w = self.expand.weight.view(feature_dim, scale**3, feature_dim)
            for c in range(feature_dim):
                w[c, :, c] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.expand(self.body(x))
        b, _, d, hh, w = h.shape
        r, f = self.scale, h.shape[1] // self.scale**3
        h = h.reshape(b, f, r, r, r, d, hh, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
        return h.reshape(b, f, d * r, hh * r, w * r)
