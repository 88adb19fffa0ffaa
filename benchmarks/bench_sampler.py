"""Episode sampling time versus one forward pass of the seed's controller CNN.

Prints a markdown table: milliseconds to sample a 20-way 5-shot and a 100-way 5-shot episode
(5 queries per class from a pool of 15, the seed's test setting) from the 32x32 cache, the
milliseconds of one forward pass of the seed's controller over the same episode (supports and
queries in one batch), and the ratio (goal: sampling under 5 % of the forward time).

    .venv/bin/python benchmarks/bench_sampler.py [--device cpu|cuda] [--source DIR] [--home DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from torch import nn

from batmann.data import EpisodeConfig, EpisodeSampler, load_image_cache, split_characters
from batmann.errors import BatmannError
from batmann.utils.device import resolve_device


def seed_controller(feature_dim: int = 512) -> nn.Module:
    """The seed's controller: conv 1->128 5x5, conv 128->128 5x5, pool, conv 128->128 3x3 twice,
    pool, FC 2048->512 (ReLU after every conv)."""
    return nn.Sequential(
        nn.Conv2d(1, 128, 5), nn.ReLU(), nn.Conv2d(128, 128, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(128, 128, 3), nn.ReLU(), nn.Conv2d(128, 128, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2048, feature_dim),
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_sampling(sampler: EpisodeSampler, n: int) -> float:
    """Median milliseconds per episode (each episode on the device, ready for the controller)."""
    sampler.sample()  # warm-up
    times = []
    for _ in range(n):
        start = time.perf_counter()
        sampler.sample()
        _sync(sampler.device)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


@torch.inference_mode()
def time_forward(model: nn.Module, batch: torch.Tensor, repeats: int) -> float:
    model(batch)  # warm-up
    _sync(batch.device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(batch)
        _sync(batch.device)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto (default cpu)")
    parser.add_argument("--source", default=None, help="Omniglot archives folder (default $BATMANN_OMNIGLOT_SOURCE)")
    parser.add_argument("--home", default=None, help="data folder (default $BATMANN_HOME)")
    parser.add_argument("--samples", type=int, default=200, help="episodes timed per setting (default 200)")
    parser.add_argument("--repeats", type=int, default=3, help="forward passes timed per setting (default 3)")
    args = parser.parse_args(argv)
    try:
        device = resolve_device(args.device)
        start = time.perf_counter()
        cache = load_image_cache(32, source=args.source, home=args.home)
        load_ms = 1000 * (time.perf_counter() - start)
    except BatmannError as exc:
        print(f"bench_sampler: error: {exc}", file=sys.stderr)
        return 2
    _, test_chars = split_characters(cache, "seed")
    torch.manual_seed(0)
    model = seed_controller().to(device).eval()
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; cache loaded in {load_ms:.0f} ms\n")
    print("| episode | images (supports + queries) | sampling (ms) | controller forward (ms) | sampling / forward |")
    print("|---|---|---|---|---|")
    for ways in (20, 100):
        config = EpisodeConfig(ways=ways, shots=5, queries=5, query_pool=15)
        sampler = EpisodeSampler(cache, test_chars, config, seed=0, device=device)
        sample_ms = time_sampling(sampler, args.samples)
        ep = sampler.sample()
        batch = torch.cat([ep.support, ep.query])
        forward_ms = time_forward(model, batch, args.repeats)
        print(f"| {ways}-way 5-shot | {ep.support.shape[0]} + {ep.query.shape[0]} | {sample_ms:.2f} | "
              f"{forward_ms:.1f} | {100 * sample_ms / forward_ms:.2f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
