"""Exact kernels for the +-1 x +-1 layers against fp32, side by side on this CPU.

For the three +-1 convolutions of the controller (conv2 5x5 on 28x28, conv3 and conv4 3x3, 128
channels) and for a whole binarized controller (`20w5s-binary`) on Omniglot images: the fp32
path and each exact kernel this CPU can run (``int8``: ``torch._int_mm``, fast on AMX /
AVX512-VNNI only; ``popcount``: XOR and population count, on AVX-512 VPOPCNTDQ where the CPU
has it, else AVX2; ``popcount-avx2``: the same kernels held to their AVX2 loop), medians of `--repeats` timings
after one warm-up, on every thread and on one. Every exact result is checked bit-identical to
fp32 first. Ratios are fp32 time / kernel time (higher is better). On the popcount kernels also
the controller's forward with the kernels' epilogue (alpha, ReLU and 2x2 max pool in the stores)
against the same kernels called layer by layer. Freed memory is kept in the process, as by the
command line.

    .venv/bin/python benchmarks/bench_binary_kernels.py [--images 64] [--repeats 5] [--kernels int8,popcount,popcount-avx2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.nn import functional as F

from batmann.models import binary_kernels
from batmann.models import popcount_kernels
from crossbar.cpu_features import describe_cpu_path, has_fast_int8

LAYERS = (("conv2 5x5, 28x28 in", 28, 5), ("conv3 3x3, 12x12 in", 12, 3), ("conv4 3x3, 10x10 in", 10, 3))


def median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def held_to_isa(kernel: str, fn):
    """``fn``, run with the popcount kernels held to AVX2 for ``popcount-avx2``."""
    if kernel != "popcount-avx2":
        return fn

    def run():
        with popcount_kernels.using_isa(256):
            return fn()
    return run


def layer_op(kernel: str, x: torch.Tensor, w: torch.Tensor):
    """The +-1 product of ``x`` (real, signed about each image's mean) with ``w`` as the XNOR layer
    computes it at inference on ``kernel``."""
    from batmann.models.layers import _row_mean, centered_sign

    if kernel == "fp32":
        return lambda: F.conv2d(centered_sign(x), w)
    if kernel.startswith("popcount"):
        packed = popcount_kernels.pack_weights(w)  # once per layer, as the XNOR layers keep it
        return held_to_isa(kernel, lambda: popcount_kernels.pm1_conv2d(x, packed, threshold=_row_mean(x)))
    return lambda: binary_kernels.pm1_conv2d(centered_sign(x).to(torch.int8), w)


def main() -> None:
    from batmann.utils.allocator import retain_freed_memory

    retain_freed_memory()  # as the command line does
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    default = ["int8"] if has_fast_int8(torch.device("cpu")) else []
    if popcount_kernels.available():
        default += ["popcount"] + (["popcount-avx2"] if popcount_kernels.isa() != 256 else [])
    ap.add_argument("--kernels", default=",".join(default) or "popcount",
                    help="exact kernels to time: int8, popcount, popcount-avx2 (int8 is 25-35x slower than fp32 "
                         "without AMX / AVX512-VNNI)")
    args = ap.parse_args()
    kernels = [k for k in args.kernels.split(",") if not k.startswith("popcount") or popcount_kernels.available()]
    cpu = torch.device("cpu")
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads; {describe_cpu_path(binary_kernels.describe_kernel(cpu))}")
    if len(kernels) < len(args.kernels.split(",")):
        print(f"popcount: {popcount_kernels.unavailable_reason()}")
    gen = torch.Generator().manual_seed(0)
    print(f"| what | threads | fp32 (ms) | " + " | ".join(f"{k} (ms) | x fp32" for k in kernels) + " |")
    print("|---|---|---|" + "---|---|" * len(kernels))
    for name, size, k in LAYERS:
        x = torch.randn(args.images, 128, size, size, generator=gen).relu()
        w = torch.randint(0, 2, (128, 128, k, k), generator=gen).float() * 2 - 1
        want = layer_op("fp32", x, w)()
        for kern in kernels:
            assert torch.equal(layer_op(kern, x, w)(), want), f"{kern} differs from fp32 on {name}"
        for t in sorted({threads, 1}, reverse=True):
            torch.set_num_threads(t)
            base = median_time(layer_op("fp32", x, w), args.repeats)
            cells = []
            for kern in kernels:
                tk = median_time(layer_op(kern, x, w), args.repeats)
                cells.append(f"{1e3 * tk:.1f} | {base / tk:.2f}x")
            print(f"| {name}, {args.images} images | {t} | {1e3 * base:.1f} | " + " | ".join(cells) + " |", flush=True)
        torch.set_num_threads(threads)

    from batmann.checkpoint import load_checkpoint
    from batmann.data import load_image_cache

    model = load_checkpoint("20w5s-binary").model.eval()
    cache = load_image_cache(32)
    images = torch.as_tensor(cache.images[::97][:args.images]).float().unsqueeze(1) / 255

    def forward(kern: str):
        def run():
            binary_kernels.KERNEL = kern.split("-")[0]
            with torch.no_grad():
                return model(images)
        return held_to_isa(kern, run)

    want = forward("fp32")()
    for kern in kernels:
        assert torch.equal(forward(kern)(), want), f"{kern} features differ from fp32"
    for t in sorted({threads, 1}, reverse=True):
        torch.set_num_threads(t)
        base = median_time(forward("fp32"), args.repeats)
        cells = []
        for kern in kernels:
            tk = median_time(forward(kern), args.repeats)
            cells.append(f"{1e3 * tk:.1f} | {base / tk:.2f}x")
        print(f"| `20w5s-binary` forward, {args.images} images | {t} | {1e3 * base:.1f} | " + " | ".join(cells) + " |",
              flush=True)
    if "popcount" in kernels:
        # the popcount forward with its epilogue (alpha, ReLU and max pool in the kernel's stores,
        # ReLUs in place) against the same kernels called layer by layer with separate ops
        binary_kernels.KERNEL = "popcount"

        def one_by_one():
            with torch.no_grad():
                return model.fc1(model.flatten(model.features(images)))

        fused = forward("popcount")
        assert torch.equal(one_by_one(), want) and torch.equal(fused(), want)
        print("\n| what | threads | layer by layer (ms) | with the epilogue (ms) | x |\n|---|---|---|---|---|")
        for t in sorted({threads, 1}, reverse=True):
            torch.set_num_threads(t)
            plain, both = median_time(one_by_one, args.repeats), median_time(fused, args.repeats)
            print(f"| `20w5s-binary` forward on popcount, {args.images} images | {t} | {1e3 * plain:.1f} | "
                  f"{1e3 * both:.1f} | {plain / both:.2f}x |", flush=True)
        torch.set_num_threads(threads)
    binary_kernels.KERNEL = "auto"
    print("every exact result above is bit-identical to fp32")


if __name__ == "__main__":
    main()
