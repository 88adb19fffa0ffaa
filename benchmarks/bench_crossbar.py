"""Seconds per 20-way 5-shot episode: digital vs keys-only analog vs whole-system analog.

Uses a randomly initialised plain Sequential shaped like the BATMANN controller (conv 1->128 5x5,
conv 128->128 5x5, maxpool, conv 128->128 3x3 x2, maxpool, FC 2048->512) and random 32x32 images;
timings do not depend on the weights. The "binarized" rows use the same shape with centred signs
before the layers after the first (the plain form of an XNOR controller), against its own
digital row. One episode = features of 100 support + 100 query images,
writing the 100 binarised keys, 100 x 100 similarities, class sums and argmax.

    .venv/bin/python benchmarks/bench_crossbar.py                    # a few episodes per mode
    .venv/bin/python benchmarks/bench_crossbar.py --memtorch-forward --memtorch-programming
        # + the whole system through MemTorch's own forward, and MemTorch's own per-device
        #   programming of the controller (~1 min, ~1.5 GB)

"cold" episodes use images the chip has not seen (the worst case); "cached" reruns an episode
whose images (same ids) the same programmed chip has already seen.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crossbar import HardwareSpec, convert  # noqa: E402
from crossbar.memtorch_compat import import_memtorch  # noqa: E402

from batmann.utils.allocator import retain_freed_memory  # noqa: E402

WAYS, SHOTS, QUERIES = 20, 5, 5


def batmann_shaped_controller(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 128, 5), nn.ReLU(), nn.Conv2d(128, 128, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(128, 128, 3), nn.ReLU(), nn.Conv2d(128, 128, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2048, 512),
    ).eval()


def binarized_controller(seed: int = 0) -> nn.Sequential:
    """The same shape with a centred sign before every layer after the first: the plain form of an
    XNOR controller (``export_plain``), whose +-1 layers see +-v_read on every row (read by table
    lookup on kernel-major ADC tiles, ``crossbar/lookup.py``)."""
    from batmann.models.layers import SignActivation

    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 128, 5), nn.ReLU(), SignActivation(), nn.Conv2d(128, 128, 5), nn.ReLU(), nn.MaxPool2d(2),
        SignActivation(), nn.Conv2d(128, 128, 3), nn.ReLU(), SignActivation(), nn.Conv2d(128, 128, 3), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), SignActivation(), nn.Linear(2048, 512),
    ).eval()


def run_episode(system, images: torch.Tensor, ids: list[int]) -> torch.Tensor:
    n_sup = WAYS * SHOTS
    feats = system.features(images, ids)
    keys, queries = torch.sign(feats[:n_sup]), torch.sign(feats[n_sup:])
    system.write(keys)
    sim = system.similarities(queries)
    labels = torch.arange(WAYS).repeat_interleave(SHOTS)
    logits = torch.zeros(sim.shape[0], WAYS, dtype=sim.dtype).index_add_(1, labels, sim)
    return logits.argmax(1)


def time_mode(name: str, plain: nn.Module, spec: HardwareSpec | None, episodes: int, gen: torch.Generator,
              read: str = "vectorised") -> dict:
    n_img = WAYS * (SHOTS + QUERIES)
    t0 = time.perf_counter()
    system = DigitalSystem(plain) if spec is None else convert(plain, spec, read=read)
    t_program = time.perf_counter() - t0
    times = []
    for e in range(episodes + 1):  # episode 0 warms up (allocator, oneDNN kernels), not counted
        images = torch.randn(n_img, 1, 32, 32, generator=gen)
        ids = list(range(e * n_img, (e + 1) * n_img))
        t0 = time.perf_counter()
        run_episode(system, images, ids)
        if e:
            times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    run_episode(system, images, ids)  # same images, same chip: features come from the cache
    t_cached = time.perf_counter() - t0
    return {"mode": name, "program_s": t_program, "episode_s": statistics.median(times),
            "episode_min_s": min(times), "cached_episode_s": t_cached, "episodes": episodes}


class DigitalSystem:
    """The digital reference with the same interface (and the same per-id cache)."""

    def __init__(self, plain):
        from crossbar.controller import AnalogController

        self.ctrl = AnalogController(plain, HardwareSpec(), analog=False)

    def features(self, images, ids=None):
        return self.ctrl.features(images, ids)

    def write(self, keys):
        self.keys = keys

    def similarities(self, q):
        return q @ self.keys.T


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--episodes", type=int, default=3)
    ap.add_argument("--memtorch-programming", action="store_true",
                    help="also time MemTorch's own per-device programming of the whole controller")
    ap.add_argument("--memtorch-forward", action="store_true",
                    help="also time the whole system with MemTorch's own memtorch.mn forward (slow)")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)
    retain_freed_memory()  # as the command line does (benchmarks/bench_allocator.py)
    if args.threads:
        torch.set_num_threads(args.threads)

    import_memtorch()  # import once, outside the timings
    plain = batmann_shaped_controller()
    gen = torch.Generator().manual_seed(0)
    nonideal = dict(preset="vteam", variability=0.1, states=16, stuck_lrs=0.01, stuck_hrs=0.01)
    # programming and read noise, drift (1 y, compensated) and endurance, on top of ``nonideal``
    effects = dict(programming_noise=0.02, read_noise=0.02, drift_nu=0.05, drift_nu_sigma=0.02, time="1y",
                   drift_compensation="global", endurance=1e6, episodes_served=10**5, **nonideal)
    adc_tiles = dict(adc_bits=8, tile_shape=(128, 128))
    modes = [
        ("digital", None),
        ("keys analog, ideal", HardwareSpec(analog="keys", preset="ideal")),
        ("keys analog, non-ideal + 6-bit ADC, 128x128 tiles",
         HardwareSpec(analog="keys", adc_bits=6, tile_shape=(128, 128), **nonideal)),
        ("all analog, ideal", HardwareSpec(analog="all", preset="ideal")),
        ("all analog, non-ideal", HardwareSpec(analog="all", **nonideal)),
        ("all analog, non-ideal + 8-bit ADC, 128x128 tiles, channel-major conv rows",
         HardwareSpec(analog="all", conv_rows="channel", **adc_tiles, **nonideal)),
        ("all analog, non-ideal + 8-bit ADC, 128x128 tiles, kernel-major conv rows (the default)",
         HardwareSpec(analog="all", conv_rows="kernel", **adc_tiles, **nonideal)),
        ("all analog, non-ideal + 8-bit ADC/DAC, 256x256 tiles, channel-major conv rows",
         HardwareSpec(analog="all", adc_bits=8, dac_bits=8, tile_shape=(256, 256), conv_rows="channel", **nonideal)),
        ("all analog, non-ideal + programming noise, read noise, drift (1 y, compensated), endurance",
         HardwareSpec(analog="all", **effects)),
        ("the same + IR drop (1 ohm per segment, 128x128 arrays) + 8-bit ADC",
         HardwareSpec(analog="all", wire_resistance=1.0, conv_rows="channel", **adc_tiles, **effects)),
    ]
    rows = [time_mode(name, plain, spec, args.episodes, gen) for name, spec in modes]
    binarized = binarized_controller()  # its rows are compared with its own digital row
    rows += [time_mode(name, binarized, spec, args.episodes, gen) for name, spec in [
        ("binarized controller: digital", None),
        ("binarized: all analog, non-ideal + 8-bit ADC, 128x128 tiles, kernel-major conv rows",
         HardwareSpec(analog="all", conv_rows="kernel", **adc_tiles, **nonideal)),
        ("binarized: the same + programming noise, read noise, drift (1 y, compensated), endurance",
         HardwareSpec(analog="all", conv_rows="kernel", **adc_tiles, **effects)),
    ]]
    if args.memtorch_forward:
        rows.append(time_mode("all analog, non-ideal, MemTorch's memtorch.mn forward", plain,
                              HardwareSpec(analog="all", **nonideal), args.episodes, gen, read="memtorch"))
    if args.memtorch_programming:
        spec = HardwareSpec(analog="all", programming="memtorch", **nonideal)
        t0 = time.perf_counter()
        convert(plain, spec)
        rows.append({"mode": "all analog, MemTorch per-device programming (programming only)",
                     "program_s": time.perf_counter() - t0, "episode_s": None, "episode_min_s": None,
                     "cached_episode_s": None, "episodes": 0})

    def baseline(mode: str) -> float:  # the digital row of the row's controller
        ref = "binarized controller: digital" if mode.startswith("binarized") else "digital"
        return next(r["episode_s"] for r in rows if r["mode"] == ref)

    print(f"# 20-way 5-shot episode = {WAYS * (SHOTS + QUERIES)} images; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print("# s/episode: median over the episodes; min in brackets; cached: the same episode again")
    print(f"{'mode':<72} {'program s':>9} {'s/episode':>10} {'(min)':>7} {'x digital':>9} {'cached s':>9}")
    for r in rows:
        ep = r["episode_s"]
        print(f"{r['mode']:<72} {r['program_s']:>9.3f} "
              + (f"{ep:>10.3f} {r['episode_min_s']:>7.3f} {ep / baseline(r['mode']):>9.2f} {r['cached_episode_s']:>9.4f}"
                 if ep is not None else f"{'-':>10} {'-':>7} {'-':>9} {'-':>9}"))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "threads": torch.get_num_threads()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
