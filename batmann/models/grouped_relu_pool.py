"""ReLU and max pool of deterministic training on every core: fixed image ranges, one thread each.

Inside :func:`batmann.utils.determinism.deterministic_kernels` torch runs on one thread, its
element-wise and pooling kernels included, although these compute each output element on its
own. Where a convolution's ReLU (and max pool) after it stay torch's ops (the full-precision
controller under bf16 autocast: the output and gradient of its first convolution, 40 MB each at
20-way 5-shot), :class:`GroupedReluPool` runs them, forward and backward, in one image range per
native thread (:func:`batmann.models.grouped_conv.per_thread`): the same torch ops range by range,
into outputs allocated once. Each element (each pooling window) is computed by itself, whatever
the range, so the values are torch's own, bit for bit, on any number of threads.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from batmann.models import grouped_conv

#: the fewest elements of a convolution's output whose ReLU (and pool) run in ranges: below, handing
#: the ranges to the threads costs about what the second core gains (benchmarks/bench_relu_pool.py)
MIN_ELEMENTS = 1 << 22

_Pool = tuple[list[int], list[int], list[int], list[int], bool]


def _pool_params(pool: nn.MaxPool2d) -> _Pool:
    """(kernel, stride, padding, dilation, ceil_mode) of ``pool``, as aten's max pool takes them."""
    def pair(v: int | tuple[int, ...] | None, default: list[int]) -> list[int]:
        if v is None:
            return default
        return [int(v), int(v)] if isinstance(v, int) else [int(i) for i in v]

    kernel = pair(pool.kernel_size, [])
    return (kernel, pair(pool.stride, kernel), pair(pool.padding, [0, 0]), pair(pool.dilation, [1, 1]),
            bool(pool.ceil_mode))


def covers(pool: nn.Module | None) -> bool:
    """Whether :func:`relu_pool` covers ``pool``: none, or an ``nn.MaxPool2d`` without indices."""
    return pool is None or (isinstance(pool, nn.MaxPool2d) and not pool.return_indices)


class GroupedReluPool(torch.autograd.Function):
    """``max_pool2d(relu(x))`` (no pool if ``params`` is None) for ``x`` (B, C, H, W), forward and
    backward in image ranges (the values of ``torch.relu`` and ``F.max_pool2d``, and of their
    autograd backwards, on any number of threads)."""

    @staticmethod
    def forward(ctx, x: Tensor, params: _Pool | None) -> Tensor:  # noqa: D102
        y = torch.empty_like(x)
        out = idx = None
        if params is not None:
            shape = torch.ops.aten.max_pool2d_with_indices(x[:1], *params)[0].shape[1:]
            # torch's pool reads a tensor that fits both layouts (one channel) as contiguous, unlike the
            # convolution's stride test in grouped_conv (tests/test_grouped_relu_pool.py checks both)
            fmt = (torch.channels_last if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
                   else torch.contiguous_format)
            out = torch.empty((x.shape[0], *shape), dtype=x.dtype, memory_format=fmt)
            idx = torch.empty((x.shape[0], *shape), dtype=torch.int64, memory_format=fmt)

        def part(lo: int, hi: int) -> None:
            torch.clamp_min(x[lo:hi], 0, out=y[lo:hi])  # torch.relu on the CPU
            if params is not None:
                torch.ops.aten.max_pool2d_with_indices.out(y[lo:hi], *params, out=out[lo:hi], indices=idx[lo:hi])

        grouped_conv.per_thread(part, x.shape[0])
        ctx.params = params
        if params is None:
            ctx.save_for_backward(y)
            return y
        ctx.save_for_backward(y, idx)
        return out

    @staticmethod
    def backward(ctx, g: Tensor):  # noqa: D102
        y, *rest = ctx.saved_tensors
        params = ctx.params
        gx = torch.empty_like(y)

        def part(lo: int, hi: int) -> None:
            if params is None:
                torch.ops.aten.threshold_backward.grad_input(g[lo:hi], y[lo:hi], 0, grad_input=gx[lo:hi])
                return
            torch.ops.aten.max_pool2d_with_indices_backward.grad_input(
                g[lo:hi], y[lo:hi], *params, rest[0][lo:hi], grad_input=gx[lo:hi])
            torch.ops.aten.threshold_backward.grad_input(gx[lo:hi], y[lo:hi], 0, grad_input=gx[lo:hi])

        grouped_conv.per_thread(part, y.shape[0])
        return gx, None


def relu_pool(x: Tensor, pool: nn.Module | None) -> Tensor:
    """``pool(torch.relu(x))`` (no pool if None; ``pool`` one :func:`covers`) through
    :class:`GroupedReluPool`, the same values."""
    return GroupedReluPool.apply(x, None if pool is None else _pool_params(pool))
