"""The one way arssr-rt unpickles a file: ``torch.load(weights_only=True)`` unless trusted.

A checkpoint is untrusted input: full unpickling runs whatever code the file names, so every
torch.load in the project goes through ``load_checkpoint``. Only tensors and plain types
load; a file that needs more is refused with one line naming ``--trust-checkpoint``, the
explicit opt-in that allows full unpickling for files the user vouches for.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .errors import InputError, ModelError
from .extras import require

TRUST_FLAG = "--trust-checkpoint"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:160]


def load_checkpoint(path: str | Path, trust: bool = False, advice: str | None = None) -> Any:
    """``torch.load`` ``path`` on the CPU: weights only, or fully when ``trust`` is given.

    ``advice`` replaces the hint to rerun with --trust-checkpoint where a command has no such
    flag (a bundle's weights.pt is written tensors-only, so it never needs one).
    """
    torch = require("torch")
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint {path} does not exist")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError ... on bad files
        if not trust:
            hint = advice or f"if you trust where it came from, rerun with {TRUST_FLAG} (full unpickling runs code from the file)"
            raise ModelError(f"{path} cannot be read with torch.load(weights_only=True) ({_reason(exc)}); {hint}") from None
    print(f"arssr-rt: warning: {path} needs full unpickling; loading it because {TRUST_FLAG} was given", file=sys.stderr)
    try:
        return torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ModelError(f"{path} is not a readable torch checkpoint: {_reason(exc)}") from None
