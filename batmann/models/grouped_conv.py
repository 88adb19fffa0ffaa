"""Convolutions of deterministic training on every core: fixed image ranges, one thread each.

Inside :func:`batmann.utils.determinism.deterministic_kernels` torch runs on one thread (its
multi-threaded kernels may sum in another order from one call to the next). A convolution's
output and input gradient are computed image by image, its weight and bias gradients are sums
over the images: here the batch is cut into at most :data:`GROUPS` ranges fixed by the batch
size alone, each range runs torch's own kernel on one thread, the ranges run on the native
threads (:func:`batmann.models.native.parallel`), and the ranges' weight and bias gradients
are added in order, in float32. Each range's call is the same call whatever the number of
threads, so the bits do not depend on it. They differ from one whole-batch call by float32
rounding (another order of the sums over images).

Used inside ``deterministic_kernels`` only (:func:`active`); outside, torch's kernels already
use every core. :class:`GroupedConv2d` is the autograd function for a plain convolution;
:func:`conv2d` and :func:`conv2d_backward` serve the custom-gradient layers of
:mod:`batmann.models.layers`.
"""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torch._prims_common import suggest_memory_format

from batmann.models import native
from batmann.utils.determinism import in_deterministic_block

#: image ranges per batch (fewer for a smaller batch): enough for every core of a small
#: machine, large enough ranges for torch's kernels to stay efficient
GROUPS = 8

T = TypeVar("T")
_Pair = Sequence[int] | int


def active(x: Tensor) -> bool:
    """Whether a convolution of ``x`` (B, C, H, W) runs in image ranges: inside
    ``deterministic_kernels``, on the CPU, more than one image."""
    return in_deterministic_block() and x.device.type == "cpu" and x.dim() == 4 and x.shape[0] > 1


def covers(conv: torch.nn.Module) -> bool:
    """Whether :func:`layer_conv2d` covers ``conv``: a ``nn.Conv2d`` with zero, integer padding."""
    return (isinstance(conv, torch.nn.Conv2d) and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str))


def bounds(batch: int) -> list[tuple[int, int]]:
    """The ``[lo, hi)`` image ranges of a batch of ``batch`` images (at most :data:`GROUPS`, sizes within one)."""
    n = max(1, min(batch, GROUPS))
    cuts = [batch * i // n for i in range(n + 1)]
    return list(zip(cuts[:-1], cuts[1:]))


def _one_thread(fn: Callable[[], T], inference: bool = False) -> T:
    """``fn()`` on one torch thread (as inside ``deterministic_kernels``; a thread that ran torch
    before the block may have another count, restored after), without autograd or autocast (the
    calling thread may be autocasting; the ranges run in the dtypes they are given), in inference
    mode if ``inference`` (the caller's: its tensors are inference tensors)."""
    threads = torch.get_num_threads()
    if threads != 1:
        torch.set_num_threads(1)
    try:
        with torch.inference_mode(inference), torch.no_grad(), torch.autocast("cpu", enabled=False):
            return fn()
    finally:
        if threads != 1:
            torch.set_num_threads(threads)


def each(fn: Callable[[int, int], T], batch: int) -> list[T]:
    """``[fn(lo, hi) for lo, hi in bounds(batch)]``, the ranges on the native threads, each call on
    one torch thread in the caller's inference mode."""
    ranges = bounds(batch)
    inference = torch.is_inference_mode_enabled()
    return [r for part in native.parallel(
        lambda a, b: [_one_thread(lambda: fn(*ranges[i]), inference) for i in range(a, b)], len(ranges))
        for r in part]


def per_thread(fn: Callable[[int, int], T], batch: int) -> list[T]:
    """``fn(lo, hi)`` over one image range per thread (:func:`batmann.models.native.split`), each
    call on one torch thread in the caller's inference mode: for work whose values do not depend
    on where the batch is cut (element by element, or image by image), with fewer calls than
    :func:`each`."""
    inference = torch.is_inference_mode_enabled()
    return native.parallel(lambda lo, hi: _one_thread(lambda: fn(lo, hi), inference), batch)


def sum_in_order(parts: Sequence[Tensor]) -> Tensor:
    """``parts[0] + parts[1] + ...`` in that order, in float32."""
    total = parts[0].to(torch.float32, copy=True)
    for p in parts[1:]:
        total += p.to(torch.float32)
    return total


def _pair(v: _Pair) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(i) for i in v]


def _channels_last(*ts: Tensor) -> bool:
    """Whether torch's CPU convolution gives a channels-last output for these operands: either one's
    strides channels-last, read as torch reads them (a tensor of one channel, or of 1 x 1 images,
    is contiguous in both layouts; its strides decide)."""
    return any(t.dim() == 4 and suggest_memory_format(t) == torch.channels_last for t in ts)


def conv2d(x: Tensor, w: Tensor, b: Tensor | None = None, stride: _Pair = 1, padding: _Pair = 0,
           dilation: _Pair = 1, groups: int = 1) -> Tensor:
    """``F.conv2d(x, w, b, ...)`` in image ranges (no autograd): x (B, C, H, W), w (O, C / groups,
    kh, kw) -> (B, O, Ho, Wo), channels-last where either operand's strides are (as torch's). Integer padding only."""
    st, pd, dl = _pair(stride), _pair(padding), _pair(dilation)
    ho, wo = ((n + 2 * p - d * (k - 1) - 1) // s + 1
              for n, p, d, k, s in zip(x.shape[-2:], pd, dl, w.shape[-2:], st))
    fmt = torch.channels_last if _channels_last(x, w) else torch.contiguous_format
    out = torch.empty(x.shape[0], w.shape[0], ho, wo, dtype=torch.result_type(x, w), memory_format=fmt)

    def part(lo: int, hi: int) -> None:
        out[lo:hi].copy_(F.conv2d(x[lo:hi], w, b, st, pd, dl, groups))

    each(part, x.shape[0])
    return out


def conv2d_backward(g: Tensor, x: Tensor, w: Tensor, stride: _Pair = 1, padding: _Pair = 0, dilation: _Pair = 1,
                    groups: int = 1, need: Sequence[bool] = (True, True, False)
                    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """The input, weight and bias gradients of ``conv2d(x, w, b, ...)`` from its output gradient
    ``g`` (B, O, Ho, Wo), each None unless ``need`` asks for it, in image ranges: the input
    gradient range by range (``x``'s dtype and memory format), the weight and bias gradients
    summed over each range by torch, then over the ranges in order (:func:`sum_in_order`,
    float32)."""
    need_x, need_w, need_b = (bool(n) for n in need)
    st, pd, dl = _pair(stride), _pair(padding), _pair(dilation)
    ga = torch.empty_like(x) if need_x else None

    def part(lo: int, hi: int) -> tuple[Tensor | None, Tensor | None]:
        a, gw, gb = torch.ops.aten.convolution_backward(
            g[lo:hi], x[lo:hi], w, [w.shape[0]] if need_b else None, st, pd, dl, False, [0, 0], groups,
            [need_x, need_w, need_b])
        if need_x:
            ga[lo:hi].copy_(a)
        return gw, gb

    parts = each(part, x.shape[0])
    gw = sum_in_order([p[0] for p in parts]) if need_w else None
    gb = sum_in_order([p[1] for p in parts]) if need_b else None
    return ga, gw, gb


class GroupedConv2d(torch.autograd.Function):
    """``F.conv2d(x, w, b, stride, padding, dilation, groups)`` whose forward and gradients run
    in image ranges (:func:`conv2d`, :func:`conv2d_backward`). The inputs arrive in the dtype the
    product runs in (see :func:`layer_conv2d`)."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, b: Tensor | None, stride: _Pair, padding: _Pair,  # noqa: D102
                dilation: _Pair, groups: int) -> Tensor:
        ctx.save_for_backward(x, w)
        ctx.params, ctx.has_bias = (stride, padding, dilation, groups), b is not None
        return conv2d(x, w, b, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, g: Tensor):  # noqa: D102
        x, w = ctx.saved_tensors
        need = ctx.needs_input_grad
        ga, gw, gb = conv2d_backward(g, x, w, *ctx.params, need=(need[0], need[1], ctx.has_bias and need[2]))
        gw, gb = (None if t is None else t.to(w.dtype) for t in (gw, gb))  # as autograd's, in the operands' dtype
        return ga, gw, gb, None, None, None, None


def layer_conv2d(conv: torch.nn.Conv2d, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """``conv``'s convolution (its stride, padding, dilation and groups) of ``x`` with weights
    ``w`` and bias ``b`` through :class:`GroupedConv2d` (autograd records it where it records
    anything); under CPU autocast the operands are cast to its dtype first, as autocast casts a
    convolution's (the gradients flow back through the casts)."""
    if torch.is_autocast_enabled("cpu"):
        dt = torch.get_autocast_dtype("cpu")
        x, w, b = x.to(dt), w.to(dt), None if b is None else b.to(dt)
    with torch.autocast("cpu", enabled=False):
        return GroupedConv2d.apply(x, w, b, conv.stride, conv.padding, conv.dilation, conv.groups)
