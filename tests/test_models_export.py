"""Export to plain layers: effective weights and equality with the training-time forward."""

import pytest
import torch
from torch import nn

from batmann.models import (
    CONTROLLER_KINDS,
    PLAIN_MODULE_TYPES,
    BinaryLinear,
    Int8Conv2d,
    Int8Linear,
    RbnnConv2d,
    RbnnLinear,
    SignActivation,
    StandardizeActivation,
    XnorConv2d,
    build_controller,
    export_layer,
    export_plain,
    exported_weight_layers,
)


def _perturbed(kind: str):
    """A controller whose alphas, biases and rotation angles are not at their initial values."""
    m = build_controller(kind, init_seed=11)
    g = torch.Generator().manual_seed(12)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("alpha"):
                p.mul_(torch.rand(p.shape, generator=g) + 0.5)
            elif name.endswith("rotate"):
                p.copy_(torch.rand(p.shape, generator=g) * 1.5)
            elif name.endswith("bias"):
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    if kind.startswith("rbnn"):
        m.begin_episode(0, 10)
    return m


@pytest.mark.parametrize("kind", CONTROLLER_KINDS)
def test_exported_controller_gives_the_same_features(kind):
    m = _perturbed(kind).eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    seq = export_plain(m)
    assert isinstance(seq, nn.Sequential) and not seq.training
    assert all(type(mod) in PLAIN_MODULE_TYPES for mod in seq)
    x = torch.randn(5, 1, 32, 32, generator=torch.Generator().manual_seed(13))
    with torch.no_grad():
        ref = m(x)
        out = seq(x)
        out_cl = seq(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    torch.testing.assert_close(out_cl, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    # exporting copies: the controller is unchanged, and editing the copy does not touch it
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())
    with torch.no_grad():
        seq.fc1.weight.zero_()
    assert m.fc1.weight.abs().sum() > 0
    names = list(exported_weight_layers(seq))
    assert names == ["conv1", "conv2", "conv3", "conv4", "fc1"]


@pytest.mark.parametrize("kind", ["xnor", "xnor-binary-fc", "rbnn-binary-fc"])
def test_binary_layers_export_exactly_plus_minus_alpha(kind):
    m = _perturbed(kind)
    seq = export_plain(m)
    for name in ("conv2", "conv3", "conv4", "fc1"):
        layer = getattr(m.features, name) if name != "fc1" else m.fc1
        if not isinstance(layer, (XnorConv2d, RbnnConv2d, BinaryLinear, RbnnLinear)):
            continue
        w = getattr(seq, name).weight.detach()
        alpha = layer.alpha.detach()
        a = alpha.view(-1, *([1] * (w.dim() - 1))) if alpha.dim() else alpha
        assert torch.equal(w.abs(), a.expand_as(w)), name  # exactly +-alpha
        assert torch.equal(torch.sign(w) * a.sign(), layer.binary_weight()), name
        if layer.bias is not None:
            torch.testing.assert_close(getattr(seq, name).bias, layer.bias.detach() * alpha.reshape(-1))
        expected_in = StandardizeActivation if getattr(layer, "a32", False) else SignActivation
        assert type(getattr(seq, f"{name}_in")) is expected_in


@pytest.mark.parametrize("kind", ["xnor", "xnor-binary-fc"])
def test_int8_layers_export_dequantised_values(kind):
    m = _perturbed(kind)
    seq = export_plain(m)
    layers = [("conv1", m.features.conv1)] + ([("fc1", m.fc1)] if kind == "xnor" else [])
    for name, layer in layers:
        w = getattr(seq, name).weight.detach()
        s = layer.weight.detach().abs().max()
        levels = w / s * 127
        torch.testing.assert_close(levels, levels.round(), atol=1e-4, rtol=0)
        assert levels.round().abs().max().item() == 127
        assert torch.unique(w).numel() <= 255
        assert f"{name}_in" not in dict(seq.named_children())  # 8-bit layers take real inputs


def _layer_cases():
    g = torch.Generator().manual_seed(21)
    conv_x = torch.randn(3, 6, 9, 9, generator=g).relu()
    lin_x = torch.randn(3, 40, generator=g).relu()
    gen = torch.Generator().manual_seed(22)
    return [
        (XnorConv2d(6, 8, 3, bias=True), conv_x),
        (RbnnConv2d(6, 8, 3, a32=True, generator=gen), conv_x),
        (RbnnConv2d(6, 8, 3, a32=False, generator=gen), conv_x),
        (Int8Conv2d(6, 8, 3), conv_x),
        (BinaryLinear(40, 10), lin_x),
        (RbnnLinear(40, 10, generator=gen), lin_x),
        (RbnnLinear(40, 10, a32=False, generator=gen), lin_x),
        (Int8Linear(40, 10), lin_x),
        (nn.Conv2d(6, 8, 3), conv_x),
    ]


@pytest.mark.parametrize("case", range(9))
def test_each_exported_layer_equals_the_training_forward(case):
    torch.manual_seed(30 + case)
    layer, x = _layer_cases()[case]
    with torch.no_grad():
        if layer.bias is not None:
            layer.bias.normal_()
        if hasattr(layer, "rotate"):
            layer.rotate.uniform_(0.2, 1.4)
    layer.train()  # the training-time forward
    plain, transform = export_layer(layer)
    assert type(plain) in (nn.Conv2d, nn.Linear)
    with torch.no_grad():
        ref = layer(x)
        out = plain(transform(x) if transform is not None else x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    if transform is not None and isinstance(transform, SignActivation):
        assert set(transform(x).unique().tolist()) <= {-1.0, 1.0}
