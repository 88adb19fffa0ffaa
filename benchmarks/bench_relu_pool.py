"""The ReLU (and max pool) of bf16 convolutions in deterministic training: torch's ops on one
thread against ``batmann.models.grouped_relu_pool`` (the same ops, one image range per core),
side by side in one process.

The shapes are the full-precision controller's under bf16 autocast, channels-last: conv1's output
(ReLU alone), conv2's (ReLU and 2x2 max pool), conv3's and conv4's, for ``--images`` images (200:
20-way 5-shot). Each is a forward and backward, as autograd runs it, inside ``deterministic_kernels``,
alternated ``--rounds`` times; the table gives each one's median milliseconds, the ratio, and
whether the two give the same bits. Shapes below ``grouped_relu_pool.MIN_ELEMENTS`` elements are
marked: training keeps torch's ops there.

    .venv/bin/python benchmarks/bench_relu_pool.py [--rounds 15] [--images 200] [--dtype bf16|fp32]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from batmann.models import grouped_relu_pool
from batmann.utils.allocator import retain_freed_memory
from batmann.utils.determinism import deterministic_kernels

#: (name, output channels x height x width, with a 2x2 max pool)
SHAPES = (("conv1", (128, 28, 28), False), ("conv2", (128, 24, 24), True), ("conv3", (128, 10, 10), False),
          ("conv4", (128, 8, 8), True))


def _step(fn, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = x.detach().requires_grad_()
    y = fn(leaf)
    y.backward(g)
    return y.detach(), leaf.grad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    args = parser.parse_args()
    retain_freed_memory()  # as the command line does
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    gen = torch.Generator().manual_seed(0)
    print(f"ReLU (+ 2x2 max pool) forward and backward, {args.images} images, {args.dtype} channels-last, "
          f"{torch.get_num_threads()} threads, median of {args.rounds}")
    print("| output | elements | torch, one thread (ms) | image ranges (ms) | speed-up | same bits |")
    print("|---|---|---|---|---|---|")
    with deterministic_kernels("cpu", enabled=True):
        for name, shape, pooled in SHAPES:
            pool = nn.MaxPool2d(2) if pooled else None
            x = torch.randn(args.images, *shape, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)
            out = (args.images, shape[0], shape[1] // 2, shape[2] // 2) if pooled else x.shape
            g = torch.randn(out, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)
            ways = {"torch": lambda t: torch.relu(t) if pool is None else pool(torch.relu(t)),
                    "ranges": lambda t: grouped_relu_pool.relu_pool(t, pool)}
            results = {k: _step(fn, x, g) for k, fn in ways.items()}  # warm-up (pages touched once)
            times: dict[str, list[float]] = {k: [] for k in ways}
            for _ in range(args.rounds):
                for k, fn in ways.items():
                    t0 = time.perf_counter()
                    _step(fn, x, g)
                    times[k].append(time.perf_counter() - t0)
            same = all(torch.equal(a, b) for a, b in zip(results["torch"], results["ranges"]))
            ms = {k: 1e3 * statistics.median(t) for k, t in times.items()}
            below = " (below MIN_ELEMENTS)" if x.numel() < grouped_relu_pool.MIN_ELEMENTS else ""
            print(f"| {name}{' + pool' if pooled else ''}{below} | {x.numel():,} | {ms['torch']:.2f} | "
                  f"{ms['ranges']:.2f} | {ms['torch'] / ms['ranges']:.2f}x | {same} |")


if __name__ == "__main__":
    main()
