"""The memory layout a model trains fastest in on the device it trains on.

oneDNN's 3-D convolution backward is faster with channels-last (NDHWC) weights. Measured on
this project's AVX2 CPU in fp32 (session 16, one thread beside a training job; ``python -m
arssr_rt.bench.train_step``, three runs): a training step of the default model 1.10-1.28x
faster (batch 8 x 16^3), an ``--adapt`` step 1.09-1.29x, outputs equal to 2.4e-7; a forward
pass alone 0.82-1.20x (no clear gain), so only models that train use it (an adapted model
returns to the default layout before it infers; a distilling student keeps the teachers'
layout, so a student taught by its own copy computes exactly its teacher's numbers), and only
where it was measured: CPU, fp32. bf16 (AMX) and GPUs keep the default layout until measured
there.
"""

from __future__ import annotations

import torch


def training_layout(model: torch.nn.Module, device: torch.device | str, precision: str) -> torch.nn.Module:
    """``model`` in the memory format its training steps run fastest in (in place; returned)."""
    if torch.device(device).type == "cpu" and precision == "fp32":
        model.to(memory_format=torch.channels_last_3d)
    return model
