"""Controllers: shapes, layer types, initialisation, errors, RBNN schedule and rotations."""

import pytest
import torch
from torch import nn

from batmann.errors import ConfigError
from batmann.models import (
    CONTROLLER_KINDS,
    BinaryLinear,
    Int8Conv2d,
    Int8Linear,
    RbnnConv2d,
    RbnnLinear,
    XnorConv2d,
    build_controller,
    controller_layer_names,
    controller_layer_types,
)
from batmann.models.layers import get_ab, standardize_rows
from batmann.models.quantizers import sign_pm1


def _images(n=3, c=1, seed=0):
    return torch.randn(n, c, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", CONTROLLER_KINDS)
def test_forward_and_backward_shapes(kind):
    m = build_controller(kind)
    x = _images(3).requires_grad_(True)
    y = m(x)
    assert y.shape == (3, 512) and y.dtype == torch.float32
    assert torch.isfinite(y).all()
    y.pow(2).mean().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    for name, p in m.named_parameters():
        assert p.grad is not None, name
        assert p.grad.shape == p.shape, name
        assert torch.isfinite(p.grad).all(), name
    # gradients reach the first layer (through every STE) and the last one
    assert m.features.conv1.weight.grad.abs().sum() > 0
    assert m.fc1.bias.grad.abs().sum() > 0
    if kind.startswith("xnor"):
        assert m.features.conv2.weight.grad.abs().sum() > 0
        assert m.features.conv2.alpha.grad.abs().sum() > 0
    if kind.startswith("rbnn"):
        assert m.features.conv2.alpha.grad.abs().sum() > 0
        assert m.features.conv2.rotate.grad.abs().sum() > 0


def test_options_change_shapes():
    m = build_controller("xnor-binary-fc", input_channel=3, feature_dim=64)
    assert m(_images(2, c=3)).shape == (2, 64)
    assert m.config["feature_dim"] == 64 and m.kind == "xnor-binary-fc"
    with pytest.raises(ValueError):
        m(torch.zeros(2, 3, 28, 28))


def test_layer_types_per_kind():
    expected = {
        "fp": (nn.Conv2d, nn.Conv2d, nn.Linear),
        "xnor": (Int8Conv2d, XnorConv2d, Int8Linear),
        "xnor-binary-fc": (Int8Conv2d, XnorConv2d, BinaryLinear),
        "rbnn": (nn.Conv2d, RbnnConv2d, nn.Linear),
        "rbnn-binary-fc": (nn.Conv2d, RbnnConv2d, RbnnLinear),
    }
    for kind, (c1, inner, fc) in expected.items():
        m = build_controller(kind)
        mods = dict(m.named_modules())
        layers = [mods[n] for n in controller_layer_names()]
        assert type(layers[0]) is c1, kind
        assert all(type(lay) is inner for lay in layers[1:4]), kind
        assert type(layers[4]) is fc, kind
        assert controller_layer_types(kind)["fc1"] == fc.__name__
    xm = build_controller("xnor")
    assert xm.features.conv1.bias is None and xm.features.conv2.bias is None and xm.fc1.bias is not None
    rm = build_controller("rbnn")
    assert rm.features.conv2.bias is not None
    assert (rm.features.conv2.a, rm.features.conv2.b) == (50, 64) == get_ab(128 * 25)
    assert (rm.features.conv3.a, rm.features.conv3.b) == (32, 36)


def test_unknown_kind_is_a_one_line_config_error():
    with pytest.raises(ConfigError) as e:
        build_controller("foo")
    msg = str(e.value)
    assert msg == "controller kind 'foo' is not one of fp, xnor, xnor-binary-fc, rbnn, rbnn-binary-fc"
    with pytest.raises(ConfigError):
        build_controller("fp", feature_dim=0)
    with pytest.raises(ConfigError):
        build_controller("rbnn", rotation_update=0)


def test_init_is_deterministic_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a = build_controller("rbnn-binary-fc").state_dict()
    b = build_controller("rbnn-binary-fc").state_dict()
    assert torch.equal(torch.get_rng_state(), state)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = build_controller("rbnn-binary-fc", init_seed=1).state_dict()
    assert not torch.equal(a["features.conv2.weight"], c["features.conv2.weight"])
    # seed init: linear bias 1, conv bias 0, alpha = mean|W|
    assert torch.equal(a["fc1.bias"], torch.ones(512))
    assert torch.equal(a["features.conv2.bias"], torch.zeros(128))
    w = a["features.conv2.weight"]
    torch.testing.assert_close(a["features.conv2.alpha"], w.abs().flatten(1).mean(1))
    torch.testing.assert_close(a["fc1.alpha"], a["fc1.weight"].abs().mean())
    assert w.std().item() == pytest.approx((2 / (25 * 128)) ** 0.5, rel=0.02)


@pytest.mark.parametrize("kind", ["fp", "xnor", "rbnn-binary-fc"])
def test_channels_last_and_bf16_autocast(kind):
    m = build_controller(kind).to(memory_format=torch.channels_last)
    x = _images(2).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    assert y.shape == (2, 512) and torch.isfinite(y.float()).all()
    y.float().sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    m.eval()
    with torch.no_grad():
        ref = build_controller(kind).eval()(_images(2))
        out = m(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)  # channels_last alone changes nothing


def test_binarised_weights_are_used_in_forward():
    """The XNOR conv computes (conv(sign(x - mean), sign(w - mean)) + b) * alpha."""
    torch.manual_seed(5)
    layer = XnorConv2d(4, 6, 3, bias=True)
    with torch.no_grad():
        layer.bias.normal_()
        layer.alpha.uniform_(0.5, 2.0)
    x = torch.randn(2, 4, 7, 7)
    xa = sign_pm1(x - x.mean((1, 2, 3), keepdim=True))
    wb = sign_pm1(layer.weight - layer.weight.mean((1, 2, 3), keepdim=True))
    ref = (torch.nn.functional.conv2d(xa, wb, layer.bias)) * layer.alpha.view(1, -1, 1, 1)
    torch.testing.assert_close(layer(x), ref)


def _rbnn_objective(layer):
    from batmann.models.layers import standardize_rows

    w2 = standardize_rows(layer.weight.detach())
    x = w2.reshape(w2.shape[0], layer.a, layer.b)
    return (layer.R1.t() @ x @ layer.R2).abs().sum().item()


def test_rbnn_rotation_update_and_schedule():
    m = build_controller("rbnn-binary-fc", rotation_update=2)
    layers = m.rbnn_layers()
    assert len(layers) == 4
    conv2 = m.features.conv2
    r1, r2 = conv2.R1.clone(), conv2.R2.clone()
    eye = torch.eye(conv2.a)
    torch.testing.assert_close(r1.t() @ r1, eye, atol=1e-5, rtol=0)
    before = _rbnn_objective(conv2)

    m.begin_episode(1, 10)  # 1 % 2 != 0: schedule only
    assert torch.equal(conv2.R1, r1) and torch.equal(conv2.R2, r2)
    assert conv2.t == pytest.approx(10 ** (-2 + 3 * 0.1)) and conv2.k == pytest.approx(1 / conv2.t)
    assert m.fc1.t == conv2.t  # the FC gets the schedule too (the seed's does not)

    m.begin_episode(2, 10)
    assert not torch.equal(conv2.R1, r1)
    torch.testing.assert_close(conv2.R1.t() @ conv2.R1, eye, atol=1e-5, rtol=0)
    torch.testing.assert_close(conv2.R2 @ conv2.R2.t(), torch.eye(conv2.b), atol=1e-5, rtol=0)
    # the alternating steps maximise tr(B^T R1^T X R2) = sum |R1^T X R2|
    assert _rbnn_objective(conv2) > before
    assert _rbnn_objective(m.fc1) > 0
    y = m(_images(2))
    assert y.shape == (2, 512) and torch.isfinite(y).all()


def test_rbnn_a32_switches_activation_binarisation():
    torch.manual_seed(6)
    x = torch.randn(2, 4, 6, 6)
    for a32 in (True, False):
        layer = RbnnConv2d(4, 5, 3, a32=a32, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            layer.bias.normal_()
            layer.rotate.uniform_(0.3, 1.2)  # a partial rotation: w3 differs from w2 and R1^T w2 R2
        c = x - x.mean((1, 2, 3), keepdim=True)
        xin = c / c.std((1, 2, 3), keepdim=True) if a32 else sign_pm1(c)
        bw = layer.binary_weight()
        assert set(bw.unique().tolist()) == {-1.0, 1.0}
        ref = torch.nn.functional.conv2d(xin, bw, layer.bias) * layer.alpha.view(1, -1, 1, 1)
        torch.testing.assert_close(layer(x), ref)
        # w3 = w2 + |sin(theta)| (R1^T w2 R2 - w2)
        w2 = standardize_rows(layer.weight.detach())
        rw = (layer.R1.t() @ w2.reshape(5, layer.a, layer.b) @ layer.R2).reshape(w2.shape)
        w3 = w2 + layer.rotate.detach().sin().abs() * (rw - w2)
        assert torch.equal(bw, sign_pm1(w3))
