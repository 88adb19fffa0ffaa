"""The first convolution's weight gradient in training: one batched product of the unfolded input."""

from __future__ import annotations

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
