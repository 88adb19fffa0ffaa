"""What the machine's arithmetic units do natively (chosen at run time, never assumed)."""

from __future__ import annotations

import torch


def _cpu_bf16() -> bool:  # not cached: cheap, and tests fake the flags
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def has_fast_bf16(device: torch.device) -> bool:
    """Whether bf16 runs natively on ``device``: a CUDA device with bf16 support, or a CPU with
    AVX512-BF16 or AMX. Elsewhere (an AVX2-only CPU, say) oneDNN emulates bf16, and a
    full-precision controller trained 14x and tested 30x slower in bf16 than in fp32
    (docs/performance.md)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return _cpu_bf16()
    return False
