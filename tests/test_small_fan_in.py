"""The first convolution in training: its forward and weight gradient on the C kernels of
``small_fan_in`` where they apply, else ``F.conv2d`` and one batched product of the unfolded input."""

from __future__ import annotations

import contextlib

import pytest
import torch

from batmann.models import binary_kernels as bk
from batmann.models import layers, quantizers, small_fan_in

needs_kernel = pytest.mark.skipif(not small_fan_in.available(), reason="small fan-in kernel unavailable")


@pytest.mark.parametrize("cin, k, stride, padding, bias, size, kernel", [
    (1, 5, 1, 0, False, 11, False),  # an output 7 wide: the batched product
    (2, 3, 2, 1, True, 11, False),
    (1, 5, 1, 0, True, 14, True),  # the C kernel, with the bias gradient
])
def test_the_same_forward_and_gradients_to_rounding(cin, k, stride, padding, bias, size, kernel, monkeypatch):
    if kernel and not small_fan_in.available():
        pytest.skip("small fan-in kernel unavailable")
    conv = layers.Int8Conv2d(cin, 6, k, stride=stride, padding=padding, bias=bias)
    x = torch.randn(4, cin, size, size, generator=torch.Generator().manual_seed(cin))

    def run(kernel):
        monkeypatch.setattr(bk, "KERNEL", kernel)
        conv.zero_grad()
        xg = x.clone().requires_grad_()
        out = conv(xg)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        return [out.detach(), xg.grad] + [p.grad.clone() for p in conv.parameters()]

    want = run("fp32")  # plain autograd
    calls, kernel_calls = [], []
    real, real_grads, real_forward = layers._SmallFanInConv.apply, small_fan_in.grads, small_fan_in.forward
    monkeypatch.setattr(layers._SmallFanInConv, "apply", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(small_fan_in, "grads", lambda *a: kernel_calls.append("grads") or real_grads(*a))
    monkeypatch.setattr(small_fan_in, "forward", lambda *a: kernel_calls.append("forward") or real_forward(*a))
    got = run("auto")
    assert calls == [1] and kernel_calls == (["forward", "grads"] if kernel else [])
    if not kernel:
        assert torch.equal(got[0], want[0])  # F.conv2d itself
    for g, w in zip(got, want):
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
    """Where the C kernel does not apply, inside ``deterministic_kernels``: each range's batched
    product, the ranges added in order; close to the whole batch's, and the same bits on one and
    two threads."""
    from batmann.models import grouped_conv
    from batmann.utils.determinism import deterministic_kernels

    monkeypatch.setattr(bk, "KERNEL", "auto")
    monkeypatch.setattr(small_fan_in, "supports", lambda *a: False)
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


def _reference(g: torch.Tensor, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight and bias gradients of an unpadded stride-1 convolution, summed in float64."""
    b, c = x.shape[:2]
    o = g.shape[1]
    cols = torch.nn.functional.unfold(x.double(), k)  # (B, C k k, L)
    gw = torch.einsum("bol,bfl->of", g.double().reshape(b, o, -1), cols).view(o, c, k, k)
    return gw, g.double().sum((0, 2, 3))


@needs_kernel
@pytest.mark.parametrize("per_pass", [2, 4])
@pytest.mark.parametrize("b, c, size, o, k", [
    (5, 1, 32, 12, 5),  # the first layer's shape: an output 28 wide (a last group of 4 columns)
    (3, 1, 12, 7, 5),  # an output 8 wide; an odd channel count (a pass past the last channel)
    (2, 3, 10, 5, 3),  # three input channels
    (4, 1, 22, 6, 7),  # seven kernel columns: passes of five and two
    (3, 2, 9, 1, 1),  # one output channel, a 1 x 1 kernel
    (9, 1, 20, 4, 5),  # more images than image ranges
])
def test_the_kernel_sums_to_float64_within_float32_rounding(b, c, size, o, k, per_pass):
    gen = torch.Generator().manual_seed(size * o + k)
    x = torch.randn(b, c, size, size, generator=gen)
    g = torch.randn(b, o, size - k + 1, size - k + 1, generator=gen)
    with small_fan_in.using_channels_per_pass(per_pass):
        gw, gb = small_fan_in.grads(g, x, k, True)
        gw_only, none = small_fan_in.grads(g, x, k, False)
    want_w, want_b = _reference(g, x, k)
    assert gw.dtype == torch.float32 and gw.shape == (o, c, k, k) and none is None and torch.equal(gw, gw_only)
    scale = float(g.abs().sum((0, 2, 3)).max())  # the largest sum of |terms|: float32 rounding is ~1e-7 of it
    assert float((gw.double() - want_w).abs().max()) < 1e-6 * scale
    assert float((gb.double() - want_b).abs().max()) < 1e-6 * scale


@needs_kernel
@pytest.mark.parametrize("per_pass", [2, 4])
@pytest.mark.parametrize("b, c, size, o, k, bias", [
    (5, 1, 32, 12, 5, True),  # the first layer's shape: an output 28 wide (a last group of 4 columns)
    (3, 1, 12, 7, 5, True),  # an output 8 wide; an odd channel count (a pass past the last channel)
    (2, 3, 10, 5, 3, False),  # three input channels, no bias
    (4, 1, 40, 6, 7, True),  # an output 34 wide: five column groups (passes of four and one)
    (3, 2, 9, 1, 1, True),  # one output channel, a 1 x 1 kernel
])
def test_the_forward_sums_to_float64_within_float32_rounding(b, c, size, o, k, bias, per_pass):
    gen = torch.Generator().manual_seed(size * o + k)
    x = torch.randn(b, c, size, size, generator=gen)
    w = torch.randn(o, c, k, k, generator=gen)
    bv = torch.randn(o, generator=gen) if bias else None
    with small_fan_in.using_channels_per_pass(per_pass):
        y = small_fan_in.forward(x, w, bv)
    want = torch.nn.functional.conv2d(x.double(), w.double(), None if bv is None else bv.double())
    assert y.dtype == torch.float32 and y.shape == want.shape and y.is_contiguous()
    # float32 rounding: ~1e-7 of the largest sum of |terms|
    scale = float(torch.nn.functional.conv2d(x.double().abs(), w.double().abs()).max()) + (
        0.0 if bv is None else float(bv.abs().max()))
    assert float((y.double() - want).abs().max()) < 1e-6 * scale


@needs_kernel
def test_the_forward_gives_the_same_bits_on_any_thread_count_and_pass_width():
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(11, 1, 20, 20, generator=gen)
    w, bv = torch.randn(10, 1, 5, 5, generator=gen), torch.randn(10, generator=gen)
    got = []
    for threads in (1, 2):
        for per_pass in (2, 4):
            with _threads(threads), small_fan_in.using_channels_per_pass(per_pass):
                got.append(small_fan_in.forward(x, w, bv))
    assert all(torch.equal(y, got[0]) for y in got[1:])


@needs_kernel
def test_the_layer_keeps_f_conv2d_for_a_channels_last_input(monkeypatch):
    """One input channel in channels-last strides: torch's output is channels-last, so the
    layer keeps ``F.conv2d`` (its layout and bits) there."""
    monkeypatch.setattr(bk, "KERNEL", "auto")
    monkeypatch.setattr(small_fan_in, "forward", lambda *a: pytest.fail("C forward on a channels-last input"))
    conv = layers.Int8Conv2d(1, 4, 5)
    x = torch.randn(3, 12, 12, 1).permute(0, 3, 1, 2)
    out = conv(x.requires_grad_())
    with torch.no_grad():
        want = torch.nn.functional.conv2d(x, quantizers.int8_quantize_ste(conv.weight, conv.scale_mode), conv.bias)
    assert torch.equal(out, want) and out.stride() == want.stride()


@needs_kernel
def test_the_kernel_gives_the_same_bits_on_any_thread_count_and_pass_width():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(11, 1, 20, 20, generator=gen)
    g = torch.randn(11, 10, 16, 16, generator=gen)
    got = []
    for threads in (1, 2):
        for per_pass in (2, 4):
            with _threads(threads), small_fan_in.using_channels_per_pass(per_pass):
                got.append(small_fan_in.grads(g, x, 5, True))
    for gw, gb in got[1:]:
        assert torch.equal(gw, got[0][0]) and torch.equal(gb, got[0][1])


@needs_kernel
def test_the_kernel_covers_stride_one_unpadded_float32_convolutions_with_outputs_8_wide():
    x = torch.randn(2, 1, 12, 12)
    w = torch.randn(4, 1, 5, 5)
    assert small_fan_in.supports(x, w, torch.nn.Conv2d(1, 4, 5))
    assert not small_fan_in.supports(x[..., :11, :11], w, torch.nn.Conv2d(1, 4, 5))  # 7 wide
    assert not small_fan_in.supports(x, w, torch.nn.Conv2d(1, 4, 5, stride=2))
    assert not small_fan_in.supports(x, w, torch.nn.Conv2d(1, 4, 5, padding=1))
    assert not small_fan_in.supports(x, w, torch.nn.Conv2d(1, 4, 5, dilation=2))
    assert not small_fan_in.supports(x.double(), w, torch.nn.Conv2d(1, 4, 5))
    assert not small_fan_in.supports(x.to(torch.bfloat16), w, torch.nn.Conv2d(1, 4, 5))
    with pytest.raises(ValueError, match=r"output gradient must be \(2, 4, 8, 8\)"):
        small_fan_in.grads(torch.zeros(2, 4, 7, 8), x, 5, False)
    with pytest.raises(ValueError, match="channels per pass must be 2 or 4"):
        with small_fan_in.using_channels_per_pass(3):
            pass
