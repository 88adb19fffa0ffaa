"""``batmann evaluate``: test-only evaluation of a checkpoint (the seed's --test_only)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from batmann.cli.train_cmd import add_keys_options, add_protocol_options, resolve_keys
from batmann.options import PRECISIONS, PROTOCOLS, SPLITS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="evaluate a checkpoint on test episodes",
                       description="Mean test accuracy with a 95%% confidence interval over N episodes. "
                                   "The result is recorded next to your checkpoint (<name>.eval.json); evaluations of a "
                                   "shipped checkpoint go to $BATMANN_HOME/evaluations/<name>.eval.json.")
    p.add_argument("--checkpoint", "--pretrained-dir", dest="checkpoint", required=True,
                   help="a shipped name (see `batmann checkpoints`), a .safetensors file or a run folder")
    p.add_argument("--episodes", "--test-episode", dest="episodes", type=int, default=1000,
                   help="test episodes (default 1000)")
    p.add_argument("--ways", type=int, default=None, help="m (default: the checkpoint's)")
    p.add_argument("--shots", type=int, default=None, help="n (default: the checkpoint's)")
    p.add_argument("--queries-test", type=int, default=None, help="queries per class (default: the checkpoint's)")
    p.add_argument("--split", choices=SPLITS, default=None, help="character split (default: the checkpoint's)")
    add_protocol_options(p, default=None)
    p.add_argument("--protocol", choices=PROTOCOLS, default=None,
                   help="a fixed test protocol instead of the checkpoint's episodes: lake = Lake et al.'s one-shot "
                        "benchmark (evaluation alphabets, 20-way 1-shot, one query per class, within one alphabet, "
                        "distinct drawers); reports the error too")
    add_keys_options(p, default=None)
    p.add_argument("--seed", type=int, default=0, help="episode seed (default 0)")
    p.add_argument("--device", "--gpu", dest="device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-save", action="store_true", help="do not record the result")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="fp32, bf16 (autocast) or auto: bf16 for full-precision controllers where the CPU or GPU runs "
                        "bf16 natively (measured to agree with fp32), fp32 elsewhere and for binarized ones (default auto)")
    p.add_argument("--no-feature-cache", action="store_true",
                   help="compute every feature afresh and keep none on disk (default: the features of a checkpoint "
                        "file are kept in $BATMANN_HOME/features, so a second evaluation costs seconds and gives the "
                        "same result; $BATMANN_FEATURE_CACHE=0 turns it off too)")
    p.add_argument("--test-views", type=int, default=0, metavar="N",
                   help="test-time augmentation: each image's feature is the mean over the image and N random "
                        "affine views of it (the training's --augment ranges; the same views for an image in "
                        "every episode, drawn from --seed); N + 1 forward passes per image, no feature cache "
                        "(default 0: off)")
    p.add_argument("--verbose", action="store_true",
                   help="say which arithmetic units the controller runs on (e.g. exact int8 binarized layers on AMX)")
    p.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from batmann.api import evaluate_checkpoint
    from batmann.records import eval_settings, save_eval_result
    from batmann.checkpoint import load_checkpoint
    from batmann.evaluate import inference_precision
    from batmann.utils.device import resolve_device

    device = resolve_device(args.device)
    if args.verbose:
        from batmann.models import binary_kernels
        from crossbar.cpu_features import describe_cpu_path

        print(describe_cpu_path(binary_kernels.describe_kernel(device)) if device.type == "cpu" else f"device: {device}",
              file=sys.stderr)
    ckpt = load_checkpoint(args.checkpoint, device)
    opts = ckpt.config.episodes
    overrides = {k: v for k, v in (("class_num", args.ways), ("num_shot", args.shots),
                                   ("batch_size_test", args.queries_test), ("split", args.split),
                                   ("within_alphabet", args.within_alphabet),
                                   ("distinct_drawers", args.distinct_drawers)) if v is not None}
    if args.protocol is not None:
        from batmann.config import protocol_options
        from batmann.errors import ConfigError

        if overrides:  # e.g. --ways: the protocol's own value would be silently replaced
            flags = {"class_num": "--ways", "num_shot": "--shots", "batch_size_test": "--queries-test"}
            first = sorted(overrides)[0]
            raise ConfigError(f"--protocol {args.protocol} fixes the episodes; drop "
                              f"{flags.get(first, '--' + first.replace('_', '-'))}")
        if opts.split != "lake":  # its training characters include the evaluation alphabets
            print(f"warning: {ckpt.path.stem} was trained on the {opts.split} split, whose training characters "
                  "include evaluation alphabets; Lake's protocol needs a lake-split checkpoint", file=sys.stderr)
        opts = protocol_options(args.protocol, opts)
    opts = replace(opts, **overrides)
    keys = resolve_keys(args, ckpt.config.keys)
    precision = inference_precision(ckpt.config.model.controller, args.precision, device)
    if args.verbose:
        print(f"precision: {precision}", file=sys.stderr)
    result = evaluate_checkpoint(ckpt, episodes=args.episodes, seed=args.seed, keys=keys,
                                 episode_options=opts, device=args.device, progress=not args.json,
                                 precision=precision, feature_cache=False if args.no_feature_cache else None,
                                 test_views=args.test_views)
    command = "batmann " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if not args.no_save:
        save_eval_result(ckpt.path, result, eval_settings(opts, keys, args.episodes, args.seed, precision,
                                                          args.test_views), command)
    out = {**result.to_dict(), "keys": keys, "split": opts.split, "precision": precision, "checkpoint": str(ckpt.path)}
    if args.test_views:
        out["test_views"] = args.test_views
    if args.protocol is not None:
        out = {"protocol": args.protocol, "error_pct": 100.0 - result.accuracy_pct, **out}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        what = f"protocol {args.protocol}" if args.protocol else f"split {opts.split}"
        error = f"error {100.0 - result.accuracy_pct:.2f}%, accuracy " if args.protocol else ""
        print(f"{ckpt.path.stem}: {opts.class_num}-way {opts.num_shot}-shot, {keys} keys, {what}: "
              f"{error}{result.accuracy_pct:.2f}% +- {result.ci95_pct:.2f} (95% CI, {result.episodes} episodes)")
    return 0
