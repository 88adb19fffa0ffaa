"""bf16 against fp32 inference of full-precision controllers: agreement and speed, side by side.

For each checkpoint, the same test episodes (its own task and split, episode seed 0) go through
the controller in fp32 and under bf16 autocast (each with its own feature cache, as `batmann
evaluate`): the share of queries given the same prediction, both accuracies, their paired
difference with a 95 % CI over episodes, and the wall time of each pass (features included).
`batmann evaluate --precision auto` uses bf16 only for controllers measured harmless here.

    .venv/bin/python benchmarks/bench_precision.py [--checkpoints 20w5s-fp,5w1s-fp] [--episodes 1000]
"""

from __future__ import annotations

import argparse
import time

import torch

from batmann.checkpoint import load_checkpoint
from batmann.data import load_image_cache
from batmann.evaluate import DigitalSystem, mean_ci95, score_episode
from batmann.tasks import make_sampler
from batmann.utils.device import has_fast_bf16


def run(system: DigitalSystem, episodes: list) -> tuple[list, list[float], float]:
    t0 = time.perf_counter()
    scores = [score_episode(system, ep) for ep in episodes]
    return [s.predictions for s in scores], [s.accuracy for s in scores], time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoints", default="5w1s-fp,20w5s-fp,20w5s-fp-lake,100w5s-fp")
    ap.add_argument("--episodes", type=int, default=1000)
    args = ap.parse_args()
    cpu = torch.device("cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, native bf16: {has_fast_bf16(cpu)}")
    print("| checkpoint | episodes | same prediction (%) | fp32 acc (%) | bf16 acc (%) | bf16 - fp32 (pp, paired 95 % CI) "
          "| fp32 s | bf16 s | speed-up |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.checkpoints.split(","):
        ckpt = load_checkpoint(name, cpu)
        cfg = ckpt.config
        cache = load_image_cache(cfg.model.image_size)
        sampler = make_sampler(cache, cfg.episodes, "test", 0, cpu)
        episodes = [sampler.sample(index=i) for i in range(args.episodes)]
        p32, a32, t32 = run(DigitalSystem(ckpt.model, keys=cfg.keys, autocast=False), episodes)
        p16, a16, t16 = run(DigitalSystem(ckpt.model, keys=cfg.keys, autocast=True), episodes)
        same = torch.cat([a == b for a, b in zip(p32, p16)]).float().mean().item() * 100
        m32, _ = mean_ci95(a32)
        m16, _ = mean_ci95(a16)
        d, dci = mean_ci95([b - a for a, b in zip(a32, a16)])
        print(f"| {name} | {args.episodes} | {same:.2f} | {m32:.2f} | {m16:.2f} | {d:+.3f} +- {dci:.3f} | {t32:.1f} | "
              f"{t16:.1f} | {t32 / t16:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
