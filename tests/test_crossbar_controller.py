"""The controller patched with memtorch.mn and programmed by the vectorised pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from crossbar import HardwareSpec, convert
from crossbar.controller import convert_controller
from crossbar.memtorch_compat import memtorch_available
from device_models import HardwareSpecError

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.memtorch,
    pytest.mark.skipif(not memtorch_available(), reason="MemTorch is not installed"),
]


class Sign(nn.Module):  # stands in for batmann's SignActivation (an unpatched module in between)
    def forward(self, x):
        return torch.where(x >= 0, 1.0, -1.0)


def small_controller(seed=0) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        Sign(), nn.Conv2d(6, 4, 3), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 4 * 4, 16),
    )
    with torch.no_grad():  # binary +-alpha third conv, as an exported XNOR layer
        w = net[6].weight
        w.copy_(torch.sign(w) * torch.linspace(0.1, 0.4, 4).view(-1, 1, 1, 1))
    return net.eval()


def images(n=6, seed=1):
    return torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed))


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


NONIDEAL = dict(variability=0.1, states=4, stuck_lrs=0.02, stuck_hrs=0.02)


def test_keys_only_keeps_the_digital_controller():
    net, x = small_controller(), images()
    ac = convert_controller(net, HardwareSpec(analog="keys"))
    assert not ac.analog
    assert torch.equal(ac.features(x), net(x).detach())


def test_ideal_controller_is_memtorch_modules_and_equals_digital():
    import memtorch

    net, x = small_controller(), images()
    ac = convert_controller(net, HardwareSpec(analog="all", preset="vteam"))
    kinds = [type(m) for m in ac.model.modules()]
    assert kinds.count(memtorch.mn.Conv2d) == 3 and kinds.count(memtorch.mn.Linear) == 1
    assert not any(type(m) in (nn.Conv2d, nn.Linear) for m in ac.model.modules())
    assert rel_err(ac.features(x), net(x).detach()) < 1e-5
    assert [r["layer"] for r in ac.summary()] == ["0", "2", "6", "9"]


def test_fast_programming_equals_memtorchs_own_route():
    net, x = small_controller(), images()
    fast = convert_controller(net, HardwareSpec(analog="controller", preset="vteam", seed=3, **NONIDEAL))
    slow = convert_controller(net, HardwareSpec(analog="controller", preset="vteam", seed=3, programming="memtorch", **NONIDEAL))
    mods_f = [m for m in fast.model.modules() if hasattr(m, "crossbars")]
    mods_s = [m for m in slow.model.modules() if hasattr(m, "crossbars")]
    for mf, ms in zip(mods_f, mods_s):
        assert isinstance(ms.crossbars[0].devices, np.ndarray)  # MemTorch built its device objects
        assert ms.crossbars[0].devices.size == mf.crossbars[0].rows * mf.crossbars[0].columns
        for k in (0, 1):
            assert torch.equal(mf.crossbars[k].conductance_matrix, ms.crossbars[k].conductance_matrix)
    assert torch.equal(fast.features(x), slow.features(x))


def test_memtorch_forward_equals_the_vectorised_read():
    net, x = small_controller(), images()
    spec = HardwareSpec(analog="all", preset="data_driven", seed=2, **NONIDEAL)
    a = convert_controller(net, spec, read="memtorch").features(x)
    b = convert_controller(net, spec, read="vectorised").features(x)
    assert rel_err(a, b) < 1e-5


def test_nonidealities_reach_the_memtorch_crossbars():
    net, x = small_controller(), images()
    ideal = convert_controller(net, HardwareSpec(analog="all")).features(x)
    # (c, kh, kw) rows: the device planes are then in the order of MemTorch's matrices (with kernel
    # rows they are permuted; test_kernel_major_rows_change_nothing_without_an_adc_or_ir_drop)
    ac = convert_controller(net, HardwareSpec(analog="all", states=4, stuck_lrs=0.05, stuck_hrs=0.05, seed=1,
                                              conv_rows="channel"))
    for name, m in ac.model.named_modules():
        if not hasattr(m, "crossbars"):
            continue
        array = ac.arrays[name]
        for k in (0, 1):
            g = m.crossbars[k].conductance_matrix  # what MemTorch's forward multiplies with
            assert g.unique().numel() <= 4
            lrs, hrs = array.planes.stuck_lrs[k], array.planes.stuck_hrs[k]
            assert torch.all(g[lrs] == array.planes.g_hi[k][lrs].float())
            assert torch.all(g[hrs] == array.planes.g_lo[k][hrs].float())
    assert any(m.crossbars[0].conductance_matrix.unique().numel() == 4
               for m in ac.model.modules() if hasattr(m, "crossbars"))
    assert rel_err(ac.features(x), ideal) > 1e-2


def test_adc_and_dac_change_features_and_stay_per_image():
    net, x = small_controller(), images(8)
    spec = HardwareSpec(analog="all", adc_bits=8, dac_bits=6, tile_shape=(32, 32), variability=0.05)
    ac = convert_controller(net, spec)
    feats = ac.features(x)
    one_by_one = torch.cat([ac.features(x[i:i + 1]) for i in range(8)])
    assert torch.equal(feats, one_by_one)
    assert rel_err(feats, convert_controller(net, HardwareSpec(analog="all", variability=0.05)).features(x)) > 1e-3
    with pytest.raises(HardwareSpecError):
        convert_controller(net, spec, read="memtorch")


def test_feature_cache_never_recomputes_an_image():
    net, x = small_controller(), images(10)
    system = convert(net, HardwareSpec(analog="all", variability=0.05, seed=1))
    ac = system.controller
    ids = list(range(100, 110))
    first = system.features(x[:6], ids[:6])
    assert ac.n_computed == 6
    both = system.features(x[3:10], ids[3:10])  # 3 cached, 4 new
    assert ac.n_computed == 10
    assert torch.equal(both[:3], first[3:6])
    dup = system.features(torch.cat([x[:2], x[:2]]), [ids[0], ids[1], ids[0], ids[1]])
    assert ac.n_computed == 10 and torch.equal(dup[:2], dup[2:])
    assert torch.equal(system.features(x), ac.features(x))  # without ids: computed, same values
    with pytest.raises(ValueError):
        system.features(x[:2], [1])


def test_same_seed_same_features():
    net, x = small_controller(), images()
    kw = dict(analog="all", adc_bits=8, tile_shape=(32, 32), **NONIDEAL)
    a = convert_controller(net, HardwareSpec(seed=5, **kw)).features(x)
    b = convert_controller(net, HardwareSpec(seed=5, **kw)).features(x)
    c = convert_controller(net, HardwareSpec(seed=6, **kw)).features(x)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_system_with_everything_analog():
    net, x = small_controller(), images(5)
    system = convert(net, HardwareSpec(analog="all"))
    feats = system.features(x, ids=range(5))
    keys = torch.sign(feats)
    system.write(keys)
    assert torch.allclose(system.similarities(keys), keys @ keys.T, atol=1e-6)
    ctrl_only = convert(net, HardwareSpec(analog="controller"))
    ctrl_only.write(keys)
    assert ctrl_only.key_chip is None and torch.equal(ctrl_only.similarities(keys), keys @ keys.T)


def test_unsupported_layers_are_refused():
    class MyConv(nn.Conv2d):
        pass

    with pytest.raises(HardwareSpecError, match="subclass"):
        convert_controller(nn.Sequential(MyConv(1, 2, 3)), HardwareSpec(analog="all"))
    with pytest.raises(HardwareSpecError, match="grouped"):
        convert_controller(nn.Sequential(nn.Conv2d(2, 2, 3, groups=2)), HardwareSpec(analog="all"))
    with pytest.raises(HardwareSpecError):
        convert_controller(nn.Sequential(nn.ReLU()), HardwareSpec(analog="all"))


def test_bias_free_layers_stay_bias_free_on_ideal_crossbars():
    """MemTorch's patch_model gives a bias-free layer a random bias (it builds its modules with
    bias=True and copies only existing biases); convert must undo that, so the ideal device
    reproduces a bias-free controller exactly."""
    from crossbar import HardwareSpec

    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 5, bias=False), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 12 * 12, 16, bias=False)).eval()
    x = torch.randn(3, 1, 16, 16)
    analog = convert_controller(plain, HardwareSpec(analog="controller", preset="ideal"))
    with torch.no_grad():
        ref = plain(x)
    out = analog.features(x)
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
