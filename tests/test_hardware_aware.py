"""Hardware-aware training: the controller's forward on simulated crossbars (crossbar.in_the_loop)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from batmann.config import HardwareAwareConfig, TrainConfig
from batmann.errors import ConfigError
from batmann.models.controller import build_controller
from batmann.models.layers import export_layer
from batmann.train import chip_in_the_loop, train
from crossbar import HardwareSpec, HardwareSpecError, convert
from crossbar.in_the_loop import ChipInTheLoop
from test_train import tiny_config

HARSH = dict(analog="all", preset="vteam", variability=0.3, states=16, stuck_lrs=0.02, stuck_hrs=0.02,
             conv_rows="kernel")


def _controller(kind: str = "xnor", seed: int = 0):
    torch.manual_seed(seed)
    return build_controller(kind, feature_dim=64).eval()


def _chip(model, redraw: int = 1, **spec) -> ChipInTheLoop:
    cfg = tiny_config(controller="xnor", feature_dim=64)
    cfg.hardware_aware = HardwareAwareConfig(spec=HardwareSpec(**(spec or HARSH)).to_dict(), redraw=redraw)
    return chip_in_the_loop(model, cfg.validate())


@pytest.fixture
def images():
    return torch.rand(6, 1, 32, 32, generator=torch.Generator().manual_seed(1))


def test_forward_is_the_inference_chip(images, one_thread):
    """With programming- and read-noise-free effects, the in-the-loop forward of draw d is the
    crossbar inference path (crossbar.convert) on the chip of that draw's seed."""
    model = _controller()
    chip = _chip(model)
    chip.program(0)
    with torch.no_grad():
        with chip:
            got = model(images)
        digital = model(images)
    spec = dataclasses.replace(HardwareSpec(**HARSH), seed=chip.chip_seed(0))
    want = convert(model.export_plain(), spec).features(images)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
    assert (got - digital).abs().max() > 0.05 * digital.abs().max()  # the chip does change the features
    assert chip.reads == 5  # conv1..conv4 and fc1


def test_ideal_chip_changes_nothing(images, one_thread):
    model = _controller("fp")
    chip = _chip(model, analog="all")
    chip.program(0)
    x = images.clone().requires_grad_(True)
    with chip:
        y = model(x)
    y.square().mean().backward()
    g_chip = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    x2 = images.clone().requires_grad_(True)
    y2 = model(x2)
    y2.square().mean().backward()
    assert torch.allclose(y, y2, rtol=1e-4, atol=1e-5)
    for a, b in zip(g_chip, (p.grad for p in model.parameters())):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-6)


def test_gradients_are_the_digital_layers_at_the_chips_activations(images, one_thread):
    """Straight through: d(loss)/d(fc1 weight) is the digital gradient with the chip's fc1 input."""
    model = _controller().train()
    chip = _chip(model)
    chip.program(0)
    fc_in = {}
    def keep(module, args, out):
        fc_in["x"] = args[0].detach()

    handle = model.fc1.register_forward_hook(keep)
    with chip:
        y = model(images)
    handle.remove()
    y.sum().backward()
    got = model.fc1.weight.grad.clone()
    assert model.features.conv2.weight.grad.abs().sum() > 0  # and on through the layers below
    # the digital fc1 alone, fed the chip's activations, with the same upstream gradient (ones)
    model.zero_grad()
    model.fc1(fc_in["x"]).sum().backward()
    assert torch.allclose(got, model.fc1.weight.grad, rtol=1e-4, atol=1e-6)


def test_devices_redrawn_every_redraw_episodes_and_writes_every_episode(one_thread):
    model = _controller()
    spec = dict(HARSH, programming_noise=0.05)
    chip = _chip(model, redraw=2, **spec)
    seen = []
    for episode in range(3):
        chip.program(episode)
        a = chip.arrays["conv2"]
        seen.append((a.planes.g_lo.clone(), a.g.clone()))
    assert torch.equal(seen[0][0], seen[1][0])  # same devices within a draw
    assert not torch.equal(seen[0][1], seen[1][1])  # each write draws its own programming noise
    assert not torch.equal(seen[1][0], seen[2][0])  # new devices at episode 2
    again = _chip(_controller(), redraw=2, **spec)
    again.program(1)
    assert torch.equal(again.arrays["conv2"].g, seen[1][1])  # same seed, same chip, same write
    assert chip.chip_seed(0) not in range(100)  # never a chip an evaluation uses by default


def test_calibrated_adc_reads_on_calibrated_ranges(images, one_thread):
    model = _controller()
    chip = _chip(model, **dict(HARSH, adc_bits=6, adc_range="calibrated", tile_shape=(128, 128)))
    chip.program(0)
    with torch.no_grad(), chip:
        y = model(images)
    assert torch.isfinite(y).all()
    assert all(a.adc_fs is not None for a in chip.arrays.values())


def test_bad_settings_are_one_line_errors():
    model = _controller()
    with pytest.raises(ConfigError, match="analog must be 'controller' or 'all'"):
        HardwareAwareConfig(spec=HardwareSpec(analog="keys").to_dict()).validate()
    with pytest.raises(ConfigError, match="redraw must be a whole number"):
        HardwareAwareConfig(spec=HardwareSpec(**HARSH).to_dict(), redraw=0).validate()
    for bad in (-0.5, float("nan"), "1"):
        with pytest.raises(ConfigError, match=f"digital_weight must be a finite number >= 0, got {bad!r}"):
            HardwareAwareConfig(spec=HardwareSpec(**HARSH).to_dict(), digital_weight=bad).validate()
    with pytest.raises(ConfigError, match="hardware_aware spec: unknown hardware spec field 'varability'"):
        HardwareAwareConfig(spec={"analog": "all", "varability": 0.1}).validate()
    with pytest.raises(HardwareSpecError, match="redraw"):
        ChipInTheLoop(HardwareSpec(**HARSH), {"fc1": model.fc1}, export_layer, redraw=-1)
    cfg = tiny_config(freeze=["conv1", "conv2"])
    cfg.hardware_aware = HardwareAwareConfig(spec=HardwareSpec(**HARSH).to_dict())
    with pytest.raises(ConfigError, match="cannot be combined with freeze"):
        cfg.validate()


def test_config_round_trip():
    cfg = tiny_config()
    cfg.hardware_aware = HardwareAwareConfig(spec=HardwareSpec(**HARSH).to_dict(), redraw=3, digital_weight=0.5)
    back = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back.hardware_aware == cfg.hardware_aware
    assert back.hardware_aware.hardware_spec() == HardwareSpec(**HARSH)
    assert not TrainConfig.from_dict({}).hardware_aware.enabled  # older configs: off


def test_digital_weight_adds_the_same_episodes_digital_loss(omniglot_cache, one_thread):
    """loss = chip loss + w * digital loss of the same episode; the reported accuracy is the chip's."""
    from batmann.train import hardware_aware_step, make_sampler, train_step

    cfg = tiny_config(controller="xnor", feature_dim=64)
    model = build_controller("xnor", feature_dim=64)
    cfg.hardware_aware = HardwareAwareConfig(spec=HardwareSpec(**HARSH).to_dict(), digital_weight=0.0)
    cfg.validate()
    chip = chip_in_the_loop(model, cfg)
    device = torch.device("cpu")
    ep = make_sampler(omniglot_cache, cfg.episodes, "train", 0, device).sample(index=0)
    chip.program(0)
    chip_only, chip_acc = hardware_aware_step(model, ep, chip, cfg, device)
    digital, _ = train_step(model, ep, cfg.sim_cal, cfg, device)
    assert abs(chip_only.item() - digital.item()) > 1e-4  # the chip changes the loss
    cfg.hardware_aware.digital_weight = 0.5
    mixed, acc = hardware_aware_step(model, ep, chip, cfg, device)
    assert mixed.item() == pytest.approx(chip_only.item() + 0.5 * digital.item(), rel=1e-5)
    assert acc == chip_acc


def test_hardware_aware_training_runs_resumes_and_validates_on_the_chip(tmp_path, omniglot_cache, one_thread):
    spec = HardwareSpec(**dict(HARSH, read_noise=0.02))
    cfg = tiny_config(controller="xnor")
    cfg.hardware_aware = HardwareAwareConfig(spec=spec.to_dict(), redraw=2)
    straight = train(cfg, tmp_path / "a", progress=False, cache=omniglot_cache)
    assert straight.episodes_done == 6
    log = (tmp_path / "a" / "train.log").read_text()
    assert "validation on the chip" in log and "hardware-aware: chip" in log
    short = dataclasses.replace(cfg, train_episode=3)
    train(short, tmp_path / "b", progress=False, cache=omniglot_cache)
    train(cfg, tmp_path / "b", resume=True, progress=False, cache=omniglot_cache)
    from batmann.checkpoint import read_safetensors

    a, _ = read_safetensors(tmp_path / "a" / "last.safetensors")
    b, _ = read_safetensors(tmp_path / "b" / "last.safetensors")
    for k in a:
        if k.startswith("model."):
            assert torch.equal(a[k], b[k]), k
    # the same run without the chip ends elsewhere
    plain = train(tiny_config(controller="xnor"), tmp_path / "c", progress=False, cache=omniglot_cache)
    c, _ = read_safetensors(plain.run_dir / "last.safetensors")
    assert not torch.equal(a["model.features.conv2.weight"], c["model.features.conv2.weight"])


def test_cli_flag_reads_a_spec_file(tmp_path, omniglot_home):
    spec_path = HardwareSpec(**HARSH).save(tmp_path / "chip.toml")
    bad = tmp_path / "keys.json"
    HardwareSpec(analog="keys").save(bad)
    cmd = [sys.executable, "-m", "batmann", "train", "--controller", "xnor", "--ways", "5", "--shots", "1",
           "--episodes", "2", "--queries-train", "1", "--val-episode", "0", "--test-episode", "0", "--feature-dim", "64",
           "--no-progress", "--run-dir", str(tmp_path / "run")]
    r = subprocess.run(cmd + ["--hardware-aware", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2 and "analog must be 'controller' or 'all'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = subprocess.run(cmd + ["--hardware-aware", str(spec_path), "--hardware-aware-redraw", "2"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["hardware_aware"]["redraw"] == 2
    assert HardwareSpec.from_dict(saved["hardware_aware"]["spec"]) == HardwareSpec(**HARSH)
