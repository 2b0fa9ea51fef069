"""Where ``--adapt`` fine-tunes and runs the adapted model: the CPU, or one CUDA GPU.

The rule follows the run's ``--backend``, so a user asks for a GPU the way they already do:

- ``torch-cuda``: GPU ``--device``. An explicit request is never moved to the CPU quietly:
  no GPU visible to torch is a one-line BackendError, before any work.
- ``auto``: GPU ``--device`` when torch sees it, else the CPU (as ``auto`` falls back when
  it chooses an inference backend).
- ``torch``: the CPU, as before.

The command resolves it once into ``AdaptOptions.device`` ("cpu" or "cuda:N"); fine-tuning
and inference then both use that device. The API default is "cpu" (unchanged). torch is
imported inside the functions.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import BackendError, InputError

DEVICE_NAME = re.compile(r"cpu|cuda(:\d+)?")


def check_device_name(device: str) -> None:
    """InputError unless ``device`` is "cpu", "cuda" or "cuda:N" (whatever the machine)."""
    if not isinstance(device, str) or not DEVICE_NAME.fullmatch(device):
        raise InputError(f"adapt device must be cpu, cuda or cuda:N, got {device!r}")


def adapt_device(backend: str, gpu: int, command: str = "upsample") -> str:
    """The device of ``--adapt`` for ``--backend backend --device gpu`` (the rule in the module doc)."""
    if backend == "torch-cuda":
        from .session import require_torch

        torch_device(f"cuda:{gpu}", require_torch(command))
        return f"cuda:{gpu}"
    if backend != "auto":
        return "cpu"
    from ..backends.torch_cuda_backend import nvidia_driver_absent

    if nvidia_driver_absent():  # no driver: skip importing torch just to learn that
        return "cpu"
    try:
        import torch
    except ImportError:  # the adaptation itself says how to install torch, in its order
        return "cpu"
    return f"cuda:{gpu}" if torch.cuda.is_available() and 0 <= gpu < torch.cuda.device_count() else "cpu"


def torch_device(device: str, torch: Any = None) -> Any:
    """``device`` as a torch.device ("cuda" is "cuda:0"); BackendError (one line) for a GPU torch cannot see."""
    check_device_name(device)
    if torch is None:
        import torch
    if device == "cpu":
        return torch.device("cpu")
    index = int(device.partition(":")[2] or 0)
    if not torch.cuda.is_available():
        raise BackendError(f"--adapt on {device} needs a CUDA GPU visible to torch (torch.cuda.is_available() is False, "
                           f"torch {torch.__version__}); use --backend torch to adapt on the CPU")
    if index >= torch.cuda.device_count():
        raise BackendError(f"--adapt on {device}: no such GPU; torch sees {torch.cuda.device_count()} CUDA GPU(s)")
    return torch.device("cuda", index)
