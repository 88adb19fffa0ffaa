"""Compiled element-wise kernels and the XNOR layers' exact-forward / bf16-gradient products."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from batmann.config import ModelConfig, TrainConfig
from batmann.models import fused
from batmann.models.layers import XnorConv2d, BinaryLinear, centered_sign_ste, set_gradient_dtype, standardize_activations

needs_compiler = pytest.mark.skipif(not fused.compiler_available(), reason="no C++ compiler for TorchInductor")


@pytest.fixture
def inductor(monkeypatch):
    """The compiled form itself: the C kernels that take a float32 sign instead are left out
    (tests/test_sign_kernels.py)."""
    from batmann.models import sign_kernels

    monkeypatch.setattr(sign_kernels, "available", lambda: False)

# (16, 8, 24, 24) = 73,728 elements: above fused.MIN_COMPILED_NUMEL, small enough to compile fast
SHAPE = (16, 8, 24, 24)


def _x(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(SHAPE, generator=g)) + 0.1 * torch.randn(SHAPE, generator=g)


def _grads(fn, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    y = fn(x)
    y.backward(g)
    return y.detach(), x.grad


@needs_compiler
@pytest.mark.parametrize("surrogate", ["hardtanh", "rbnn"])
def test_compiled_sign_matches_eager(surrogate, inductor):
    x, g = _x(0), torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))

    def fn(t):
        return centered_sign_ste(t, surrogate, 0.7)

    y_e, dx_e = _grads(fn, x, g)
    with fused.compiled_kernels(True):
        y_c, dx_c = _grads(fn, x, g)
    mu = x.mean((1, 2, 3), keepdim=True)
    clear = (x - mu).abs() > 1e-5  # signs can only differ where x sits on its mean
    assert torch.equal(y_e[clear], y_c[clear])
    torch.testing.assert_close(dx_c, dx_e, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("surrogate", ["hardtanh", "rbnn"])
def test_sign_with_relu_is_the_sign_of_the_relu(surrogate, inductor):
    """``relu=True`` binarises ``relu(x)`` with the ReLU in the sign's own passes: eager, the same
    bits as the separate ops (values and the gradient with respect to ``x``); compiled, close."""
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(6))
    g = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7))

    def separate(t):
        return centered_sign_ste(torch.relu(t), surrogate, 0.7)

    def folded(t):
        return centered_sign_ste(t, surrogate, 0.7, relu=True)

    want = _grads(separate, x, g)
    got = _grads(folded, x, g)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert (got[1][x <= 0] == 0).all()
    if surrogate == "hardtanh" and fused.compiler_available():
        with fused.compiled_kernels(True):
            y_c, dx_c = _grads(folded, x, g)
        r = torch.relu(x)
        clear = (r - r.mean((1, 2, 3), keepdim=True)).abs() > 1e-5  # signs can only differ on the mean
        assert torch.equal(y_c[clear], want[0][clear])
        torch.testing.assert_close(dx_c, want[1], rtol=1e-4, atol=1e-6)


@needs_compiler
def test_compiled_standardize_matches_eager():
    x, g = _x(2), torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    y_e, dx_e = _grads(standardize_activations, x, g)
    with fused.compiled_kernels(True):
        y_c, dx_c = _grads(standardize_activations, x, g)
    torch.testing.assert_close(y_c, y_e, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dx_c, dx_e, rtol=1e-4, atol=1e-6)


@needs_compiler
def test_compiled_kernels_same_bits_on_one_and_two_threads(inductor):
    x, g = _x(4), torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))
    before = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with fused.compiled_kernels(True):
                outs.append(_grads(lambda t: centered_sign_ste(t, "hardtanh"), x, g))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


def test_compiled_kernels_off_by_default_and_restored():
    assert fused._enabled is False
    with fused.compiled_kernels(True):
        assert fused._enabled is True
        with fused.compiled_kernels(False):
            assert fused._enabled is False
        assert fused._enabled is True
    assert fused._enabled is False


def test_small_tensors_stay_eager():
    x = torch.randn(2, 3, 4, 4)
    with fused.compiled_kernels(True):
        assert fused._kernel("sign_forward", x) is fused._EAGER["sign_forward"]


def test_inference_stays_eager_whatever_the_batch_size(monkeypatch):
    """Without autograd nothing is compiled (an evaluation meets dozens of batch sizes; static
    shapes would compile each, up to the recompile limit); the values are the eager ones."""
    monkeypatch.setattr(fused, "_compiled", lambda name: pytest.fail(f"{name} compiled at inference"))
    conv = XnorConv2d(8, 4, 3)
    with fused.compiled_kernels(True), torch.no_grad():
        for b in range(1, 70, 7):
            x = torch.randn(b, 8, 90, 90)  # above MIN_COMPILED_NUMEL
            assert torch.equal(centered_sign_ste(x), fused._EAGER["sign_forward"](x, x.dtype)[0])
            assert torch.equal(standardize_activations(x), fused._EAGER["standardize_forward"](x)[0])
        conv(torch.randn(3, 8, 90, 90))


def _layer_pair(kind: str):
    torch.manual_seed(0)
    if kind == "conv":
        ref = XnorConv2d(8, 16, 3, padding=1)
        x = torch.randn(6, 8, 10, 10)
    else:
        ref = BinaryLinear(40, 12)
        x = torch.randn(6, 40)
    mixed = set_gradient_dtype(XnorConv2d(8, 16, 3, padding=1) if kind == "conv" else BinaryLinear(40, 12),
                               torch.bfloat16)
    mixed.load_state_dict(ref.state_dict())
    return ref, mixed, x


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_bf16_gradient_products_exact_forward_close_gradients(kind):
    ref, mixed, x = _layer_pair(kind)
    outs, grads = [], []
    for layer in (ref, mixed):
        xi = x.clone().requires_grad_(True)
        y = layer(xi)
        (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
        outs.append(y.detach())
        grads.append([xi.grad, layer.weight.grad, layer.alpha.grad])
    assert torch.equal(outs[0], outs[1])  # the forward is the float32 one, bit for bit
    for a, b in zip(*grads):
        scale = a.abs().max()
        assert (a - b).abs().max() <= 0.02 * scale  # bf16 gradient products: ~3 significant digits
        assert F.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.999


def test_gradient_dtype_only_for_xnor_in_bf16():
    assert TrainConfig(model=ModelConfig(controller="xnor"), precision="bf16").gradient_dtype is torch.bfloat16
    assert TrainConfig(model=ModelConfig(controller="xnor-binary-fc"), precision="bf16").gradient_dtype is torch.bfloat16
    assert TrainConfig(model=ModelConfig(controller="xnor"), precision="fp32").gradient_dtype is None
    assert TrainConfig(model=ModelConfig(controller="rbnn"), precision="bf16").gradient_dtype is None
    assert not TrainConfig(model=ModelConfig(controller="xnor"), precision="bf16").autocast_bf16
    assert TrainConfig(model=ModelConfig(controller="rbnn"), precision="bf16").autocast_bf16


def test_compile_option(monkeypatch):
    from batmann.errors import ConfigError

    with pytest.raises(ConfigError, match="compile"):
        TrainConfig(compile="yes").validate()
    assert TrainConfig(compile="on").effective_compile is True
    assert TrainConfig(model=ModelConfig(controller="xnor"), compile="off").effective_compile is False
    assert TrainConfig(model=ModelConfig(controller="fp")).effective_compile is False
    monkeypatch.setenv("BATMANN_COMPILE", "1")
    assert TrainConfig(model=ModelConfig(controller="xnor")).effective_compile is fused.compiler_available()
    monkeypatch.setenv("BATMANN_COMPILE", "0")
    assert TrainConfig(model=ModelConfig(controller="xnor")).effective_compile is False
