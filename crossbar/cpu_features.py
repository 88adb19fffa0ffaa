"""What the machine's arithmetic units do natively (chosen at run time, never assumed)."""

from __future__ import annotations

import torch


def _flag(check: str) -> bool:
    """One of torch.cpu's ``_is_*_supported`` probes (False where this torch lacks it); not
    cached: cheap, and tests fake the flags."""
    return bool(getattr(torch.cpu, check, lambda: False)())


def _cpu_bf16() -> bool:
    return _flag("_is_avx512_bf16_supported") or _flag("_is_amx_tile_supported")


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


def has_int8_matrix_units(device: torch.device) -> bool:
    """Whether ``device`` is a CPU with AMX tiles, whose int8 matrix products (``torch._int_mm``)
    beat bit-level kernels: on a 2-core AVX-512 EPYC with VNNI and no AMX, the XOR / popcount
    kernels ran the ``20w5s-binary`` forward 2.2x faster than int8 (docs/performance.md)."""
    return device.type == "cpu" and _flag("_is_amx_tile_supported")


def has_bf16_matrix_units(device: torch.device) -> bool:
    """Whether ``device`` is a CPU with AMX tiles, where oneDNN's dense bf16 convolutions outrun
    float32 kernels that skip the zeros behind a max pool; on a CPU whose bf16 is AVX512-BF16
    alone they do not (docs/performance.md)."""
    return device.type == "cpu" and _flag("_is_amx_tile_supported")


def _cpu_int8() -> bool:
    return _flag("_is_amx_tile_supported") or _flag("_is_vnni_supported")


def has_fast_int8(device: torch.device) -> bool:
    """Whether int8 matrix products with int32 sums (``torch._int_mm``) run on native units of
    ``device``: a CPU with AMX or AVX512-VNNI. Elsewhere the binarized layers use XOR / popcount
    kernels on AVX2 (:mod:`batmann.models.popcount_kernels`), or fp32."""
    return device.type == "cpu" and _cpu_int8()


def describe_cpu_path(binarized: str) -> str:
    """One line naming the arithmetic units the fast paths use on this CPU (for ``--verbose``);
    ``binarized``: how the binarized layers run (the caller's words:
    :func:`batmann.models.binary_kernels.describe_kernel`)."""
    units = [name for name, check in (("AMX", "_is_amx_tile_supported"), ("AVX512-BF16", "_is_avx512_bf16_supported"),
                                      ("AVX512-VNNI", "_is_vnni_supported"), ("AVX-512", "_is_avx512_supported"),
                                      ("AVX2", "_is_avx2_supported"))
             if _flag(check)]
    bf16 = "native" if _cpu_bf16() else "emulated (not used)"
    return f"CPU units: {', '.join(units) or 'none detected'}; binarized layers: {binarized}; bf16: {bf16}"
