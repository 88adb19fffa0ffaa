"""The energy / latency / area model (crossbar.cost) against hand calculations on tiny arrays."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from crossbar import HardwareSpec, convert
from crossbar.cost import estimate
from device_models.errors import HardwareSpecError
from device_models.periphery import PERIPHERY_PRESETS, get_periphery

G_ON, G_OFF = 1e-4, 1e-5  # the ideal preset's window (10 kOhm / 100 kOhm)
P = PERIPHERY_PRESETS["survey2025"]


def _linear_system(spec: HardwareSpec) -> tuple:
    model = nn.Sequential(nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))  # +-1: every pair is g_on + g_off
    return model, convert(model, spec)


def _episode(support: torch.Tensor, query: torch.Tensor):
    return SimpleNamespace(support=support, query=query)


def test_a_2x2_read_matches_the_hand_calculation():
    spec = HardwareSpec(preset="ideal", analog="all", adc_bits=8, read_voltage=0.2)
    _, system = _linear_system(spec)
    x = torch.tensor([[1.0, -0.5]])  # V = (0.2, -0.1) V
    ep = _episode(x, x)  # one support, one query: one image each way
    r = estimate(system, [ep], P).to_json()
    row_sum = 2 * (G_ON + G_OFF)  # both columns of a row, both planes
    read_pj = 10e-9 * (0.2 ** 2 + 0.1 ** 2) * row_sum * 1e12  # 0.11 pJ
    adc_pj = 2 * 17.7e-3 * 2 ** 8  # two column pairs, one conversion each, FOM x 2^8
    digital_pj = 2 * 3.7  # one fp32 scale per output, no extra row tile to add
    b = r["energy_breakdown_pj_per_query"]["controller"]
    assert b["array"] == pytest.approx(read_pj, rel=1e-5)
    assert b["adc"] == pytest.approx(adc_pj, rel=1e-9)
    assert b["digital_periphery"] == pytest.approx(digital_pj, rel=1e-9)
    assert r["energy_pj_per_query"]["controller"] == pytest.approx(read_pj + adc_pj + digital_pj, rel=1e-5)
    assert r["latency_ns_per_query"]["controller"] == pytest.approx(10 + 2 * 50)  # pulse + 2 muxed conversions
    assert r["macs_per_query"]["controller"] == 4
    assert r["devices"]["controller"] == 8 and r["arrays"]["controller"] == 1 and r["adcs"]["controller"] == 1


def test_tiles_add_conversions_shift_adds_and_serial_latency():
    spec = HardwareSpec(preset="ideal", analog="all", adc_bits=6, tile_shape=(1, 1))
    _, system = _linear_system(spec)
    x = torch.tensor([[1.0, 1.0]])
    par = estimate(system, [_episode(x, x)], P).to_json()
    ser = estimate(system, [_episode(x, x)], get_periphery("survey2025", tiles="serial")).to_json()
    b = par["energy_breakdown_pj_per_query"]["controller"]
    assert b["adc"] == pytest.approx(4 * 17.7e-3 * 2 ** 6)  # 2 row tiles x 2 columns
    assert b["digital_periphery"] == pytest.approx(2 * 0.1 + 2 * 3.7)  # one add per column, one scale per output
    assert par["arrays"]["controller"] == 4 and par["adcs"]["controller"] == 4
    assert par["latency_ns_per_query"]["controller"] == pytest.approx(10 + 50)
    assert ser["latency_ns_per_query"]["controller"] == pytest.approx(4 * (10 + 50))
    # energy does not depend on the schedule
    assert ser["energy_pj_per_query"]["controller"] == pytest.approx(par["energy_pj_per_query"]["controller"])


def test_key_memory_reads_and_writes_match_the_hand_calculation():
    spec = HardwareSpec(preset="ideal", analog="keys", adc_bits=8)
    model = nn.Sequential(nn.Identity())
    system = convert(model, spec)
    support = torch.tensor([[1.0, -1.0], [-1.0, -1.0]])  # two keys of d = 2, +-1
    query = torch.tensor([[1.0, 0.5]])
    r = estimate(system, [_episode(support, query)], P).to_json()
    read_pj = 10e-9 * (0.2 ** 2 + 0.1 ** 2) * 2 * (G_ON + G_OFF) * 1e12
    assert r["energy_breakdown_pj_per_query"]["keys"]["array"] == pytest.approx(read_pj, rel=1e-6)
    write_pj = 2.0 ** 2 * 10e-9 * 4 * (G_ON + G_OFF) * 1e12  # V_w^2 t_w G over 4 device pairs
    assert r["energy_pj_per_episode"]["keys_write"] == pytest.approx(write_pj, rel=1e-6)
    assert r["macs_per_query"]["keys"] == 4
    assert r["devices"]["keys"] == 8
    # the digital baseline: 4 key MACs at int8 energy; the controller is parameter-free
    assert r["energy_pj_per_query"]["digital"] == pytest.approx(4 * 0.23)


def test_a_conv_layer_read_energy_equals_the_unfolded_sum():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=1, bias=False)
    model = nn.Sequential(conv, nn.Flatten())
    spec = HardwareSpec(preset="ideal", analog="all", read_voltage=0.3)
    system = convert(model, spec)
    images = torch.randn(2, 2, 4, 4)
    r = estimate(system, [_episode(images[:1], images[1:])], P).to_json()
    array = system.controller.arrays["0"]
    g = array.g.double()
    if array.row_index is not None:
        g = g[:, torch.argsort(array.row_index)]
    row_sum = g.sum(dim=(0, 2))  # (c, kh, kw) order
    total = 0.0
    for img in images:  # per image: V = 0.3 x / max|x|, every 3x3 patch a vector
        v = 0.3 * img / img.abs().max()
        patches = F.unfold(v.unsqueeze(0).double(), 3, padding=1)[0]  # (18, 16)
        total += float(((patches ** 2) * row_sum.view(-1, 1)).sum())
    expected = 10e-9 * total * 1e12 / 2  # per image
    assert r["energy_breakdown_pj_per_query"]["controller"]["array"] == pytest.approx(expected, rel=1e-5)
    assert r["macs_per_query"]["controller"] == 3 * 2 * 9 * 16
    assert "no ADC" in " ".join(r["notes"])


def test_periphery_rejects_bad_values_in_one_line():
    with pytest.raises(HardwareSpecError, match="columns_per_adc"):
        get_periphery("survey2025", columns_per_adc=0)
    with pytest.raises(HardwareSpecError, match="unknown periphery"):
        get_periphery("nonesuch")
    p = get_periphery("survey2025", write_pulse_s=1e-7)
    assert p.sources["write_pulse_s"] == "set by the user" and p.write_pulse_s == 1e-7
    assert all(P.sources.get(f) for f in ("adc_fom_fj", "read_pulse_s", "mac_pj", "write_voltage_v"))


def test_cli_cost_bad_value_exits_2_with_one_line():
    out = subprocess.run([sys.executable, "-m", "batmann", "crossbar", "cost", "--columns-per-adc", "0"],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert "columns_per_adc" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_cli_cost_json(trained_run):
    """The whole chip's report from the command line (a small 5-way 1-shot checkpoint: the
    shipped 20-way one costs a minute of crossbar reads on a 2-core AVX2 CPU)."""
    ckpt = trained_run[0].run_dir / "best.safetensors"
    out = subprocess.run([sys.executable, "-m", "batmann", "crossbar", "cost", "--checkpoint", str(ckpt),
                          "--analog", "all", "--adc-bits", "6", "--tile", "128x128", "--conv-rows", "kernel",
                          "--episodes", "1", "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    for key in ("energy_pj_per_query", "latency_ns_per_query"):
        assert set(r[key]) == {"controller", "keys", "total", "digital"}
    for key in ("devices", "arrays"):
        assert set(r[key]) == {"controller", "keys", "total"}
    assert r["energy_pj_per_query"]["total"] > 0 and r["latency_ns_per_query"]["digital"] > 0
