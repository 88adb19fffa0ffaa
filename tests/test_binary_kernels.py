"""Exact int8 kernels for +-1 x +-1 layers, and how the kernel is chosen: the same bits as fp32."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from batmann.config import EpisodeOptions
from batmann.models import binary_kernels as bk
from batmann.models import layers

pytestmark = pytest.mark.usefixtures("one_thread")


def pm1(*shape, seed=0):
    return torch.randint(0, 2, shape, generator=torch.Generator().manual_seed(seed)).float() * 2 - 1


@pytest.mark.parametrize("b,c,o,k,h,stride,padding", [(3, 5, 7, 3, 9, 1, 0), (3, 5, 7, 3, 9, 2, 1), (2, 16, 8, 5, 11, 2, 2),
                                                      (33, 128, 16, 5, 12, 1, 0), (1, 1, 4, 3, 5, 1, 1)])
def test_pm1_conv2d_is_bit_identical_to_the_fp32_convolution(b, c, o, k, h, stride, padding, monkeypatch):
    x, w = pm1(b, c, h, h, seed=1), pm1(o, c, k, k, seed=2)
    monkeypatch.setattr(bk, "PATCH_CHUNK_BYTES", 1000)  # several image chunks
    got = bk.pm1_conv2d(x, w, stride, padding)
    assert got.dtype == torch.float32 and got.is_contiguous()
    assert torch.equal(got, F.conv2d(x, w, stride=stride, padding=padding))
    got_cl = bk.pm1_conv2d(x.contiguous(memory_format=torch.channels_last), w, stride, padding)
    assert torch.equal(got_cl, got)
    assert got_cl.is_contiguous(memory_format=torch.channels_last) == (c > 1)  # C = 1: both formats at once


def test_int8_kernels_run_on_every_core_inside_deterministic_blocks(monkeypatch):
    """Integer sums do not depend on the thread count, so inside ``deterministic_kernels`` (one
    torch thread) the int8 products get back the threads torch had before; the results are the
    fp32 product's bits either way, and the block's one thread is restored after each call."""
    from batmann.utils.determinism import deterministic_kernels

    seen = []
    real = torch._int_mm
    monkeypatch.setattr(torch, "_int_mm", lambda a, b: seen.append(torch.get_num_threads()) or real(a, b))
    x, w = pm1(5, 8, 7, 7, seed=5), pm1(4, 8, 3, 3, seed=6)
    xl, wl = pm1(3, 64, seed=7), pm1(6, 64, seed=8)
    torch.set_num_threads(2)  # the one_thread fixture restores the count after the test
    with deterministic_kernels("cpu"):
        got, got_l = bk.pm1_conv2d(x, w), bk.pm1_linear(xl, wl)
        assert torch.get_num_threads() == 1
    assert seen == [2, 2]
    assert torch.equal(got, F.conv2d(x, w)) and torch.equal(got_l, F.linear(xl, wl))


def test_pm1_kernels_reach_the_largest_sums_exactly():
    x, w = torch.ones(2, 128, 5, 5), torch.ones(3, 128, 5, 5)
    w[1] = -1
    assert bk.pm1_conv2d(x, w).flatten().tolist() == [3200.0, -3200.0, 3200.0] * 2  # beyond int8 and bf16
    xl, wl = pm1(4, 2048, seed=3), pm1(512, 2048, seed=4)
    assert torch.equal(bk.pm1_linear(xl, wl), F.linear(xl, wl))
    assert bk.pm1_linear(torch.ones(1, 2048), torch.ones(1, 2048)).item() == 2048.0


@pytest.mark.parametrize("name", ["20w5s-binary", "100w5s-binary", "20w5s-binary-lake", "20w1s-binary-lake"])
def test_shipped_binary_checkpoints_give_bit_identical_features_on_int8(name, omniglot_cache, monkeypatch):
    from batmann.checkpoint import load_checkpoint

    model = load_checkpoint(name).model.eval()
    assert any(isinstance(m, layers.XnorConv2d) for m in model.modules())
    # 16 images: torch._int_mm is 25-35x slower than fp32 on a CPU without int8 units
    images = torch.as_tensor(omniglot_cache.images[::97][:16]).float().unsqueeze(1) / 255
    calls = []
    real = bk.pm1_conv2d
    monkeypatch.setattr(bk, "pm1_conv2d", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        monkeypatch.setattr(bk, "KERNEL", "fp32")
        fp32 = model(images)
        assert not calls
        monkeypatch.setattr(bk, "KERNEL", "int8")  # whatever this CPU has
        int8 = model(images)
    assert len(calls) == 3  # conv2..conv4
    assert torch.equal(int8, fp32)


@pytest.mark.parametrize("kernel", ["int8", "popcount"])
def test_fp32_training_runs_the_forward_on_the_exact_kernel_with_autograds_gradients(kernel, monkeypatch):
    """Bias-free XNOR convolutions: the same forward values and bit-identical gradients; a
    layer with a bias (BinaryLinear) keeps plain autograd."""
    from batmann.models import popcount_kernels

    if kernel == "popcount" and not popcount_kernels.available():
        pytest.skip(popcount_kernels.unavailable_reason())
    conv, fc = layers.XnorConv2d(16, 6, 3), layers.BinaryLinear(6 * 5 * 5, 4)
    x = torch.randn(3, 16, 7, 7, generator=torch.Generator().manual_seed(1))

    def step():
        conv.zero_grad(), fc.zero_grad()
        xg = x.clone().requires_grad_()
        out = fc(torch.relu(conv(xg)).flatten(1))
        out.square().sum().backward()
        return out.detach(), xg.grad, conv.weight.grad.clone(), conv.alpha.grad.clone(), fc.weight.grad.clone()

    monkeypatch.setattr(bk, "KERNEL", "fp32")
    want = step()
    calls = []
    real_int8, real_pop = bk.pm1_conv2d, popcount_kernels.pm1_conv2d
    monkeypatch.setattr(bk, "pm1_conv2d", lambda *a, **k: calls.append("int8") or real_int8(*a, **k))
    monkeypatch.setattr(popcount_kernels, "pm1_conv2d", lambda *a, **k: calls.append("popcount") or real_pop(*a, **k))
    monkeypatch.setattr(bk, "KERNEL", kernel)
    got = step()
    assert calls == [kernel]  # the convolution only
    assert all(torch.equal(g, w) for g, w in zip(got, want))


def test_the_kernel_setting_comes_from_the_environment_and_is_checked():
    from batmann.errors import ConfigError

    assert bk.kernel_setting({}) == "auto"
    assert bk.kernel_setting({"BATMANN_INT8": "0"}) == "fp32"
    assert bk.kernel_setting({"BATMANN_BINARY_KERNEL": "Popcount", "BATMANN_INT8": "0"}) == "popcount"
    with pytest.raises(ConfigError, match="BATMANN_BINARY_KERNEL='int4' is not one of auto, int8, popcount, fp32"):
        bk.kernel_setting({"BATMANN_BINARY_KERNEL": "int4"})


def test_auto_prefers_amx_then_popcount_then_vnni_then_fp32(monkeypatch):
    from batmann.models import popcount_kernels

    cpu = torch.device("cpu")
    monkeypatch.setattr(bk, "KERNEL", "auto")
    monkeypatch.setattr(bk, "has_int8_matrix_units", lambda device: True)
    assert bk.kernel_for(cpu) == "int8" and bk.kernel_for(cpu, padding=1) == "int8"
    assert bk.describe_kernel(cpu) == "int8 (exact)"
    monkeypatch.setattr(bk, "has_int8_matrix_units", lambda device: False)
    monkeypatch.setattr(bk, "has_fast_int8", lambda device: True)  # VNNI, no AMX
    monkeypatch.setattr(popcount_kernels, "available", lambda: True)
    monkeypatch.setattr(popcount_kernels, "isa", lambda: 512)
    assert bk.kernel_for(cpu) == "popcount" and bk.kernel_for(cpu, padding=1) == "int8"
    assert bk.describe_kernel(cpu) == "popcount (exact, AVX-512 VPOPCNTDQ)"
    monkeypatch.setattr(popcount_kernels, "isa", lambda: 256)
    assert bk.describe_kernel(cpu) == "popcount (exact, AVX2)"
    monkeypatch.setattr(bk, "has_fast_int8", lambda device: False)
    assert bk.kernel_for(cpu) == "popcount" and bk.kernel_for(cpu, padding=1) is None
    monkeypatch.setattr(popcount_kernels, "available", lambda: False)
    monkeypatch.setattr(popcount_kernels, "unavailable_reason", lambda: "the CPU has no AVX2")
    assert bk.kernel_for(cpu) is None and bk.describe_kernel(cpu) == "fp32 (the CPU has no AVX2)"
    monkeypatch.setattr(bk, "has_fast_int8", lambda device: True)
    assert bk.kernel_for(cpu) == "int8" == bk.kernel_for(cpu, padding=1)
    assert bk.kernel_for(torch.device("meta")) is None
    monkeypatch.setattr(bk, "KERNEL", "popcount")
    assert bk.kernel_for(cpu) is None  # forced popcount, unavailable: fp32, never int8
    monkeypatch.setattr(bk, "KERNEL", "fp32")
    monkeypatch.setattr(bk, "has_int8_matrix_units", lambda device: True)
    assert bk.kernel_for(cpu) is None and bk.describe_kernel(cpu) == "fp32"


def test_the_cpu_path_is_described():
    from crossbar.cpu_features import describe_cpu_path

    line = describe_cpu_path(bk.describe_kernel(torch.device("cpu")))
    assert line.startswith("CPU units: ") and "binarized layers: " in line


def test_evaluate_verbose_names_the_binarized_path(omniglot_cache, monkeypatch, capsys):
    from batmann.cli import main
    from crossbar.cpu_features import describe_cpu_path

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    monkeypatch.setattr(bk, "KERNEL", "auto")
    line = describe_cpu_path(bk.describe_kernel(torch.device("cpu")))
    assert "AMX" in line and "binarized layers: int8 (exact);" in line
    assert "binarized layers: fp32;" in describe_cpu_path("fp32")
    monkeypatch.setattr(bk, "KERNEL", "fp32")
    assert main(["evaluate", "--checkpoint", "5w1s-binary", "--episodes", "1", "--no-save", "--verbose"]) == 0
    assert "binarized layers: fp32;" in capsys.readouterr().err


def test_inference_max_pooling_gives_the_same_values_and_training_keeps_max_pool2d():
    pool = layers.MaxPool2d(2, stride=2)
    x = torch.randn(3, 4, 8, 6, generator=torch.Generator().manual_seed(0))
    x[0, 0, 0, :2] = float("nan")
    with torch.no_grad():
        got = pool(x)
    want = F.max_pool2d(x, 2)
    assert torch.equal(got.nan_to_num(7.0), want.nan_to_num(7.0)) and got.isnan().sum() == want.isnan().sum() == 1
    odd = torch.randn(2, 3, 7, 5)
    assert torch.equal(pool(odd), F.max_pool2d(odd, 2))
    xg = x.nan_to_num(0.0).requires_grad_()
    pool(xg).sum().backward()  # max_pool2d's gradient: one 1 per window
    assert xg.grad.sum().item() == want.numel()


@pytest.mark.parametrize("kernel", ["int8", "popcount"])
def test_xnor_inference_weights_follow_weight_updates(kernel, monkeypatch):
    monkeypatch.setattr(bk, "KERNEL", kernel)
    conv = layers.XnorConv2d(4, 6, 3).eval()
    x = torch.randn(2, 4, 7, 7)
    with torch.no_grad():
        before = conv(x)
        conv.weight.mul_(-1)  # in place: the cached +-1 weights must be refreshed
        after = conv(x)
    assert torch.equal(after, -before)


# -- inference precision ------------------------------------------------------------------------
def test_auto_precision_is_bf16_only_for_fp_controllers_on_native_bf16(monkeypatch):
    from batmann import evaluate
    from batmann.errors import ConfigError
    from batmann.utils import device as dev

    monkeypatch.setattr(dev, "has_fast_bf16", lambda d: True)
    assert evaluate.inference_precision("fp", "auto", "cpu") == "bf16"
    assert evaluate.inference_precision("xnor", "auto", "cpu") == "fp32"
    assert evaluate.inference_precision("xnor", "bf16", "cpu") == "bf16"
    monkeypatch.setattr(dev, "has_fast_bf16", lambda d: False)
    assert evaluate.inference_precision("fp", "auto", "cpu") == "fp32"
    with pytest.raises(ConfigError, match="precision 'fp16' is not one of auto, fp32, bf16"):
        evaluate.inference_precision("fp", "fp16", "cpu")


def test_bf16_evaluation_runs_under_autocast_and_is_recorded_as_such(omniglot_cache, monkeypatch):
    import json
    import os
    from pathlib import Path

    from batmann.api import evaluate_checkpoint
    from batmann.cli import main

    seen = []
    real = torch.autocast.__init__

    def spy(self, device_type, *a, **k):
        seen.append((device_type, k.get("dtype")))
        real(self, device_type, *a, **k)

    monkeypatch.setattr(torch.autocast, "__init__", spy)
    # bf16 is emulated, and slow, on an AVX2-only CPU: 5 ways x (1 shot + 3 queries)
    few = EpisodeOptions(class_num=5, num_shot=1, pool_query_test=3, batch_size_test=3)
    r32 = evaluate_checkpoint("5w1s-fp", episodes=1, precision="fp32", cache=omniglot_cache, episode_options=few)
    assert ("cpu", torch.bfloat16) not in seen
    r16 = evaluate_checkpoint("5w1s-fp", episodes=1, precision="bf16", cache=omniglot_cache, episode_options=few)
    assert ("cpu", torch.bfloat16) in seen
    assert abs(r16.accuracy_pct - r32.accuracy_pct) <= 20  # 15 queries: bf16 may flip one or two
    assert main(["evaluate", "--checkpoint", "5w1s-fp", "--episodes", "1", "--seed", "13", "--precision", "bf16",
                 "--queries-test", "3", "--json"]) == 0
    record = Path(os.environ["BATMANN_HOME"]) / "evaluations" / "5w1s-fp.eval.json"
    entries = json.loads(record.read_text())["results"]
    assert any(e["settings"]["seed"] == 13 and e["settings"]["precision"] == "bf16" for e in entries)


def test_8bit_layers_keep_their_inference_weights_until_the_weights_change():
    from batmann.models import quantizers as q

    conv = layers.Int8Conv2d(1, 6, 3).eval()
    x = torch.randn(2, 1, 7, 7)
    with torch.no_grad():
        first = conv(x)
        assert conv._inference_weight() is conv._inference_weight()  # computed once
        assert torch.equal(first, F.conv2d(x, q.int8_quantize_ste(conv.weight, conv.scale_mode)))
        conv.weight.mul_(-2)  # in place: refreshed
        assert torch.equal(conv(x), F.conv2d(x, q.int8_quantize_ste(conv.weight, conv.scale_mode)))
    xg = x.clone().requires_grad_()
    conv(xg).sum().backward()  # training: the straight-through path
    assert conv.weight.grad is not None and xg.grad is not None


def test_a_bad_kernel_setting_is_one_line_and_exit_status_2():
    import os
    import subprocess
    import sys

    env = dict(os.environ, BATMANN_BINARY_KERNEL="int4")
    proc = subprocess.run([sys.executable, "-m", "batmann", "evaluate", "--checkpoint", "5w1s-binary", "--episodes", "1",
                           "--no-save"], capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "batmann evaluate: error: BATMANN_BINARY_KERNEL='int4' is not one of auto, int8, popcount, fp32"]


def test_bf16_evaluation_on_the_cpu_takes_channels_last_weights_with_the_same_values():
    from batmann.evaluate import DigitalSystem
    from batmann.models.controller import build_controller

    model = build_controller("fp")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    images = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = model(images).float()
    system = DigitalSystem(model, keys="real", autocast=True)
    conv = system.model.features.conv2.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert all(torch.equal(p, before[n]) for n, p in system.model.named_parameters())
    torch.testing.assert_close(system.features(images), want, rtol=0.02, atol=0.02)  # bf16 rounding
    plain = build_controller("fp")
    DigitalSystem(plain, keys="real")  # fp32: left as it is
    assert plain.features.conv2.weight.is_contiguous()
