"""Training and test throughput (episodes per second), fp32 versus bf16, on this machine.

For 20-way 5-shot and 100-way 5-shot (5 queries per class), each controller kind and precision:
training episodes/s (forward + backward + Adam step, supports and queries in one batch) and
test episodes/s, the latter both plain (every image through the controller) and with the
feature cache that `batmann evaluate` uses (an image seen in an earlier episode, under the same
rotation, is not recomputed; the cache warms up over the first few hundred episodes, so the
cached figure is measured over a stretch of `--cached-episodes` after `--cached-warmup`).

Reference: the seed's own code made CPU-only ran 0.71 training and 1.5 test
episodes/s for 20-way 5-shot on this machine kind (fp32, torch 2.14).

    .venv/bin/python benchmarks/bench_train.py [--tasks 20w5s,100w5s] [--controllers fp,xnor]
        [--precisions fp32,bf16] [--deterministic off,on] [--compile off,on] [--train-kernels fp32,auto]
        [--pooled off,on] [--pooled-isa auto,256,512]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import statistics
import time
from collections.abc import Iterator

import torch

from batmann.checkpoint import build_model
from batmann.config import EpisodeOptions, ModelConfig, TrainConfig
from batmann.data import load_image_cache
from batmann.evaluate import DigitalSystem, score_episode
from batmann.models import binary_kernels, pooled_grad
from batmann.models.fused import compiled_kernels
from batmann.models.layers import describe_training_path
from batmann.tasks import make_sampler
from batmann.train import train_step
from batmann.utils.determinism import deterministic_kernels
from batmann.utils.allocator import retain_freed_memory
from batmann.utils.device import has_fast_bf16
from crossbar.cpu_features import describe_cpu_path

SEED_TRAIN_EPS, SEED_TEST_EPS = 0.71, 1.5


def task(tag: str) -> EpisodeOptions:
    ways, shots = tag.rstrip("s").split("w")
    return EpisodeOptions(class_num=int(ways), num_shot=int(shots), batch_size_train=5, pool_query_train=10,
                          pool_val_train=5, val_num_train=3, pool_query_test=15, batch_size_test=5)


@contextlib.contextmanager
def pooled_backward(enabled: bool) -> Iterator[None]:
    """``enabled`` False: the pooled layers' one autograd function (alpha, ReLU and pool after the
    product, the backward from the pooled gradient) is left out, as where its kernels do not
    build: the separate ops and the dense gradient products."""
    real = pooled_grad.available
    if not enabled:
        pooled_grad.available = lambda: False
    try:
        yield
    finally:
        pooled_grad.available = real


@contextlib.contextmanager
def pooled_isa(name: str) -> Iterator[str]:
    """The pooled-gradient kernels' inner loops ``name`` (auto, or a width in bits) inside the
    block; yields the width that runs ("-" where the kernels do not)."""
    if not pooled_grad.available():
        yield "-"
    elif name == "auto":
        yield str(pooled_grad.isa())
    else:
        with pooled_grad.using_isa(int(name)) as bits:
            yield str(bits)


def train_rate(cfg: TrainConfig, cache, steps: int) -> float:
    model = build_model(cfg)
    if cfg.effective_precision == "bf16":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    sampler = make_sampler(cache, cfg.episodes, "train", 0)
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        model.begin_episode(i, 10000)
        loss, _ = train_step(model, sampler.sample(index=i), cfg.sim_cal, cfg, torch.device("cpu"))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i:  # the first step warms up
            times.append(time.perf_counter() - t0)
    return 1.0 / statistics.median(times)


def test_rate(cfg: TrainConfig, cache, episodes: int, cached: bool, warmup: int = 0, exact: bool = False) -> float:
    """Test episodes/s; ``exact``: binarized layers on this CPU's exact kernel (int8 or popcount),
    else on fp32."""
    binary_kernels.KERNEL = "auto" if exact else "fp32"
    model = build_model(cfg).eval()
    system = DigitalSystem(model, keys="bipolar", cache_features=cached,
                           autocast=cfg.autocast_bf16)
    sampler = make_sampler(cache, cfg.episodes, "test", 0)
    for i in range(warmup):
        score_episode(system, sampler.sample(index=i))
    t0 = time.perf_counter()
    for i in range(warmup, warmup + episodes):
        score_episode(system, sampler.sample(index=i))
    return episodes / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="20w5s,100w5s")
    ap.add_argument("--controllers", default="fp,xnor")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--deterministic", default="off,on",
                    help="training kernels to time: off (every core) and/or on (train --deterministic, the default)")
    ap.add_argument("--compile", default="off,on",
                    help="training element-wise kernels of binarized controllers: off (eager) and/or on "
                         "(compiled, train --compile); the fp controller has none and is timed once")
    ap.add_argument("--train-kernels", default="auto",
                    help="training kernels (comma list of "
                         f"{', '.join(binary_kernels.KERNELS)}): fp32 is plain autograd; the others run the "
                         "XNOR convolutions' forward on that exact kernel (the same bits) and, in fp32, take the "
                         "gradients of each convolution + ReLU + 2x2 max pool from the pooled gradient and "
                         "conv1's weight gradient from one batched product (every controller kind)")
    ap.add_argument("--pooled", default="on",
                    help="the pooled layers' one autograd function (off, on, or off,on side by side): "
                         "off runs the separate alpha / ReLU / pool ops and the dense gradient products")
    ap.add_argument("--pooled-isa", default="auto",
                    help="the pooled-gradient kernels' inner loops (comma list of auto, 256, 512; the same "
                         "bits): auto is this CPU's choice; the column gives the width that ran")
    ap.add_argument("--steps", type=int, default=4, help="timed training steps (median)")
    ap.add_argument("--test-episodes", type=int, default=4)
    ap.add_argument("--cached", action="store_true", help="also time tests with the feature cache (slow)")
    ap.add_argument("--cached-warmup", type=int, default=300, help="episodes that warm the feature cache")
    ap.add_argument("--cached-episodes", type=int, default=100)
    args = ap.parse_args()
    for name in ("deterministic", "compile", "pooled"):
        bad = [v for v in getattr(args, name).split(",") if v not in ("off", "on")]
        if bad:
            ap.error(f"--{name} {bad[0]!r}: expected off, on or off,on")
    isas = args.pooled_isa.split(",")
    bad = [v for v in isas if v != "auto" and not (v.isdigit() and int(v) in pooled_grad.ISAS)]
    if bad:
        ap.error(f"--pooled-isa {bad[0]!r}: expected auto, {', '.join(map(str, pooled_grad.ISAS))}")
    cache = load_image_cache(32)
    retain_freed_memory()  # as the command line does (benchmarks/bench_allocator.py)
    cpu = torch.device("cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {has_fast_bf16(cpu)}; "
          f"{describe_cpu_path(binary_kernels.describe_kernel(cpu))}")
    exact_kernel = binary_kernels.kernel_for(cpu)
    print(f"test: fp32 kernels; with the exact kernel ({exact_kernel or 'none here'}): the XNOR layers' +-1 "
          "products on it (same features)")
    print("train: bf16 is autocast for fp, and for xnor an exact forward with bf16 gradient products; "
          "train kernel: fp32 = plain autograd; with the auto kernels here:")
    for kind in args.controllers.split(","):
        for prec in args.precisions.split(","):
            print(f"  {kind} {prec}: convolutions train with {describe_training_path(kind, prec, cpu)}")
    print("| task | controller | precision | deterministic | compiled | train kernel | pooled | pooled isa | "
          "train ep/s | x seed | "
          "test ep/s | "
          "x seed | test ep/s, exact kernel | x seed | test ep/s, feature cache | x seed | feature cache, exact kernel "
          "| x seed |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for tag in args.tasks.split(","):
        for kind in args.controllers.split(","):
            for prec in args.precisions.split(","):
                cfg = TrainConfig(model=ModelConfig(controller=kind), episodes=task(tag), precision=prec, device="cpu")
                steps = args.steps if tag.startswith("20") else max(2, args.steps // 2)
                exact = kind == "xnor" and exact_kernel is not None
                nan = float("nan")
                te = test_rate(cfg, cache, args.test_episodes, cached=False) if args.test_episodes else nan
                te8 = test_rate(cfg, cache, args.test_episodes, cached=False, exact=True) \
                    if args.test_episodes and exact else nan
                tc = test_rate(cfg, cache, args.cached_episodes, cached=True, warmup=args.cached_warmup) \
                    if args.cached else nan
                tc8 = test_rate(cfg, cache, args.cached_episodes, cached=True, warmup=args.cached_warmup, exact=True) \
                    if args.cached and exact else nan
                compiles = args.compile.split(",") if kind != "fp" else ["off"]
                kernels = args.train_kernels.split(",")
                for det, comp, tk, pooled, pi in itertools.product(args.deterministic.split(","), compiles, kernels,
                                                                   args.pooled.split(","), isas):
                    binary_kernels.KERNEL = tk
                    with deterministic_kernels("cpu", enabled=det == "on"), compiled_kernels(comp == "on"), \
                            pooled_backward(pooled == "on"), pooled_isa(pi) as bits:
                        tr = train_rate(cfg, cache, steps)
                    ref = tag == "20w5s"  # the seed's reference was measured for 20-way 5-shot only
                    r = (lambda v, base: f"{v / base:.1f}" if ref and v == v else "-")
                    print(f"| {tag} | {kind} | {prec} | {det} | {comp} | {tk} | {pooled} | {bits} | {tr:.2f} | "
                          f"{r(tr, SEED_TRAIN_EPS)} | "
                          f"{te:.2f} | {r(te, SEED_TEST_EPS)} | {te8:.2f} | {r(te8, SEED_TEST_EPS)} | {tc:.1f} | "
                          f"{r(tc, SEED_TEST_EPS)} | {tc8:.1f} | {r(tc8, SEED_TEST_EPS)} |", flush=True)


if __name__ == "__main__":
    main()
