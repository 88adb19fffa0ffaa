"""Training step time with a frozen, cached conv prefix (`--freeze conv1,conv2`, `--freeze features`) versus the full step.

For one m-way n-shot task (default 100-way 5-shot, 5 training queries per class) and the fp
controller, in one run on this machine:

- full: forward + backward through all layers + Adam step (what plain `batmann train` does);
- frozen, cold: the same episode with conv1..convK frozen when none of its images is cached yet
  (the prefix runs forward only, then the layers above it train);
- frozen, warm: the step once every image of the episode is cached (only the layers above the
  prefix run), which is what most episodes of a long run cost (the 964 training characters have
  77,120 image-rotation pairs; a 100-way episode with 5 queries touches 1,000).

Medians over ``--steps`` episodes; the ratios full / frozen are the result.

    .venv/bin/python benchmarks/bench_frozen_trunk.py [--ways 100] [--shots 5] [--steps 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from batmann.checkpoint import build_model
from batmann.config import EpisodeOptions, ModelConfig, TrainConfig
from batmann.data import load_image_cache
from batmann.evaluate import image_ids
from batmann.frozen_trunk import TRUNK_LAYERS, TrunkCache, freeze_layers
from batmann.tasks import make_sampler
from batmann.train import train_step

PREFIXES = {"conv1,conv2": 2, "features": 4}  # --freeze value: cached depth


def step_seconds(cfg: TrainConfig, cache, steps: int, depth: int = 0, warm: bool = False) -> float:
    """Median seconds of one training step (episode 1..steps; episode 0 warms up PyTorch) with
    conv1..conv``depth`` frozen and cached (0: the full step)."""
    model = build_model(cfg)
    params = freeze_layers(model, TRUNK_LAYERS[:depth])
    opt = torch.optim.Adam(params, lr=1e-4)
    trunk = TrunkCache(model, depth=depth) if depth else None
    sampler = make_sampler(cache, cfg.episodes, "train", 0)
    dev = torch.device("cpu")
    times = []
    for i in range(steps + 1):
        ep = sampler.sample(index=i)
        if trunk is not None and warm:  # cache this episode's images first (not timed)
            trunk(torch.cat([ep.support, ep.query]),
                  image_ids(torch.cat([ep.support_index, ep.query_index]), ep.rotation))
        t0 = time.perf_counter()
        loss, _ = train_step(model, ep, cfg.sim_cal, cfg, dev, trunk)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ways", type=int, default=100)
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per mode (median)")
    args = ap.parse_args()
    opts = EpisodeOptions(class_num=args.ways, num_shot=args.shots, batch_size_train=5, pool_query_train=10,
                          pool_val_train=5, val_num_train=3)
    cfg = TrainConfig(model=ModelConfig(controller="fp"), episodes=opts, precision="fp32", device="cpu",
                      loss="nll").validate()
    cache = load_image_cache(32)
    print(f"{args.ways}-way {args.shots}-shot, 5 queries per class, fp controller, fp32, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    full = step_seconds(cfg, cache, args.steps)
    rows = [("full (all layers train)", full)]
    for flag, depth in PREFIXES.items():
        rows.append((f"--freeze {flag}, cold cache", step_seconds(cfg, cache, args.steps, depth)))
        rows.append((f"--freeze {flag}, warm cache", step_seconds(cfg, cache, args.steps, depth, warm=True)))
    print("| step | seconds per episode | full / this |")
    print("|---|---|---|")
    for name, s in rows:
        print(f"| {name} | {s:.4f} | {full / s:.1f}x |")


if __name__ == "__main__":
    main()
