"""Programming noise, read noise and drift: each changes exactly what it should, is seeded, and
refuses bad values in one line."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from crossbar import HardwareSpec, KeyCrossbar
from crossbar import conductance as C
from device_models import Drift, HardwareSpecError, ProgrammingNoise, ReadNoise, parse_duration


def _half() -> torch.Tensor:
    """64 x 32 weights: row 0 at 1 (the column scale), every other at 0.5 (mid-window)."""
    w = torch.full((64, 32), 0.5, dtype=torch.float64)
    w[0] = 1.0
    return w


def _array(spec, weights=None, write=0, time=0.0):
    w = weights if weights is not None else _half()
    planes = C.sample_planes(spec, w.shape[0], w.shape[1], spec.generator("t"), torch.float64)
    return C.program(spec, planes, w, generator=spec.generator(f"t/write={write}"), time=time,
                     read_stream=f"t/write={write}/read")


# -- programming noise ----------------------------------------------------------------------------
def test_programming_noise_has_the_asked_spread_and_is_redrawn_per_write():
    clean = _array(HardwareSpec(preset="vteam"))
    spec = HardwareSpec(preset="vteam", programming_noise=0.05)
    a, b, a2 = _array(spec, write=0), _array(spec, write=1), _array(spec, write=0)
    window = spec.device.g_on - spec.device.g_off
    err = (a.g[0, 1:] - clean.g[0, 1:]) / window  # plane 0, rows 1..: mid-window targets (no clipping)
    assert abs(err.mean().item()) < 0.005 and err.std().item() == pytest.approx(0.05, rel=0.05)
    assert torch.equal(a.g, a2.g) and not torch.equal(a.g, b.g)  # seeded, and fresh at every write
    assert torch.equal(a.g[1], clean.g[1]) or (a.g[1] >= clean.g[1]).all()  # HRS devices stay in their window


def test_state_dependent_noise_and_write_verify():
    spec_state = HardwareSpec(preset="vteam", nonidealities=[ProgrammingNoise(0.1, mode="state")])
    w = torch.cat([torch.full((64, 16), 0.2), torch.full((64, 16), 0.6)], dim=1).double()
    w[0] = 1.0
    clean = _array(HardwareSpec(preset="vteam"), weights=w)
    noisy = _array(spec_state, weights=w)
    lo = clean.planes.g_lo[0]
    rel = ((noisy.g[0] - clean.g[0]) / (clean.g[0] - lo))[1:]
    assert rel[:, :16].std().item() == pytest.approx(0.1, rel=0.15)
    assert rel[:, 16:].std().item() == pytest.approx(0.1, rel=0.15)  # sigma_p grows with G: same relative spread
    tol = 0.02
    plain = _array(HardwareSpec(preset="vteam", nonidealities=[ProgrammingNoise(0.05)]))
    verified = _array(HardwareSpec(preset="vteam", nonidealities=[ProgrammingNoise(0.05, verify_iterations=5,
                                                                                   tolerance=tol)]))
    window = clean.g_on - clean.g_off
    ref = _array(HardwareSpec(preset="vteam")).g[0]
    out_plain = ((plain.g[0, 1:] - ref[1:]).abs() > tol * window).double().mean().item()
    out_ver = ((verified.g[0, 1:] - ref[1:]).abs() > tol * window).double().mean().item()
    p = math.erfc(0.4 / math.sqrt(2))  # one write misses a 0.02-window tolerance at sigma 0.05
    assert out_plain == pytest.approx(p, abs=0.03)
    assert out_ver == pytest.approx(p ** 6, abs=0.03)


def test_key_memory_gets_fresh_write_errors_each_episode_and_controller_once_per_chip():
    keys = torch.sign(torch.randn(20, 64, generator=torch.Generator().manual_seed(0)))
    spec = HardwareSpec(preset="vteam", programming_noise=0.05, seed=3)
    chip = KeyCrossbar(spec, 64)
    g1 = chip.program(keys).conductances.clone()
    g2 = chip.program(keys).conductances.clone()
    assert not torch.equal(g1, g2)
    again = KeyCrossbar(spec, 64)
    assert torch.equal(again.program(keys).conductances, g1)  # same chip, same first write


# -- read noise -----------------------------------------------------------------------------------
def test_read_noise_matches_its_variance_and_averaging_reads_divides_it():
    x = torch.randn(1, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64).repeat(20000, 1)
    w = torch.randn(64, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    clean = C.read(HardwareSpec(preset="vteam"), _array(HardwareSpec(preset="vteam"), weights=w), x[:1])
    stds = {}
    for reads in (1, 4):
        spec = HardwareSpec(preset="vteam", nonidealities=[ReadNoise(0.05, reads=reads)])
        arr = _array(spec, weights=w)
        y = C.read(spec, arr, x)
        assert (y.mean(0) - clean[0]).abs().max() < 0.05 * clean.abs().max()
        v, _ = spec.dac_spec.encode(x[:1])
        pred = 0.05 / math.sqrt(reads) * ((v * v) @ (arr.g[0] ** 2 + arr.g[1] ** 2)).sqrt()
        pred = pred * (x[:1].abs().max() / spec.dac_spec.v_read) * (arr.col_scale / (arr.g_on - arr.g_off))
        assert torch.allclose(y.std(0), pred[0], rtol=0.05)
        stds[reads] = y.std(0)
    assert torch.allclose(stds[4], stds[1] / 2, rtol=0.06)
    spec = HardwareSpec(preset="vteam", read_noise=0.05, seed=4)
    arr = _array(spec, weights=w)
    assert not torch.equal(C.read(spec, arr, x[:2]), C.read(spec, arr, x[:2]))  # the same input, two answers


def test_read_noise_on_convolutions_and_tiles():
    spec = HardwareSpec(preset="vteam", read_noise=0.1, adc_bits=12, tile_shape=(20, 8))
    w = torch.randn(2 * 9, 4, generator=torch.Generator().manual_seed(5))
    planes = C.sample_planes(spec, 18, 4, spec.generator("c"), torch.float32)
    arr = C.program(spec, planes, w, generator=spec.generator("c/w"), read_stream="c/r")
    img = torch.randn(1, 2, 6, 6, generator=torch.Generator().manual_seed(6)).repeat(400, 1, 1, 1)
    y = C.read_conv(spec, arr, img, 3, padding=1)
    ideal = C.read_conv(HardwareSpec(preset="vteam"), C.program(HardwareSpec(preset="vteam"), planes, w), img[:1], 3,
                        padding=1)
    assert y.std(0).mean() > 0.01 * ideal.abs().mean()  # every read differs
    assert (y.mean(0) - ideal[0]).abs().mean() < 0.1 * ideal.abs().mean()  # around the noise-free value


@pytest.mark.parametrize("native_bf16", [False, True])
def test_read_noise_variance_of_convolutions_matches_the_unfolded_sum(monkeypatch, native_bf16):
    """sum V^2 (G+^2 + G-^2) per output, as the pipeline draws it: fp32, or bf16 products where the
    CPU has native bf16 (both paths checked on any CPU: the choice is faked)."""
    monkeypatch.setattr(C, "has_fast_bf16", lambda device: native_bf16)
    spec = HardwareSpec(preset="vteam", read_noise=0.1)
    w = torch.randn(3 * 9, 5, generator=torch.Generator().manual_seed(7))
    planes = C.sample_planes(spec, 27, 5, spec.generator("v"), torch.float32)
    arr = C.program(spec, planes, w, generator=spec.generator("v/w"), read_stream="v/r")
    img = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(8))
    seen = {}
    noise = type(spec.get("read_noise"))

    def spy(self, current, variance, generator):
        seen["variance"] = variance
        return current

    monkeypatch.setattr(noise, "read_current", spy)
    C.read_conv(spec, arr, img, 3, padding=1)
    v, _ = spec.dac_spec.encode(img.reshape(2, -1), img.reshape(2, -1).abs().amax(dim=1))
    cols = torch.nn.functional.unfold(v.reshape(img.shape), 3, padding=1)  # (B, 27, L)
    g_sq = arr.g[0] ** 2 + arr.g[1] ** 2
    want = torch.einsum("brl,rc->bcl", cols.double() ** 2, g_sq.double()).reshape(2, 5, 6, 6)
    rel = ((seen["variance"].double() - want).abs() / want).max().item()
    assert rel < (1e-2 if native_bf16 else 1e-5)


# -- drift ----------------------------------------------------------------------------------------
def test_drift_follows_the_power_law_per_device():
    spec = HardwareSpec(preset="vteam", drift_nu=0.05, drift_nu_sigma=0.02, seed=2)
    arr = _array(spec)
    nu = arr.planes.props["drift_nu"]
    assert nu.mean().item() == pytest.approx(0.05, abs=0.002) and nu.std().item() == pytest.approx(0.02, rel=0.1)
    drift = spec.get("drift")
    times = torch.tensor([1.0, 10.0, 1e3, 1e5, 3e7], dtype=torch.float64)
    g = torch.stack([drift.read_conductance(arr.g, arr.planes, float(t)) for t in times])  # (T, 2, R, C)
    slope = torch.linalg.lstsq(torch.stack([times.log(), torch.ones_like(times)], 1),
                               g.log().reshape(len(times), -1)).solution[0]
    assert torch.allclose(slope, -nu.reshape(-1), atol=1e-9)  # log G against log t: slope -nu, device by device


def test_a_shared_drift_is_compensated_exactly_and_keys_are_read_fresh():
    w = torch.randn(32, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x = torch.randn(5, 32, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    base = HardwareSpec(preset="vteam")
    y0 = C.read(base, _array(base, weights=w), x)
    for comp, expect in (("none", y0 * 3600.0 ** -0.1), ("global", y0)):
        spec = HardwareSpec(preset="vteam", drift_nu=0.1, time="1h", drift_compensation=comp)
        y = C.read(spec, _array(spec, weights=w, time=spec.get("drift").time), x)
        assert torch.allclose(y, expect, rtol=1e-9), comp
        fresh = C.read(spec, _array(spec, weights=w, time=0.0), x)  # the key memory: rewritten, read fresh
        assert torch.allclose(fresh, y0, rtol=1e-12)


def test_drift_ages_the_controller_of_a_converted_model():
    from torch import nn

    from crossbar import convert

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 8)).eval()
    x = torch.randn(4, 16)
    fresh = convert(net, HardwareSpec(analog="all", preset="vteam")).features(x)
    aged = convert(net, HardwareSpec(analog="all", preset="vteam", drift_nu=0.1, time="1d")).features(x)
    comp = convert(net, HardwareSpec(analog="all", preset="vteam", drift_nu=0.1, time="1d",
                                     drift_compensation="global")).features(x)
    bias = net[0].bias.detach()
    assert torch.allclose(aged - bias, (fresh - bias) * 86400.0 ** -0.1, rtol=1e-4, atol=1e-6)
    assert torch.allclose(comp, fresh, rtol=1e-4, atol=1e-6)


# -- the specification, the command line ---------------------------------------------------------
def test_durations_and_bad_values():
    assert parse_duration("1d") == 86400.0 and parse_duration("2h") == 7200.0 and parse_duration(30) == 30.0
    assert parse_duration("5min") == 300.0 and parse_duration("1y") == 365 * 86400.0
    for bad in (dict(read_noise=-0.1), dict(programming_noise=2.0), dict(time="1d"), dict(drift_nu=0.1, time="soon"),
                dict(drift_nu=0.1, time=0.5), dict(drift_nu=0.1, drift_compensation="local"), dict(drift_nu=-1.0)):
        with pytest.raises(HardwareSpecError) as e:
            HardwareSpec(**bad)
        assert "\n" not in str(e.value)
    spec = HardwareSpec(programming_noise=0.02, read_noise=0.01, drift_nu=0.05, time="1d", seed=3)
    assert HardwareSpec.from_dict(spec.to_dict()) == spec
    d = spec.describe()
    assert d["programming_noise"] == 0.02 and d["read_noise"] == 0.01 and d["time"] == 86400.0
    assert not spec.is_ideal and HardwareSpec(read_noise=0.0).is_ideal


def test_the_flags_reach_the_spec_and_bad_ones_are_one_line():
    from batmann.cli import build_parser
    from batmann.cli.crossbar_cmd import spec_from_args

    args = build_parser().parse_args(["crossbar", "evaluate", "--programming-noise", "0.02", "--read-noise", "0.01",
                                      "--drift-nu", "0.05", "--drift-nu-sigma", "0.01", "--time", "1y",
                                      "--drift-compensation", "global"])
    spec = spec_from_args(args, seed=0)
    assert spec.get("programming_noise") == ProgrammingNoise(0.02) and spec.get("read_noise") == ReadNoise(0.01)
    assert spec.get("drift") == Drift(0.05, 0.01, time=365 * 86400.0, compensation="global")
    r = subprocess.run([sys.executable, "-m", "batmann", "crossbar", "evaluate", "--time", "1d", "--episodes", "1"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "drift_nu" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_study_files_take_the_new_parameters():
    from batmann.study import Study

    s = Study.from_dict({"checkpoint": "20w5s-binary", "hardware": {"drift_nu": 0.05},
                         "grid": {"read_noise": [0.0, 0.05], "time": ["1h", "1y"], "programming_noise": [0.0, 0.1]}})
    assert len(s.cells()) == 8
    with pytest.raises(Exception, match="read_noise = 2.0"):
        Study.from_dict({"checkpoint": "20w5s-binary", "grid": {"read_noise": [2.0]}})


# -- calibrated ADC ranges ------------------------------------------------------------------------
def test_current_recorder_finds_the_percentile():
    x = torch.rand(4, 100_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * torch.tensor(
        [[1.0], [2.0], [0.5], [0.25]], dtype=torch.float64)
    for per_column in (False, True):
        rec = C.CurrentRecorder(per_column, worst=4.0)
        rec.add(x[:, :50_000].T, channel_dim=1)
        rec.add(-x[:, 50_000:].T, channel_dim=1)  # magnitudes count
        fs = rec.full_scale(99.0)
        want = torch.quantile(x.reshape(1, -1) if not per_column else x, 0.99, dim=1)
        assert torch.allclose(fs.reshape(-1), want, atol=2 * 4.0 / rec.bins)


def test_calibrated_ranges_follow_the_data_and_beat_the_worst_case():
    w = torch.randn(256, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = torch.randn(500, 256, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    exact = x @ w
    errors = {}
    for rng in ("worst", "calibrated", "calibrated_column"):
        spec = HardwareSpec(preset="vteam", adc_bits=5, adc_range=rng, tile_shape=(128, 16))
        arr = _array(spec, weights=w)
        if rng != "worst":
            C.start_calibration(spec, arr)
            C.read(spec, arr, x[:200])
            C.finish_calibration(spec, arr)
            worst = 128 * spec.dac_spec.v_read * (arr.g_on - arr.g_off)
            assert len(arr.adc_fs) == 2 and all(float(f.max()) < 0.5 * worst for f in arr.adc_fs)
            assert arr.adc_fs[0].dim() == (1 if rng == "calibrated_column" else 0)
        y = C.read(spec, arr, x[200:])
        errors[rng] = ((y - exact[200:]).norm() / exact[200:].norm()).item()
    assert errors["calibrated"] < 0.5 * errors["worst"]
    assert errors["calibrated_column"] <= errors["calibrated"] * 1.05


def test_a_system_calibrates_controller_and_keys_on_training_characters(omniglot_cache):
    from torch import nn

    from batmann.config import EpisodeOptions
    from batmann.data import split_characters
    from batmann.hardware import calibration_episodes
    from crossbar import convert

    opts = EpisodeOptions(class_num=5, num_shot=1, pool_query_train=4, pool_val_train=2, batch_size_train=2,
                          val_num_train=2, pool_query_test=4, batch_size_test=2)
    eps = calibration_episodes(omniglot_cache, opts, 2)
    train_chars = set(int(c) for c in split_characters(omniglot_cache, "seed")[0])
    assert all(set(ep.classes.tolist()) <= train_chars for ep in eps)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 30 * 30, 32)).eval()
    spec = HardwareSpec(analog="all", preset="vteam", adc_bits=6, adc_range="calibrated", tile_shape=(64, 64))
    system = convert(net, spec)
    system.calibrate(eps)
    assert all(a.adc_fs is not None and a.calibration is None for a in system.controller.arrays.values())
    assert system.key_chip is not None and len(system.key_chip.adc_fs) == 1 and system.key_chip.array.calibration is None
    keys = system.features(eps[0].support)
    system.write(keys)
    assert system.key_chip.array.adc_fs is system.key_chip.adc_fs  # every later write keeps the ranges
    assert system.similarities(system.features(eps[0].query)).shape == (10, 5)


# -- endurance ------------------------------------------------------------------------------------
def test_lifetimes_are_log_normal_and_writes_wear_the_key_memory_out():
    from device_models import Endurance

    spec = HardwareSpec(preset="vteam", nonidealities=[Endurance(1000.0, sigma=0.5)])
    planes = C.sample_planes(spec, 200, 100, spec.generator("e"), torch.float64, rewritten=True)
    life = planes.props["endurance_lifetime"].log()
    assert life.mean().item() == pytest.approx(math.log(1000.0), abs=0.01) and life.std().item() == pytest.approx(0.5, rel=0.02)
    keys = torch.sign(torch.randn(8, 32, generator=torch.Generator().manual_seed(0)))
    chip = KeyCrossbar(HardwareSpec(preset="vteam", seed=1, nonidealities=[Endurance(3.0, sigma=0.0)]), 32)
    healthy = KeyCrossbar(HardwareSpec(preset="vteam", seed=1), 32)
    for write in range(1, 6):
        g = chip.program(keys).conductances
        g_ok = healthy.program(keys).conductances
        if write <= 3:
            assert torch.equal(g, g_ok)
        else:  # every device is past its 3 cycles: stuck at its own LRS or HRS, whatever is written
            p = chip.array.planes
            lrs = p.props["endurance_fails_lrs"]
            assert torch.equal(g, torch.where(lrs, p.g_hi, p.g_lo))
    assert chip.array.planes.props["endurance_writes"].max().item() == 5.0


def test_episodes_served_ages_only_the_key_memory():
    keys = torch.sign(torch.randn(20, 64, generator=torch.Generator().manual_seed(1)))
    stuck = []
    for served in (0, 500, 1000, 5000):
        chip = KeyCrossbar(HardwareSpec(preset="vteam", endurance=1000.0, episodes_served=served, seed=2), 64)
        chip.program(keys)
        p = chip.array.planes
        stuck.append((p.props["endurance_writes"] > p.props["endurance_lifetime"]).double().mean().item())
    assert stuck[0] == 0.0 and stuck[1] < 0.2 and stuck[2] == pytest.approx(0.5, abs=0.05) and stuck[3] > 0.99
    spec = HardwareSpec(preset="vteam", endurance=1000.0, episodes_served=5000)
    arr = C.program(spec, C.sample_planes(spec, 8, 4, spec.generator("c"), torch.float64), torch.ones(8, 4))
    assert (arr.planes.props["endurance_writes"] == 1).all()  # a controller array: programmed once


# -- measured device presets ----------------------------------------------------------------------
def test_measured_presets_bring_their_programming_noise_and_it_has_the_measured_spread():
    spec = HardwareSpec(preset="hfox_cmo2025")
    ni = spec.get("programming_noise")
    assert ni.mode == "measured" and not spec.is_ideal
    clean = _array(HardwareSpec(preset="hfox_cmo2025", programming_noise=0.0))
    noisy = _array(spec)
    target = clean.g[0, 1:]  # mid-window targets: 48.6 uS
    want = 0.0112185391 + 0.01129027418 * target.mean().item() * 1e6  # uS
    err = (noisy.g[0, 1:] - target) * 1e6
    assert abs(err.mean().item()) < 0.05 * want and err.std().item() == pytest.approx(want, rel=0.05)
    assert torch.equal(_array(spec).g, noisy.g)  # seeded
    # a spec's own setting replaces the measured one; the spec round-trips through plain data
    assert HardwareSpec(preset="hfox_cmo2025", programming_noise=0.02).get("programming_noise") == ProgrammingNoise(0.02)
    assert HardwareSpec(preset="hfox_cmo2025", programming_noise=0.0).is_ideal
    assert HardwareSpec.from_dict(spec.to_dict()) == spec


def test_mao2022_preset_writes_every_state_with_a_5_us_error():
    spec = HardwareSpec(preset="rram_mao2022")
    assert spec.device.g_on == pytest.approx(150e-6) and spec.get("programming_noise").coefficients_us == (5.0,)
    clean = _array(HardwareSpec(preset="rram_mao2022", programming_noise=0.0))
    target = clean.g[0, 1:]  # mid-window targets (75.5 uS): no clipping at 5 uS
    err = (_array(spec).g[0, 1:] - target) * 1e6
    assert abs(err.mean().item()) < 0.25 and err.std().item() == pytest.approx(5.0, rel=0.05)


def test_measured_noise_needs_its_coefficients():
    for bad in (dict(mode="measured"), dict(mode="measured", coefficients_us=(1.0, float("inf"))),
                dict(mode="window", coefficients_us=(1.0,))):
        with pytest.raises(HardwareSpecError) as e:
            ProgrammingNoise(1.0, **bad)
        assert "\n" not in str(e.value)
    sig = ProgrammingNoise(1.0, mode="measured", coefficients_us=(4.782321, -0.009107)).spread(
        torch.tensor([50e-6, 225e-6, 1.0], dtype=torch.float64))
    assert sig[0].item() == pytest.approx(4.327e-6, rel=1e-3) and sig[2].item() == 0.0  # clipped at 0
