"""The key memory on a crossbar: similarities from currents, per-episode rewrites, ideal-device check."""

from __future__ import annotations

import time

import pytest
import torch

from crossbar import HardwareSpec, KeyCrossbar, convert


def program_keys(keys, spec):
    """A fresh key-memory chip for ``spec`` holding ``keys`` (N, d)."""
    return KeyCrossbar(spec, int(keys.shape[1])).program(keys)
from device_models import HardwareSpecError

WAYS, SHOTS, QUERIES, DIM = 20, 5, 5, 512

pytestmark = pytest.mark.usefixtures("one_thread")


def episode(gen: torch.Generator, flip_support=0.3, flip_query=0.42):
    """Synthetic 20-way 5-shot episode of bipolar features: class prototype + random flips."""
    proto = torch.randint(0, 2, (WAYS, DIM), generator=gen).float() * 2 - 1

    def draw(n, p):
        x = proto.repeat_interleave(n, 0)
        flips = torch.rand(x.shape, generator=gen) < p
        return torch.where(flips, -x, x)

    keys = draw(SHOTS, flip_support)
    labels = torch.arange(WAYS).repeat_interleave(SHOTS)
    queries = draw(QUERIES, flip_query)
    qlabels = torch.arange(WAYS).repeat_interleave(QUERIES)
    return keys, labels, queries, qlabels


def predict(sim, labels):
    logits = torch.zeros(sim.shape[0], WAYS, dtype=sim.dtype).index_add_(1, labels, sim)
    return logits.argmax(1)


def test_ideal_key_crossbar_returns_the_dot_products():
    g = torch.Generator().manual_seed(0)
    keys, _, queries, _ = episode(g)
    for preset in ("ideal", "vteam", "stanford_pku"):
        chip = program_keys(keys, HardwareSpec(preset=preset))
        sim = chip.similarities(queries)
        assert sim.shape == (queries.shape[0], keys.shape[0]) and sim.dtype == queries.dtype
        assert torch.allclose(sim.double(), queries.double() @ keys.double().T, atol=1e-9)
    real_keys = torch.randn(30, 64, generator=g)
    real_q = torch.randn(7, 64, generator=g)
    sim = program_keys(real_keys, HardwareSpec()).similarities(real_q)
    assert torch.allclose(sim, real_q @ real_keys.T, rtol=1e-5, atol=1e-5)


def test_binary_keys_use_two_conductance_states():
    keys, _, _, _ = episode(torch.Generator().manual_seed(1))
    chip = program_keys(keys, HardwareSpec(preset="vteam"))
    assert chip.conductances.shape == (2, DIM, keys.shape[0])
    assert chip.conductances.unique().numel() == 2


def test_ideal_device_accuracy_within_half_a_point_of_digital():
    """At library level: 20-way 5-shot, keys on the ideal crossbar vs digital."""
    gen = torch.Generator().manual_seed(2024)
    system = None
    correct_d = correct_a = total = 0
    for _ in range(20):
        keys, labels, queries, qlabels = episode(gen)
        spec = HardwareSpec(analog="keys", preset="ideal", seed=0)
        if system is None:
            system = convert(torch.nn.Sequential(torch.nn.Identity()), spec)
        system.write(keys)
        pred_a = predict(system.similarities(queries), labels)
        pred_d = predict(queries @ keys.T, labels)
        correct_a += (pred_a == qlabels).sum().item()
        correct_d += (pred_d == qlabels).sum().item()
        total += qlabels.numel()
    acc_a, acc_d = correct_a / total, correct_d / total
    assert 0.6 < acc_d < 0.99, "the synthetic task should be neither trivial nor hopeless"
    assert abs(acc_a - acc_d) <= 0.005


def test_faulty_keys_do_change_the_answers():
    gen = torch.Generator().manual_seed(3)
    keys, _, queries, _ = episode(gen)
    exact = queries @ keys.T
    sim = program_keys(keys, HardwareSpec(stuck_lrs=0.1, stuck_hrs=0.1)).similarities(queries)
    assert (sim - exact).abs().mean() > 1.0


def test_rewrites_keep_the_devices_and_their_faults():
    spec = HardwareSpec(variability=0.1, stuck_lrs=0.05, stuck_hrs=0.05, seed=4)
    chip = KeyCrossbar(spec, DIM)
    gen = torch.Generator().manual_seed(5)
    k1, _, q, _ = episode(gen)
    k2, _, _, _ = episode(gen)
    chip.program(k1)
    planes1 = chip.array.planes
    s1 = chip.similarities(q)
    chip.program(k2)
    planes2 = chip.array.planes
    assert torch.equal(planes1.g_lo, planes2.g_lo) and torch.equal(planes1.stuck_lrs, planes2.stuck_lrs)
    stuck = planes2.stuck_lrs
    assert torch.equal(chip.conductances[stuck], planes2.g_hi[stuck])
    chip.program(k1)
    assert torch.equal(chip.similarities(q), s1)
    # column n has the same devices whatever the number of keys
    small = KeyCrossbar(spec, DIM).program(k1[:10])
    assert torch.equal(small.array.planes.g_hi, planes1.g_hi[:, :, :10])
    assert chip.n_writes == 3


def test_same_seed_same_similarities():
    keys, _, q, _ = episode(torch.Generator().manual_seed(6))
    kw = dict(variability=0.1, states=4, stuck_lrs=0.02, stuck_hrs=0.02, adc_bits=6, tile_shape=(128, 128))
    a = program_keys(keys, HardwareSpec(seed=9, **kw)).similarities(q)
    b = program_keys(keys, HardwareSpec(seed=9, **kw)).similarities(q)
    c = program_keys(keys, HardwareSpec(seed=10, **kw)).similarities(q)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_adc_changes_similarities():
    keys, _, q, _ = episode(torch.Generator().manual_seed(7))
    exact = program_keys(keys, HardwareSpec()).similarities(q)
    s4 = program_keys(keys, HardwareSpec(adc_bits=4, tile_shape=(128, 128))).similarities(q)
    s8 = program_keys(keys, HardwareSpec(adc_bits=8, tile_shape=(128, 128))).similarities(q)
    assert not torch.equal(s4, exact) and not torch.equal(s8, s4)
    assert (s8 - exact).abs().mean() < (s4 - exact).abs().mean()


def test_reprogramming_an_episode_is_fast():
    keys, _, q, _ = episode(torch.Generator().manual_seed(8))
    chip = KeyCrossbar(HardwareSpec(variability=0.1, states=4, stuck_lrs=0.01, adc_bits=6, tile_shape=(128, 128)), DIM)
    chip.program(keys)  # draws the devices once
    t0 = time.perf_counter()
    for _ in range(10):
        chip.program(keys)
        chip.similarities(q)
    per_episode = (time.perf_counter() - t0) / 10
    # ~3 ms here; MemTorch's device objects would take ~1.5 s (2 x 51,200 devices x ~15 us)
    assert per_episode < 0.5, f"{per_episode:.3f} s per episode"


def test_bad_shapes_are_refused():
    chip = KeyCrossbar(HardwareSpec(), 16)
    with pytest.raises(RuntimeError):
        chip.similarities(torch.zeros(2, 16))
    with pytest.raises(HardwareSpecError):
        chip.program(torch.zeros(3, 8))
    chip.program(torch.ones(3, 16))
    with pytest.raises(HardwareSpecError):
        chip.similarities(torch.zeros(2, 8))
    with pytest.raises(HardwareSpecError):
        chip.program(torch.full((3, 16), float("nan")))
