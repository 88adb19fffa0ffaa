"""What a study costs against the work it cannot avoid, and what worker processes buy.

1. **Overhead** (keys-only): a study of ``--configs`` configurations x ``--chips`` chips x
   ``--episodes`` episodes, run in this process from a cold feature store, against the baseline
   it cannot beat: one digital evaluation of the episodes (the controller runs once per image)
   plus, per cell, the keys-only crossbar work on those episodes (programming the key memory
   and reading it, with the features given), measured directly with ``crossbar.convert``.
2. **Workers** (all analog): the same all-analog study with ``--workers 1`` and ``--workers 2``
   (each worker process on one thread); the ratio of their wall times.

    .venv/bin/python benchmarks/bench_study.py            # 50 x 2 x 100 keys-only; 4 x 10 all-analog
    .venv/bin/python benchmarks/bench_study.py --configs 10 --episodes 20 --analog-episodes 3

The feature store of the runs is a scratch ``$BATMANN_HOME`` (Omniglot linked from the real one),
so nothing cached earlier helps the study. Prints one table (and ``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def scratch_home() -> Path:
    from batmann.utils.paths import batmann_home

    real = batmann_home()
    if not (real / "omniglot").is_dir():
        raise SystemExit(f"no Omniglot under {real}; run `batmann data fetch` first")
    home = Path(tempfile.mkdtemp(prefix="bench-study-"))
    (home / "omniglot").symlink_to(real / "omniglot")
    os.environ["BATMANN_HOME"] = str(home)
    return home


def baseline(checkpoint: str, episodes: int, cells: int) -> dict:
    """Digital evaluation of ``episodes`` (cold, one thread) + ``cells`` x the keys-only work."""
    import torch

    from batmann.checkpoint import load_checkpoint
    from batmann.data import load_image_cache
    from batmann.evaluate import DigitalSystem, score_episode
    from batmann.hardware import hardware_spec
    from batmann.memory import KeyCodec
    from batmann.tasks import make_sampler
    from batmann.utils.determinism import deterministic_kernels
    from crossbar import convert

    ckpt = load_checkpoint(checkpoint, "cpu")
    cache = load_image_cache(ckpt.config.model.image_size)
    sampler = make_sampler(cache, ckpt.config.episodes, "test", 0)
    with deterministic_kernels():
        digital = DigitalSystem(ckpt.model, keys=ckpt.config.keys)
        t0 = time.perf_counter()
        for i in range(episodes):
            score_episode(digital, sampler.sample(index=i))
        t_digital = time.perf_counter() - t0
        spec = hardware_spec(analog="keys", preset="vteam", variability=0.2, seed=1)
        t0 = time.perf_counter()
        system = convert(ckpt, spec, codec=KeyCodec(ckpt.config.keys), digital_features=digital.features)
        for i in range(episodes):
            score_episode(system, sampler.sample(index=i))
        t_cell = time.perf_counter() - t0
    del torch
    return {"digital_s": t_digital, "keys_cell_s": t_cell, "baseline_s": t_digital + cells * t_cell}


def run(study_dict: dict, out: Path, workers: int) -> float:
    from batmann.study import Study
    from batmann.study.run import run_study

    t0 = time.perf_counter()
    run_study(Study.from_dict(study_dict), out, workers=workers, progress=False, log=lambda m: None)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="20w5s-binary")
    ap.add_argument("--configs", type=int, default=50, help="keys-only configurations (default 50)")
    ap.add_argument("--chips", type=int, default=2, help="chips per configuration (default 2)")
    ap.add_argument("--episodes", type=int, default=100, help="episodes of the keys-only study (default 100)")
    ap.add_argument("--analog-cells", type=int, default=4, help="all-analog cells (default 4)")
    ap.add_argument("--analog-episodes", type=int, default=10, help="episodes per all-analog cell (default 10)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    home = scratch_home()
    work = Path(tempfile.mkdtemp(prefix="bench-study-out-"))
    sigmas = [round(0.6 * i / max(1, args.configs - 1), 4) for i in range(args.configs)]
    keys_study = {"checkpoint": args.checkpoint, "chips": args.chips, "episodes": {"count": args.episodes},
                  "hardware": {"analog": "keys", "preset": "vteam"}, "grid": {"variability": sigmas}}
    t_study = run(keys_study, work / "keys", 1)
    base = baseline(args.checkpoint, args.episodes, args.configs * args.chips)
    analog = {"checkpoint": args.checkpoint, "chips": 1, "episodes": {"count": args.analog_episodes, "seed": 7},
              "hardware": {"analog": "all", "preset": "vteam"},
              "grid": {"variability": [round(0.1 * (i + 1), 2) for i in range(args.analog_cells)]}}
    # digital features of the analog episodes first, so both runs time the cells alone
    run({**analog, "hardware": {"analog": "keys"}}, work / "warm", 1)
    t1 = run(analog, work / "w1", 1)
    t2 = run(analog, work / "w2", 2)
    result = {
        "machine": platform.processor() or platform.machine(), "cores": len(os.sched_getaffinity(0)),
        "keys_only": {"cells": args.configs * args.chips, "episodes": args.episodes, "study_s": t_study, **base,
                      "study_over_baseline": t_study / base["baseline_s"]},
        "all_analog": {"cells": args.analog_cells, "episodes": args.analog_episodes, "workers_1_s": t1,
                       "workers_2_s": t2, "speedup": t1 / t2},
    }
    k, a = result["keys_only"], result["all_analog"]
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print("| measurement | baseline | study | ratio |")
        print("|---|---|---|---|")
        print(f"| keys-only study, {k['cells']} cells x {k['episodes']} episodes (cold features) | "
              f"{k['baseline_s']:.1f} s (digital {k['digital_s']:.1f} s + {k['cells']} x {k['keys_cell_s']:.2f} s) | "
              f"{k['study_s']:.1f} s | {k['study_over_baseline']:.2f}x |")
        print(f"| all-analog study, {a['cells']} cells x {a['episodes']} episodes, 2 workers vs 1 | "
              f"{a['workers_1_s']:.1f} s | {a['workers_2_s']:.1f} s | {a['speedup']:.2f}x faster |")
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
