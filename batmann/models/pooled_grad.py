"""The backward of a convolution followed by ReLU and a 2x2 stride-2 max pool, from the pooled gradient.

Behind a 2x2 max pool each pooled output passes its gradient to one convolution output of its
window (the argmax), and the ReLU drops it where the output was clipped: at most a quarter of
the convolution's output gradient is non-zero, at known places. :func:`conv_backward` computes
the convolution's input and weight gradients from the pooled gradient and the argmax offsets
alone (``csrc/pooled_grad.c``, AVX2 + FMA): a quarter of the multiply-adds of the dense
``convolution_backward``. They equal it to float32 rounding (another summation order), and are
the same bits whatever the thread count: images are split between threads, the weight gradient
summed over a fixed number of image groups added in order, and each element is summed in one
order. The inner loops run on 256-bit vectors, or on CPUs with AVX-512 on 512-bit vectors two
lists of terms at a time (:func:`isa`; the same bits).
Built like the popcount kernels (:mod:`batmann.models.native`); where it does not build,
:func:`available` is False and the callers keep autograd.
"""

from __future__ import annotations

import contextlib
import ctypes
from typing import Iterator

import torch
from torch import Tensor

from batmann.models import native

CFLAGS = ("-O3", "-std=c11", "-mavx2", "-mfma", "-fPIC", "-shared")

#: pooled positions per pass of the weight gradient behind a 2x2 pool (their 4 x 16 patch rows of
#: 64 floats, 16 KB, stay in L1); without a pool 4x as many positions, the same 64 rows
CHUNK = 16
#: image groups of the weight gradient: each sums its images' part, then the parts are added in
#: order (the same bits on any number of threads; each thread reads only its images)
WEIGHT_GROUPS = 8
#: channels per tile in the kernels (the weights' block layout for the input gradient)
BLOCK = 64
#: floats of padding per pixel of the weight gradient's channels-last image (``PIXEL_PAD`` of
#: ``csrc/pooled_grad.c``: one cache line)
PIXEL_PAD = 16

_I64 = ctypes.c_int64
_P = ctypes.c_void_p


def _declare(lib: ctypes.CDLL) -> None:
    lib.pooled_grad_input.argtypes = [_P, _P, _I64, _I64, _I64, _I64, _I64, _I64, _P, _I64, _I64, _I64, _I64,
                                      _P, ctypes.c_int]
    lib.pooled_grad_input.restype = ctypes.c_int
    lib.pooled_grad_weight.argtypes = [_P, _P, _I64, _I64, _I64, _I64, _I64, _I64, _P, _I64, _I64, _I64, _I64, _I64,
                                       _I64, _I64, _P, ctypes.c_int]
    lib.pooled_grad_weight.restype = ctypes.c_int
    lib.relu_pool_argmax.argtypes = [_P, _P, _I64, _I64, _I64, _I64, _I64, _P, _P, _P]
    lib.relu_pool_argmax.restype = None
    lib.unpool_bf16.argtypes = [_P, _P, _I64, _I64, _I64, _I64, _I64, _P]
    lib.unpool_bf16.restype = None
    lib.pooled_grad_scale.argtypes = [_P, _P, _P, _P, _I64, _I64, _I64, _I64, _P, _P]
    lib.pooled_grad_scale.restype = None
    lib.bf16_nhwc_to_f32_nchw.argtypes = [_P, _I64, _I64, _I64, _I64, _P]
    lib.bf16_nhwc_to_f32_nchw.restype = ctypes.c_int
    lib.pooled_grad_isa.argtypes = [ctypes.c_int]
    lib.pooled_grad_isa.restype = ctypes.c_int
    lib.pooled_grad_isa(0)  # settled once here, before any kernel runs on the pool's threads


LIBRARY = native.NativeLibrary("pooled_grad.c", CFLAGS, _declare,
                               lambda: None if native.has_avx2() else "the CPU has no AVX2")


def available() -> bool:
    """Whether the kernels run here (an AVX2 CPU, the library built or buildable)."""
    return LIBRARY.load() is not None


def unavailable_reason() -> str | None:
    """Why :func:`available` is False (one line), or None."""
    LIBRARY.load()
    return LIBRARY.reason


#: the inner loops by width in bits: what :func:`isa` returns, and its name
ISAS = {256: "AVX2", 512: "AVX-512"}


def isa() -> int:
    """The inner loops' width in use (a key of :data:`ISAS`; the same bits either way): 512 on
    CPUs with AVX-512F, else 256. Needs :func:`available`."""
    lib = LIBRARY.load()
    if lib is None:
        raise RuntimeError(f"pooled-gradient kernels unavailable: {LIBRARY.reason}")
    return int(lib.pooled_grad_isa(0))


@contextlib.contextmanager
def using_isa(bits: int) -> Iterator[int]:
    """Run the kernels with the ``bits``-wide inner loops (256 or 512) inside the block, where this
    CPU has them (for tests and benchmarks; not thread-safe against kernels already running).
    Yields the width in use; the previous one is restored after."""
    if bits not in ISAS:
        raise ValueError(f"isa {bits} is not one of {', '.join(map(str, ISAS))}")
    before = isa()
    lib = LIBRARY.load()
    try:
        yield int(lib.pooled_grad_isa(bits))
    finally:
        lib.pooled_grad_isa(before)


def supports(a: Tensor, w: Tensor, pool: int = 2) -> bool:
    """Whether :func:`conv_backward` covers a stride-1 unpadded convolution of ``a`` (B, C, H, W)
    with ``w`` (O, C, k, k) followed by a ``pool`` x ``pool`` max pool (2, or 1: none): CPU
    float32, C a multiple of 8, square kernel, an output that ``pool`` divides, one image's input
    and one image's pooled outputs of all channels each under 2^31 elements (the kernels index
    them with 32-bit integers; the input with :data:`PIXEL_PAD` floats more per pixel)."""
    if a.device.type != "cpu" or w.dtype != torch.float32 or a.dim() != 4:
        return False
    if a.dtype != torch.float32 and not _channels_last_bf16(a):
        return False
    c, h, wd = a.shape[1:]
    k = w.shape[-1]
    small = h * wd * (c + PIXEL_PAD) < 2**31 and w.shape[0] * ((h - k + 1) // pool) ** 2 < 2**31
    return c % 8 == 0 and w.shape[-2] == k and h == wd and (h - k + 1) % pool == 0 and h >= k and small


def argmax_offsets(indices: Tensor, width: int) -> Tensor:
    """``max_pool2d``'s flat argmax ``indices`` (into a map ``width`` wide) of a 2x2 stride-2 pool ->
    the offset in each window, ``dy * 2 + dx``, as uint8 of the same shape."""
    return ((torch.div(indices, width, rounding_mode="floor") % 2) * 2 + indices % 2).to(torch.uint8)


def relu_pool(y: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The forward after the product, in one pass: ``(out, offsets, y_at)`` with ``out`` the 2x2
    stride-2 max pool of ``relu(y * alpha.view(1, -1, 1, 1))`` (the same values as those ops),
    ``offsets`` the argmax in each window as :func:`argmax_offsets` of ``max_pool2d``'s indices
    (the first maximum), ``y_at`` the value of ``y`` there. ``y`` (B, O, Ho, Wo) float32 with even
    Ho, Wo; ``alpha`` (O,)."""
    lib = LIBRARY.load()
    if lib is None:
        raise RuntimeError(f"pooled-gradient kernels unavailable: {LIBRARY.reason}")
    b, o, ho, wo = y.shape
    if y.dtype != torch.float32 or ho % 2 or wo % 2 or alpha.numel() != o:
        raise ValueError(f"relu_pool needs float32 (B, O, even, even) and O scales, got {tuple(y.shape)} {y.dtype}, "
                         f"{alpha.numel()} scales")
    y = y.contiguous()
    al = alpha.detach().reshape(-1).to(torch.float32).contiguous()
    out = torch.empty(b, o, ho // 2, wo // 2, dtype=torch.float32)
    offsets = torch.empty(out.shape, dtype=torch.uint8)
    y_at = torch.empty(out.shape, dtype=torch.float32)

    def part(lo: int, hi: int) -> None:
        lib.relu_pool_argmax(y.data_ptr(), al.data_ptr(), lo, hi, o, ho, wo, out.data_ptr(), offsets.data_ptr(),
                             y_at.data_ptr())

    native.parallel(part, b)
    return out, offsets, y_at


def _image_groups(batch: int) -> list[int]:
    """The bounds of at most :data:`WEIGHT_GROUPS` image groups of a batch (fixed by its size alone)."""
    groups = max(1, min(batch, WEIGHT_GROUPS))
    return [batch * i // groups for i in range(groups + 1)]


def _add_in_order(parts: Tensor) -> Tensor:
    """``parts[0] + parts[1] + ...`` in that order (the same bits whatever the threads that made them)."""
    total = parts[0]
    for i in range(1, parts.shape[0]):
        total += parts[i]
    return total


def scale_grad(grad: Tensor, kept: Tensor, y_at: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
    """The backward of ``relu(y * scale)`` (per channel, then pooled) from its output gradient, in
    one pass: ``(gy, g_scale)`` with ``gy = torch.where(kept, grad, 0) * scale.view(1, -1, 1, 1)``
    (the same values) and ``g_scale`` (O,) the sum of ``torch.where(kept, grad, 0) * y_at`` over
    images and positions, float32 (summed in double, per :data:`WEIGHT_GROUPS` image groups
    added in order: the same bits on any number of threads). ``grad``, ``y_at`` (B, O, ...)
    float32, ``kept`` bool of that shape, ``scale`` (O,)."""
    lib = LIBRARY.load()
    if lib is None:
        raise RuntimeError(f"pooled-gradient kernels unavailable: {LIBRARY.reason}")
    if grad.shape != kept.shape or grad.shape != y_at.shape or grad.dim() < 2 or kept.dtype != torch.bool:
        raise ValueError(f"scale_grad needs a gradient, a bool mask and y of one (B, O, ...) shape, got "
                         f"{tuple(grad.shape)}, {tuple(kept.shape)} {kept.dtype}, {tuple(y_at.shape)}")
    b, o = grad.shape[:2]
    p = grad[0, 0].numel() if b and o else 0
    g = grad.detach().to(torch.float32).contiguous()
    k = kept.contiguous().view(torch.uint8)
    ya = y_at.detach().to(torch.float32).contiguous()
    al = scale.detach().reshape(-1).to(torch.float32).contiguous()
    if al.numel() != o:
        raise ValueError(f"scale_grad needs {o} scales, got {al.numel()}")
    gy = torch.empty(grad.shape, dtype=torch.float32)
    bounds = _image_groups(b)
    groups = len(bounds) - 1
    parts = torch.zeros(groups, o, dtype=torch.float64)

    def part(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            lib.pooled_grad_scale(g.data_ptr(), k.data_ptr(), ya.data_ptr(), al.data_ptr(), bounds[i], bounds[i + 1],
                                  o, p, gy.data_ptr(), parts[i].data_ptr())

    native.parallel(part, groups)
    return gy, _add_in_order(parts).to(torch.float32)


def unpool_bf16(grad: Tensor, offsets: Tensor) -> Tensor:
    """The convolution's output gradient behind a 2x2 stride-2 max pool, in one pass: ``grad``
    (B, O, Hp, Wp) at ``offsets`` (:func:`argmax_offsets`) of each window, zero elsewhere, as a
    (B, O, 2 Hp, 2 Wp) bfloat16 tensor in channels-last memory (the layout of the bf16
    ``convolution_backward``). The values are ``grad.to(torch.bfloat16)``'s (nearest even)."""
    lib = LIBRARY.load()
    if lib is None:
        raise RuntimeError(f"pooled-gradient kernels unavailable: {LIBRARY.reason}")
    if grad.shape != offsets.shape or grad.dim() != 4:
        raise ValueError(f"unpool_bf16 needs a (B, O, Hp, Wp) gradient and offsets of its shape, got "
                         f"{tuple(grad.shape)} and {tuple(offsets.shape)}")
    b, o, hp, wp = grad.shape
    g = grad.detach().to(torch.float32).contiguous()
    d = offsets.to(torch.uint8).contiguous()
    out = torch.empty(b, 2 * hp, 2 * wp, o, dtype=torch.bfloat16)
    row = 4 * hp * wp * o * 2

    def part(lo: int, hi: int) -> None:
        lib.unpool_bf16(g.data_ptr(), d.data_ptr(), lo, hi, o, hp, wp, out.data_ptr() + lo * row)

    native.parallel(part, b)
    return out.permute(0, 3, 1, 2)


def _weight_blocks(w: Tensor) -> Tensor:
    """(O, C, k, k) -> (k, k, C) blocks of :data:`BLOCK` channels, each (O, width) row-major (flat per (kh, kw))."""
    o, c, k, _ = w.shape
    wt = w.permute(2, 3, 0, 1)
    parts = [wt[..., cb:cb + BLOCK].reshape(k, k, -1) for cb in range(0, c, BLOCK)]
    return torch.cat(parts, dim=2).contiguous()


def conv_backward(grad: Tensor, offsets: Tensor | None, a: Tensor, w: Tensor, need_input: bool = True,
                  need_weight: bool = True, pool: int = 2) -> tuple[Tensor | None, Tensor | None]:
    """Input and weight gradients of ``conv2d(a, w)`` (stride 1, no padding) whose output gradient
    is zero except at one place per 2x2 window of each channel (``pool`` 2), or from a sparse
    output gradient (``pool`` 1: its zeros skipped).

    ``grad`` (B, O, Hp, Wp) float32: the gradient at that place; ``offsets`` (B, O, Hp, Wp) uint8:
    the place, ``dy * 2 + dx`` in the window (:func:`argmax_offsets`; None with ``pool`` 1);
    ``a`` (B, C, H, W), ``w`` (O, C, k, k) with H - k + 1 = pool Hp (see :func:`supports`).
    Returns ``(grad_a, grad_w)``, each None unless asked for: contiguous float32, or for a
    channels-last bfloat16 ``a`` (read as it is, exactly) ``grad_a`` channels-last bfloat16, the
    float32 sums rounded to nearest even."""
    lib = LIBRARY.load()
    if lib is None:
        raise RuntimeError(f"pooled-gradient kernels unavailable: {LIBRARY.reason}")
    if pool not in (1, 2):
        raise ValueError(f"conv_backward's pool must be 1 or 2, got {pool}")
    if pool == 1 and offsets is not None:
        raise ValueError("conv_backward without a pool (pool 1) takes no offsets (None)")
    if not supports(a, w, pool):
        raise ValueError(f"conv_backward covers float32 inputs with channels a multiple of 8 and an output "
                         f"{pool} divides, got input {tuple(a.shape)} {a.dtype}, weights {tuple(w.shape)}")
    b, c, h, wd = a.shape
    o, k = w.shape[0], w.shape[-1]
    hp, wp = (h - k + 1) // pool, (wd - k + 1) // pool
    if pool == 1:
        offsets = torch.zeros(b, o, hp, wp, dtype=torch.uint8)
    if tuple(grad.shape) != (b, o, hp, wp) or offsets is None or tuple(offsets.shape) != (b, o, hp, wp):
        raise ValueError(f"grad and offsets must be {(b, o, hp, wp)}, got {tuple(grad.shape)}, "
                         f"{None if offsets is None else tuple(offsets.shape)}")
    g = grad.to(torch.float32).contiguous()
    d = offsets.to(torch.uint8).contiguous()
    bf16 = a.dtype == torch.bfloat16  # channels-last (supports)
    ga = gw = None
    if need_input:
        wt = _weight_blocks(w.detach())
        if bf16:
            ga = torch.empty(b, c, h, wd, dtype=torch.bfloat16, memory_format=torch.channels_last)
        else:
            ga = torch.empty(b, c, h, wd, dtype=torch.float32)
        row = h * wd * c * ga.element_size()

        def input_part(lo: int, hi: int) -> int:
            return lib.pooled_grad_input(g.data_ptr(), d.data_ptr(), lo, hi, o, hp, wp, pool, wt.data_ptr(), c, k, h,
                                         wd, ga.data_ptr() + lo * row, int(bf16))

        codes = native.parallel(input_part, b)
        if any(codes):
            raise MemoryError("the pooled-gradient kernels could not allocate their buffers")
    if need_weight:
        ac = a.detach() if bf16 else a.detach().contiguous()
        bounds = _image_groups(b)
        groups = len(bounds) - 1
        chunk = CHUNK * 4 // pool**2
        parts = torch.empty(groups, o, k, k, c, dtype=torch.float32)

        def weight_part(lo: int, hi: int) -> int:
            return sum(lib.pooled_grad_weight(g.data_ptr(), d.data_ptr(), bounds[i], bounds[i + 1], o, hp, wp,
                                              pool, ac.data_ptr(), c, k, h, wd, 0, o, chunk, parts[i].data_ptr(),
                                              int(bf16))
                       for i in range(lo, hi))

        codes = native.parallel(weight_part, groups)
        if any(codes):
            raise MemoryError("the pooled-gradient kernels could not allocate their buffers")
        gw = _add_in_order(parts).permute(0, 3, 1, 2).contiguous()
    return ga, gw


def _channels_last_bf16(t: Tensor) -> bool:
    return t.dim() == 4 and t.dtype == torch.bfloat16 and t.is_contiguous(memory_format=torch.channels_last)


def to_float32(t: Tensor) -> Tensor:
    """``t`` (B, C, H, W) as contiguous float32, the same values: a channels-last bfloat16 tensor in
    one pass on every core (the conversion is exact, the same bits on any thread count), any other
    by ``Tensor.float().contiguous()``."""
    lib = LIBRARY.load()
    if lib is None or t.device.type != "cpu" or not _channels_last_bf16(t) or t.is_contiguous():
        return t.float().contiguous()
    b, c, h, w = t.shape
    out = torch.empty(b, c, h, w, dtype=torch.float32)
    src = t.detach()
    codes = native.parallel(lambda lo, hi: lib.bf16_nhwc_to_f32_nchw(src.data_ptr(), lo, hi, c, h * w,
                                                                      out.data_ptr()), b)
    if any(codes):
        raise MemoryError("the pooled-gradient kernels could not allocate their buffers")
    return out

