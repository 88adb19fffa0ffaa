"""Device presets and non-ideality specifications (no MemTorch needed)."""

from __future__ import annotations

import math

import pytest
import torch

from device_models import (
    ADC,
    NONIDEALITY_TYPES,
    PRESETS,
    ConductanceStates,
    DevicePreset,
    DeviceVariability,
    HardwareSpecError,
    InputDAC,
    NonIdeality,
    StuckAtFaults,
    TileShape,
    get_preset,
    program_fraction,
)


# -- presets -----------------------------------------------------------------------------------
def test_presets_are_complete_and_consistent():
    assert {"ideal", "vteam", "linear_ion_drift", "data_driven", "stanford_pku"} <= set(PRESETS)
    for name, p in PRESETS.items():
        assert p.name == name
        assert 0 < p.r_on < p.r_off
        assert p.memtorch_params["r_on"] == p.r_on and p.memtorch_params["r_off"] == p.r_off
        assert "time_series_resolution" in p.memtorch_params
        assert p.source, f"preset {name} must say where its numbers come from"
        assert math.isclose(p.g_on, 1 / p.r_on) and math.isclose(p.g_off, 1 / p.r_off)


def test_get_preset_by_name_and_object():
    assert get_preset("IDEAL") is PRESETS["ideal"]
    assert get_preset("linear-ion-drift") is PRESETS["linear_ion_drift"]
    custom = DevicePreset("mine", r_on=5e3, r_off=5e4, memtorch_model="VTEAM", source="test")
    assert get_preset(custom) is custom


@pytest.mark.parametrize("kwargs", [
    dict(r_on=-1.0, r_off=1e4), dict(r_on=1e4, r_off=1e4), dict(r_on=2e4, r_off=1e4),
    dict(r_on=float("nan"), r_off=1e4), dict(r_on=1e3, r_off=1e4, memtorch_model="Nope"),
    dict(r_on=1e3, r_off=1e4, memtorch_params={"r_on": 5.0}),
])
def test_bad_presets_raise_one_line(kwargs):
    kwargs.setdefault("memtorch_model", "VTEAM")
    with pytest.raises(HardwareSpecError) as e:
        DevicePreset("bad", **kwargs)
    assert "\n" not in str(e.value)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(HardwareSpecError, match="unknown device preset 'nope'.*ideal"):
        get_preset("nope")


# -- validation of every non-ideality ------------------------------------------------------------
BAD = [
    (DeviceVariability, dict(sigma=-0.1)), (DeviceVariability, dict(sigma=1.0)),
    (DeviceVariability, dict(sigma=float("nan"))), (DeviceVariability, dict(sigma=True)),
    (DeviceVariability, dict(sigma=0.1, mode="gauss")), (DeviceVariability, dict(sigma=0.1, min_fraction=0)),
    (ConductanceStates, dict(levels=0)), (ConductanceStates, dict(levels=1)),
    (ConductanceStates, dict(levels=2.5)), (ConductanceStates, dict(levels=True)),
    (StuckAtFaults, dict(lrs=-0.01)), (StuckAtFaults, dict(hrs=1.5)),
    (StuckAtFaults, dict(lrs=0.6, hrs=0.5)), (StuckAtFaults, dict(lrs=float("inf"))),
    (ADC, dict(bits=0)), (ADC, dict(bits=25)), (ADC, dict(bits=4.0)),
    (ADC, dict(bits=4, method="minmax")), (ADC, dict(bits=4, method="log")),
    (ADC, dict(bits=4, full_scale=0.0)), (ADC, dict(bits=4, full_scale=1.5)),
    (InputDAC, dict(v_read=0.0)), (InputDAC, dict(v_read=-0.2)), (InputDAC, dict(bits=1)),
    (TileShape, dict(rows=0, cols=64)), (TileShape, dict(rows=64, cols=-1)), (TileShape, dict(rows=1.5, cols=2)),
]


@pytest.mark.parametrize("cls,kwargs", BAD, ids=[f"{c.__name__}-{k}" for c, k in BAD])
def test_out_of_range_values_raise_one_line_errors(cls, kwargs):
    with pytest.raises(HardwareSpecError) as e:
        cls(**kwargs)
    msg = str(e.value)
    assert msg and "\n" not in msg


def test_one_interface():
    import dataclasses

    from crossbar import HardwareSpec
    from device_models.nonidealities import STAGES, Drift, Endurance, IRDrop, ProgrammingNoise, ReadNoise

    objs = [DeviceVariability(0.05), ConductanceStates(8), StuckAtFaults(0.01, 0.02), ADC(6),
            InputDAC(0.1, 8), TileShape(128, 64), ProgrammingNoise(0.05), ReadNoise(0.02), Drift(0.05),
            Endurance(1e6), IRDrop(1.0)]
    assert {o.kind for o in objs} == set(NONIDEALITY_TYPES)
    spec_fields = {f.name for f in dataclasses.fields(HardwareSpec)}
    for o in objs:
        assert isinstance(o, NonIdeality)
        assert o.stage in STAGES
        d = o.describe()
        assert d and set(d) == set(type(o).describe_absent()), o.kind  # the same columns, present or not
        assert set(type(o).shortcuts) <= spec_fields  # every shortcut is a HardwareSpec field
        with pytest.raises(Exception):  # frozen
            o.kind_field = 1

def test_conductance_states_give_exactly_n_levels_on_the_device_grid():
    g_lo, g_hi = torch.full((4000,), 1e-5), torch.full((4000,), 1e-4)
    g = g_lo + torch.rand(4000, generator=torch.Generator().manual_seed(0)) * (g_hi - g_lo)
    for n in (2, 3, 8, 17):
        q = ConductanceStates(n).quantize(g, g_lo, g_hi)
        assert q.unique().numel() == n
        k = (q - g_lo) / (g_hi - g_lo) * (n - 1)
        assert torch.allclose(k, k.round(), atol=1e-4)
        assert ((q - g).abs() <= (g_hi - g_lo) / (n - 1) / 2 + 1e-9).all()  # nearest level


def test_stuck_masks_are_disjoint_and_binomial():
    n = 200_000
    lrs, hrs = StuckAtFaults(0.03, 0.05).sample_masks((n,), torch.Generator().manual_seed(1))
    assert not (lrs & hrs).any()
    for mask, p in ((lrs, 0.03), (hrs, 0.05)):
        tol = 5 * math.sqrt(p * (1 - p) / n)
        assert abs(mask.float().mean().item() - p) < tol


def test_variability_bounds_have_the_requested_relative_sigma():
    sigma, n = 0.1, 100_000
    g_lo, g_hi = DeviceVariability(sigma).sample_bounds(1e4, 1e5, (n,), torch.Generator().manual_seed(2), torch.float64)
    for r, nominal in ((1 / g_hi, 1e4), (1 / g_lo, 1e5)):
        assert abs(r.mean().item() / nominal - 1) < 0.005
        assert abs(r.std().item() / nominal - sigma) < 0.005
    assert (g_hi >= g_lo).all()
    lo0, hi0 = DeviceVariability(0.0).sample_bounds(1e4, 1e5, (10,), torch.Generator(), torch.float64)
    assert torch.all(hi0 == 1e-4) and torch.all(lo0 == 1e-5)


def test_program_fraction_modes():
    f = torch.tensor([0.0, 0.5, 1.0])
    g_lo, g_hi = torch.tensor([2e-5, 2e-5, 2e-5]), torch.tensor([5e-5, 5e-5, 5e-5])
    own = program_fraction(f, g_lo, g_hi, 1e-5, 1e-4, "own_range")
    assert torch.allclose(own, torch.tensor([2e-5, 3.5e-5, 5e-5]))
    clip = program_fraction(f, g_lo, g_hi, 1e-5, 1e-4, "memtorch_clip")
    assert torch.allclose(clip, torch.tensor([2e-5, 5e-5, 5e-5]))  # 5.5e-5 and 1e-4 clipped to 5e-5


def test_adc_has_2_to_the_bits_levels_and_a_fixed_range():
    ramp = torch.linspace(-2.0, 2.0, 10001, dtype=torch.float64)
    for bits in (1, 2, 4, 6):
        q = ADC(bits).quantize(ramp, 1.0)
        assert q.unique().numel() == 2 ** bits
        assert q.abs().max() < 1.0
        inside = ramp.abs() < 1 - 2 / 2 ** bits
        assert ((q - ramp)[inside].abs() <= 1.0 / 2 ** bits + 1e-12).all()
    small = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    with_big = torch.cat([small, torch.tensor([10.0], dtype=torch.float64)])
    assert torch.equal(ADC(4).quantize(small, 1.0), ADC(4).quantize(with_big, 1.0)[:3])


def test_input_dac_scales_per_row_and_quantises():
    x = torch.tensor([[1.0, -0.5, 0.25], [10.0, 5.0, 0.0]])
    v, s = InputDAC(0.2).encode(x)
    assert torch.allclose(s, torch.tensor([1.0, 10.0]))
    assert torch.allclose(v.abs().amax(1), torch.tensor([0.2, 0.2]))
    v3, _ = InputDAC(0.2, bits=3).encode(torch.linspace(-1, 1, 101).unsqueeze(0))
    assert v3.unique().numel() == 2 ** 3 - 1
    assert torch.equal(InputDAC().encode(torch.zeros(1, 4))[0], torch.zeros(1, 4))


def test_tile_slices_cover_the_matrix():
    t = TileShape(128, 64)
    rs = t.row_slices(300)
    assert [(s.start, s.stop) for s in rs] == [(0, 128), (128, 256), (256, 300)]
    assert len(t.col_slices(64)) == 1
