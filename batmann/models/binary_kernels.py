"""Exact integer kernels for products of +-1 activations with +-1 weights (XNOR layers at inference).

A convolution or linear layer of +-1 inputs with +-1 weights sums integers: each output is an
integer of magnitude at most K (C_in * k * k, or the input width). In fp32 it is exact (K <
2^24), and so are the two kernels used instead of it, chosen at run time by :func:`kernel_for`:

* ``int8`` (this module): the patches and weights as int8, one matrix product with int32 sums
  (``torch._int_mm``), the result converted to fp32. Fast where the CPU has AMX or
  AVX512-VNNI (:func:`crossbar.cpu_features.has_fast_int8`); elsewhere 25-35x slower than fp32.
  Chosen where the CPU has AMX tiles, and for padded convolutions on VNNI.
* ``popcount`` (:mod:`batmann.models.popcount_kernels`): one bit per value, XOR and population
  count on AVX2 or AVX-512, compiled with the system's C compiler on first use. Chosen where
  the CPU has no AMX (with VNNI too: on an AVX-512 EPYC the forward ran 2.2x faster than on int8);
  no zero padding.

Outputs are bit-identical to the fp32 convolution; ``tests/test_binary_kernels.py`` checks it on
the shipped binary checkpoints. Used without autograd, and in training for the forward of XNOR
convolutions (:class:`batmann.models.layers._Pm1Product`; the gradients stay autograd's in
float32, or bf16 products with ``--precision bf16``; a convolution followed by its ReLU and a 2x2
max pool takes its float32 gradients from the pooled gradient,
:mod:`batmann.models.pooled_grad`). ``KERNEL = "fp32"`` keeps plain autograd throughout.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor
from torch.nn import functional as F

from batmann.errors import ConfigError
from batmann.utils.determinism import every_core_for_exact_work
from crossbar.cpu_features import has_fast_int8, has_int8_matrix_units

#: the kernel settings: ``auto`` (int8 on AMX, else popcount where it builds and the convolution
#: has no padding, else int8 on AVX512-VNNI, else fp32), or one of them forced (``int8`` runs
#: anywhere, slowly without int8 units; ``popcount`` needs AVX2 and a C compiler, else fp32)
KERNELS = ("auto", "int8", "popcount", "fp32")


def kernel_setting(env: dict | None = None) -> str:
    """The setting from the environment: ``BATMANN_BINARY_KERNEL`` (one of :data:`KERNELS`,
    default ``auto``); ``BATMANN_INT8=0`` (older name) means ``fp32``."""
    env = os.environ if env is None else env
    value = env.get("BATMANN_BINARY_KERNEL", "").strip().lower() or (
        "fp32" if env.get("BATMANN_INT8", "1") == "0" else "auto")
    if value not in KERNELS:
        raise ConfigError(f"BATMANN_BINARY_KERNEL={value!r} is not one of {', '.join(KERNELS)}")
    return value


#: which kernel the XNOR layers use at inference (set from the environment at import; tests and
#: benchmarks assign it): one of :data:`KERNELS`
KERNEL = kernel_setting()

#: int8 patch-matrix bytes per image chunk (keeps the unfolded patches in the last-level cache)
PATCH_CHUNK_BYTES = 1 << 25


def kernel_for(device: torch.device, padding: int = 0) -> str | None:
    """The exact kernel for a +-1 x +-1 product on ``device`` under :data:`KERNEL`: ``"int8"``,
    ``"popcount"`` or None (fp32). ``padding``: the convolution's zero padding (popcount has none)."""
    if device.type != "cpu" or KERNEL == "fp32":
        return None
    if KERNEL == "int8" or (KERNEL == "auto" and has_int8_matrix_units(device)):
        return "int8"
    from batmann.models import popcount_kernels

    if padding == 0 and popcount_kernels.available():
        return "popcount"
    return "int8" if KERNEL == "auto" and has_fast_int8(device) else None


def describe_kernel(device: torch.device) -> str:
    """How the binarized layers run on ``device``, for ``--verbose``: e.g. ``popcount (exact, AVX2)``."""
    kernel = kernel_for(device)
    if kernel == "int8":
        return "int8 (exact)"
    if kernel == "popcount":
        from batmann.models import popcount_kernels

        return f"popcount (exact, {popcount_kernels.ISAS[popcount_kernels.isa()]})"
    if device.type == "cpu" and KERNEL in ("auto", "popcount"):
        from batmann.models import popcount_kernels

        return f"fp32 ({popcount_kernels.unavailable_reason()})"
    return "fp32"


def pm1_conv2d_exact(x: Tensor, w: Tensor, kernel: str, stride: int = 1, padding: int = 0) -> Tensor:
    """:func:`pm1_conv2d` on ``kernel`` (``int8`` or ``popcount``, see :func:`kernel_for`)."""
    if kernel == "popcount":
        from batmann.models import popcount_kernels

        if padding:
            raise ValueError("the popcount kernels have no zero padding")
        if x.dtype == torch.float32:  # +-1 floats: packed as x > 0 in one pass, no int8 copy
            return popcount_kernels.pm1_conv2d(x, w, stride, threshold=x.new_zeros(x.shape[0]))
        return popcount_kernels.pm1_conv2d(x, w, stride)
    return pm1_conv2d(x, w, stride, padding)


def pm1_linear_exact(x: Tensor, w: Tensor, kernel: str) -> Tensor:
    """:func:`pm1_linear` on ``kernel`` (``int8`` or ``popcount``)."""
    if kernel == "popcount":
        from batmann.models import popcount_kernels

        return popcount_kernels.pm1_linear(x, w)
    return pm1_linear(x, w)


def pm1_conv2d(x: Tensor, w: Tensor, stride: int = 1, padding: int = 0) -> Tensor:
    """``F.conv2d(x, w, stride=stride, padding=padding)`` for ``x`` (B, C, H, W) and ``w``
    (O, C, k, k) whose entries are all +-1 (any dtype, int8 included; zero padding allowed):
    float32 (B, O, H', W') in ``x``'s memory format (channels-last in, channels-last out, as
    ``F.conv2d``), computed in int8 with int32 sums, bit-identical to fp32, on every core inside
    ``deterministic_kernels`` too (integer sums do not depend on the thread count). Square
    kernels, equal strides."""
    with every_core_for_exact_work():  # integer sums: the same bits on any thread count
        return _pm1_conv2d_int8(x, w, stride, padding)


def _pm1_conv2d_int8(x: Tensor, w: Tensor, stride: int, padding: int) -> Tensor:
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
    with every_core_for_exact_work():
        return torch._int_mm(x.to(torch.int8), w.to(torch.int8).t()).float()
