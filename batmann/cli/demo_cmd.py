"""``batmann demo``: the README's main job.

Fetches Omniglot (from ``$BATMANN_OMNIGLOT_SOURCE`` or the official URLs), prints the data
summary, saves a picture of one 20-way 5-shot test episode, evaluates the shipped 20-way 5-shot
binary checkpoint digitally (a table beside the published numbers), then with its key memory and
with the whole system on an RRAM crossbar preset (sharing the digital features).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job: data summary, an episode picture, digital vs RRAM accuracy")
    p.add_argument("--out", default="out", help="folder for the episode picture and results (default out)")
    p.add_argument("--checkpoint", default="20w5s-binary", help="checkpoint to evaluate (default 20w5s-binary)")
    p.add_argument("--episodes", type=int, default=300, help="evaluation episodes (default 300)")
    p.add_argument("--preset", default="vteam", help="RRAM device preset for the crossbar run")
    p.add_argument("--variability", type=float, default=0.1,
                   help="device-to-device variability (relative sigma) on the crossbar (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="episode and device seed (default 0)")
    p.add_argument("--all-fraction", type=int, default=6,
                   help="the whole-system (all analog) run uses episodes / N episodes (default 6)")
    p.set_defaults(func=run_demo)


def _say(msg: str) -> None:
    print(msg, flush=True)


def format_digital_table(ckpt, result) -> str:
    """The checkpoint's digital test accuracy beside the published numbers for its problem."""
    from batmann.reference import reference_rows

    opts, model = ckpt.config.episodes, ckpt.config.model
    rows = [(f"{ckpt.path.stem} (this run, {result.episodes} episodes)",
             f"{result.accuracy_pct:.2f} +- {result.ci95_pct:.2f}")]
    rows += [(label, f"{value:.2f}") for label, value in reference_rows(opts.class_num, opts.num_shot, model.controller)]
    width = max(len(r[0]) for r in rows)
    lines = [f"digital accuracy, {opts.class_num}-way {opts.num_shot}-shot Omniglot, split {opts.split}, "
             f"controller {model.controller}, {ckpt.config.keys} keys",
             f"{'':<{width}}  accuracy (%)"]
    lines += [f"{label:<{width}}  {value}" for label, value in rows]
    return "\n".join(lines)


def run_demo(args: argparse.Namespace) -> int:
    from batmann.checkpoint import shipped_checkpoints
    from batmann.data import load_image_cache, save_episode_png
    from batmann.data.omniglot import fetch_omniglot
    from batmann.tasks import make_sampler
    from batmann.config import EpisodeOptions

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    fetch_omniglot(log=lambda m: print(m, file=sys.stderr))
    cache = load_image_cache(32)
    counts = cache.counts()
    _say("Omniglot        alphabets  characters  images")
    for name in ("background", "evaluation"):
        c = counts[name]
        _say(f"  {name:<13} {c.alphabets:>9}  {c.characters:>10}  {c.images:>6}")
    sampler = make_sampler(cache, EpisodeOptions(), "test", args.seed)
    episode = sampler.sample(index=0)
    png = out / "episode.png"
    save_episode_png(cache, episode, png)
    _say(f"one 20-way 5-shot test episode (rotation {episode.rotation} deg): {png}")

    if args.checkpoint not in shipped_checkpoints() and not Path(args.checkpoint).exists():
        _say(f"checkpoint {args.checkpoint!r} is not shipped yet: skipping the accuracy table "
             "(train one with `batmann train`, see README)")
        return 0
    from batmann.checkpoint import load_checkpoint
    from batmann.hardware import compare, format_comparison, hardware_spec

    from batmann.evaluate import DigitalSystem, evaluate_system

    ckpt = load_checkpoint(args.checkpoint, "cpu")
    digital = DigitalSystem(ckpt.model, keys=ckpt.config.keys)  # its feature cache serves every run
    sampler = make_sampler(cache, ckpt.config.episodes, "test", args.seed)
    result = evaluate_system(digital, sampler, args.episodes, progress=True, desc="digital")
    _say("")
    _say(format_digital_table(ckpt, result))
    report = {"digital": result.to_dict()}
    for analog in ("keys", "all"):
        spec = hardware_spec(analog=analog, preset=args.preset, variability=args.variability, seed=args.seed)
        # the whole system on crossbars costs about 1.3x digital per new image: fewer episodes
        episodes = args.episodes if analog == "keys" else max(1, args.episodes // args.all_fraction)
        result = compare(ckpt, spec, episodes=episodes, seed=args.seed, progress=True, cache=cache,
                         digital=digital)
        report[analog] = result.to_json()
        _say(f"\n{analog}-analog on {args.preset}, variability {args.variability}:")
        _say(format_comparison(result, ckpt.path.stem))
    (out / "demo.json").write_text(json.dumps(report, indent=2) + "\n")
    _say(f"done in {time.perf_counter() - t0:.0f} s; results in {out / 'demo.json'}")
    return 0
