"""IR drop: the circuit solve against Kirchhoff by hand and MemTorch's passive solver, the fast
approximation against the exact solve, and the non-ideality in the crossbar pipeline."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from crossbar import HardwareSpec
from crossbar import conductance as C
from crossbar.memtorch_compat import memtorch_available
from device_models import HardwareSpecError, IRDrop
from device_models.ir_drop import currents_exact, effective_conductance_approx, effective_conductance_exact


def _g(rows, cols, seed=0, g_lo=1e-5, g_hi=1e-4) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return g_lo + torch.rand(rows, cols, generator=gen, dtype=torch.float64) * (g_hi - g_lo)


def _kirchhoff(g: np.ndarray, v: np.ndarray, r_w: float, r_s: float) -> np.ndarray:
    """Column currents by a dense nodal analysis written out node by node (r_s > 0)."""
    rows, cols = g.shape
    n = rows * cols
    a = np.zeros((2 * n, 2 * n))
    b = np.zeros(2 * n)

    def link(p, q, cond):
        a[p, p] += cond
        a[q, q] += cond
        a[p, q] -= cond
        a[q, p] -= cond

    for i in range(rows):
        for j in range(cols):
            w, bl = i * cols + j, n + i * cols + j
            link(w, bl, g[i, j])
            if j + 1 < cols:
                link(w, w + 1, 1 / r_w)
            if i + 1 < rows:
                link(bl, bl + cols, 1 / r_w)
        a[i * cols, i * cols] += 1 / r_s  # driver
        b[i * cols] += v[i] / r_s
    for j in range(cols):
        a[n + (rows - 1) * cols + j, n + (rows - 1) * cols + j] += 1 / r_s  # sink at 0 V
    x = np.linalg.solve(a, b)
    vb_end = x[n + (rows - 1) * cols:]
    return vb_end / r_s  # the current into each sink


def test_exact_solve_obeys_kirchhoff_and_the_one_cell_case():
    g = _g(3, 4)
    v = torch.tensor([0.2, -0.1, 0.15], dtype=torch.float64)
    ours = currents_exact(g, v[None], r_wire=50.0, r_source=200.0)[0].numpy()
    assert np.allclose(ours, _kirchhoff(g.numpy(), v.numpy(), 50.0, 200.0), rtol=1e-9, atol=0)
    one = effective_conductance_exact(torch.tensor([[1e-4]], dtype=torch.float64), 7.0, 100.0)
    assert one.item() == pytest.approx(1.0 / (200.0 + 1e4), rel=1e-12)  # source + device + sink in series
    pinned = effective_conductance_exact(torch.tensor([[1e-4]], dtype=torch.float64), 7.0, 0.0)
    assert pinned.item() == pytest.approx(1e-4, rel=1e-12)


def test_line_resistance_shrinks_currents_most_far_from_driver_and_sink():
    g = torch.full((32, 32), 1e-4, dtype=torch.float64)
    weak = effective_conductance_exact(g, 0.01)
    strong = effective_conductance_exact(g, 2.0)
    assert torch.allclose(weak, g, rtol=1e-3)  # thin wires barely matter
    assert (strong <= weak * (1 + 1e-12)).all() and strong.mean() < 0.95 * weak.mean()
    # the cell next to driver (column 0) and sink (last row) loses least; the opposite corner most
    assert strong[-1, 0] == strong.max() and strong[0, -1] == strong.min()


@pytest.mark.parametrize("rows,cols", [(8, 8), (16, 32), (64, 64)])
@pytest.mark.skipif(not memtorch_available(), reason="MemTorch is not installed")
def test_exact_solve_matches_memtorch_passive_solver(rows, cols):
    from crossbar.memtorch_compat import import_memtorch

    import_memtorch()
    import memtorch_bindings

    g = _g(rows, cols, seed=rows, g_lo=1e-3, g_hi=2e-2)  # VTEAM-like devices: a strong IR drop
    v = torch.rand(rows, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 0.3
    for r_s, r_w in ((5.0, 1.0), (1.0, 2.0)):
        ours = currents_exact(g, v[None], r_w, r_s)[0]
        ref = memtorch_bindings.solve_passive(g.float(), v.float(), torch.zeros(cols), r_s, r_w,
                                              det_readout_currents=True).double()
        ideal = v @ g
        assert ((ours - ref).abs() / ref.abs()).max() < 0.01  # within 1 %
        assert (ref / ideal).mean() < 0.9  # and the drop being checked is large


def test_approximation_converges_to_the_exact_solve():
    g = _g(48, 40, seed=2)
    for r_s in (0.0, 20.0):
        exact = effective_conductance_exact(g, 1.0, r_s)
        err = [((effective_conductance_approx(g, 1.0, r_s, tol) - exact).abs().sum(0) / exact.sum(0)).max().item()
               for tol in (1e-2, 1e-4, 1e-9)]
        assert err[0] > err[1] > err[2] and err[1] < 1e-4 and err[2] < 1e-10
    one_sweep = effective_conductance_approx(g, 1.0, 0.0, tolerance=1e-9, max_sweeps=1)
    assert ((one_sweep - exact).abs().max() / exact.abs().max()) > 1e-4  # the sweeps are what converges


def test_the_pipeline_reads_through_the_effective_conductances_of_each_tile():
    spec = HardwareSpec(preset="ideal", wire_resistance=5.0, tile_shape=(32, 16), ir_drop_solver="exact")
    w = torch.randn(64, 24, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    planes = C.sample_planes(spec, 64, 24, spec.generator("t"), torch.float64)
    array = C.program(spec, planes, w)
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = C.read(spec, array, x)
    geff = torch.zeros_like(array.g)
    for p in range(2):
        for rs in (slice(0, 32), slice(32, 64)):
            for cs in (slice(0, 16), slice(16, 24)):
                geff[p, rs, cs] = effective_conductance_exact(array.g[p, rs, cs], 5.0)
    v, s = spec.dac_spec.encode(x, None)
    want = (v @ (geff[0] - geff[1])) * (s / spec.dac_spec.v_read)[:, None] * array.col_scale / (array.g_on - array.g_off)
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)
    plain = HardwareSpec(preset="ideal", tile_shape=(32, 16))
    ideal = C.read(plain, C.program(plain, planes, w), x)
    assert not torch.allclose(got, ideal, rtol=1e-3)
    assert torch.equal(C.read(spec, C.program(spec, planes, w), x), got)  # deterministic


def test_auto_solver_picks_by_array_size_and_zero_resistance_is_ideal():
    ni = IRDrop(1.0)
    assert ni.method(32, 32) == "exact" and ni.method(64, 64) == "approx"
    assert IRDrop(1.0, solver="approx").method(8, 8) == "approx"
    assert HardwareSpec(wire_resistance=0.0).is_ideal and not HardwareSpec(wire_resistance=1.0).is_ideal
    d = HardwareSpec(wire_resistance=2.0, source_resistance=10.0).describe()
    assert d["wire_resistance"] == 2.0 and d["source_resistance"] == 10.0 and d["ir_drop_solver"] == "auto"
    spec = HardwareSpec(wire_resistance=2.0, source_resistance=10.0, ir_drop_solver="exact", seed=4)
    assert HardwareSpec.from_dict(spec.to_dict()) == spec


def test_bad_values_are_one_line_errors():
    for bad in (dict(wire_resistance=-1.0), dict(wire_resistance=float("nan")), dict(source_resistance=5.0),
                dict(wire_resistance=1.0, ir_drop_solver="spice"), dict(wire_resistance=1.0, source_resistance=-2.0)):
        with pytest.raises(HardwareSpecError) as e:
            HardwareSpec(**bad)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="wire resistance"):
        effective_conductance_exact(_g(2, 2), 0.0)
    r = subprocess.run([sys.executable, "-m", "batmann", "crossbar", "evaluate", "--wire-resistance", "-3",
                        "--episodes", "1"], capture_output=True, text=True)
    assert r.returncode == 2 and "wire_resistance" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_auto_falls_back_to_the_exact_solve_when_the_relaxation_is_slow():
    from device_models.ir_drop import NotConverged

    strong = _g(64, 48, seed=3, g_lo=1e-3, g_hi=2e-2)  # VTEAM-like devices on 3-ohm wires: ~99 % drop
    with pytest.raises(NotConverged):
        effective_conductance_approx(strong, 3.0, max_sweeps=IRDrop.AUTO_MAX_SWEEPS, strict=True)
    exact = effective_conductance_exact(strong, 3.0)
    assert torch.equal(IRDrop(3.0).read_conductance(strong, None, 0.0), exact)
    mild = _g(64, 48, seed=3)
    fast = IRDrop(1.0).read_conductance(mild, None, 0.0)
    assert torch.allclose(fast, effective_conductance_exact(mild, 1.0), rtol=1e-4)
