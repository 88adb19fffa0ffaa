"""Freed memory kept in the process (``batmann.utils.allocator``) against glibc's defaults.

Each workload runs in fresh child processes, alternately with ``BATMANN_RETAIN_MEMORY=1`` (what
the command line does) and ``=0`` (glibc's defaults), ``--rounds`` times each; a child times its
workload ``--passes`` times after one warm-up pass and reports the median seconds and the page
faults per pass, and its peak resident memory. Workloads (``benchmarks/bench_crossbar.py``'s BATMANN-shaped controller, 200
random 32 x 32 images in batches of 64):

- ``digital``: the controller's forward pass;
- ``crossbar``: the same on the all-analog VTEAM chip (sigma 0.1, 16 states, 1 % + 1 % stuck),
  8-bit ADC, 128 x 128 tiles, kernel-major conv rows;
- ``train``: one XNOR training step on a 20-way 5-shot episode (fp32).

    .venv/bin/python benchmarks/bench_allocator.py [--workloads digital,crossbar,train] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(workload: str, passes: int, threads: int | None) -> dict:
    import resource
    import time

    from batmann.utils.allocator import retain_freed_memory

    applied = retain_freed_memory()
    import torch

    if threads:
        torch.set_num_threads(threads)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    if workload in ("digital", "crossbar"):
        from bench_crossbar import batmann_shaped_controller

        from crossbar import HardwareSpec, convert

        model = batmann_shaped_controller()
        if workload == "crossbar":
            spec = HardwareSpec(analog="all", adc_bits=8, tile_shape=(128, 128), conv_rows="kernel", preset="vteam",
                                variability=0.1, states=16, stuck_lrs=0.01, stuck_hrs=0.01)
            model = convert(model, spec).controller.model
        images = torch.randn(200, 1, 32, 32, generator=torch.Generator().manual_seed(0))

        def work(i: int) -> None:
            with torch.no_grad():
                for j in range(0, images.shape[0], 64):
                    model(images[j:j + 64])
    elif workload == "train":
        from bench_train import task

        from batmann.checkpoint import build_model
        from batmann.config import ModelConfig, TrainConfig
        from batmann.data import load_image_cache
        from batmann.tasks import make_sampler
        from batmann.train import train_step

        cfg = TrainConfig(model=ModelConfig(controller="xnor"), episodes=task("20w5s"), precision="fp32",
                          device="cpu").validate()
        net = build_model(cfg)
        opt = torch.optim.Adam(net.parameters(), lr=1e-4)
        sampler = make_sampler(load_image_cache(32), cfg.episodes, "train", 0)

        def work(i: int) -> None:
            net.begin_episode(i, 10000)
            loss, _ = train_step(net, sampler.sample(index=i), cfg.sim_cal, cfg, torch.device("cpu"))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    else:
        raise SystemExit(f"unknown workload {workload!r}")
    work(0)
    times, faults = [], []
    for i in range(1, passes + 1):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        work(i)
        times.append(time.perf_counter() - t0)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    return {"applied": applied, "s": statistics.median(times), "faults": statistics.median(faults),
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default="digital,crossbar,train")
    ap.add_argument("--rounds", type=int, default=2, help="child processes per workload and mode")
    ap.add_argument("--passes", type=int, default=3, help="timed passes per child")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.passes, args.threads)))
        return 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    print("| workload | glibc defaults (s) | faults | peak MB | retained (s) | faults | peak MB | defaults / retained |")
    print("|---|---|---|---|---|---|---|---|")
    for workload in args.workloads.split(","):
        res: dict[str, list[dict]] = {"0": [], "1": []}
        for _ in range(args.rounds):
            for mode in ("1", "0"):
                cmd = [sys.executable, __file__, "--child", workload, "--passes", str(args.passes)]
                if args.threads:
                    cmd += ["--threads", str(args.threads)]
                out = subprocess.run(cmd, env={**env, "BATMANN_RETAIN_MEMORY": mode, "PYTHONPATH": str(ROOT)},
                                     capture_output=True, text=True, check=True)
                res[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
        d = min(r["s"] for r in res["0"])
        r_ = min(r["s"] for r in res["1"])
        fd = statistics.median(r["faults"] for r in res["0"])
        fr = statistics.median(r["faults"] for r in res["1"])
        pd = max(r["peak_mb"] for r in res["0"])
        pr = max(r["peak_mb"] for r in res["1"])
        print(f"| {workload} | {d:.3f} | {fd:.0f} | {pd:.0f} | {r_:.3f} | {fr:.0f} | {pr:.0f} | {d / r_:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
