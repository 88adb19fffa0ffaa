"""Sign functions, straight-through estimators and the 8-bit quantiser."""

import math

import pytest
import torch

from batmann.errors import ConfigError
from batmann.models import quantizers as q


def test_sign_pm1_is_two_level():
    x = torch.tensor([-2.0, -1e-30, 0.0, 1e-30, 3.0])
    assert q.sign_pm1(x).tolist() == [-1.0, -1.0, -1.0, 1.0, 1.0]
    assert q.sign_pm1(x.to(torch.bfloat16)).dtype == torch.bfloat16


def test_xnor_weight_ste_clamps_the_gradient():
    x = torch.tensor([-5.0, -0.5, 0.2, 4.0], requires_grad=True)
    y = q.xnor_weight_sign(x)
    assert y.tolist() == [-1.0, -1.0, 1.0, 1.0]
    y.backward(torch.tensor([-3.0, 0.25, 2.0, -0.5]))
    # seed XNOR_BinaryQuantize: grad.clamp(-1, 1), independent of the input
    assert x.grad.tolist() == [-1.0, 0.25, 1.0, -0.5]


def test_xnor_activation_ste_is_hardtanh():
    x = torch.tensor([-1.5, -1.0, -0.3, 0.0, 0.99, 1.0, 2.0], requires_grad=True)
    q.xnor_act_sign(x).backward(torch.full((7,), 2.0))
    assert x.grad.tolist() == [0.0, 0.0, 2.0, 2.0, 2.0, 0.0, 0.0]


def test_rbnn_ste_matches_the_seed_formula():
    x = torch.tensor([-20.0, -3.0, 0.0, 1.0, 14.0, 15.0], requires_grad=True)
    k, t = 10.0, 0.1
    q.rbnn_weight_sign(x, k, t).backward(torch.ones(6))
    xs = x.detach()
    expected = (k * (2 * math.sqrt(t * t / 2) - (t * t) * xs.abs())).clamp(min=0)
    torch.testing.assert_close(x.grad, expected)
    assert x.grad[2].item() == pytest.approx(10 * 2 * math.sqrt(0.005))
    assert x.grad[0].item() == 0.0 and x.grad[5].item() == 0.0  # |x| > sqrt(2)/t

    # activations: k = 1, t = max(t, 1) -> window |x| < sqrt(2)
    a = torch.tensor([0.0, 1.0, 1.5], requires_grad=True)
    q.rbnn_act_sign(a, 0.1).backward(torch.ones(3))
    torch.testing.assert_close(a.grad, torch.tensor([math.sqrt(2), math.sqrt(2) - 1, 0.0]))


def test_rbnn_schedule_matches_cpt_tk():
    k, t = q.rbnn_schedule(0, 100)
    assert t == pytest.approx(1e-2) and k == pytest.approx(100.0)
    k, t = q.rbnn_schedule(50, 100)
    assert t == pytest.approx(10 ** -0.5) and k == pytest.approx(10 ** 0.5)
    k, t = q.rbnn_schedule(100, 100)
    assert t == pytest.approx(10.0) and k == 1.0
    with pytest.raises(ConfigError):
        q.rbnn_schedule(0, 0)


def test_int8_absmax_levels_are_8_bit():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(64, 3, 5, 5, generator=g) - 0.3  # the most negative weight dominates
    levels, s = q.int8_levels(w)
    assert s.item() == w.abs().max().item()
    assert torch.equal(levels, levels.round())
    assert levels.abs().max().item() == 127 and levels.min().item() == -127
    deq = q.int8_dequantize(w)
    torch.testing.assert_close(deq, levels / 127 * s)
    assert (deq - w).abs().max().item() <= s.item() / 127 / 2 + 1e-6
    assert torch.unique(deq).numel() <= 255


def test_int8_seed_mode_reproduces_the_seed_formula():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(16, 32, generator=g)
    mx = w.max()
    seed = w.div(mx).mul(127).round().div(127).mul(mx)
    torch.testing.assert_close(q.int8_dequantize(w, "max"), seed)
    # the seed's signed max lets negative weights go beyond level -127 when |min| > max
    w2 = torch.tensor([-2.0, 0.5, 1.0])
    levels, _ = q.int8_levels(w2, "max")
    assert levels.tolist() == [-254.0, 64.0, 127.0]
    with pytest.raises(ConfigError):
        q.int8_levels(w2, "minmax")


def test_int8_ste_forward_is_exact_and_gradient_identity():
    w = torch.randn(8, 8, generator=torch.Generator().manual_seed(3), requires_grad=True)
    y = q.int8_quantize_ste(w)
    assert torch.equal(y.detach(), q.int8_dequantize(w))
    g = torch.randn(8, 8, generator=torch.Generator().manual_seed(4))
    y.backward(g)
    assert torch.equal(w.grad, g)


@pytest.mark.parametrize("surrogate,t", [("hardtanh", 1.0), ("rbnn", 1.0), ("rbnn", 3.0)])
def test_fused_centered_sign_matches_the_autograd_chain(surrogate, t):
    from batmann.models.layers import centered_sign_ste, standardize_rows

    g = torch.Generator().manual_seed(5)
    x = (torch.randn(3, 4, 5, 5, generator=g) * 2 + 1).relu().requires_grad_(True)
    upstream = torch.randn(3, 4, 5, 5, generator=g)
    y = centered_sign_ste(x, surrogate, t)
    y.backward(upstream)
    x2 = x.detach().clone().requires_grad_(True)
    ref = q.xnor_act_sign(standardize_rows(x2)) if surrogate == "hardtanh" else q.rbnn_act_sign(standardize_rows(x2), t)
    ref.backward(upstream)
    assert torch.equal(y, ref)
    torch.testing.assert_close(x.grad, x2.grad, atol=1e-5, rtol=1e-4)
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_centered_sign_is_the_sign_of_the_centred_input(dtype):
    """The exported crossbar input transform: +1 where x - mean(x) > 0 per row, -1 elsewhere
    (at the mean too), in x's dtype, for contiguous and channels-last rows alike."""
    from batmann.models.layers import centered_sign

    g = torch.Generator().manual_seed(7)
    x = (torch.randn(4, 6, 5, 5, generator=g) * 3).relu().to(dtype)
    x[0] = 2.0  # a row equal to its mean: all -1
    for inp in (x, x.contiguous(memory_format=torch.channels_last)):
        y = centered_sign(inp)
        c = inp.float() - inp.float().mean((1, 2, 3), keepdim=True, dtype=torch.float32)
        assert y.dtype == dtype
        assert torch.equal(y.float(), torch.where(c > 0, 1.0, -1.0))
    assert bool((centered_sign(x)[0] == -1).all())


def test_fused_standardize_matches_the_autograd_chain():
    from batmann.models.layers import standardize_activations, standardize_rows

    g = torch.Generator().manual_seed(6)
    x = torch.randn(3, 50, generator=g).relu().requires_grad_(True)
    upstream = torch.randn(3, 50, generator=g)
    y = standardize_activations(x)
    y.backward(upstream)
    x2 = x.detach().clone().requires_grad_(True)
    ref = standardize_rows(x2)
    ref.backward(upstream)
    torch.testing.assert_close(y, ref)
    torch.testing.assert_close(x.grad, x2.grad, atol=1e-5, rtol=1e-4)
