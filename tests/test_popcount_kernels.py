"""XOR / popcount kernels for +-1 x +-1 layers (AVX2, AVX-512): the same bits as fp32, built on first use."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from batmann.models import binary_kernels as bk
from batmann.models import layers
from batmann.models import native
from batmann.models import popcount_kernels as pk

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def kernels():
    if not pk.available():
        pytest.skip(f"popcount kernels unavailable here: {pk.unavailable_reason()}")
    return pk


@pytest.fixture(params=sorted(pk.ISAS))
def each_isa(request, kernels):
    """The kernels with each counting loop (256-bit AVX2, 512-bit VPOPCNTDQ where the CPU has it)."""
    with kernels.using_isa(request.param) as bits:
        if bits != request.param:
            pytest.skip(f"this CPU has no {pk.ISAS[request.param]}")
        yield kernels


def test_the_counting_loop_is_chosen_from_the_cpu_and_can_be_forced(kernels, monkeypatch):
    monkeypatch.setattr(bk, "KERNEL", "popcount")
    default = kernels.isa()
    assert default in kernels.ISAS
    assert bk.describe_kernel(torch.device("cpu")) == f"popcount (exact, {kernels.ISAS[default]})"
    with kernels.using_isa(256) as bits:
        assert bits == 256 == kernels.isa()
        assert bk.describe_kernel(torch.device("cpu")) == "popcount (exact, AVX2)"
    assert kernels.isa() == default
    with pytest.raises(ValueError, match="isa 128 is not one of 256, 512"):
        with kernels.using_isa(128):
            pass


def pm1(*shape, seed=0):
    return torch.randint(0, 2, shape, generator=torch.Generator().manual_seed(seed)).float() * 2 - 1


@pytest.mark.parametrize("b,c,o,k,h,stride", [(3, 5, 7, 3, 9, 1), (3, 5, 7, 3, 9, 2), (2, 16, 8, 5, 11, 2),
                                              (33, 128, 16, 5, 12, 1), (1, 1, 4, 3, 5, 1), (4, 130, 9, 3, 7, 1),
                                              (7, 64, 5, 1, 4, 1), (2, 200, 3, 5, 6, 1)])
@pytest.mark.parametrize("threads", [1, 2])
def test_pm1_conv2d_is_bit_identical_to_the_fp32_convolution(b, c, o, k, h, stride, threads, each_isa):
    """Channel counts below, at and across 64-bit words; odd pixel and channel counts (block tails)."""
    torch.set_num_threads(threads)
    x, w = pm1(b, c, h, h, seed=1), pm1(o, c, k, k, seed=2)
    want = F.conv2d(x, w, stride=stride)
    kernels = each_isa
    got = kernels.pm1_conv2d(x, w, stride)
    assert got.dtype == torch.float32 and got.is_contiguous()
    assert torch.equal(got, want)
    got_cl = kernels.pm1_conv2d(x.to(torch.int8).contiguous(memory_format=torch.channels_last), w.to(torch.int8), stride)
    assert torch.equal(got_cl, want)
    assert got_cl.is_contiguous(memory_format=torch.channels_last) == (c > 1)  # C = 1: both formats at once


def test_pm1_kernels_reach_the_largest_sums_and_take_empty_batches(each_isa):
    kernels = each_isa
    x, w = torch.ones(2, 128, 5, 5), torch.ones(3, 128, 5, 5)
    w[1] = -1
    assert kernels.pm1_conv2d(x, w).flatten().tolist() == [3200.0, -3200.0, 3200.0] * 2
    assert kernels.pm1_conv2d(-x, w).flatten().tolist() == [-3200.0, 3200.0, -3200.0] * 2
    assert kernels.pm1_conv2d(torch.ones(0, 128, 5, 5), w).shape == (0, 3, 1, 1)
    xl, wl = pm1(5, 2048, seed=3), pm1(513, 2048, seed=4)
    assert torch.equal(kernels.pm1_linear(xl, wl), F.linear(xl, wl))
    assert kernels.pm1_linear(torch.ones(1, 2048), -torch.ones(1, 2048)).item() == -2048.0


@pytest.mark.parametrize("name", ["20w5s-binary", "100w5s-binary", "20w5s-binary-lake", "20w1s-binary-lake"])
def test_shipped_binary_checkpoints_give_bit_identical_features_on_popcount(name, omniglot_cache, kernels,
                                                                            monkeypatch):
    from batmann.checkpoint import load_checkpoint

    model = load_checkpoint(name).model.eval()
    images = torch.as_tensor(omniglot_cache.images[::97][:48]).float().unsqueeze(1) / 255
    calls = []
    real = kernels.pm1_conv2d
    monkeypatch.setattr(kernels, "pm1_conv2d", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.no_grad():
        monkeypatch.setattr(bk, "KERNEL", "fp32")
        fp32 = model(images)
        assert not calls
        monkeypatch.setattr(bk, "KERNEL", "popcount")
        got = model(images)
        torch.set_num_threads(2)
        got2 = model(images)
    assert len(calls) == 6  # conv2..conv4, twice
    assert torch.equal(got, fp32) and torch.equal(got2, fp32)


def test_padded_convolutions_stay_off_the_popcount_kernels(kernels, monkeypatch):
    monkeypatch.setattr(bk, "KERNEL", "popcount")
    monkeypatch.setattr(kernels, "pm1_conv2d", lambda *a, **k: pytest.fail("popcount kernel used"))
    padded = layers.XnorConv2d(4, 6, 3, padding=1)
    x = torch.randn(2, 4, 7, 7)
    with torch.no_grad():
        assert padded.eval()(x).shape == (2, 6, 7, 7)  # fp32 there
    xg = x.clone().requires_grad_()
    padded.train()(xg).sum().backward()  # and in training
    assert xg.grad is not None and padded.weight.grad is not None


def test_bf16_gradient_training_runs_its_forward_on_popcount_with_the_fp32_values(kernels, monkeypatch):
    conv = layers.XnorConv2d(8, 6, 3)
    x = torch.randn(3, 8, 7, 7)
    monkeypatch.setattr(bk, "KERNEL", "fp32")
    want = conv(x)
    layers.set_gradient_dtype(conv, torch.bfloat16)
    calls = []
    real = kernels.pm1_conv2d
    monkeypatch.setattr(kernels, "pm1_conv2d", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(bk, "KERNEL", "popcount")
    xg = x.clone().requires_grad_()
    got = conv(xg)
    got.sum().backward()
    assert calls and torch.equal(got, want) and xg.grad is not None


def test_the_library_is_built_once_by_hash_and_failures_are_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("BATMANN_HOME", str(tmp_path))
    path = pk.LIBRARY.path("/usr/bin/cc")
    assert path.parent == tmp_path / "kernels" and path.name.startswith("pm1_popcount-")
    assert pk.LIBRARY.path("/usr/bin/cc") == path != pk.LIBRARY.path("/usr/bin/clang")
    with pytest.raises(OSError, match="failed"):
        pk.LIBRARY._build("false", tmp_path / "kernels" / "x.so")  # a "compiler" that always fails
    assert list((tmp_path / "kernels").iterdir()) == []  # nothing half-written is left
    monkeypatch.setattr(pk.LIBRARY, "_lib", None)
    monkeypatch.setattr(pk.LIBRARY, "reason", None)
    monkeypatch.setenv("CC", "no-such-compiler-here")
    assert not pk.available()
    assert pk.unavailable_reason() == "no C compiler (no-such-compiler-here) on PATH"
    with pytest.raises(RuntimeError, match="popcount kernels unavailable: no C compiler"):
        pk.pm1_conv2d(torch.ones(1, 4, 3, 3), torch.ones(2, 4, 3, 3))
    monkeypatch.setattr(bk, "KERNEL", "popcount")
    assert bk.kernel_for(torch.device("cpu")) is None  # falls back to fp32


def test_a_fresh_home_builds_the_library(tmp_path, monkeypatch):
    if native.compiler() is None or not torch.cpu._is_avx2_supported():
        pytest.skip("no C compiler or no AVX2 here")
    monkeypatch.setenv("BATMANN_HOME", str(tmp_path))
    monkeypatch.setattr(pk.LIBRARY, "_lib", None)
    monkeypatch.setattr(pk.LIBRARY, "reason", None)
    assert pk.available(), pk.unavailable_reason()
    built = list((tmp_path / "kernels").iterdir())
    assert [p.name for p in built] == [pk.LIBRARY.path(native.compiler()).name]
    x, w = pm1(2, 70, 6, 6, seed=5), pm1(3, 70, 3, 3, seed=6)
    assert torch.equal(pk.pm1_conv2d(x, w), F.conv2d(x, w))


def test_weights_packed_once_give_the_same_products_and_are_checked(kernels):
    x, w = pm1(3, 70, 7, 7, seed=7), pm1(9, 70, 3, 3, seed=8)
    packed = kernels.pack_weights(w)
    assert packed.bits.shape == (16, 20) and packed.words == 20  # 9 rows -> 16; 3*3*2 words -> 20
    assert torch.equal(kernels.pm1_conv2d(x, packed), F.conv2d(x, w))
    xl, wl = pm1(4, 300, seed=9), pm1(5, 300, seed=10)
    assert torch.equal(kernels.pm1_linear(xl, kernels.pack_weights(wl)), F.linear(xl, wl))
    with pytest.raises(ValueError, match="weights for 70 input channels, input has 71"):
        kernels.pm1_conv2d(pm1(1, 71, 7, 7), packed)


def test_a_forked_child_computes_on_its_own_threads(kernels):
    import multiprocessing as mp

    torch.set_num_threads(2)
    x, w = pm1(4, 64, 6, 6, seed=11), pm1(8, 64, 3, 3, seed=12)
    want = kernels.pm1_conv2d(x, w)  # the parent's pool exists now
    ctx = mp.get_context("fork")
    with ctx.Pool(1) as pool:
        got = pool.apply_async(_conv_in_child, (x, w)).get(timeout=60)
    assert torch.equal(got, want)


def _conv_in_child(x, w):
    torch.set_num_threads(2)
    return pk.pm1_conv2d(x, w)


@pytest.mark.parametrize("size", [8, 9])
@pytest.mark.parametrize("channels_last", [False, True])
def test_real_inputs_are_signed_about_each_images_threshold(channels_last, size, kernels):
    """x > threshold[b] is +1, else -1 (equal to the threshold or NaN: -1), in either memory
    format; channel planes are packed eight pixels at a time, the pixels left one by one (9 x 9)."""
    gen = torch.Generator().manual_seed(13)
    x = torch.randn(5, 70, size, size, generator=gen)
    thr = torch.randn(5, generator=gen)
    x[0, 0, 0, 0] = thr[0]  # exactly at the threshold
    x[1, 66, 1, 2] = x[2, 3, -1, -1] = float("nan")  # in a vector of eight pixels, and in the last pixel
    signs = torch.where(x > thr.view(-1, 1, 1, 1), 1.0, -1.0)
    w = pm1(6, 70, 3, 3, seed=14)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    got = kernels.pm1_conv2d(x, w, threshold=thr.view(-1, 1, 1, 1))
    assert torch.equal(got, F.conv2d(signs, w))
    with pytest.raises(TypeError, match="a thresholded input must be float32, got torch.float64"):
        kernels.pm1_conv2d(x.double(), w, threshold=thr)


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_scale_relu_and_pool_epilogue_gives_the_separate_ops_bits(channels_last, kernels):
    """``scale`` per output channel, ``relu`` and a 2x2 max pool in the kernel's stores: the values
    of ``max_pool2d(relu(out * scale), 2)`` bit for bit (positive and negative scales, zero sums),
    for convolutions and linear layers; a scale of the wrong size, or a pool without relu or on odd
    sizes, is refused."""
    x, w = pm1(5, 70, 9, 9, seed=3), pm1(11, 70, 3, 3, seed=4)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    scale = torch.randn(11, generator=torch.Generator().manual_seed(5))
    plain = kernels.pm1_conv2d(x, w)
    assert (plain == 0).any() and (scale < 0).any()
    scaled = kernels.pm1_conv2d(x, w, scale=scale)
    assert torch.equal(scaled, plain * scale.view(1, -1, 1, 1))
    fused = kernels.pm1_conv2d(x, w, scale=scale, relu=True)
    want = torch.relu(plain * scale.view(1, -1, 1, 1))
    assert torch.equal(fused, want) and not torch.signbit(fused).any()
    assert fused.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert torch.equal(kernels.pm1_conv2d(x, w, relu=True), torch.relu(plain))
    flat, wl = x.reshape(5, -1)[:, :130], pm1(6, 130, seed=6)
    assert torch.equal(kernels.pm1_linear(flat, wl, scale=torch.tensor(0.25), relu=True),
                       torch.relu(F.linear(flat, wl) * 0.25))
    with pytest.raises(ValueError, match="one per output channel"):
        kernels.pm1_conv2d(x, w, scale=scale[:5])
    # then the 2x2 max pool (7x7 outputs are odd: refused; 10x10 inputs give 8x8 -> 4x4)
    x10 = pm1(5, 70, 10, 10, seed=8)
    if channels_last:
        x10 = x10.contiguous(memory_format=torch.channels_last)
    pooled = kernels.pm1_conv2d(x10, w, scale=scale, relu=True, pool=True)
    want = F.max_pool2d(torch.relu(kernels.pm1_conv2d(x10, w) * scale.view(1, -1, 1, 1)), 2)
    assert pooled.shape == (5, 11, 4, 4) and torch.equal(pooled, want) and not torch.signbit(pooled).any()
    assert pooled.is_contiguous(memory_format=torch.channels_last) == channels_last
    for bad in (dict(x=x, relu=True), dict(x=x10, relu=False)):
        with pytest.raises(ValueError, match="pooled output"):
            kernels.pm1_conv2d(bad["x"], w, relu=bad["relu"], pool=True)


def test_the_controller_runs_each_xnor_conv_its_relu_and_pool_as_one_call(kernels, monkeypatch):
    """The XNOR controller hands each conv's ReLU (and the max pool after it) to the conv (the same
    features as the layers one by one), with autograd too (and there conv1's ReLU to conv2); with
    a hook on a layer, each layer runs alone."""
    from batmann.models import build_controller

    model = build_controller("xnor", feature_dim=32).eval()
    x = torch.rand(6, 1, 32, 32, generator=torch.Generator().manual_seed(7))
    calls = []
    real = layers.XnorConv2d.forward

    def spy(self, inp, relu=False, pool=None, input_relu=False):
        calls.append((relu, pool is not None) + ((True,) if input_relu else ()))
        return real(self, inp, relu=relu, pool=pool, input_relu=input_relu)

    monkeypatch.setattr(layers.XnorConv2d, "forward", spy)
    with torch.no_grad():
        one_by_one = model.fc1(model.flatten(model.features(x)))
        calls.clear()
        assert torch.equal(model(x), one_by_one) and calls == [(True, True), (True, False), (True, True)]
        calls.clear()
        handle = model.features.relu3.register_forward_hook(lambda *a: None)
        assert torch.equal(model(x), one_by_one) and calls == [(True, True), (False, False), (True, True)]
        handle.remove()
    calls.clear()
    out = model(x)
    out.sum().backward()
    # in training conv1's ReLU is conv2's input_relu (tests/test_pooled_grad.py)
    assert torch.equal(out.detach(), one_by_one) and calls == [(True, True, True), (True, False), (True, True)]
