"""HardwareSpec: validation once, resolution of shortcuts, description, seeding."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
import torch

from crossbar import HardwareSpec
from crossbar.spec import derive_seed
from device_models import ADC, PRESETS, ConductanceStates, DeviceVariability, HardwareSpecError, InputDAC, StuckAtFaults


@pytest.mark.parametrize("kwargs", [
    dict(analog="both"), dict(preset="nope"), dict(variability=-0.1), dict(states=1), dict(states=0),
    dict(stuck_lrs=0.7, stuck_hrs=0.5), dict(stuck_lrs=-0.1), dict(adc_bits=0), dict(tile_shape=(0, 4)),
    dict(tile_shape=64), dict(read_voltage=0), dict(dac_bits=1), dict(seed=-1), dict(seed=1.5),
    dict(weight_mapping="row"), dict(programming="slow"), dict(nonidealities=[ADC(4)], adc_bits=6),
    dict(nonidealities=[ConductanceStates(4), ConductanceStates(8)]), dict(nonidealities=["adc"]),
    dict(variability="high"),
])
def test_bad_specs_raise_one_line_errors(kwargs):
    with pytest.raises(HardwareSpecError) as e:
        HardwareSpec(**kwargs)
    assert "\n" not in str(e.value)


def test_shortcuts_and_list_resolve_to_one_chain():
    a = HardwareSpec(analog="all", preset="vteam", variability=0.05, states=16, stuck_lrs=0.01,
                     stuck_hrs=0.02, adc_bits=6, tile_shape=(128, 128), read_voltage=0.1, dac_bits=8, seed=3)
    b = HardwareSpec(analog="all", preset=PRESETS["vteam"], seed=3, tile_shape=(128, 128), nonidealities=[
        DeviceVariability(0.05), ConductanceStates(16), StuckAtFaults(0.01, 0.02), ADC(6), InputDAC(0.1, 8)])
    assert a.describe() == b.describe()
    assert a.variability_spec == DeviceVariability(0.05) and a.adc_spec == ADC(6)
    assert a.device is PRESETS["vteam"]
    assert not a.linear_read and not a.is_ideal and a.keys_analog and a.controller_analog


def test_defaults_are_ideal_keys_only():
    s = HardwareSpec()
    assert s.analog == "keys" and s.device.name == "ideal" and s.is_ideal and s.linear_read
    assert s.keys_analog and not s.controller_analog
    assert s.dac_spec == InputDAC()
    d = s.describe()
    for key in ("analog", "preset", "r_on", "r_off", "seed", "variability_sigma", "states", "stuck_lrs",
                "stuck_hrs", "adc_bits", "tile_rows", "tile_cols", "read_voltage", "dac_bits"):
        assert key in d


def test_replace_revalidates():
    s = HardwareSpec(adc_bits=4)
    assert dataclasses.replace(s, seed=7).adc_spec == ADC(4)
    with pytest.raises(HardwareSpecError):
        dataclasses.replace(s, adc_bits=0)


def test_seeding_is_reproducible():
    s = HardwareSpec(seed=11)
    s.seed_globals()
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    s.seed_globals()
    assert first == (random.random(), np.random.rand(), torch.rand(1).item())
    g1, g2 = s.generator("x"), s.generator("x")
    assert torch.equal(torch.rand(5, generator=g1), torch.rand(5, generator=g2))
    assert derive_seed(11, "x") != derive_seed(11, "y") != derive_seed(12, "x")


@pytest.mark.parametrize("suffix", ["json", "toml"])
def test_spec_round_trips_through_a_file(tmp_path, suffix):
    """A chip saved with ``save`` loads back equal (same chip, same hash), every field kept."""
    from device_models.presets import DevicePreset

    specs = [
        HardwareSpec(),
        HardwareSpec(analog="all", preset="vteam", variability=0.2, states=16, stuck_lrs=0.01, adc_bits=6,
                     tile_shape=(128, 128), dac_bits=8, seed=4, weight_mapping="naive"),
        HardwareSpec(preset=DevicePreset(name="mine", r_on=1e3, r_off=1e5, memtorch_model="VTEAM"), seed=2),
    ]
    for spec in specs:
        back = HardwareSpec.load(spec.save(tmp_path / f"chip.{suffix}"))
        assert back == spec and hash(back) == hash(spec) and back.describe() == spec.describe()
        assert HardwareSpec.from_dict(spec.to_dict()) == spec
    assert specs[0] != specs[1]
    assert not list(tmp_path.glob(".*.tmp"))


def test_spec_from_shortcut_fields_equals_the_constructor():
    got = HardwareSpec.from_dict({"analog": "all", "variability": 0.1, "tile_shape": [64, 64], "adc_bits": 8})
    assert got == HardwareSpec(analog="all", variability=0.1, tile_shape=(64, 64), adc_bits=8)


@pytest.mark.parametrize("data,msg", [
    ({"varability": 0.1}, "unknown hardware spec field 'varability'"),
    ({"nonidealities": {"warp": {}}}, "unknown non-ideality 'warp'"),
    ({"nonidealities": {"adc": {"bitz": 3}}}, "bad fields for non-ideality 'adc'"),
    ([1], "must be a table of fields"),
    ({"analog": "al"}, "analog must be one of"),
])
def test_bad_spec_data_refused_in_one_line(data, msg):
    with pytest.raises(HardwareSpecError, match=msg):
        HardwareSpec.from_dict(data)


def test_bad_spec_files_refused_in_one_line(tmp_path):
    with pytest.raises(HardwareSpecError, match="cannot read hardware spec"):
        HardwareSpec.load(tmp_path / "missing.toml")
    (tmp_path / "broken.toml").write_text("analog = \n")
    with pytest.raises(HardwareSpecError, match="is not valid TOML"):
        HardwareSpec.load(tmp_path / "broken.toml")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(HardwareSpecError, match="is not valid JSON"):
        HardwareSpec.load(tmp_path / "broken.json")


def test_cli_flags_override_a_spec_file(tmp_path):
    """``--spec FILE`` plus flags: each flag replaces its field; the rest (and the seed) stay."""
    from batmann.cli import build_parser
    from batmann.cli.crossbar_cmd import spec_from_args

    path = HardwareSpec(analog="all", preset="vteam", stuck_lrs=0.01, stuck_hrs=0.03, adc_bits=8,
                        seed=7).save(tmp_path / "chip.toml")
    args = build_parser().parse_args(["crossbar", "evaluate", "--spec", str(path), "--adc-bits", "4",
                                      "--stuck-lrs", "0.02"])
    spec = spec_from_args(args, seed=0)
    assert spec == HardwareSpec(analog="all", preset="vteam", stuck_lrs=0.02, stuck_hrs=0.03, adc_bits=4, seed=7)
    plain = build_parser().parse_args(["crossbar", "evaluate", "--variability", "0", "--seed", "3"])
    assert spec_from_args(plain, seed=3) == HardwareSpec(seed=3)


def test_shortcut_kinds_name_what_each_shortcut_sets():
    from crossbar.spec import SHORTCUT_KINDS

    values = {"variability": 0.1, "states": 8, "stuck_lrs": 0.01, "stuck_hrs": 0.01, "adc_bits": 6,
              "tile_shape": (64, 64), "read_voltage": 0.3, "dac_bits": 8, "programming_noise": 0.05,
              "read_noise": 0.02, "drift_nu": 0.05, "drift_nu_sigma": 0.01, "time": "1d",
              "drift_compensation": "global", "adc_range": "calibrated", "endurance": 1e6, "episodes_served": 10,
              "wire_resistance": 1.0, "source_resistance": 5.0, "ir_drop_solver": "exact"}
    assert set(values) == set(SHORTCUT_KINDS)
    for field, value in values.items():
        extra = ({"drift_nu": 0.05} if SHORTCUT_KINDS[field] == "drift" else {"adc_bits": 6} if field == "adc_range"
                 else {"endurance": 10.0} if field == "episodes_served"
                 else {"wire_resistance": 1.0} if field in ("source_resistance", "ir_drop_solver") else {})
        got = {ni.kind for ni in HardwareSpec(**{**extra, field: value}).resolved_nonidealities} - {"dac"}
        assert got == ({SHORTCUT_KINDS[field]} - {"dac"}), field
