"""IR drop: cost and error of the line-relaxation approximation against the exact nodal solve.

For square arrays of 32..256 rows/columns of devices drawn uniformly in the CMO/HfOx window
(9-88.2 uS, preset ``hfox_cmo2025``) and wire resistances of 0.1-3 ohm per segment (ideal
drivers and sinks), prints the seconds to compute one plane's effective conductances with each
solver (the cost of programming one array, paid once per write), the mean current lost to IR
drop, and the approximation's largest column error relative to the exact solve.

    .venv/bin/python benchmarks/bench_ir_drop.py [--sizes 32 64 128 256] [--json FILE]
    .venv/bin/python benchmarks/bench_ir_drop.py --memtorch   # + the exact solve against MemTorch's
        # passive crossbar solver (memtorch_bindings.solve_passive, float32) on arrays up to 64 x 64
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from device_models import PRESETS  # noqa: E402
from device_models.ir_drop import effective_conductance_approx, effective_conductance_exact  # noqa: E402


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def against_memtorch() -> None:
    """Largest relative column-current difference, ours (exact) vs MemTorch's passive solver."""
    from crossbar.memtorch_compat import import_memtorch
    from device_models.ir_drop import currents_exact

    import_memtorch()
    import memtorch_bindings

    print("# exact solve vs MemTorch's passive solver (random voltages 0-0.3 V; source resistance as given)")
    print(f"{'array':>9} {'preset':>14} {'wire ohm':>8} {'source ohm':>10} {'drop %':>7} {'max rel diff':>12}")
    for n, m in ((8, 8), (16, 32), (32, 32), (64, 64)):
        for name in ("hfox_cmo2025", "vteam"):
            dev = PRESETS[name]
            gen = torch.Generator().manual_seed(n * m)
            g = dev.g_off + torch.rand(n, m, generator=gen, dtype=torch.float64) * (dev.g_on - dev.g_off)
            v = torch.rand(n, generator=gen, dtype=torch.float64) * 0.3
            for r_w, r_s in ((1.0, 5.0), (2.0, 1.0)):
                ours = currents_exact(g, v[None], r_w, r_s)[0]
                ref = memtorch_bindings.solve_passive(g.float(), v.float(), torch.zeros(m), r_s, r_w,
                                                      det_readout_currents=True).double()
                diff = ((ours - ref).abs() / ref.abs()).max().item()
                drop = 1.0 - (ours.sum() / (v @ g).sum()).item()
                print(f"{n:>4}x{m:<4} {name:>14} {r_w:>8.1f} {r_s:>10.1f} {100 * drop:>7.1f} {diff:>12.1e}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128, 256])
    ap.add_argument("--wires", type=float, nargs="+", default=[0.1, 1.0, 3.0])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--memtorch", action="store_true", help="also compare the exact solve with MemTorch's")
    args = ap.parse_args(argv)
    if args.memtorch:
        against_memtorch()
    torch.set_num_threads(1)
    dev = PRESETS["hfox_cmo2025"]
    effective_conductance_exact(torch.full((4, 4), dev.g_on, dtype=torch.float64), 1.0)  # imports SciPy
    rows = []
    print(f"# one plane, devices uniform in {dev.g_off * 1e6:.1f}-{dev.g_on * 1e6:.1f} uS, 1 thread")
    print(f"{'array':>9} {'wire ohm':>8} {'drop %':>7} {'exact s':>8} {'approx s':>9} {'speed-up':>8} {'approx err':>10}")
    for n in args.sizes:
        g = dev.g_off + torch.rand(n, n, generator=torch.Generator().manual_seed(n), dtype=torch.float64) * (
            dev.g_on - dev.g_off)
        for r in args.wires:
            exact, t_exact = timed(effective_conductance_exact, g, r)
            approx, t_approx = timed(effective_conductance_approx, g, r)
            err = ((approx - exact).abs().sum(0) / exact.sum(0)).max().item()
            drop = 1.0 - (exact.sum() / g.sum()).item()
            rows.append({"size": n, "wire_ohm": r, "drop": drop, "exact_s": t_exact, "approx_s": t_approx, "error": err})
            print(f"{n:>4}x{n:<4} {r:>8.1f} {100 * drop:>7.1f} {t_exact:>8.3f} {t_approx:>9.3f} "
                  f"{t_exact / t_approx:>7.1f}x {err:>10.1e}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
