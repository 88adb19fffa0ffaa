"""The vectorised pipeline: each non-ideality changes exactly what it should (no MemTorch needed)."""

from __future__ import annotations

import math

import pytest
import torch

from crossbar import HardwareSpec
from crossbar import conductance as C
from device_models import DeviceVariability, PRESETS

R, K = 256, 96  # rows x columns of the test arrays

pytestmark = pytest.mark.usefixtures("one_thread")


def real(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def build(spec, weights, stream="t"):
    planes = C.sample_planes(spec, weights.shape[0], weights.shape[1], spec.generator(stream), torch.float64)
    return C.program(spec, planes, weights.to(torch.float64))


@pytest.mark.parametrize("mapping", ["per_column", "naive"])
@pytest.mark.parametrize("preset", list(PRESETS))
def test_ideal_read_equals_the_matrix_product(mapping, preset):
    w = real(R, K) * torch.linspace(0.1, 3, K, dtype=torch.float64)  # columns with different scales
    spec = HardwareSpec(preset=preset, weight_mapping=mapping, programming_noise=0.0)  # measured presets: noise off
    assert spec.is_ideal
    arr = build(spec, w)
    x = real(20, R, seed=1)
    assert torch.allclose(arr.effective_weights(), w, rtol=1e-9, atol=1e-12)
    assert torch.allclose(C.read(spec, arr, x), x @ w, rtol=1e-9, atol=1e-9)


def test_binary_weights_use_two_states_per_device_even_with_per_column_scales():
    alpha = torch.linspace(0.2, 2.0, K, dtype=torch.float64)
    w = torch.sign(real(R, K)) * alpha  # XNOR-style layer: +-alpha_c
    arr = build(HardwareSpec(preset="vteam"), w)
    dev = PRESETS["vteam"]
    assert arr.g.unique().tolist() == pytest.approx([dev.g_off, dev.g_on], rel=1e-12)
    # one device of each pair at LRS, the other at HRS
    assert torch.all((arr.g[0] > arr.g[1]) == (w > 0))
    naive = build(HardwareSpec(preset="vteam", weight_mapping="naive"), w)
    assert naive.g.unique().numel() > 2  # a single layer scale spreads the columns over the window


def test_variability_spreads_lrs_and_hrs_with_the_requested_sigma():
    sigma = 0.1
    spec = HardwareSpec(preset="ideal", variability=sigma, seed=5)
    w = torch.sign(real(512, 200))
    arr = build(spec, w)
    dev = spec.device
    lrs = torch.where(w > 0, arr.g[0], arr.g[1])  # the device of each pair at LRS
    hrs = torch.where(w > 0, arr.g[1], arr.g[0])
    for g, nominal in ((lrs, dev.r_on), (hrs, dev.r_off)):
        r = 1 / g
        assert abs(r.mean().item() / nominal - 1) < 0.005
        assert abs(r.std().item() / nominal - sigma) < 0.005
    # the ideal spec leaves them at the nominal values
    ideal = build(HardwareSpec(preset="ideal"), w)
    assert ideal.g.unique().numel() == 2


def test_memtorch_clip_mode_spreads_one_sided_and_less():
    w = torch.sign(real(512, 200))
    spec = HardwareSpec(nonidealities=[DeviceVariability(0.1, mode="memtorch_clip")], seed=5)
    arr = build(spec, w)
    lrs = torch.where(w > 0, arr.g[0], arr.g[1])
    assert (lrs <= spec.device.g_on * (1 + 1e-12)).all()  # never above the nominal target
    frac_moved = (lrs < spec.device.g_on * (1 - 1e-9)).double().mean().item()
    assert 0.45 < frac_moved < 0.55
    assert (1 / lrs).std().item() / spec.device.r_on < 0.08


@pytest.mark.parametrize("levels", [2, 4, 16])
def test_finite_states_give_exactly_the_requested_number_of_levels(levels):
    w = real(R, K)
    arr = build(HardwareSpec(states=levels), w)
    assert arr.g.unique().numel() == levels
    continuous = build(HardwareSpec(), w)
    assert continuous.g.unique().numel() > 1000


def test_finite_states_with_variability_sit_on_each_devices_own_grid():
    levels = 5
    arr = build(HardwareSpec(states=levels, variability=0.1), real(R, K))
    p = arr.planes
    k = (arr.g - p.g_lo) / (p.g_hi - p.g_lo) * (levels - 1)
    assert torch.allclose(k, k.round(), atol=1e-6)
    assert k.round().unique().numel() == levels


def test_stuck_fraction_matches_and_faults_survive_everything_else():
    p_lrs, p_hrs = 0.02, 0.05
    spec = HardwareSpec(variability=0.1, states=4, stuck_lrs=p_lrs, stuck_hrs=p_hrs, seed=3)
    w = real(512, 200)
    arr = build(spec, w)
    p = arr.planes
    n = p.stuck_lrs.numel()
    for mask, want in ((p.stuck_lrs, p_lrs), (p.stuck_hrs, p_hrs)):
        assert abs(mask.double().mean().item() - want) < 5 * math.sqrt(want * (1 - want) / n)
    # after variability and finite states, every stuck device holds its own bound
    assert torch.equal(arr.g[p.stuck_lrs], p.g_hi[p.stuck_lrs])
    assert torch.equal(arr.g[p.stuck_hrs], p.g_lo[p.stuck_hrs])
    # ... and still does when other weights are written into the same devices
    again = C.program(spec, p, -w)
    assert torch.equal(again.g[p.stuck_lrs], p.g_hi[p.stuck_lrs])
    assert torch.equal(again.g[p.stuck_hrs], p.g_lo[p.stuck_hrs])
    # the healthy devices were programmed as without faults
    no_faults = build(HardwareSpec(variability=0.1, states=4, seed=3), w)
    healthy = ~(p.stuck_lrs | p.stuck_hrs)
    assert torch.equal(arr.g[healthy], no_faults.g[healthy])


def test_adc_resolution_changes_the_outputs_and_more_bits_get_closer():
    w = torch.sign(real(R, K))
    x = torch.sign(real(50, R, seed=1))
    exact = x @ w
    errors = []
    for bits in (2, 4, 6, 8, 12):
        spec = HardwareSpec(adc_bits=bits)
        y = C.read(spec, build(spec, w), x)
        assert not torch.allclose(y, exact)
        assert y.unique().numel() <= 2 ** bits
        errors.append((y - exact).abs().mean().item())
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.2


def test_tiles_matter_only_with_an_adc():
    w, x = real(R, K), real(30, R, seed=1)
    y_plain = C.read(HardwareSpec(), build(HardwareSpec(), w), x)
    spec_t = HardwareSpec(tile_shape=(64, 32))
    assert torch.allclose(C.read(spec_t, build(spec_t, w), x), y_plain, rtol=1e-9, atol=1e-9)
    s1, s4 = HardwareSpec(adc_bits=5), HardwareSpec(adc_bits=5, tile_shape=(64, 64))
    y1, y4 = C.read(s1, build(s1, w), x), C.read(s4, build(s4, w), x)
    assert not torch.allclose(y1, y4)
    assert C.tile_count(s4, R, K) == 4 * 2  # 4 row tiles x 2 column tiles


def test_dac_bits_change_the_outputs():
    w, x = real(R, K), real(30, R, seed=1)
    y = C.read(HardwareSpec(), build(HardwareSpec(), w), x)
    s = HardwareSpec(dac_bits=3)
    y3 = C.read(s, build(s, w), x)
    assert not torch.allclose(y, y3)
    assert torch.allclose(y, y3, rtol=0.5, atol=0.5 * y.abs().max().item())


def test_reads_do_not_depend_on_the_batch():
    spec = HardwareSpec(adc_bits=4, dac_bits=4, tile_shape=(64, 64), variability=0.05, stuck_lrs=0.01)
    arr = build(spec, real(R, K))
    x = real(12, R, seed=1)
    x[3] *= 100
    together = C.read(spec, arr, x)
    alone = torch.cat([C.read(spec, arr, x[i:i + 1]) for i in range(12)])
    assert torch.equal(together, alone)


def test_same_seed_same_chip_other_seed_other_chip():
    kw = dict(variability=0.1, states=8, stuck_lrs=0.01, stuck_hrs=0.01, adc_bits=6)
    w = real(R, K)
    a, b = build(HardwareSpec(seed=1, **kw), w), build(HardwareSpec(seed=1, **kw), w)
    c = build(HardwareSpec(seed=2, **kw), w)
    assert torch.equal(a.g, b.g)
    assert not torch.equal(a.g, c.g)


@pytest.mark.parametrize("kw", [dict(), dict(adc_bits=5, tile_shape=(20, 4), dac_bits=5, variability=0.1),
                                dict(adc_bits=3), dict(adc_bits=6, tile_shape=(9, 9), stuck_lrs=0.05)])
@pytest.mark.parametrize("padding,stride", [(0, 1), (1, 1), (1, 2)])
def test_conv_read_equals_the_read_of_unfolded_patches(kw, padding, stride):
    from torch.nn import functional as F

    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(4, 6, 10, 10, generator=g), torch.randn(7, 6, 3, 3, generator=g)
    spec = HardwareSpec(**kw)
    arr = C.program(spec, C.sample_planes(spec, 54, 7, spec.generator("c"), torch.float32), w.reshape(7, -1).T)
    y = C.read_conv(spec, arr, x, 3, stride, padding)
    cols = F.unfold(x, 3, padding=padding, stride=stride)  # (B, R, L): tile rows 20 split channels
    b, r, l = cols.shape
    scale = x.reshape(b, -1).abs().amax(1).repeat_interleave(l)
    ref = C.read(spec, arr, cols.transpose(1, 2).reshape(b * l, r), row_scale=scale)
    ref = ref.reshape(b, l, -1).transpose(1, 2).reshape(y.shape)
    if spec.adc_spec is None:
        assert torch.allclose(y, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    else:  # summation order may move a value across an ADC threshold, very rarely
        assert (y != ref).float().mean().item() < 0.01


def test_tiled_adc_convolution_gives_the_same_bits_in_image_chunks(monkeypatch):
    spec = HardwareSpec(preset="vteam", variability=0.1, adc_bits=6, tile_shape=(20, 8))
    w = real(3 * 9, 6)
    planes = C.sample_planes(spec, 27, 6, spec.generator("k"), torch.float32)
    arr = C.program(spec, planes, w.float(), generator=spec.generator("k/w"))
    img = torch.randn(7, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    whole = C.read_conv(spec, arr, img, 3, padding=1)
    monkeypatch.setattr(C, "TILE_CHUNK_ELEMENTS", 6 * 8 * 8 * 2)  # two images per chunk
    assert torch.equal(C.read_conv(spec, arr, img, 3, padding=1), whole)
    per_image = torch.cat([C.read_conv(spec, arr, img[i:i + 1], 3, padding=1) for i in range(7)])
    assert torch.allclose(per_image, whole, rtol=0, atol=1e-6 * whole.abs().max().item())


# -- kernel-major conv rows (conv_rows="kernel") ----------------------------------------------------
def _kernel_major_array(spec, c_in=5, c_out=8, k=3, seed=0):
    w = torch.randn(c_out, c_in, k, k, generator=torch.Generator().manual_seed(seed))
    planes = C.sample_planes(spec, c_in * k * k, c_out, spec.generator("km"), torch.float32)
    arr = C.program(spec, planes, w.reshape(c_out, -1).T, generator=spec.generator("km/w"))
    return arr, arr.with_rows(C.kernel_major_rows(c_in, k))


def test_kernel_major_rows_are_the_kh_kw_c_order():
    idx = C.kernel_major_rows(3, 2)  # rows (c, kh, kw) = c * 4 + kh * 2 + kw
    assert idx.tolist() == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]
    spec = HardwareSpec(preset="vteam", variability=0.2, stuck_lrs=0.1)
    chan, kern = _kernel_major_array(spec)
    idx = C.kernel_major_rows(5, 3)
    assert torch.equal(kern.g, chan.g[:, idx])  # same devices, other places
    assert torch.equal(kern.planes.stuck_lrs, chan.planes.stuck_lrs[:, idx])


@pytest.mark.parametrize("kw", [dict(adc_bits=5, tile_shape=(32, 8)), dict(adc_bits=4, tile_shape=(7, 8), dac_bits=5),
                                dict(adc_bits=6, tile_shape=(20, 3), variability=0.1, stuck_hrs=0.05)])
@pytest.mark.parametrize("padding,stride", [(0, 1), (1, 1), (1, 2)])
def test_kernel_major_tiles_equal_the_read_of_reordered_patches(kw, padding, stride):
    """Tiles of (kh, kw, c) rows, some straddling kernel positions, each through its own ADC ==
    the matrix read of the unfolded patches with their rows in that order."""
    from torch.nn import functional as F

    spec = HardwareSpec(conv_rows="kernel", **kw)
    _, arr = _kernel_major_array(spec)
    x = torch.rand(4, 5, 9, 9, generator=torch.Generator().manual_seed(1)) - 0.3
    y = C.read_conv(spec, arr, x, 3, stride, padding)
    cols = F.unfold(x, 3, padding=padding, stride=stride)  # (B, R, L), rows (c, kh, kw)
    b, r, l = cols.shape
    patches = cols.transpose(1, 2).reshape(b * l, r)[:, C.kernel_major_rows(5, 3)]
    ref = C.read(spec, arr, patches, row_scale=x.reshape(b, -1).abs().amax(1).repeat_interleave(l))
    ref = ref.reshape(b, l, -1).transpose(1, 2).reshape(y.shape)
    assert torch.allclose(y, ref, rtol=0, atol=1e-5 * ref.abs().max().item())


def test_kernel_major_rows_change_nothing_without_an_adc_or_ir_drop():
    from torch import nn

    from crossbar import convert

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.ReLU(), nn.Conv2d(12, 6, 3, stride=2), nn.Flatten()).eval()
    x = torch.randn(5, 3, 10, 10, generator=torch.Generator().manual_seed(2))
    base = dict(analog="all", preset="vteam", variability=0.1, states=16, stuck_lrs=0.01, read_noise=0.05)
    chan = convert(net, HardwareSpec(conv_rows="channel", **base))
    kern = convert(net, HardwareSpec(**base))  # kernel rows: the default
    assert torch.equal(chan.features(x), kern.features(x))
    # MemTorch's own forward unfolds in (c, kh, kw) order: its crossbars see the weight order
    from crossbar.controller import _weight_order

    a_chan, a_kern = chan.controller.arrays, kern.controller.arrays
    assert sum(a.row_index is not None for a in a_kern.values()) == 2  # both convs
    for name in a_chan:
        assert torch.equal(_weight_order(a_kern[name], 0), _weight_order(a_chan[name], 0))
    with_adc = dict(base, adc_bits=6, tile_shape=(16, 16))
    assert not torch.equal(convert(net, HardwareSpec(conv_rows="channel", **with_adc)).features(x),
                           convert(net, HardwareSpec(**with_adc)).features(x))


def test_kernel_major_tiles_give_the_same_bits_in_image_chunks_and_draw_read_noise_per_tile(monkeypatch):
    spec = HardwareSpec(preset="vteam", variability=0.1, adc_bits=6, tile_shape=(20, 8), conv_rows="kernel")
    _, arr = _kernel_major_array(spec)
    img = torch.randn(7, 5, 8, 8, generator=torch.Generator().manual_seed(3))
    whole = C.read_conv(spec, arr, img, 3, padding=1)
    monkeypatch.setattr(C, "TILE_CHUNK_ELEMENTS", 8 * 8 * 10 * 2)  # two images per chunk
    assert torch.equal(C.read_conv(spec, arr, img, 3, padding=1), whole)
    # read noise with a fine ADC: the spread of repeated reads is the same in both row orders
    spreads = {}
    for rows in ("channel", "kernel"):
        noisy = HardwareSpec(preset="vteam", read_noise=0.05, adc_bits=16, tile_shape=(20, 8), conv_rows=rows)
        chan, kern = _kernel_major_array(noisy)
        a = kern if rows == "kernel" else chan
        a.read_generator = torch.Generator().manual_seed(5)
        reads = torch.stack([C.read_conv(noisy, a, img[:2], 3, padding=1) for _ in range(200)])
        spreads[rows] = reads.std(0).mean().item()
    assert spreads["kernel"] == pytest.approx(spreads["channel"], rel=0.05)


def test_kernel_major_calibration_records_each_tile():
    spec = HardwareSpec(preset="vteam", adc_bits=5, adc_range="calibrated_column", tile_shape=(16, 8),
                        conv_rows="kernel")
    _, arr = _kernel_major_array(spec)
    x = torch.rand(6, 5, 9, 9, generator=torch.Generator().manual_seed(4))
    C.start_calibration(spec, arr)
    raw = C.read_conv(spec, arr, x, 3)  # unquantised while calibrating
    C.finish_calibration(spec, arr)
    assert len(arr.adc_fs) == 3 and all(f.shape == (8,) for f in arr.adc_fs)
    worst = 16 * spec.dac_spec.v_read * (arr.g_on - arr.g_off)
    assert all(float(f.max()) < worst for f in arr.adc_fs)
    quantised = C.read_conv(spec, arr, x, 3)
    assert not torch.equal(quantised, raw)
    assert ((quantised - raw).norm() / raw.norm()).item() < 0.1


@pytest.mark.parametrize("adc_range", ["calibrated", "calibrated_column"])
def test_kernel_major_tiles_on_calibrated_ranges_equal_the_read_of_reordered_patches(adc_range):
    """Tiles read through conductances divided by their calibrated steps (one per tile, or one
    per tile column) == the matrix read of the unfolded patches, which divides the currents."""
    from torch.nn import functional as F

    spec = HardwareSpec(preset="vteam", variability=0.1, adc_bits=5, adc_range=adc_range, tile_shape=(16, 8),
                        conv_rows="kernel")
    _, arr = _kernel_major_array(spec)
    x = torch.rand(6, 5, 9, 9, generator=torch.Generator().manual_seed(4)) - 0.3
    C.start_calibration(spec, arr)
    C.read_conv(spec, arr, x, 3)
    C.finish_calibration(spec, arr)
    assert all(f.dim() == (adc_range == "calibrated_column") for f in arr.adc_fs)
    y = C.read_conv(spec, arr, x, 3)
    cols = F.unfold(x, 3)
    b, r, l = cols.shape
    patches = cols.transpose(1, 2).reshape(b * l, r)[:, C.kernel_major_rows(5, 3)]
    ref = C.read(spec, arr, patches, row_scale=x.reshape(b, -1).abs().amax(1).repeat_interleave(l))
    ref = ref.reshape(b, l, -1).transpose(1, 2).reshape(y.shape)
    assert torch.allclose(y, ref, rtol=0, atol=1e-5 * ref.abs().max().item())


@pytest.mark.parametrize("full_scale", [1.0, 0.02])
def test_kernel_major_tiles_skip_the_adc_clip_only_where_no_current_reaches_it(monkeypatch, full_scale):
    """A tile whose largest possible current stays below the ADC's range gives the same bits with
    and without the clipping pass; where currents reach it (a 2 % range), it clips."""
    from device_models import ADC

    spec = HardwareSpec(preset="vteam", variability=0.1, tile_shape=(20, 8), conv_rows="kernel",
                        nonidealities=[ADC(6, full_scale=full_scale)])
    _, arr = _kernel_major_array(spec)
    img = torch.randn(3, 5, 8, 8, generator=torch.Generator().manual_seed(3))
    decisions = []
    may_clip = C._may_clip
    monkeypatch.setattr(C, "_may_clip", lambda *a: decisions.append(may_clip(*a)) or decisions[-1])
    skipped = C.read_conv(spec, arr, img, 3, padding=1)
    monkeypatch.setattr(C, "_may_clip", lambda *a: True)
    clipped = C.read_conv(spec, arr, img, 3, padding=1)
    assert torch.equal(skipped, clipped)
    assert decisions == [full_scale < 1.0] * 3  # 45 rows: three tiles
    if full_scale < 1.0:  # there the clip binds: skipping it would change the result
        monkeypatch.setattr(C, "_may_clip", lambda *a: False)
        assert not torch.equal(C.read_conv(spec, arr, img, 3, padding=1), clipped)


def test_accumulating_adc_codes_equals_summing_quantised_tiles():
    from device_models import ADC

    adc = ADC(5)
    parts = [torch.randn(3, 4, 5, 5, generator=torch.Generator().manual_seed(i)) * 2 for i in range(4)]
    for fs in (3.0, torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, -1, 1, 1)):
        want = sum(adc.quantize(p, fs) for p in parts)
        total = torch.zeros(3, 4, 5, 5)
        offset = sum(adc.accumulate_(total, p.clone(), fs) for p in parts)
        assert torch.allclose(total + offset, want, rtol=0, atol=1e-5)
        # the same from currents already in steps (conductances divided by the step)
        total = torch.zeros(3, 4, 5, 5)
        offset = sum(adc.accumulate_steps_(total, p / adc.step(fs), adc.step(fs)) for p in parts)
        assert torch.allclose(total + offset, want, rtol=0, atol=1e-5)


def test_conv_rows_is_validated_and_saved():
    from device_models.errors import HardwareSpecError

    with pytest.raises(HardwareSpecError, match="conv_rows must be one of channel, kernel, got 'row'"):
        HardwareSpec(conv_rows="row")
    spec = HardwareSpec(conv_rows="kernel", adc_bits=8)
    assert HardwareSpec.from_dict(spec.to_dict()) == spec and spec.describe()["conv_rows"] == "kernel"
