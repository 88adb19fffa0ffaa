"""Table-lookup currents of two-level inputs (crossbar.lookup) and their use by the tiled ADC read."""

import pytest
import torch

from crossbar import HardwareSpec
from crossbar import conductance as C
from crossbar import lookup


def _signs(*shape, seed=0):
    return torch.randint(0, 2, shape, generator=torch.Generator().manual_seed(seed)).float() * 2 - 1


@pytest.mark.parametrize("bits", [1, 4, 8])
def test_lookup_currents_equal_the_matrix_product(bits):
    level = 0.2
    v = _signs(300, 64) * level
    g = torch.rand(64, 24, generator=torch.Generator().manual_seed(1)) * 1e-3
    codes = lookup.pattern_codes(v, level, bits)
    assert codes.shape == (300, 64 // bits) and codes.dtype == torch.int32
    groups = torch.arange(64 // bits, dtype=torch.int32)
    assert bool(((codes >= groups << bits) & (codes < (groups + 1) << bits)).all())  # each group its own rows
    table = lookup.pattern_table(g, level, bits)
    assert table.shape == ((64 // bits) << bits, 24)
    ref = v.double() @ g.double()
    out = lookup.lookup_currents(codes, table)
    assert torch.allclose(out.double(), ref, rtol=0, atol=1e-6 * ref.abs().max().item())


def test_pattern_table_rows_are_the_currents_of_each_pattern():
    g = torch.tensor([[1.0, 10.0], [2.0, 20.0]])  # two rows, one group of 2
    table = lookup.pattern_table(g, 0.5, 2)
    # codes 0..3 = patterns (-,-), (-,+), (+,-), (+,+) of rows (0, 1)
    assert table.tolist() == [[-1.5, -15.0], [0.5, 5.0], [-0.5, -5.0], [1.5, 15.0]]
    v = torch.tensor([[-0.5, -0.5], [-0.5, 0.5], [0.5, -0.5], [0.5, 0.5]])
    assert lookup.pattern_codes(v, 0.5, 2).flatten().tolist() == [0, 1, 2, 3]


def test_two_level_and_bad_groups():
    assert lookup.two_level(_signs(5, 8) * 0.2, 0.2)
    x = _signs(5, 8) * 0.2
    x[2, 3] = 0.0  # a zero-padded input
    assert not lookup.two_level(x, 0.2)
    assert not lookup.two_level(_signs(5, 8), 0.2)
    with pytest.raises(ValueError, match="groups of 4"):
        lookup.pattern_codes(_signs(3, 6), 1.0, 4)
    with pytest.raises(ValueError, match="groups of 4"):
        lookup.pattern_table(torch.ones(6, 2), 1.0, 4)


def _array(spec, c_in, c_out=8, k=3):
    w = torch.randn(c_out, c_in, k, k, generator=torch.Generator().manual_seed(0))
    planes = C.sample_planes(spec, c_in * k * k, c_out, spec.generator("km"), torch.float32)
    arr = C.program(spec, planes, w.reshape(c_out, -1).T, generator=spec.generator("km/w"))
    return arr.with_rows(C.kernel_major_rows(c_in, k))


@pytest.mark.parametrize("tile_rows", [16, 20, 72])  # within a position, straddling positions, several
@pytest.mark.parametrize("stride", [1, 2])
def test_tiled_adc_read_of_signs_uses_the_tables_and_equals_the_product_read(monkeypatch, tile_rows, stride):
    """+-1 images on kernel-major tiles are read by table lookup (every tile), with the same
    result as the matrix products of the fallback path (the same currents in another order; no
    ADC code moves on these images)."""
    spec = HardwareSpec(preset="vteam", variability=0.1, states=16, adc_bits=6, tile_shape=(tile_rows, 8),
                        conv_rows="kernel")
    arr = _array(spec, c_in=8)
    x = _signs(5, 8, 9, 9, seed=2)
    calls = []
    currents = lookup.lookup_currents
    monkeypatch.setattr(lookup, "lookup_currents", lambda *a: calls.append(1) or currents(*a))
    y = C.read_conv(spec, arr, x, 3, stride)
    assert len(calls) >= C.tile_count(spec, arr.rows, arr.cols)
    monkeypatch.setattr(C, "_lookup_tile_sum", lambda *a: None)
    ref = C.read_conv(spec, arr, x, 3, stride)
    assert torch.allclose(y, ref, rtol=0, atol=1e-5 * ref.abs().max().item())


@pytest.mark.parametrize("case", ["real inputs", "zero padding", "channels not in groups"])
def test_tiled_adc_read_falls_back_to_matrix_products(monkeypatch, case):
    spec = HardwareSpec(preset="vteam", adc_bits=6, tile_shape=(16, 8), conv_rows="kernel")
    c_in = 6 if case == "channels not in groups" else 8
    arr = _array(spec, c_in=c_in)
    x = _signs(3, c_in, 8, 8, seed=4)
    if case == "real inputs":
        x = x * torch.rand(x.shape, generator=torch.Generator().manual_seed(5))
    monkeypatch.setattr(lookup, "lookup_currents", lambda *a: pytest.fail("table lookup on inputs it cannot read"))
    C.read_conv(spec, arr, x, 3, padding=1 if case == "zero padding" else 0)


def test_tiled_adc_read_by_lookup_gives_the_same_bits_in_image_chunks_and_threads(monkeypatch):
    spec = HardwareSpec(preset="vteam", variability=0.1, adc_bits=6, tile_shape=(20, 8), conv_rows="kernel")
    arr = _array(spec, c_in=8)
    x = _signs(7, 8, 8, 8, seed=6)
    whole = C.read_conv(spec, arr, x, 3)
    monkeypatch.setattr(C, "TILE_CHUNK_ELEMENTS", 6 * 6 * 8 * 2)  # two images per chunk
    assert torch.equal(C.read_conv(spec, arr, x, 3), whole)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(C.read_conv(spec, arr, x, 3), whole)
    finally:
        torch.set_num_threads(threads)


def test_read_noise_on_looked_up_tiles_draws_the_same_noise_as_the_product_read(monkeypatch):
    """With read noise, +-v inputs give each tile's variance as v^2 times a column sum of
    G+^2 + G-^2: the same reads as the fallback's variance product (fp32), draw for draw."""
    spec = HardwareSpec(preset="vteam", variability=0.1, read_noise=0.05, adc_bits=16, tile_shape=(20, 8),
                        conv_rows="kernel")
    arr = _array(spec, c_in=8)
    x = _signs(4, 8, 8, 8, seed=7)
    monkeypatch.setattr(C, "_low_precision_sums", lambda a: False)
    reads = {}
    for path in ("lookup", "products"):
        if path == "products":
            monkeypatch.setattr(C, "_lookup_tile_sum", lambda *a: None)
        arr.read_generator = torch.Generator().manual_seed(9)
        reads[path] = torch.stack([C.read_conv(spec, arr, x, 3) for _ in range(3)])
    ref = reads["products"]
    assert not torch.equal(ref[0], ref[1])  # the noise is redrawn at every read
    # the same draws; a variance rounded otherwise can move an output across one ADC step (a
    # 16-bit step is 1.5e-5 of the range): at most one output in a thousand, by at most a step
    diff = (reads["lookup"] - ref).abs()
    assert int((diff > 1e-5 * ref.abs().max()).sum()) <= diff.numel() // 1000
    assert float(diff.max()) < 1e-3 * float(ref.abs().max())
