"""The first convolution's weight gradient in training: one batched product of the unfolded input."""

from __future__ import annotations

import contextlib

import pytest
import torch

from batmann.models import binary_kernels as bk
from batmann.models import layers


@pytest.mark.parametrize("cin, k, stride, padding, bias", [(1, 5, 1, 0, False), (2, 3, 2, 1, True)])
def test_the_same_forward_and_gradients_to_rounding(cin, k, stride, padding, bias, monkeypatch):
    conv = layers.Int8Conv2d(cin, 6, k, stride=stride, padding=padding, bias=bias)
    x = torch.randn(4, cin, 11, 11, generator=torch.Generator().manual_seed(cin))

    def run(kernel):
        monkeypatch.setattr(bk, "KERNEL", kernel)
        conv.zero_grad()
        xg = x.clone().requires_grad_()
        out = conv(xg)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        return [out.detach(), xg.grad] + [p.grad.clone() for p in conv.parameters()]

    want = run("fp32")  # plain autograd
    calls = []
    real = layers._SmallFanInConv.apply
    monkeypatch.setattr(layers._SmallFanInConv, "apply", lambda *a: calls.append(1) or real(*a))
    got = run("auto")
    assert calls == [1] and torch.equal(got[0], want[0])
    for g, w in zip(got[1:], want[1:]):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_a_large_fan_in_or_inference_keeps_the_plain_convolution(monkeypatch):
    monkeypatch.setattr(layers._SmallFanInConv, "apply", lambda *a: pytest.fail("batched weight gradient used"))
    monkeypatch.setattr(bk, "KERNEL", "auto")
    wide = layers.Int8Conv2d(8, 4, 3)  # fan-in 72 > SMALL_FAN_IN
    wide(torch.randn(2, 8, 6, 6)).sum().backward()
    with torch.no_grad():
        layers.Int8Conv2d(1, 4, 5)(torch.randn(2, 1, 8, 8))


@contextlib.contextmanager
def _threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def test_deterministic_weight_gradient_is_summed_over_image_ranges_the_same_on_any_thread_count(monkeypatch):
    """Inside ``deterministic_kernels``: each range's batched product, the ranges added in order;
    close to the whole batch's, and the same bits on one and two threads."""
    from batmann.models import grouped_conv
    from batmann.utils.determinism import deterministic_kernels

    monkeypatch.setattr(bk, "KERNEL", "auto")
    conv = layers.Int8Conv2d(1, 6, 5)
    x = torch.randn(11, 1, 12, 12, generator=torch.Generator().manual_seed(3))
    weights = torch.linspace(-1, 1, 11 * 6 * 8 * 8).view(11, 6, 8, 8)  # the gradient at the output

    def grad(deterministic: bool, threads: int) -> torch.Tensor:
        w = conv.weight.detach().clone().requires_grad_()
        with _threads(threads), deterministic_kernels("cpu", enabled=deterministic):
            (layers._SmallFanInConv.apply(x, w, None, conv) * weights).sum().backward()
        return w.grad

    one, two, whole = grad(True, 1), grad(True, 2), grad(False, 2)
    assert torch.equal(one, two)
    torch.testing.assert_close(one, whole, rtol=1e-5, atol=1e-5)
    cols = torch.nn.functional.unfold(x, 5)
    g = weights.reshape(11, 6, -1)
    with _threads(1):  # each range's product runs on one thread
        parts = [torch.bmm(g[lo:hi], cols[lo:hi].transpose(1, 2)).sum(0) for lo, hi in grouped_conv.bounds(11)]
    assert len(parts) == grouped_conv.GROUPS
    assert torch.equal(one.view(6, -1), grouped_conv.sum_in_order(parts))
