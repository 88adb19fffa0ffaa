"""The ReLU and max pool of deterministic training in image ranges: torch's values, bit for bit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from batmann.models import binary_kernels as bk
from batmann.models import grouped_relu_pool as grp
from batmann.models import layers
from batmann.models.controller import build_controller
from batmann.utils.determinism import deterministic_kernels
from crossbar import cpu_features
from training_helpers import deterministic_pass

POOLS = {"none": None, "2x2": nn.MaxPool2d(2), "3x3 stride 2 padded": nn.MaxPool2d(3, 2, 1),
         "ceil mode": nn.MaxPool2d(2, ceil_mode=True)}


def _bits(t: torch.Tensor) -> torch.Tensor:
    t = t.contiguous()
    return t.view(torch.int16 if t.element_size() == 2 else torch.int32)


def _input(dtype: torch.dtype, channels_last: bool, b: int = 13, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 8, 11, 11, generator=gen)
    x[0, 0, 0, :3] = torch.tensor([float("nan"), -0.0, 0.0])
    x[2, 3] = 0.5  # ties inside every pooling window
    x = x.to(dtype)
    return (x.contiguous(memory_format=torch.channels_last) if channels_last else x), gen


def _through(fn, x: torch.Tensor, g_of) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = x.detach().clone().requires_grad_()
    y = fn(leaf)
    y.backward(g_of(y))
    return y.detach(), leaf.grad


@pytest.mark.parametrize("pool", POOLS, ids=list(POOLS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_forward_and_backward_are_torchs_bit_for_bit(pool, dtype, channels_last):
    pool = POOLS[pool]
    x, gen = _input(dtype, channels_last)
    grads = {}

    def g_of(y):  # one output gradient for both paths, in y's layout
        if "g" not in grads:
            grads["g"] = torch.randn(y.shape, generator=gen).to(dtype).contiguous(
                memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        return grads["g"]

    with deterministic_kernels("cpu"):
        got_y, got_g = _through(lambda t: grp.relu_pool(t, pool), x, g_of)
    want_y, want_g = _through(lambda t: torch.relu(t) if pool is None else pool(torch.relu(t)), x, g_of)
    assert torch.equal(_bits(got_y), _bits(want_y)) and torch.equal(_bits(got_g), _bits(want_g))
    assert got_y.stride() == want_y.stride() and got_g.stride() == want_g.stride()
    assert got_y.dtype == want_y.dtype == got_g.dtype == dtype


def test_one_channel_in_channels_last_strides_keeps_torchs_layout():
    """One channel fits both layouts' strides: the same values as torch's, the output in the layout
    torch's pool gives it (the gradient's strides may name the other layout: the same memory)."""
    x = torch.randn(5, 9, 9, 1, generator=torch.Generator().manual_seed(2)).permute(0, 3, 1, 2)
    g_of = lambda y: torch.ones_like(y)  # noqa: E731
    with deterministic_kernels("cpu"):
        got_y, got_g = _through(lambda t: grp.relu_pool(t, nn.MaxPool2d(2)), x, g_of)
    want_y, want_g = _through(lambda t: nn.MaxPool2d(2)(torch.relu(t)), x, g_of)
    assert torch.equal(got_y, want_y) and torch.equal(got_g, want_g)
    assert got_y.stride() == want_y.stride()


def test_the_same_bits_on_one_and_two_threads():
    x, gen = _input(torch.float32, True, b=17, seed=1)
    g = torch.randn(17, 8, 5, 5, generator=gen).contiguous(memory_format=torch.channels_last)
    threads = torch.get_num_threads()
    runs = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            with deterministic_kernels("cpu"):
                runs.append(_through(lambda t: grp.relu_pool(t, nn.MaxPool2d(2)), x, lambda y: g))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(_bits(a), _bits(b)) for a, b in zip(*runs))


def test_covers_max_pools_without_indices_only():
    assert grp.covers(None) and grp.covers(nn.MaxPool2d(2)) and grp.covers(layers.MaxPool2d(2))
    assert not grp.covers(nn.MaxPool2d(2, return_indices=True)) and not grp.covers(nn.AvgPool2d(2))


EXPECTED = {  # (autocast, AMX): the outputs whose ReLU (and pool) run in ranges, pooled or not
    (False, False): [],  # float32: torch's ReLU is bound by memory; the rest in the pooled layers' function
    (False, True): [],
    (True, False): [((4, 128, 28, 28), False), ((4, 128, 10, 10), False)],  # conv2 and conv4 pooled in C
    (True, True): [((4, 128, 28, 28), False), ((4, 128, 24, 24), True), ((4, 128, 10, 10), False),
                   ((4, 128, 8, 8), True)],  # with AMX autograd keeps oneDNN's dense bf16 products
}


@pytest.mark.parametrize("autocast,amx", EXPECTED, ids=["fp32", "fp32 AMX", "bf16", "bf16 AMX"])
def test_the_fp_controller_takes_it_where_outputs_are_large_enough(autocast, amx, monkeypatch):
    """In deterministic training under bf16 autocast the ReLU (and pool) of a plain convolution
    whose output has :data:`MIN_ELEMENTS` elements (here lowered to every output) go through the
    ranges where they are torch's ops; the values are the same either way, and the kernel setting ``fp32`` or a
    large threshold keeps torch's ops."""
    monkeypatch.setattr(cpu_features, "has_bf16_matrix_units", lambda device: amx)
    model = build_controller("fp")
    x = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(5))
    calls = []
    real = grp.GroupedReluPool.apply
    monkeypatch.setattr(grp.GroupedReluPool, "apply",
                        lambda *a: calls.append((tuple(a[0].shape), a[1] is not None)) or real(*a))

    def run(kernel: str, threshold: int):
        monkeypatch.setattr(bk, "KERNEL", kernel)
        monkeypatch.setattr(grp, "MIN_ELEMENTS", threshold)
        calls.clear()
        return deterministic_pass(model, x, autocast)

    want = run("auto", 1 << 40)
    assert calls == []
    got = run("auto", 0)
    assert calls == EXPECTED[autocast, amx]
    assert torch.equal(got[0], want[0])
    for name, g in want[1].items():
        assert torch.equal(got[1][name], g), name
    run("fp32", 0)
    assert calls == []
