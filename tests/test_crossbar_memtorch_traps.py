"""MemTorch 1.1.6 behaviour we rely on, and the traps we work around (canaries: if MemTorch
changes, these tests say so and the workaround in crossbar/ can be revisited).

Each trap test shows MemTorch's behaviour on a tiny layer; the matching tests of our pipeline
are in test_crossbar_conductance.py / test_crossbar_controller.py.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from crossbar import HardwareSpec
from crossbar import conductance as C
from crossbar.memtorch_compat import import_memtorch, memtorch_available
from device_models import program_fraction

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.memtorch,
    pytest.mark.skipif(not memtorch_available(), reason="MemTorch is not installed"),
]

R_ON, R_OFF = 1e4, 1e5
PARAMS = {"time_series_resolution": 1e-10, "r_on": R_ON, "r_off": R_OFF}


@pytest.fixture(scope="module")
def memtorch():
    return import_memtorch()


def patched_linear(memtorch, n_in=32, n_out=16, seed=0, params=PARAMS, **kwargs):
    torch.manual_seed(seed)
    np.random.seed(seed)
    from memtorch.mn.Module import patch_model

    net = nn.Sequential(nn.Linear(n_in, n_out))
    return net, patch_model(copy.deepcopy(net), memtorch.bh.memristor.VTEAM, dict(params),
                            module_parameters_to_patch=[nn.Linear], verbose=False, **kwargs)


# -- traps --------------------------------------------------------------------------------------
def test_trap_finite_conductance_states_changes_nothing(memtorch):
    from memtorch.bh.nonideality.FiniteConductanceStates import apply_finite_conductance_states

    _, m = patched_linear(memtorch)
    before = m[0].crossbars[0].conductance_matrix.clone()
    apply_finite_conductance_states(m[0], 4)
    after = m[0].crossbars[0].conductance_matrix
    assert after.unique().numel() == before.unique().numel() > 4
    assert torch.equal(after.float(), before.float())
    # root cause: the C++ quantize accepts only scalar min/max; the per-device tensors it is
    # given raise a TypeError that a bare `except:` swallows (restoring the old matrix)
    with pytest.raises(TypeError):
        memtorch.bh.Quantize.quantize(before.reshape(-1).double(), 4, min=torch.full((before.numel(),), 1e-5),
                                      max=torch.full((before.numel(),), 1e-4))


def test_trap_a_later_nonideality_wipes_stuck_at_faults(memtorch):
    from memtorch.bh.nonideality.DeviceFaults import apply_device_faults
    from memtorch.bh.nonideality.FiniteConductanceStates import apply_finite_conductance_states

    _, m = patched_linear(memtorch)
    clean = m[0].crossbars[0].conductance_matrix.clone()
    apply_device_faults(m[0], 0.2, 0.2, 0.0)
    faulty = (m[0].crossbars[0].conductance_matrix != clean).float().mean().item()
    assert faulty > 0.1
    apply_finite_conductance_states(m[0], 4)  # rebuilds the matrix from the device objects
    assert (m[0].crossbars[0].conductance_matrix.float() != clean.float()).float().mean().item() == 0.0


def test_trap_unknown_adc_method_is_silently_ignored(memtorch):
    net, plain = patched_linear(memtorch)
    _, minmax = patched_linear(memtorch, ADC_resolution=2, quant_method="minmax")
    assert minmax[0].quant_method is None
    x = torch.randn(5, 32)
    assert torch.equal(plain(x), minmax(x))


def test_trap_memtorch_linear_adc_range_depends_on_the_batch(memtorch):
    q = memtorch.bh.Quantize.quantize
    small = torch.tensor([0.3, -0.2, 0.1])
    alone = q(small, 4, quant_method="linear")
    with_big = q(torch.cat([small, torch.tensor([10.0])]), 4, quant_method="linear")[:3]
    assert not torch.equal(alone, with_big)  # same values, other batch mate, other output


def test_trap_reference_device_draws_random_resistances(memtorch):
    sp = memtorch.bh.StochasticParameter
    torch.manual_seed(0)
    params = {"time_series_resolution": 1e-10, "r_on": sp(loc=R_ON, scale=0.1 * R_ON, min=1),
              "r_off": sp(loc=R_OFF, scale=0.1 * R_OFF, min=1)}
    # init_crossbar builds this "reference" device to map weights; `reference` lands in **kwargs,
    # which unpack_parameters does not look at, so it samples instead of returning the mean
    refs = {memtorch.bh.memristor.VTEAM(**{**params, "reference": True}).r_on for _ in range(5)}
    assert len(refs) == 5 and R_ON not in refs


def test_trap_crossbar_mean_resistances_fall_back_to_model_defaults(memtorch):
    cb = memtorch.bh.crossbar.Crossbar(memtorch.bh.memristor.VTEAM, dict(PARAMS), (4, 4))
    assert (cb.r_on_mean, cb.r_off_mean) == (50, 1000)  # VTEAM's defaults, not 1e4 / 1e5


def test_trap_stanford_pku_set_conductance_does_not_set_g(memtorch):
    d = memtorch.bh.memristor.Stanford_PKU()
    g0 = d.g
    d.set_conductance(1 / 5000)
    assert d.g == g0 != 1 / 5000


# -- what we take from MemTorch, checked against it ----------------------------------------------
def test_naive_mapping_equals_memtorch_naive_map(memtorch):
    from memtorch.map.Parameter import naive_map

    w = torch.randn(16, 40, dtype=torch.float64)  # (out, in)
    pos, neg = naive_map(w, R_ON, R_OFF, scheme=memtorch.bh.Scheme.DoubleColumn)
    spec = HardwareSpec(weight_mapping="naive", preset="ideal")  # ideal: r_on 1e4, r_off 1e5
    planes = C.sample_planes(spec, 40, 16, torch.Generator(), torch.float64)
    arr = C.program(spec, planes, w.T)
    assert torch.allclose(arr.g[0], pos.T, rtol=1e-12) and torch.allclose(arr.g[1], neg.T, rtol=1e-12)


def test_memtorch_clip_mode_equals_memtorch_programming_of_varied_devices(memtorch):
    sp = memtorch.bh.StochasticParameter
    torch.manual_seed(3)
    params = {"time_series_resolution": 1e-10, "r_on": sp(loc=R_ON, scale=0.15 * R_ON, min=1),
              "r_off": sp(loc=R_OFF, scale=0.15 * R_OFF, min=1)}
    w = torch.randn(8, 24, dtype=torch.float64)  # (out, in): crossbar rows = 24, columns = 8
    cb = memtorch.bh.crossbar.Crossbar(memtorch.bh.memristor.VTEAM, params, w.shape)
    from memtorch.map.Parameter import naive_map

    pos, _ = naive_map(w, R_ON, R_OFF, scheme=memtorch.bh.Scheme.DoubleColumn)
    cb.write_conductance_matrix(pos, transistor=True)
    r_on_d = torch.tensor(np.vectorize(lambda d: d.r_on)(cb.devices), dtype=torch.float64)
    r_off_d = torch.tensor(np.vectorize(lambda d: d.r_off)(cb.devices), dtype=torch.float64)
    frac, _ = C.map_targets(w.T, "naive")
    ours = program_fraction(frac[0], 1 / r_off_d, 1 / r_on_d, 1 / R_OFF, 1 / R_ON, "memtorch_clip")
    assert torch.allclose(ours.float(), cb.conductance_matrix.float(), rtol=1e-6)
    assert (1 / r_on_d).std() > 0  # the devices really varied


def test_drift_equals_memtorch_conductance_drift_on_the_same_devices(memtorch):
    """MemTorch's retention model (Boybat et al. 2018: G(t) = G(t0) (t / t0)^-nu, one nu for the
    layer) applied to a patched layer's crossbars, against our Drift on the same conductances."""
    from memtorch.bh.nonideality.Retention import apply_retention_model
    from memtorch.bh.nonideality.endurance_retention_models.conductance_drift import model_conductance_drift

    from device_models import Drift

    _, m = patched_linear(memtorch)
    before = [cb.conductance_matrix.clone().double() for cb in m[0].crossbars]
    apply_retention_model(m[0], 86400.0, model_conductance_drift, initial_time=1.0, drift_coefficient=0.06)
    ours = Drift(0.06, time=86400.0, t0=1.0)
    planes = C.DevicePlanes(torch.zeros(1), torch.zeros(1))
    for g0, cb in zip(before, m[0].crossbars):
        assert torch.allclose(ours.read_conductance(g0, planes, 86400.0), cb.conductance_matrix.double(), rtol=1e-6)
        assert not torch.allclose(g0, cb.conductance_matrix.double(), rtol=0.1)  # and it did drift
