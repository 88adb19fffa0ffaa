"""``batmann experiment list | run``: the seed's experiments, one command each."""

from __future__ import annotations

import argparse
import json
import shlex
import sys


def register(sub: argparse._SubParsersAction) -> None:
    from batmann.cli import OneLineParser
    from batmann.experiments.catalog import EXPERIMENTS

    p = sub.add_parser("experiment", help="reproduce the seed's experiments (ablation, sharpening, FGSM, t-SNE)",
                       description="Train the controllers an experiment of the seed needs (batmann train, "
                                   "resumable), evaluate every row, and write DIR/NAME.csv, NAME.png and NAME.json.")
    ss = p.add_subparsers(dest="experiment_command", metavar="ACTION", parser_class=OneLineParser)
    ss.required = True
    ls = ss.add_parser("list", help="the experiments and their rows")
    ls.add_argument("--json", action="store_true", help="print them as JSON")
    ls.set_defaults(func=run_list)
    r = ss.add_parser("run", help="run (or resume) one experiment")
    r.add_argument("name", choices=tuple(EXPERIMENTS), help="the experiment")
    r.add_argument("--quick", action="store_true",
                   help="small settings (5-way 1-shot, 8 training and 8 test episodes): checks the pipeline in "
                        "about a minute; the numbers mean nothing")
    r.add_argument("--out", default=None, metavar="DIR",
                   help="results folder, shared by the experiments so that they share trainings (default "
                        "experiments, or experiments-quick with --quick)")
    r.add_argument("--seed", type=int, default=0, help="seed of training and test episodes (default 0)")
    r.add_argument("--resume-from", default=None, metavar="DIR",
                   help="a results folder to continue from (e.g. docs/results): its NAME.csv and NAME.json when "
                        "--out has none, and its finished trainings (DIR/trainings/<training>.safetensors), each "
                        "checked to be the training this run would do")
    r.add_argument("--rows", default=None, metavar="KEYS",
                   help="compute only these rows (comma-separated keys as `batmann experiment list` prints them, "
                        "e.g. S5,S6 or S5@ideal); the table keeps every row already in it (default: every row)")
    r.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=True,
                   help="train bit-reproducibly on one thread (default); --no-deterministic trains on every "
                        "core, the same recipe without bit-reproducibility (evaluations stay deterministic)")
    r.add_argument("--train-device", default="cpu", metavar="DEVICE",
                   help="where the trainings run: cpu, cuda or cuda:N (default cpu); evaluations run on "
                        "the CPU, deterministically, either way")
    r.add_argument("--workers", type=int, default=1, metavar="N",
                   help="FGSM rows of N trainings at once, one worker process each (the same numbers as "
                        "one process; default 1)")
    r.add_argument("--json", action="store_true", help="print a JSON summary at the end")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.set_defaults(func=run_run)


def run_list(args: argparse.Namespace) -> int:
    from batmann.experiments.catalog import EXPERIMENTS

    if args.json:
        print(json.dumps({name: {"title": e.title, "rows": [
            {"key": r.key, "setting": r.setting, "epsilon": r.epsilon, "chip": r.chip, "description": r.description,
             "training": r.training.name, "keys": r.keys, "seed_accuracy_pct": r.seed_accuracy_pct}
            for r in e.rows]} for name, e in EXPERIMENTS.items()},
            indent=2))
        return 0
    for name, e in EXPERIMENTS.items():
        print(f"{name}: {e.title}")
        for r in e.rows:
            seed = "" if r.seed_accuracy_pct is None else f" (seed {r.seed_accuracy_pct:.2f} %)"
            print(f"  {r.key:<26} {r.description}{seed}")
    return 0


def run_run(args: argparse.Namespace) -> int:
    from batmann.experiments import run_experiment

    out = args.out or ("experiments-quick" if args.quick else "experiments")
    command = "batmann " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    summary = run_experiment(args.name, out, quick=args.quick, progress=not (args.no_progress or args.json),
                             command=command, seed=args.seed, resume_from=args.resume_from,
                             rows=args.rows.split(",") if args.rows else None, deterministic=args.deterministic,
                             workers=args.workers, train_device=args.train_device)
    if args.json:
        print(json.dumps({"experiment": summary.name, "out": str(summary.out), "table": str(summary.table),
                          "figure": str(summary.figure), "rows": summary.rows, "ran": summary.ran,
                          "seconds": round(summary.seconds, 1)}, indent=2))
    else:
        print(f"{summary.ran} of {summary.rows} rows run in {summary.seconds:.1f} s; table {summary.table}, "
              f"figure {summary.figure}")
    return 0
