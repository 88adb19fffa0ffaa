"""Exact integer kernels for products of +-1 activations with +-1 weights (XNOR layers at inference).

A convolution or linear layer of +-1 inputs with +-1 weights sums integers: each output is an
integer of magnitude at most K (C_in * k * k, or the input width). In fp32 it is exact (K <
2^24), and so are these kernels: the patches and weights as int8, one matrix product with int32
sums (``torch._int_mm``, AMX or AVX512-VNNI), the result converted to fp32. Outputs are
bit-identical to the fp32 convolution; ``tests/test_binary_kernels.py`` checks it on the shipped
binary checkpoints. Used only where :func:`crossbar.cpu_features.has_fast_int8` says the CPU
runs int8 natively, and only without autograd (training keeps the fp32 STE path).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor
from torch.nn import functional as F

#: the XNOR layers use these kernels at inference where the CPU runs int8 natively; the
#: environment variable BATMANN_INT8=0 (or setting this to False) keeps them in fp32, to compare
ENABLED = os.environ.get("BATMANN_INT8", "1") != "0"

#: int8 patch-matrix bytes per image chunk (keeps the unfolded patches in the last-level cache)
PATCH_CHUNK_BYTES = 1 << 25


def pm1_conv2d(x: Tensor, w: Tensor, stride: int = 1, padding: int = 0) -> Tensor:
    """``F.conv2d(x, w, stride=stride, padding=padding)`` for ``x`` (B, C, H, W) and ``w``
    (O, C, k, k) whose entries are all +-1 (any dtype, int8 included; zero padding allowed):
    float32 (B, O, H', W') in ``x``'s memory format (channels-last in, channels-last out, as
    ``F.conv2d``), computed in int8 with int32 sums, bit-identical to fp32. Square kernels,
    equal strides."""
    b, c, _, _ = x.shape
    o, _, k, _ = w.shape
    xi = x.to(torch.int8).permute(0, 2, 3, 1)  # (B, H, W, C), channels-last memory
    if padding:
        xi = F.pad(xi, (0, 0, padding, padding, padding, padding))
    xi = xi.contiguous()
    _, hp, wp, _ = xi.shape
    h = (hp - k) // stride + 1
    wo = (wp - k) // stride + 1
    kdim = k * k * c
    wi = w.to(torch.int8).permute(0, 2, 3, 1).reshape(o, kdim).t()  # (K, O) in (kh, kw, c) order, column-major
    sb, sh, sw, sc = xi.stride()
    channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    out = torch.empty(b, o, h, wo, dtype=torch.float32, device=x.device,
                      memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    step = max(1, PATCH_CHUNK_BYTES // (h * wo * kdim))
    patches = torch.empty(min(step, b), h, wo, k, k * c, dtype=torch.int8, device=x.device)
    for i in range(0, b, step):
        n = min(step, b - i)
        # patch rows in (kh, kw, c) order, one kernel row at a time: k * C contiguous bytes each
        # (sw == C), 2x faster to gather than one 6-d strided copy
        for kh in range(k):
            patches[:n, :, :, kh].copy_(xi.as_strided((n, h, wo, k * c), (sb, sh * stride, sw * stride, sc),
                                                      xi.storage_offset() + i * sb + kh * sh))
        prod = torch._int_mm(patches[:n].view(n * h * wo, kdim), wi)  # (n H' W', O) int32
        out[i:i + n].copy_(prod.view(n, h, wo, o).permute(0, 3, 1, 2))
    return out


def pm1_linear(x: Tensor, w: Tensor) -> Tensor:
    """``F.linear(x, w)`` for +-1 entries ``x`` (B, K) and ``w`` (N, K): float32 (B, N), exact."""
    return torch._int_mm(x.to(torch.int8), w.to(torch.int8).t()).float()
