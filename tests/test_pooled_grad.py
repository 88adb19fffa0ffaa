"""The backward of convolution + ReLU + 2x2 max pool from the pooled gradient (AVX2 + FMA), in training."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from batmann.models import binary_kernels as bk
from batmann.models import layers
from batmann.models import pooled_grad as pg
from batmann.models import small_fan_in
from batmann.models.controller import build_controller


@pytest.fixture
def kernels():
    if not pg.available():
        pytest.skip(f"pooled-gradient kernels unavailable here: {pg.unavailable_reason()}")
    return pg


def _problem(b, c, h, k, o, seed, zeros=0.3):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randint(0, 2, (b, c, h, h), generator=gen).float() * 2 - 1
    w = torch.randn(o, c, k, k, generator=gen)
    hp = (h - k + 1) // 2
    g = torch.randn(b, o, hp, hp, generator=gen) * (torch.rand(b, o, hp, hp, generator=gen) > zeros)
    d = torch.randint(0, 4, (b, o, hp, hp), generator=gen, dtype=torch.uint8)
    return a, w, g, d


def _dense_grad(g, d):
    """The convolution's output gradient: ``g`` at offset ``d`` of each 2x2 window, zero elsewhere."""
    b, o, hp, wp = g.shape
    full = torch.zeros(b, o, hp, 2, wp, 2)
    dy, dx = (d // 2).long(), (d % 2).long()
    for y in range(2):
        for x in range(2):
            full[:, :, :, y, :, x] = torch.where((dy == y) & (dx == x), g, 0.0)
    return full.reshape(b, o, 2 * hp, 2 * wp)


@pytest.mark.parametrize("b, c, h, k, o", [(3, 16, 12, 3, 8), (2, 72, 10, 3, 5), (2, 128, 12, 5, 9), (1, 8, 6, 5, 3)])
def test_gradients_match_the_dense_convolution_backward(kernels, b, c, h, k, o):
    a, w, g, d = _problem(b, c, h, k, o, seed=c + k)
    ga, gw = kernels.conv_backward(g, d, a, w)
    want_a, want_w, _ = torch.ops.aten.convolution_backward(
        _dense_grad(g, d), a, w, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [True, True, False])
    assert ga.is_contiguous() and gw.is_contiguous()
    torch.testing.assert_close(ga, want_a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gw, want_w, rtol=1e-5, atol=1e-5)
    only_w = kernels.conv_backward(g, d, a, w, need_input=False)
    assert only_w[0] is None and torch.equal(only_w[1], gw)


@pytest.mark.parametrize("b, c, h, k, o", [(3, 16, 12, 3, 8), (2, 128, 7, 3, 9)])
def test_without_pool_the_gradients_match_the_dense_convolution_backward(kernels, b, c, h, k, o):
    """pool 1: the output gradient itself, sparse (a ReLU's), every offset 0."""
    a, w, _, _ = _problem(b, c, h, k, o, seed=c)
    gen = torch.Generator().manual_seed(k)
    n = h - k + 1
    g = torch.randn(b, o, n, n, generator=gen) * (torch.rand(b, o, n, n, generator=gen) > 0.5)
    ga, gw = kernels.conv_backward(g, None, a, w, pool=1)
    want_a, want_w, _ = torch.ops.aten.convolution_backward(
        g, a, w, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [True, True, False])
    torch.testing.assert_close(ga, want_a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gw, want_w, rtol=1e-5, atol=1e-5)
    assert kernels.supports(a, w, pool=1) and kernels.supports(a, w, pool=2) == ((h - k + 1) % 2 == 0)
    with pytest.raises(ValueError, match="pool must be 1 or 2, got 3"):
        kernels.conv_backward(g, None, a, w, pool=3)
    with pytest.raises(ValueError, match="takes no offsets"):
        kernels.conv_backward(g, torch.zeros(g.shape, dtype=torch.uint8), a, w, pool=1)


def test_the_inner_loops_are_chosen_from_the_cpu_and_can_be_forced(kernels):
    default = kernels.isa()
    assert default in kernels.ISAS
    with kernels.using_isa(256) as bits:
        assert bits == 256 and kernels.isa() == 256
    assert kernels.isa() == default
    with pytest.raises(ValueError, match="isa 128 is not one of 256, 512"):
        with kernels.using_isa(128):
            pass


@pytest.mark.parametrize("b, c, h, k, o, zeros, pool", [
    (3, 128, 12, 5, 9, 0.3, 2),   # 64-channel tiles; an odd channel count (the weight loop's pairs and last row)
    (2, 72, 10, 3, 6, 0.6, 2),    # a 64-channel tile and an 8-channel one
    (2, 64, 14, 3, 7, 0.95, 2),   # lists mostly empty, lengths far apart
    (2, 128, 9, 3, 5, 0.5, 1),    # no pool
])
def test_the_512_bit_loops_give_the_same_bits_as_the_256_bit_ones(kernels, b, c, h, k, o, zeros, pool):
    with kernels.using_isa(512) as bits:
        if bits != 512:
            pytest.skip("this CPU has no AVX-512")
    a, w, g, d = _problem(b, c, h, k, o, seed=c + o, zeros=zeros)
    if pool == 1:
        n = h - k + 1
        gen = torch.Generator().manual_seed(o)
        g, d = torch.randn(b, o, n, n, generator=gen) * (torch.rand(b, o, n, n, generator=gen) > zeros), None
    got = {}
    for width in (256, 512):
        with kernels.using_isa(width):
            got[width] = kernels.conv_backward(g, d, a, w, pool=pool)
    assert torch.equal(got[256][0], got[512][0]) and torch.equal(got[256][1], got[512][1])


def test_the_same_bits_on_one_or_two_threads(kernels):
    a, w, g, d = _problem(5, 24, 10, 3, 7, seed=3)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = kernels.conv_backward(g, d, a, w)
        torch.set_num_threads(2)
        two = kernels.conv_backward(g, d, a, w)
    finally:
        torch.set_num_threads(n)
    assert all(torch.equal(x, y) for x, y in zip(one, two))


@pytest.mark.parametrize("pool", [1, 2])
def test_the_weight_gradient_is_the_same_bits_for_any_chunk(kernels, monkeypatch, pool):
    """Each weight-gradient element is one running sum over the positions in order, so the
    positions per pass (``CHUNK``, a tuning constant; 4x as many without a pool) never change the
    result: 144 positions in passes of a few, dozens, or all at once."""
    a, w, g, d = _problem(2, 16, 26, 3, 6, seed=7)
    if pool == 1:
        a, g, d = a[:, :, :14, :14], torch.randn(2, 6, 12, 12, generator=torch.Generator().manual_seed(8)), None
        g = g * (g > 0)
    results = []
    for chunk in (5, 24, 200):
        monkeypatch.setattr(kernels, "CHUNK", chunk)
        results.append(kernels.conv_backward(g, d, a, w, need_input=False, pool=pool)[1])
    assert all(torch.equal(results[0], r) for r in results[1:])


@pytest.mark.parametrize("shape", [(11, 6, 4, 4), (3, 5, 10, 10)])
def test_scale_grad_is_the_masked_scaled_gradient_and_alphas_sum(kernels, shape):
    """gy: the same bits as torch.where and the product (NaN dropped where not kept); the scale's
    gradient: the float64 sum to float32 rounding, the same bits on one or two threads."""
    gen = torch.Generator().manual_seed(shape[0])
    g, y = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    kept = torch.rand(shape, generator=gen) > 0.4
    g[~kept] = torch.where(torch.rand(shape, generator=gen)[~kept] > 0.5, float("nan"), 7.0)
    scale = torch.randn(shape[1], generator=gen)
    n = torch.get_num_threads()
    runs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            runs.append(kernels.scale_grad(g, kept, y, scale))
    finally:
        torch.set_num_threads(n)
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    gy, g_scale = runs[0]
    gz = torch.where(kept, g, 0.0)
    assert torch.equal(gy, gz * scale.view(1, -1, 1, 1))
    want = (gz.double() * y.double()).sum((0, 2, 3))
    torch.testing.assert_close(g_scale.double(), want, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="bool mask"):
        kernels.scale_grad(g, kept.float(), y, scale)
    with pytest.raises(ValueError, match=f"needs {shape[1]} scales, got 2"):
        kernels.scale_grad(g, kept, y, scale[:2])


def test_argmax_offsets_follow_max_pool2d_indices():
    z = torch.randn(2, 3, 6, 8)
    _, idx = F.max_pool2d_with_indices(z, 2, 2)
    d = pg.argmax_offsets(idx, 8)
    windows = z.view(2, 3, 3, 2, 4, 2).permute(0, 1, 2, 4, 3, 5).reshape(2, 3, 3, 4, 4)
    assert d.dtype == torch.uint8 and torch.equal(d.long(), windows.argmax(-1))


@pytest.mark.parametrize("width", [8, 40])  # 4 pooled columns: one by one; 20: two vectors of 8 and 4 left
def test_relu_pool_is_max_pool2d_of_relu_with_its_first_argmax(kernels, width):
    gen = torch.Generator().manual_seed(4)
    y = torch.randint(-3, 4, (3, 5, 6, width), generator=gen).float()  # integers: many ties, many clipped
    y[0, 0, 0, 0] = y[1, 2, 3, 5] = y[2, 4, 2, width - 1] = float("nan")  # first, inside a vector, the last column
    y[1, 2, 1, 1] = y[1, 3, 0, 6] = -0.0
    alpha = torch.rand(5, generator=gen) + 0.1
    alpha[1] = -0.5  # a negative scale flips which values survive the ReLU
    out, d, y_at = kernels.relu_pool(y, alpha)
    want, idx = F.max_pool2d_with_indices(torch.relu(y * alpha.view(1, -1, 1, 1)), 2, 2)
    torch.testing.assert_close(out, want, equal_nan=True, rtol=0, atol=0)
    assert torch.equal(out.view(torch.int32)[~out.isnan()], want.view(torch.int32)[~want.isnan()])  # signed zeros
    assert torch.equal(d, pg.argmax_offsets(idx, width))
    torch.testing.assert_close(y_at, y.flatten(2).gather(2, idx.flatten(2)).view_as(out), equal_nan=True, rtol=0,
                               atol=0)
    with pytest.raises(ValueError, match=r"relu_pool needs float32 \(B, O, even, even\)"):
        kernels.relu_pool(y[..., :5], alpha)


def test_unpool_bf16_is_the_dense_output_gradient_in_bf16_channels_last(kernels):
    a, w, g, d = _problem(3, 16, 12, 3, 8, seed=1)
    g[0, 1, 0, 0], g[0, 1, 0, 1], g[0, 2, 1, 1] = 1 + 2**-8, 1 + 3 * 2**-8, -0.0  # ties to even, a signed zero
    g[1, 3, 2, 2] = float("nan")
    got = kernels.unpool_bf16(g, d)
    want = _dense_grad(g, d).to(torch.bfloat16)
    assert got.shape == want.shape and got.dtype == torch.bfloat16
    assert got.is_contiguous(memory_format=torch.channels_last)
    nan = want.isnan()
    assert torch.equal(got.isnan(), nan)  # NaN stays NaN (its bits may differ)
    assert torch.equal(got[~nan].view(torch.int16), want[~nan].view(torch.int16))
    with pytest.raises(ValueError, match="offsets of its shape"):
        kernels.unpool_bf16(g, d[..., :2])


def test_what_is_not_covered_is_refused_in_one_line(kernels):
    a, w, g, d = _problem(1, 16, 8, 3, 4, seed=1)
    assert kernels.supports(a, w)
    assert not kernels.supports(a[:, :12], w[:, :12])  # channels not a multiple of 8
    assert not kernels.supports(a[..., :7, :7], w)  # odd output (5 x 5)
    assert not kernels.supports(a.double(), w.double())
    with pytest.raises(ValueError, match=r"grad and offsets must be \(1, 4, 3, 3\)"):
        kernels.conv_backward(g[..., :2], d[..., :2], a, w)
    with pytest.raises(ValueError, match="channels a multiple of 8"):
        kernels.conv_backward(g, d, a[:, :12], w[:, :12])


def _controller_grads(model, x, kernel, monkeypatch):
    monkeypatch.setattr(bk, "KERNEL", kernel)
    model.zero_grad()
    xg = x.clone().requires_grad_()
    out = model(xg)
    (out * torch.linspace(-1, 1, out.shape[1])).sum().backward()
    return out.detach(), xg.grad, {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("kind", ["xnor", "xnor-binary-fc"])
def test_xnor_controller_training_uses_it_with_the_same_forward_and_close_gradients(kind, kernels, monkeypatch):
    if bk.kernel_for(torch.device("cpu")) is None:
        pytest.skip("no exact forward kernel here")
    model = build_controller(kind)
    x = torch.randn(6, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    want = _controller_grads(model, x, "fp32", monkeypatch)  # plain autograd
    calls = []
    real = layers._ConvReluPool.apply
    monkeypatch.setattr(layers._ConvReluPool, "apply", lambda *a: calls.append(a[4]) or real(*a))
    got = _controller_grads(model, x, "auto", monkeypatch)
    assert calls == [model.features.conv2, model.features.conv4]  # the pooled layers; conv3 keeps autograd
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1], rtol=1e-4, atol=1e-6)
    for name, g in want[2].items():
        torch.testing.assert_close(got[2][name], g, rtol=1e-4, atol=1e-4 * g.abs().max().item(), msg=name)


@pytest.mark.parametrize("kind", ["xnor", "xnor-binary-fc"])
def test_bf16_gradient_products_take_the_pooled_forward_with_the_same_gradients(kind, kernels, monkeypatch):
    """With bf16 gradient products the pooled XNOR layers run their alpha, ReLU and pool in one
    pass and lay out the output gradient in one more: the gradient products get the same bf16
    operands as through the separate ops, so the same bits."""
    if bk.kernel_for(torch.device("cpu")) is None:
        pytest.skip("no exact forward kernel here")
    model = layers.set_gradient_dtype(build_controller(kind), torch.bfloat16)
    x = torch.randn(6, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    want = _controller_grads(model, x, "fp32", monkeypatch)  # _Pm1Product, then the separate ops
    calls = []
    real = layers._ConvReluPool.apply
    monkeypatch.setattr(layers._ConvReluPool, "apply", lambda *a: calls.append(a[4]) or real(*a))
    got = _controller_grads(model, x, "auto", monkeypatch)
    assert calls == [model.features.conv2, model.features.conv4]
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    for name, g in want[2].items():
        if name.endswith("weight") and name != "features.conv1.weight":  # conv1: its batched weight gradient
            assert torch.equal(got[2][name], g), name
        else:  # alpha: summed over the pooled map, not the full one
            torch.testing.assert_close(got[2][name], g, rtol=1e-4, atol=1e-4 * g.abs().max().item(), msg=name)


@pytest.mark.parametrize("grad_dtype", [None, torch.bfloat16])
def test_conv1s_relu_runs_in_conv2s_centered_sign_with_the_same_bits(grad_dtype, kernels, monkeypatch):
    """In training the XNOR controller's conv1 ReLU is computed inside conv2's centered sign (its
    mask in the sign's backward, ``relu(x)`` never stored): the same outputs and gradients, bit
    for bit, as the ReLU's own call (which a hooked ReLU keeps)."""
    if bk.kernel_for(torch.device("cpu")) is None:
        pytest.skip("no exact forward kernel here")
    model = layers.set_gradient_dtype(build_controller("xnor"), grad_dtype)
    x = torch.randn(6, 1, 32, 32, generator=torch.Generator().manual_seed(4))
    folded = []
    real = layers._CenteredSign.apply
    monkeypatch.setattr(layers._CenteredSign, "apply", lambda *a: folded.append(a[-1]) or real(*a))
    got = _controller_grads(model, x, "auto", monkeypatch)
    assert folded == [True, False, False]  # conv2's input; conv3 and conv4 binarise pooled or ReLU outputs
    handle = model.features.relu1.register_forward_hook(lambda *a: None)
    try:
        want = _controller_grads(model, x, "auto", monkeypatch)
    finally:
        handle.remove()
    assert folded[3:] == [False, False, False]
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    for name, g in want[2].items():
        assert torch.equal(got[2][name], g), name


@pytest.mark.parametrize("kind", ["xnor", "fp", "rbnn"])
@pytest.mark.parametrize("grad_dtype", [None, torch.bfloat16])
def test_deterministic_training_takes_conv3_from_its_relu_gradient(kind, grad_dtype, kernels, monkeypatch):
    """Inside ``deterministic_kernels`` (torch on one thread, the C kernels on the threads it had)
    conv3 and its ReLU take the same function without a pool: the same forward, gradients to
    float32 rounding (bf16 gradient products: the same weight gradient bits). Torch's convolutions here run on
    the whole batch, as the plain path's (their image ranges: tests/test_grouped_conv.py)."""
    if kind == "xnor" and bk.kernel_for(torch.device("cpu")) is None:
        pytest.skip("no exact forward kernel here")
    if grad_dtype is not None and kind != "xnor":
        pytest.skip("bf16 gradient products are for XNOR layers")
    from batmann.models import grouped_conv
    from batmann.utils.determinism import deterministic_kernels

    monkeypatch.setattr(grouped_conv, "active", lambda x: False)
    model = layers.set_gradient_dtype(build_controller(kind), grad_dtype)
    x = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(7))
    calls = []
    real = layers._ConvReluPool.apply
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with deterministic_kernels("cpu"):
            want = _controller_grads(model, x, "fp32", monkeypatch)  # plain autograd (or _Pm1Product)
            monkeypatch.setattr(layers._ConvReluPool, "apply", lambda *a: calls.append(a[4]) or real(*a))
            got = _controller_grads(model, x, "auto", monkeypatch)
    finally:
        torch.set_num_threads(threads)
    assert calls == [model.features.conv2, model.features.conv3, model.features.conv4]
    assert torch.equal(got[0], want[0])
    for name, g in want[2].items():
        if grad_dtype is not None and name == "features.conv3.weight":  # alpha's: summed in another order
            assert torch.equal(got[2][name], g), name
        torch.testing.assert_close(got[2][name], g, rtol=1e-4, atol=1e-4 * g.abs().max().item(), msg=name)


@pytest.mark.parametrize("kind", ["fp", "rbnn"])
def test_fp_and_rbnn_controller_training_use_it_for_their_pooled_convolutions(kind, kernels, monkeypatch):
    model = build_controller(kind)
    x = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(5))
    want = _controller_grads(model, x, "fp32", monkeypatch)  # plain autograd
    calls, fan_in = [], []
    real, real_fan_in = layers._ConvReluPool.apply, layers._SmallFanInConv.apply
    monkeypatch.setattr(layers._ConvReluPool, "apply", lambda *a: calls.append(a[4]) or real(*a))
    monkeypatch.setattr(layers._SmallFanInConv, "apply", lambda *a: fan_in.append(a[3]) or real_fan_in(*a))
    got = _controller_grads(model, x, "auto", monkeypatch)
    assert calls == [model.features.conv2, model.features.conv4]
    assert fan_in == [model.features.conv1]
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1], rtol=1e-4, atol=1e-6)
    for name, g in want[2].items():
        torch.testing.assert_close(got[2][name], g, rtol=1e-4, atol=1e-4 * g.abs().max().item(), msg=name)
    with torch.no_grad():  # inference: the plain path, the same values
        assert torch.equal(model(x), want[0])


def test_other_settings_keep_autograd(kernels, monkeypatch):
    model = build_controller("xnor")
    x = torch.randn(2, 1, 32, 32)
    calls = []
    real = layers._ConvReluPool.apply
    monkeypatch.setattr(layers._ConvReluPool, "apply", lambda *a: calls.append(a[4]) or real(*a))
    monkeypatch.setattr(bk, "KERNEL", "fp32")  # plain autograd asked for
    model(x).sum().backward()
    monkeypatch.setattr(bk, "KERNEL", "auto")
    with torch.autocast("cpu", dtype=torch.bfloat16):  # under autocast
        model(x).sum().backward()
    monkeypatch.setattr(pg, "available", lambda: False)  # the library did not build
    model(x).sum().backward()
    assert calls == []
    monkeypatch.undo()
    monkeypatch.setattr(layers._ConvReluPool, "apply", lambda *a: calls.append(a[4]) or real(*a))
    if bk.kernel_for(torch.device("cpu")) is None:
        pytest.skip("no exact forward kernel here")
    handle = model.features.relu2.register_forward_hook(lambda *a: None)  # a hooked ReLU keeps its own call
    model(x).sum().backward()
    handle.remove()
    assert calls == [model.features.conv4]


def test_a_channels_last_bf16_input_is_read_as_it_is_and_its_gradient_rounded_to_bf16(kernels):
    a, w, g, d = _problem(3, 16, 12, 3, 8, seed=4)
    a = (a * torch.rand(a.shape, generator=torch.Generator().manual_seed(5))).to(torch.bfloat16)
    a[0, 1, 0, :3] = torch.tensor([1 + 2**-7, -0.0, float("inf")])
    cl = a.contiguous(memory_format=torch.channels_last)
    back = kernels.to_float32(cl)  # exact, torch's bits
    assert back.is_contiguous() and torch.equal(back.view(torch.int32), a.float().view(torch.int32))
    a[0, 1, 0, 2] = 1.0  # finite values for the products
    cl = a.contiguous(memory_format=torch.channels_last)
    ga, gw = kernels.conv_backward(g, d, cl, w)
    ga32, gw32 = kernels.conv_backward(g, d, a.float(), w)
    assert ga.dtype == torch.bfloat16 and ga.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(ga.view(torch.int16), ga32.to(torch.bfloat16).view(torch.int16))
    assert torch.equal(gw, gw32)


def _fp_autocast_grads(model, x, monkeypatch, matrix_units):
    monkeypatch.setattr("crossbar.cpu_features.has_bf16_matrix_units", lambda device: matrix_units)
    model.zero_grad()
    xg = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(xg).float()
    (out * torch.linspace(-1, 1, out.shape[1])).sum().backward()
    return out.detach(), xg.grad, {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("channels_last", [False, True])
def test_fp_training_under_bf16_autocast_takes_float32_gradients_from_the_pooled_gradient(
        kernels, monkeypatch, channels_last):
    """Without bf16 matrix units, conv2 and conv4 of an fp controller under bf16 autocast keep the
    bf16 forward (the same bits) and take float32 gradients from the pooled gradient: autocast's
    own (bf16 products) to bf16 rounding."""
    model = build_controller("fp")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    x = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(6))
    calls = []
    real = layers._ConvReluPool.apply
    monkeypatch.setattr(layers._ConvReluPool, "apply", lambda *a: calls.append(a[4]) or real(*a))
    dense = _fp_autocast_grads(model, x, monkeypatch, matrix_units=True)  # AMX: oneDNN's bf16 products
    assert calls == []
    got = _fp_autocast_grads(model, x, monkeypatch, matrix_units=False)
    assert calls == [model.features.conv2, model.features.conv4]
    assert torch.equal(got[0], dense[0])  # the same forward
    for name, g in dense[2].items():  # the same gradients to bf16 rounding
        assert (got[2][name] - g).norm() / g.norm() < 0.01, name
    assert got[1].dtype == torch.float32 and (got[1] - dense[1]).norm() / dense[1].norm() < 0.01


@pytest.mark.parametrize("amx", [False, True])
def test_bf16_matrix_units_are_amx_tiles_on_the_cpu(monkeypatch, amx):
    from crossbar import cpu_features

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert cpu_features.has_bf16_matrix_units(torch.device("cpu")) is amx
    assert cpu_features.has_bf16_matrix_units(torch.device("meta")) is False


def test_the_training_log_names_the_convolutions_path(kernels, monkeypatch):
    from crossbar import cpu_features

    isa = pg.ISAS[pg.isa()]
    pooled = f"pooled layers: float32 gradients from the pooled gradient ({isa} loops)"
    monkeypatch.setattr(cpu_features, "has_bf16_matrix_units", lambda device: False)
    first = (f"; conv1's forward and weight gradient in C ({small_fan_in.channels_per_pass()} output channels per pass)"
             if small_fan_in.available() else "")
    assert layers.describe_training_path("fp", "fp32", "cpu") == pooled + first
    assert layers.describe_training_path("fp", "bf16", "cpu") == f"bf16 products; {pooled}"  # conv1 under autocast
    assert layers.describe_training_path("rbnn", "bf16", "cpu") == "bf16 autocast, autograd's dense bf16 products"
    monkeypatch.setattr(cpu_features, "has_bf16_matrix_units", lambda device: True)
    assert layers.describe_training_path("fp", "bf16", "cpu") == "bf16 autocast, autograd's dense bf16 products"
    if bk.kernel_for(torch.device("cpu")) is not None:
        xnor = layers.describe_training_path("xnor", "fp32", "cpu")
        assert xnor.startswith("+-1 products: ") and "exact" in xnor and xnor.endswith(pooled + first)
        assert layers.describe_training_path("xnor", "bf16", "cpu").endswith("; bf16 gradient products" + first)
    monkeypatch.setattr(bk, "KERNEL", "fp32")
    assert layers.describe_training_path("xnor", "fp32", "cpu") == "plain autograd (BATMANN_BINARY_KERNEL=fp32)"
    monkeypatch.setattr(bk, "KERNEL", "auto")
    monkeypatch.setattr(pg, "available", lambda: False)
    assert layers.describe_training_path("fp", "fp32", "cpu").startswith("autograd (pooled kernels unavailable")
    assert layers.describe_training_path("fp", "fp32", "meta") == "autograd"
