"""Torch side: the ArSSR network used by training, export and the torch backends (extra: torch).

Three encoders in a registry (``encoders``), the MLP decoders (``decoders``) and the model with
its spec and builder (``arssr``). The runtime never imports this package.
"""

from .arssr import PUBLISHED_SPECS, ArSSR, ModelSpec, build_model, count_parameters
from .decoders import Decoder, ModulatedDecoder
from .encoders import ENCODERS, register_encoder

__all__ = ["ArSSR", "Decoder", "ENCODERS", "ModelSpec", "ModulatedDecoder", "PUBLISHED_SPECS", "build_model", "count_parameters", "register_encoder"]
