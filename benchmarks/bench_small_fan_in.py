"""The first convolution in training: the C kernels of ``batmann.models.small_fan_in`` against what
they replace, side by side in one process. The weight gradient against the batched product of the
unfolded input; the forward against ``F.conv2d``.

The shape is conv1 of a 20-way 5-shot training episode (200 images 1 x 32 x 32, 128 outputs,
5 x 5). All run as training runs them inside ``deterministic_kernels`` (the batched product in
the image ranges of ``grouped_conv`` on every core, ``F.conv2d`` on torch's one thread there),
alternated ``--rounds`` times; the table gives each one's median milliseconds and the ratio, and
the largest difference of their results relative to the largest entry.

    .venv/bin/python benchmarks/bench_small_fan_in.py [--rounds 15] [--images 200] [--channels-per-pass 2|4]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
import torch.nn.functional as F

from batmann.models import grouped_conv, small_fan_in
from batmann.utils.allocator import retain_freed_memory
from batmann.utils.determinism import deterministic_kernels


def batched_product(g: torch.Tensor, x: torch.Tensor, k: int) -> torch.Tensor:
    """``layers._SmallFanInConv``'s weight gradient where the kernel does not apply."""
    def part(lo: int, hi: int) -> torch.Tensor:
        cols = F.unfold(x[lo:hi], k)
        return torch.bmm(g[lo:hi].reshape(hi - lo, g.shape[1], -1), cols.transpose(1, 2)).sum(0)

    return grouped_conv.sum_in_order(grouped_conv.each(part, x.shape[0])).view(g.shape[1], x.shape[1], k, k)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--channels-per-pass", type=int, choices=(2, 4), default=None,
                        help="the kernel's output channels per pass (default: the CPU's)")
    args = parser.parse_args()
    if not small_fan_in.available():
        raise SystemExit(f"small fan-in kernel unavailable: {small_fan_in.LIBRARY.reason}")
    retain_freed_memory()  # as the command line does
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.images, 1, 32, 32, generator=gen)
    g = torch.randn(args.images, 128, 28, 28, generator=gen)
    diffs: dict[str, float] = {}
    width = (small_fan_in.using_channels_per_pass(args.channels_per_pass) if args.channels_per_pass
             else contextlib.nullcontext())
    w, b = torch.randn(128, 1, 5, 5, generator=gen), torch.randn(128, generator=gen)
    ways = {
        "weight gradient": {"batched product": lambda: batched_product(g, x, 5),
                            "C kernel": lambda: small_fan_in.grads(g, x, 5, False)[0]},
        "forward": {"F.conv2d": lambda: F.conv2d(x, w, b), "C kernel": lambda: small_fan_in.forward(x, w, b)},
    }
    threads = torch.get_num_threads()  # the kernels' (and the batched product's ranges'); F.conv2d gets one
    with deterministic_kernels("cpu", enabled=True), width:
        per_pass = small_fan_in.channels_per_pass()
        print(f"conv1, {args.images} x 1 x 32 x 32 -> 128 x 28 x 28 (5 x 5), {threads} threads, "
              f"kernel {per_pass} channels per pass, median of {args.rounds}")
        print("| what | way | ms | speed-up |")
        print("|---|---|---|---|")
        for what, pair in ways.items():
            results = {name: fn() for name, fn in pair.items()}  # warm-up
            times: dict[str, list[float]] = {name: [] for name in pair}
            for _ in range(args.rounds):
                for name, fn in pair.items():
                    t0 = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t0)
            base_name = next(iter(pair))
            ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
            for name, t in ms.items():
                print(f"| {what} | {name} | {t:.2f} | {ms[base_name] / t:.2f}x |")
            base = results[base_name]
            diffs[what] = float((results["C kernel"] - base).abs().max() / base.abs().max())
    for what, diff in diffs.items():
        print(f"{what}: largest difference / largest entry {diff:.1e}")


if __name__ == "__main__":
    main()
