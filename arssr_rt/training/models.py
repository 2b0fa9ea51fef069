"""ArSSR reference model in torch: three encoders, the MLP decoder, and a spec registry.

Parameter names and shapes follow the published checkpoint layout exactly (see ARSSR.md),
so the authors' state dicts load with ``strict=True``. Widths and depths are spec
arguments whose defaults reproduce the published models; the embedded default model uses
the same classes with smaller numbers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..bundle_format import validate_spec
from ..geometry import COORD_MODES, PHASE_EPS

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

    def __init__(self, in_dim: int = 131, width: int = 256, depth: int = 4, final_relu: bool = True):
        super().__init__()
        self.stage_one = mlp([in_dim] + [width] * (depth - 1) + [in_dim])
        self.stage_two = mlp([in_dim] + [width] * (depth - 1) + [1], final_relu=final_relu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage_two(x + self.stage_one(x))


class ModulatedDecoder(Decoder):
    """ArSSR decoder plus a coordinate-modulated linear read-out of the features.

    y = stage_two(x + stage_one(x)) + <feature, modulator(coord)>. With phase coordinates the
    modulator turns the trilinearly blended features into phase-dependent interpolation
    weights, which a ReLU MLP over [feature, coord] can only approximate with many pieces
    (it would need products of coordinates and intensities). Same I/O as the ArSSR decoder.
    """

    def __init__(self, in_dim: int, width: int, depth: int, feature_dim: int, mod_width: int = 64):
        super().__init__(in_dim, width, depth, final_relu=False)
        self.feature_dim = feature_dim
        self.modulator = mlp([3, mod_width, mod_width, feature_dim], final_relu=False)
        nn.init.zeros_(self.modulator[-1].weight)  # starts as the plain decoder (warm starts)
        nn.init.zeros_(self.modulator[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats, coords = x[..., : self.feature_dim], x[..., self.feature_dim :]
        return super().forward(x) + (feats * self.modulator(coords)).sum(dim=-1, keepdim=True)


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


@dataclass
class ModelSpec:
    """What a model is, small enough to store in ``model.json`` and rebuild it from."""

    encoder: str = "rdn"
    feature_dim: int = 128
    encoder_args: dict[str, Any] = field(default_factory=dict)
    decoder_width: int = 256
    decoder_depth: int = 4
    coords: str = "global"  # decoder coordinate mode: "global" (published) or "phase"
    decoder: str = "arssr"  # "arssr" (published) or "modulated" (ModulatedDecoder)
    feature_scale: int = 1  # feature grid r times finer than the LR grid (SubpixelEncoder)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelSpec":
        """A spec from model.json / a checkpoint; unknown keys or bad values are a ModelError."""
        return cls(**validate_spec(dict(d)))


class ArSSR(nn.Module):
    """Encoder + trilinear feature query + decoder; ``forward`` mirrors the published API."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        if spec.encoder not in ENCODERS:
            raise ValueError(f"unknown encoder {spec.encoder!r}; known: {', '.join(sorted(ENCODERS))}")
        if spec.coords not in COORD_MODES:
            raise ValueError(f"unknown coordinate mode {spec.coords!r}; known: {', '.join(COORD_MODES)}")
        self.spec = spec
        self.encoder = ENCODERS[spec.encoder](feature_dim=spec.feature_dim, **spec.encoder_args)
        if spec.feature_scale > 1:
            self.encoder = SubpixelEncoder(self.encoder, spec.feature_dim, spec.feature_scale)
        elif spec.feature_scale != 1:
            raise ValueError(f"feature_scale must be a positive integer, got {spec.feature_scale}")
        if spec.decoder == "modulated":
            self.decoder: Decoder = ModulatedDecoder(spec.feature_dim + 3, spec.decoder_width, spec.decoder_depth, spec.feature_dim)
        elif spec.decoder == "arssr":
            self.decoder = Decoder(spec.feature_dim + 3, spec.decoder_width, spec.decoder_depth)
        else:
            raise ValueError(f"unknown decoder {spec.decoder!r}; known: arssr, modulated")

    @property
    def receptive_radius(self) -> int:
        return int(self.encoder.receptive_radius)

    def query(self, features: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """Sample ``features`` (B,F,D,H,W) at ``coords`` (B,K,3, array axis order) -> (B,K,F)."""
        b, k = coords.shape[:2]
        grid = coords.flip(-1).view(b, 1, 1, k, 3)
        sampled = F.grid_sample(features, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return sampled.view(b, features.shape[1], k).permute(0, 2, 1)

    def decode(self, sampled: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.cat([sampled, coords], dim=-1))

    def decoder_coords(self, coords: torch.Tensor, lr_shape: Sequence[int]) -> torch.Tensor:
        """What the decoder sees for global ``coords``: themselves, or the cell phase."""
        if self.spec.coords == "global":
            return coords
        n = torch.tensor([float(v) * self.spec.feature_scale for v in lr_shape[-3:]], dtype=torch.float64)
        p = (coords.double() + 1) / 2 * n - 0.5
        return (2 * (p - torch.floor(p + PHASE_EPS)) - 1).to(coords.dtype)

    def forward(self, lr: torch.Tensor, coords: torch.Tensor, decoder_coords: torch.Tensor | None = None) -> torch.Tensor:
        """lr (B,1,D,H,W), coords (B,K,3) in [-1,1] -> intensity (B,K,1).

        ``decoder_coords`` (exact, from integer indices) may be passed by training code; else
        they are derived from ``coords`` for the model's coordinate mode.
        """
        if decoder_coords is None:
            decoder_coords = self.decoder_coords(coords, lr.shape)
        return self.decode(self.query(self.encoder(lr), coords), decoder_coords)


PUBLISHED_SPECS: dict[str, ModelSpec] = {
    "rdn": ModelSpec("rdn"),
    "rescnn": ModelSpec("rescnn"),
    "srresnet": ModelSpec("srresnet"),
}


def build_model(spec: ModelSpec | dict[str, Any] | str) -> ArSSR:
    """Build a model from a spec, a spec dict, or a published encoder name."""
    if isinstance(spec, str):
        spec = PUBLISHED_SPECS[spec]
    elif isinstance(spec, dict):
        spec = ModelSpec.from_dict(spec)
    return ArSSR(spec)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
