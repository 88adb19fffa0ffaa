"""``batmann classify`` and ``batmann checkpoints``."""

from __future__ import annotations

import argparse
import json

from batmann.options import KEY_MODES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classify", help="classify your own images against your own support set",
                       description="SUPPORT holds one sub-folder per class with its shot images; QUERY holds "
                                   "the images to classify. Prints each query's predicted class.")
    p.add_argument("--checkpoint", default="20w5s-binary",
                   help="a shipped name, a .safetensors file or a run folder (default 20w5s-binary)")
    p.add_argument("--support", required=True, help="folder of class sub-folders")
    p.add_argument("--query", required=True, help="folder of query images")
    p.add_argument("--keys", choices=KEY_MODES, default=None,
                   help="key format (default: the checkpoint's)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    p.add_argument("--json", action="store_true", help='print {"predictions": {file: class}}')
    p.set_defaults(func=run_classify)

    c = sub.add_parser("checkpoints", help="list the shipped checkpoints")
    c.add_argument("--json", action="store_true", help="print as JSON")
    c.set_defaults(func=run_checkpoints)


def run_classify(args: argparse.Namespace) -> int:
    from batmann.classify import classify_folders

    preds = classify_folders(args.checkpoint, args.support, args.query, keys=args.keys, device=args.device)
    if args.json:
        print(json.dumps({"predictions": preds}, indent=2))
    else:
        width = max(len(k) for k in preds)
        for name, cls in preds.items():
            print(f"{name:<{width}}  {cls}")
    return 0


def run_checkpoints(args: argparse.Namespace) -> int:
    from batmann.checkpoint import shipped_checkpoints
    from batmann.config import EpisodeOptions, trained_for_protocol

    rows = []
    for name, path in shipped_checkpoints().items():
        info = json.loads(path.with_suffix(".json").read_text()) if path.with_suffix(".json").exists() else {}
        cfg = info.get("config", {})
        evals = path.with_suffix(".eval.json")
        acc = None
        if evals.exists():
            results = json.loads(evals.read_text()).get("results", [])
            if results:
                best = max(results, key=lambda r: r.get("episodes", 0))
                acc = f"{best['accuracy_pct']:.2f} +- {best['ci95_pct']:.2f} ({best['episodes']} ep)"
        protocol = trained_for_protocol(EpisodeOptions(**cfg["episodes"])) if "episodes" in cfg else None
        if acc is not None and protocol is not None:  # its record is the protocol's (scripts/ship_checkpoint.py)
            acc += f", protocol {protocol}"
        rows.append({"name": name, "controller": cfg.get("model", {}).get("controller"),
                     "ways": cfg.get("episodes", {}).get("class_num"), "shots": cfg.get("episodes", {}).get("num_shot"),
                     "split": cfg.get("episodes", {}).get("split"), "keys": cfg.get("keys"),
                     "protocol": protocol, "accuracy": acc, "path": str(path)})
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("no checkpoints are shipped yet; train one with `batmann train`")
    else:
        print(f"{'name':<20} {'controller':<15} {'task':<8} {'split':<6} {'keys':<8} accuracy (%)")
        for r in rows:
            print(f"{r['name']:<20} {r['controller'] or '?':<15} {str(r['ways'])+'w'+str(r['shots'])+'s':<8} "
                  f"{r['split'] or '?':<6} {r['keys'] or '?':<8} {r['accuracy'] or '-'}")
    return 0
