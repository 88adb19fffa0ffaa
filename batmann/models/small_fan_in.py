"""A convolution with a small fan-in in training, in C on every core: its forward, and its weight
and bias gradients.

The first convolution of the controllers (1 input channel, 5 x 5, 128 outputs on 28 x 28) has a
weight gradient of only ``O x C x k x k`` sums, each over every image and output position.
:func:`grads` computes them with ``csrc/small_fan_in.c`` (AVX2 + FMA): rows of the output
gradient times shifted rows of the input, five kernel columns and two output channels per pass
(four with AVX-512VL), about twice as fast as the batched product of the unfolded input on the
same cores. They equal ``convolution_backward``'s to float32 rounding (another summation order)
and are the same bits on any thread count: the batch is cut into the image ranges of
:func:`batmann.models.grouped_conv.bounds` (fixed by its size), each summed in one order, the
ranges added in order.

:func:`forward` computes the convolution itself (for the training forward, where torch's
``deterministic_kernels`` hold its own to one thread): each output is one thread's sum over
(c, dy, dx) in that order, then the bias, so any split of the images gives the same bits; they
equal ``F.conv2d``'s to float32 rounding.

Built like the other kernels (:mod:`batmann.models.native`); where it does not build,
:func:`available` is False and the caller keeps the batched product.
"""

from __future__ import annotations

import contextlib
import ctypes
from typing import Iterator

import torch
from torch import Tensor

from batmann.models import grouped_conv, native

CFLAGS = ("-O3", "-std=c11", "-mavx2", "-mfma", "-fPIC", "-shared")

_I64 = ctypes.c_int64
_P = ctypes.c_void_p


def _declare(lib: ctypes.CDLL) -> None:
    lib.small_fan_in_grad.argtypes = [_P, _P, _I64, _I64, _I64, _I64, _I64, _I64, _I64, _P, _P]
    lib.small_fan_in_grad.restype = ctypes.c_int
    lib.small_fan_in_forward.argtypes = [_P, _P, _P, _I64, _I64, _I64, _I64, _I64, _I64, _I64, _P]
    lib.small_fan_in_forward.restype = None
    lib.small_fan_in_channels.argtypes = [ctypes.c_int]
    lib.small_fan_in_channels.restype = ctypes.c_int
    lib.small_fan_in_channels(0)  # settled once here, before any kernel runs on the pool's threads


LIBRARY = native.NativeLibrary("small_fan_in.c", CFLAGS, _declare,
                               lambda: None if native.has_avx2() else "the CPU has no AVX2")


def available() -> bool:
    """Whether the kernel runs here (an AVX2 CPU, the library built or buildable)."""
    return LIBRARY.load() is not None


def channels_per_pass() -> int:
    """Output channels per pass of the inner loop: 4 where the CPU has AVX-512VL (32 vector
    registers), else 2 (the same bits either way). Needs :func:`available`."""
    lib = LIBRARY.load()
    if lib is None:
        raise RuntimeError(f"small fan-in kernel unavailable: {LIBRARY.reason}")
    return int(lib.small_fan_in_channels(0))


@contextlib.contextmanager
def using_channels_per_pass(n: int) -> Iterator[int]:
    """Run the kernel with ``n`` (2 or 4) output channels per pass inside the block, where this CPU
    can (for tests and benchmarks; not thread-safe against a kernel already running). Yields the
    count in use; the previous one is restored after."""
    if n not in (2, 4):
        raise ValueError(f"channels per pass must be 2 or 4, got {n}")
    before = channels_per_pass()
    lib = LIBRARY.load()
    try:
        yield int(lib.small_fan_in_channels(n))
    finally:
        lib.small_fan_in_channels(before)


def supports(x: Tensor, w: Tensor, conv: torch.nn.Conv2d) -> bool:
    """Whether :func:`grads` covers ``conv`` (weights ``w`` (O, C, k, k)) on ``x`` (B, C, H, W): CPU
    float32, square kernel, stride 1, no padding or dilation, one group, an output at least 8
    wide, one image's input and output gradient each under 2^31 elements, and the kernel built."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or w.dtype != torch.float32 or x.dim() != 4:
        return False
    if tuple(conv.stride) != (1, 1) or tuple(conv.dilation) != (1, 1) or conv.groups != 1:
        return False
    if isinstance(conv.padding, str) or tuple(conv.padding) != (0, 0):
        return False
    o, c, kh, k = w.shape
    h, wd = x.shape[2:]
    if kh != k or x.shape[1] != c or h < k or wd - k + 1 < 8:
        return False
    return max(c * h * wd, o * (h - k + 1) * (wd - k + 1)) < 2**31 and available()


def grads(g: Tensor, x: Tensor, k: int, bias: bool) -> tuple[Tensor, Tensor | None]:
    """``(grad_w, grad_b)`` of ``conv2d(x, w, b)`` (stride 1, no padding; see :func:`supports`) from
    its output gradient ``g`` (B, O, Ho, Wo): ``grad_w`` (O, C, k, k) float32, ``grad_b`` (O,)
    float32, or None unless ``bias``."""
    lib = LIBRARY.load()
    if lib is None:
        raise RuntimeError(f"small fan-in kernel unavailable: {LIBRARY.reason}")
    b, c, h, wd = x.shape
    o = g.shape[1]
    if tuple(g.shape) != (b, o, h - k + 1, wd - k + 1):
        raise ValueError(f"output gradient must be {(b, o, h - k + 1, wd - k + 1)}, got {tuple(g.shape)}")
    gc = g.detach().to(torch.float32).contiguous()
    xc = x.detach().to(torch.float32).contiguous()
    ranges = grouped_conv.bounds(b)
    parts = torch.empty(len(ranges), o, c, k, k, dtype=torch.float32)
    bparts = torch.empty(len(ranges), o, dtype=torch.float32) if bias else None

    def part(lo: int, hi: int) -> int:
        return sum(lib.small_fan_in_grad(gc.data_ptr(), xc.data_ptr(), *ranges[i], o, c, h, wd, k,
                                         parts[i].data_ptr(), None if bparts is None else bparts[i].data_ptr())
                   for i in range(lo, hi))

    if any(native.parallel(part, len(ranges))):
        raise MemoryError("the small fan-in kernel could not allocate its buffers")
    gb = None if bparts is None else grouped_conv.sum_in_order(list(bparts))
    return grouped_conv.sum_in_order(list(parts)), gb


def forward(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """``F.conv2d(x, w, b)`` (stride 1, no padding; see :func:`supports`) for ``x`` (B, C, H, W) and
    ``w`` (O, C, k, k): float32 (B, O, H - k + 1, W - k + 1), contiguous, to float32 rounding of
    torch's (the same bits on any thread count)."""
    lib = LIBRARY.load()
    if lib is None:
        raise RuntimeError(f"small fan-in kernel unavailable: {LIBRARY.reason}")
    bn, c, h, wd = x.shape
    o, _, k, _ = w.shape
    xc = x.detach().to(torch.float32).contiguous()
    wc = w.detach().to(torch.float32).contiguous()
    bc = None if b is None else b.detach().to(torch.float32).contiguous()
    y = torch.empty(bn, o, h - k + 1, wd - k + 1, dtype=torch.float32)
    native.parallel(lambda lo, hi: lib.small_fan_in_forward(
        xc.data_ptr(), wc.data_ptr(), None if bc is None else bc.data_ptr(), lo, hi, o, c, h, wd, k,
        y.data_ptr()), bn)
    return y
