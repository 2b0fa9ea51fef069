"""What this CPU runs natively, for choosing arithmetic (torch extra; imported by its users only)."""

from __future__ import annotations


def cpu_has_native_bf16() -> bool:
    """Whether the CPU has AVX512-BF16 or AMX: there bf16 autocast roughly halves a step; on
    others (AVX2, e.g. AMD Zen 3) it is emulated and measured ~30x slower than fp32."""
    import torch

    cpu = getattr(torch, "cpu", None)
    return any(bool(getattr(cpu, name, lambda: False)()) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
