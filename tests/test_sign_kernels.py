"""The centered sign and its straight-through gradient in C (AVX2): the float64 formulas' values,
the same bits on any number of threads, and where training takes them."""

from __future__ import annotations

import pytest
import torch

from batmann.models import fused
from batmann.models import sign_kernels as sk
from batmann.models.layers import centered_sign_ste


@pytest.fixture
def kernels():
    if not sk.available():
        pytest.skip(f"centered-sign kernels unavailable here: {sk.LIBRARY.reason}")
    return sk


def _data(shape, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)


def _reference(x, g, relu, surrogate, t):
    """The eager formulas in float64."""
    xd, gd = x.double(), g.double()
    r = torch.relu(xd) if relu else xd
    dims = tuple(range(1, x.dim()))
    mu = r.mean(dims, keepdim=True)
    s = ((r - mu).square().sum(dims, keepdim=True) / (r[0].numel() - 1)).sqrt()
    out = torch.where(r > mu, 1.0, -1.0).double()
    extra = [torch.tensor(t, dtype=torch.float64)] if surrogate == "rbnn" else []
    tail = "_relu" if relu else ""
    return out, mu, s, fused._EAGER[f"sign_backward_{surrogate}" + tail](xd, mu, s, gd, *extra)


@pytest.mark.parametrize("shape", [(7, 128, 28, 28), (20, 8, 12, 12), (3, 5, 7, 7), (4, 13)])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("surrogate, t", [("hardtanh", 1.0), ("rbnn", 0.7)])
def test_the_float64_formulas_to_float32_rounding(kernels, shape, relu, surrogate, t):
    """Rows of 100352 elements, of multiples of 8 and of 245 and 13 (a tail past the last 8)."""
    x, g = _data(shape, seed=sum(shape))
    out, mu, s = kernels.sign_forward(x, relu)
    gx = kernels.sign_backward(x, mu, s, g, surrogate, t, relu)
    r_out, r_mu, r_s, r_gx = _reference(x, g, relu, surrogate, t)
    assert out.dtype == mu.dtype == s.dtype == gx.dtype == torch.float32
    assert mu.shape == s.shape == (shape[0],) + (1,) * (len(shape) - 1) and gx.shape == shape
    r = torch.relu(x) if relu else x
    clear = (r.double() - r_mu).abs() > 1e-5  # a sign can only differ on the mean
    assert torch.equal(out[clear].double(), r_out[clear])
    torch.testing.assert_close(mu.double(), r_mu, rtol=0, atol=1e-6)
    torch.testing.assert_close(s.double(), r_s, rtol=1e-6, atol=0)
    torch.testing.assert_close(gx.double(), r_gx, rtol=1e-4, atol=1e-5 * r_gx.abs().max().item())
    if relu:
        assert (gx[x <= 0] == 0).all()


@pytest.mark.parametrize("relu", [False, True])
def test_the_same_bits_on_one_or_two_threads(kernels, relu):
    x, g = _data((9, 16, 10, 10), seed=3)
    x[2, 0, 0, 0] = float("nan")  # a NaN sample: NaN statistics, signs -1, NaN gradient there
    before = torch.get_num_threads()
    runs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out, mu, s = kernels.sign_forward(x, relu)
            runs.append((out, mu, s, kernels.sign_backward(x, mu, s, g, "hardtanh", 1.0, relu)))
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) or torch.allclose(a, b, rtol=0, atol=0, equal_nan=True) for a, b in zip(*runs))
    out, mu, s, gx = runs[0]
    assert mu[2].isnan().all() and (out[2] == -1).all()
    assert gx[2][x[2] > 0].isnan().all() and (gx[2][x[2] <= 0] == 0).all() if relu else gx[2].isnan().all()
    assert torch.isfinite(gx[[0, 1, 3]]).all()


def test_bad_arguments_are_one_line_errors(kernels):
    x, g = _data((2, 8, 4, 4), seed=1)
    out, mu, s = kernels.sign_forward(x)
    with pytest.raises(ValueError, match="surrogate 'tanh' is not one of hardtanh, rbnn"):
        kernels.sign_backward(x, mu, s, g, "tanh")
    with pytest.raises(ValueError, match=r"output gradient must have x's shape \(2, 8, 4, 4\)"):
        kernels.sign_backward(x, mu, s, g[:1])
    with pytest.raises(ValueError, match="one value per sample"):
        kernels.sign_backward(x, mu[:1], s[:1], g)


def test_training_takes_them_where_the_compiled_form_would(kernels, monkeypatch):
    """Inside ``compiled_kernels``, a float32 sign of a large tensor (and its gradient) runs here;
    a bf16 sign (bf16 gradient products) and everything outside the block do not."""
    x, g = _data((16, 8, 24, 24), seed=5)
    calls = []
    for name in ("sign_forward", "sign_backward"):
        real = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))

    def grads(out_dtype=None):
        xg = x.clone().requires_grad_()
        y = centered_sign_ste(xg, "hardtanh", out_dtype=out_dtype, relu=True)
        y.backward(g.to(y.dtype))
        return y.detach(), xg.grad

    eager = grads()
    assert calls == []
    with fused.compiled_kernels(True):
        native = grads()
        assert calls == ["sign_forward", "sign_backward"]
        if fused.compiler_available():
            grads(torch.bfloat16)
            assert calls == ["sign_forward", "sign_backward"]
    r = torch.relu(x)
    clear = (r - r.mean((1, 2, 3), keepdim=True)).abs() > 1e-5
    assert torch.equal(native[0][clear], eager[0][clear])
    torch.testing.assert_close(native[1], eager[1], rtol=1e-4, atol=1e-5 * eager[1].abs().max().item())


@pytest.mark.parametrize("forward_inside", [True, False])
def test_the_signs_backward_runs_where_its_forward_ran(kernels, forward_inside, monkeypatch):
    """A forward inside ``compiled_kernels`` (on the C kernels) whose backward runs outside takes
    the C kernels back (the same bits as both inside), and one outside whose backward runs inside
    does not (the compiled or eager formulas: float32 rounding)."""
    x, g = _data((16, 8, 24, 24), seed=8)
    calls = []
    real = kernels.sign_backward
    monkeypatch.setattr(kernels, "sign_backward", lambda *a: calls.append(1) or real(*a))

    def grads(forward_in: bool, backward_in: bool):
        xg = x.clone().requires_grad_()
        with fused.compiled_kernels(forward_in):
            y = centered_sign_ste(xg, "hardtanh", relu=True)
        with fused.compiled_kernels(backward_in):
            y.backward(g)
        return xg.grad

    want = grads(forward_inside, forward_inside)
    calls.clear()
    got = grads(forward_inside, not forward_inside)
    assert calls == ([1] if forward_inside else [])
    if forward_inside:
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * want.abs().max().item())


@pytest.mark.parametrize("shape", [(7, 128, 12, 12), (3, 5, 7, 7), (4, 13)])
def test_the_standardisation_and_its_gradient_are_the_float64_formulas(kernels, shape):
    x, g = _data(shape, seed=sum(shape) + 1)
    xh, mu, s = kernels.standardize_forward(x)
    gx = kernels.standardize_backward(x, mu, s, g)
    xd, gd = x.double(), g.double()
    dims = tuple(range(1, x.dim()))
    r_mu = xd.mean(dims, keepdim=True)
    r_s = ((xd - r_mu).square().sum(dims, keepdim=True) / (x[0].numel() - 1)).sqrt()
    assert xh.dtype == gx.dtype == torch.float32 and xh.shape == gx.shape == shape
    torch.testing.assert_close(xh.double(), (xd - r_mu) / r_s, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s.double(), r_s, rtol=1e-6, atol=0)
    r_gx = fused._EAGER["standardize_backward"](xd, r_mu, r_s, gd)  # the eager formula in float64
    torch.testing.assert_close(gx.double(), r_gx, rtol=1e-4, atol=1e-5 * r_gx.abs().max().item())
    xg = xd.clone().requires_grad_()  # and autograd's gradient of the float64 standardisation
    ((xg - xg.mean(dims, keepdim=True)) / xg.std(dims, keepdim=True)).backward(gd)
    torch.testing.assert_close(gx.double(), xg.grad, rtol=1e-4, atol=1e-5 * xg.grad.abs().max().item())
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = kernels.standardize_forward(x)[0], kernels.standardize_backward(x, mu, s, g)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one[0], xh) and torch.equal(one[1], gx)


def test_rbnn_training_standardises_on_them_where_the_compiled_form_would(kernels, monkeypatch):
    from batmann.models.layers import standardize_activations

    x, g = _data((16, 8, 24, 24), seed=6)
    calls = []
    for name in ("standardize_forward", "standardize_backward"):
        real = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))

    def grads():
        xg = x.clone().requires_grad_()
        y = standardize_activations(xg)
        y.backward(g)
        return y.detach(), xg.grad

    eager = grads()
    assert calls == []
    with fused.compiled_kernels(True):
        native = grads()
    assert calls == ["standardize_forward", "standardize_backward"]
    torch.testing.assert_close(native[0], eager[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(native[1], eager[1], rtol=1e-4, atol=1e-5 * eager[1].abs().max().item())


@pytest.mark.parametrize("a32", [1, 0])
def test_rbnn_conv1s_relu_runs_in_conv2s_input_with_the_same_bits(kernels, monkeypatch, a32):
    """In compiled training the RBNN controller's conv1 ReLU is computed inside conv2's
    standardisation (``a32``) or centered sign: the same outputs and gradients, bit for bit, as
    the ReLU's own call after conv1."""
    from batmann.models import controller
    from batmann.models.controller import build_controller

    model = build_controller("rbnn", a32=a32)
    x = torch.randn(6, 1, 32, 32, generator=torch.Generator().manual_seed(7))
    calls = []
    real = model.features.conv2.forward
    monkeypatch.setattr(model.features.conv2, "forward",
                        lambda *a, **k: calls.append(k.get("input_relu", False)) or real(*a, **k))

    def grads():
        model.zero_grad()
        xg = x.clone().requires_grad_()
        with fused.compiled_kernels(True):
            out = model(xg)
        (out * torch.linspace(-1, 1, out.shape[1])).sum().backward()
        return out.detach(), xg.grad, {n: p.grad.clone() for n, p in model.named_parameters()}

    got = grads()
    monkeypatch.setattr(controller, "_FOLDS_INPUT_RELU", (controller.XnorConv2d,))  # the ReLU's own call
    want = grads()
    assert calls == [True, False]
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    for name, g in want[2].items():
        assert torch.equal(got[2][name], g), name
