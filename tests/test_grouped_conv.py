"""Convolutions of deterministic training in fixed image ranges, one torch thread each."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from batmann.models import binary_kernels as bk
from batmann.models import grouped_conv as gc
from batmann.models import layers
from batmann.models.controller import build_controller
from batmann.utils.determinism import deterministic_kernels
from training_helpers import deterministic_pass


@pytest.fixture
def two_threads():
    """torch on two threads before each ``deterministic_kernels`` block (the ranges then run on two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def _operands(b=11, c=6, h=9, o=5, k=3, groups=1, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, h, generator=gen)
    w = torch.randn(o, c // groups, k, k, generator=gen)
    bias = torch.randn(o, generator=gen)
    g = torch.randn(b, o, h, h, generator=gen)  # padding 1, stride 1 keeps h
    return x, w, bias, g


def test_ranges_are_fixed_by_the_batch_size_and_cover_it():
    for batch in (1, 2, 7, 8, 9, 200):
        ranges = gc.bounds(batch)
        assert len(ranges) == min(batch, gc.GROUPS)
        assert ranges[0][0] == 0 and ranges[-1][1] == batch
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        assert max(hi - lo for lo, hi in ranges) - min(hi - lo for lo, hi in ranges) <= 1


def test_active_inside_deterministic_blocks_only():
    x = torch.zeros(2, 1, 4, 4)
    assert not gc.active(x)
    with deterministic_kernels("cpu"):
        assert gc.active(x) and not gc.active(x[:1]) and not gc.active(torch.zeros(2, 4))
    assert not gc.active(x)


@pytest.mark.parametrize("channels_last", [False, True])
def test_forward_is_torch_range_by_range(channels_last, two_threads):
    x, w, bias, _ = _operands(groups=2, c=6, o=4)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with deterministic_kernels("cpu"):
        got = gc.conv2d(x, w, bias, 1, 1, 1, 2)
        want = torch.cat([F.conv2d(x[lo:hi], w, bias, 1, 1, 1, 2) for lo, hi in gc.bounds(x.shape[0])])
    assert torch.equal(got, want)
    assert got.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    torch.testing.assert_close(got, F.conv2d(x, w, bias, 1, 1, 1, 2))


def test_output_layout_follows_torch_where_strides_are_ambiguous(two_threads):
    """One input channel (or a 1 x 1 image) fits both layouts' strides; torch reads the strides
    themselves (a channels-last image of one channel gives a channels-last output), and so do the
    ranges."""
    gen = torch.Generator().manual_seed(4)
    cases = [
        (torch.randn(9, 32, 32, 1, generator=gen).permute(0, 3, 1, 2), torch.randn(6, 1, 5, 5, generator=gen)),
        (torch.randn(9, 1, 32, 32, generator=gen), torch.randn(6, 5, 5, 1, generator=gen).permute(0, 3, 1, 2)),
        (torch.randn(9, 1, 32, 32, generator=gen), torch.randn(6, 1, 5, 5, generator=gen)),
        (torch.randn(9, 1, 1, 4, generator=gen).permute(0, 3, 1, 2), torch.randn(6, 4, 1, 1, generator=gen)),
    ]
    for x, w in cases:
        with deterministic_kernels("cpu"):
            got = gc.conv2d(x, w)
        want = F.conv2d(x, w)
        assert got.stride() == want.stride(), (x.stride(), w.stride())
        torch.testing.assert_close(got, want)  # another batch size may sum in another order


def test_inference_mode_reaches_the_ranges(two_threads):
    x, w, bias, _ = _operands()
    with deterministic_kernels("cpu"), torch.inference_mode():
        got = gc.conv2d(x, w, bias, 1, 1)
    assert got.is_inference()
    torch.testing.assert_close(got, F.conv2d(x, w, bias, 1, 1))


def test_strides_dilation_and_shapes_follow_torch(two_threads):
    x, w, bias, _ = _operands(h=13)
    with deterministic_kernels("cpu"):
        got = gc.conv2d(x, w, bias, stride=2, padding=(2, 1), dilation=2)
    torch.testing.assert_close(got, F.conv2d(x, w, bias, 2, (2, 1), 2))


def test_gradients_are_torch_range_by_range_summed_in_order(two_threads):
    x, w, _, g = _operands()
    with deterministic_kernels("cpu"):
        ga, gw, gb = gc.conv2d_backward(g, x, w, 1, 1, 1, 1, need=(True, True, True))
        parts = [torch.ops.aten.convolution_backward(g[lo:hi], x[lo:hi], w, [w.shape[0]], [1, 1], [1, 1], [1, 1],
                                                     False, [0, 0], 1, [True, True, True])
                 for lo, hi in gc.bounds(x.shape[0])]
    assert torch.equal(ga, torch.cat([p[0] for p in parts]))
    want_w, want_b = parts[0][1].clone(), parts[0][2].clone()
    for p in parts[1:]:
        want_w += p[1]
        want_b += p[2]
    assert torch.equal(gw, want_w) and torch.equal(gb, want_b)
    whole = torch.ops.aten.convolution_backward(g, x, w, [w.shape[0]], [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                                [True, True, True])
    for got, ref in zip((ga, gw, gb), whole):  # another order of the sums over images
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())
    only_x = gc.conv2d_backward(g, x, w, 1, 1, 1, 1, need=(True, False, False))
    assert torch.equal(only_x[0], ga) and only_x[1] is None and only_x[2] is None


def _layer_grads(conv, x, threads):
    torch.set_num_threads(threads)
    xg = x.clone().requires_grad_()
    conv.zero_grad()
    with deterministic_kernels("cpu"):
        out = gc.layer_conv2d(conv, xg, conv.weight, conv.bias)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out.detach(), xg.grad, conv.weight.grad.clone(), conv.bias.grad.clone()


def test_the_same_bits_on_one_and_two_threads(two_threads):
    conv = torch.nn.Conv2d(6, 5, 3, padding=1)
    x = _operands()[0]
    one, two = _layer_grads(conv, x, 1), _layer_grads(conv, x, 2)
    for a, b in zip(one, two):
        assert torch.equal(a, b)
    plain = conv(x.clone().requires_grad_())
    torch.testing.assert_close(one[0], plain.detach())


def test_autocast_runs_the_ranges_in_its_dtype_with_float32_gradients(two_threads):
    conv = torch.nn.Conv2d(6, 5, 3, padding=1)
    x = _operands()[0].requires_grad_()
    with deterministic_kernels("cpu"), torch.autocast("cpu", dtype=torch.bfloat16):
        out = gc.layer_conv2d(conv, x, conv.weight, conv.bias)
        out.float().sum().backward()
    assert out.dtype == torch.bfloat16 and conv.weight.grad.dtype == torch.float32 and x.grad.dtype == torch.float32
    got = (out.float(), x.grad, conv.weight.grad.clone(), conv.bias.grad.clone())
    x.grad = None
    conv.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = conv(x)
        plain.float().sum().backward()
    assert torch.equal(got[0], plain.float())  # each image's products: the same bf16 convolution
    for a, b in zip(got[1:], (x.grad, conv.weight.grad, conv.bias.grad)):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2 * b.abs().max().item())


def test_one_thread_restores_a_thread_count_it_changes():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert gc._one_thread(torch.get_num_threads) == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("autocast", [False, True])
def test_fp_controller_training_takes_every_convolution_through_the_ranges(autocast, two_threads, monkeypatch):
    """In deterministic training every convolution runs in image ranges: in float32 inside the
    pooled layers' function (conv2, conv4, and conv3 without a pool; the small fan-in conv1 on one
    thread), under bf16 autocast as :class:`GroupedConv2d` with its gradients (conv1 included;
    conv2 and conv4 inside the pooled layers' function without AMX). The kernel setting ``fp32``
    keeps plain autograd."""
    model = build_controller("fp")
    x = torch.randn(6, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    calls = []
    real = gc.GroupedConv2d.apply
    monkeypatch.setattr(gc.GroupedConv2d, "apply", lambda *a: calls.append(tuple(a[1].shape)) or real(*a))

    def run(kernel):
        monkeypatch.setattr(bk, "KERNEL", kernel)
        calls.clear()
        out, grads = deterministic_pass(model, x, autocast)
        return out.float(), grads

    want = run("fp32")
    assert calls == []
    got = run("auto")
    f = model.features
    convs = [tuple(m.weight.shape) for m in ((f.conv1, f.conv2, f.conv3, f.conv4) if autocast else
                                             (f.conv2, f.conv3, f.conv4))]
    assert calls == convs
    tol = 2e-2 if autocast else 1e-4
    torch.testing.assert_close(got[0], want[0], rtol=tol, atol=tol)
    for name, g in want[1].items():
        torch.testing.assert_close(got[1][name], g, rtol=tol, atol=tol * g.abs().max().item(), msg=name)
