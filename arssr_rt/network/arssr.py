"""The ArSSR network: a spec (what ``model.json`` stores), the model, and its builder.

Widths and depths are spec arguments whose defaults reproduce the published models; the
embedded default model uses the same classes with smaller numbers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import windowed_sinc
from ..bundle_format import validate_spec
from ..sampling import COORD_MODES, cell_phase
from .decoders import Decoder, ModulatedDecoder
from .encoders import ENCODERS, SubpixelEncoder


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
    base: str = "none"  # "lanczos3": the decoder predicts the residual over windowed-sinc interpolation
    # ("gated-lanczos3-8": residual + a per-point gate between Lanczos-3 and Lanczos-8; training only)

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
        if spec.base not in windowed_sinc.BASES:
            raise ValueError(f"unknown base {spec.base!r}; known: {', '.join(windowed_sinc.BASES)}")
        outputs = windowed_sinc.decoder_outputs(spec.base)
        if spec.decoder == "modulated":
            self.decoder: Decoder = ModulatedDecoder(spec.feature_dim + 3, spec.decoder_width, spec.decoder_depth, spec.feature_dim,
                                                     outputs=outputs)
        elif spec.decoder == "arssr":
            self.decoder = Decoder(spec.feature_dim + 3, spec.decoder_width, spec.decoder_depth, final_relu=spec.base == "none",
                                   outputs=outputs)
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
        return cell_phase(p).to(coords.dtype)

    def base_at(self, lr: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """The residual base channels at ``coords`` (B,K,C): windowed-sinc interpolation of ``lr``.

        Computed by the runtime's numpy implementation (the LR is data, not a parameter, so no
        gradient is needed), so training, the torch reference and every backend add the same.
        """
        n = np.array(lr.shape[-3:], dtype=np.float64)
        lr_np = lr.detach().float().cpu().numpy()
        pos = (coords.detach().double().cpu().numpy() + 1) / 2 * n - 0.5
        base = np.stack([np.stack([windowed_sinc.sample_points(lr_np[b, 0], pos[b], a) for a in windowed_sinc.base_lobes(self.spec.base)],
                                  axis=-1) for b in range(lr_np.shape[0])])
        return torch.from_numpy(base).to(lr.device)

    def combine(self, decoded: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """Intensity (..., 1) from the decoder's output and the base channels at the same points:
        the output itself ("none"), output + base, or r + l3 + sigmoid(g) (l8 - l3) (gated)."""
        if self.spec.base == "none":
            return decoded
        base = base.to(decoded.dtype)
        if self.spec.base == windowed_sinc.GATED:
            r, g = decoded[..., :1], decoded[..., 1:2]
            return r + base[..., :1] + torch.sigmoid(g) * (base[..., 1:2] - base[..., :1])
        return decoded + base

    def forward(self, lr: torch.Tensor, coords: torch.Tensor, decoder_coords: torch.Tensor | None = None,
                base: torch.Tensor | None = None) -> torch.Tensor:
        """lr (B,1,D,H,W), coords (B,K,3) in [-1,1] -> intensity (B,K,1).

        ``decoder_coords`` (exact, from integer indices) and ``base`` may be passed by training
        code; else they are derived from ``coords`` for the model's coordinate mode and base.
        """
        if decoder_coords is None:
            decoder_coords = self.decoder_coords(coords, lr.shape)
        out = self.decode(self.query(self.encoder(lr), coords), decoder_coords)
        if self.spec.base == "none":
            return out
        if base is None:
            base = self.base_at(lr, coords)
        return self.combine(out, base)

    def start_as_base(self) -> None:
        """Zero the decoder's output layers so the model starts as exactly its base (a warm
        start of a residual model from a direct one keeps every other learned weight)."""
        last = [m for m in self.decoder.stage_two if isinstance(m, nn.Linear)][-1]
        with torch.no_grad():
            last.weight.zero_()
            last.bias.zero_()
            modulator = getattr(self.decoder, "modulator", None)
            if modulator is not None:
                modulator[-1].weight.zero_()
                modulator[-1].bias.zero_()


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
