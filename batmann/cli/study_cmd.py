"""``batmann study run | status | export | plot``: non-ideality grids over many chips."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    from batmann.cli import OneLineParser
    from batmann.study.executors import EXECUTORS
    from batmann.study.plot import METRICS
    from batmann.study.tables import FORMATS, LEVELS

    p = sub.add_parser("study", help="sweep non-idealities over many chips (resumable, local or Dask)",
                       description="Run a study file (TOML: checkpoints, episodes, chips, fixed hardware and a "
                                   "[grid] of HardwareSpec fields) into a SQLite results store, then export "
                                   "tidy tables and plot accuracy against the parameters.")
    ss = p.add_subparsers(dest="study_command", metavar="ACTION", parser_class=OneLineParser)
    ss.required = True
    r = ss.add_parser("run", help="run (or resume) a study into a results folder")
    r.add_argument("file", help="the study file (.toml); see studies/ for examples")
    r.add_argument("--out", required=True, metavar="DIR", help="results folder (holds study.sqlite)")
    r.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local processes (default) or a Dask cluster")
    r.add_argument("--workers", type=int, default=None,
                   help="worker processes (default: the usable cores; 1 runs in this process)")
    r.add_argument("--dask-address", default=None, metavar="tcp://HOST:PORT",
                   help="with --executor dask: an existing scheduler (default: start a LocalCluster)")
    r.add_argument("--extend", action="store_true",
                   help="DIR holds an earlier version of the study: add this file's new cells")
    r.add_argument("--device", default="cpu", help="auto, cpu or cuda[:N]: where the digital controller computes its features (default cpu; the crossbar simulation runs on the CPU)")
    r.add_argument("--json", action="store_true", help="print a JSON summary at the end")
    r.set_defaults(func=run_run)
    st = ss.add_parser("status", help="how many cells are planned and recorded")
    st.add_argument("dir", help="results folder")
    st.add_argument("--json", action="store_true", help='print {"cells": N, "done": M, ...}')
    st.set_defaults(func=run_status)
    ex = ss.add_parser("export", help="the tidy results table (one row per cell or per configuration)")
    ex.add_argument("dir", help="results folder")
    ex.add_argument("--format", choices=FORMATS, default=None, help="csv, parquet or json (default: from --out)")
    ex.add_argument("--level", choices=LEVELS, default="cell",
                    help="cell (one row per chip, default) or config (chips pooled, CIs over chips and episodes)")
    ex.add_argument("--out", required=True, metavar="FILE", help="output file")
    ex.set_defaults(func=run_export)
    pl = ss.add_parser("plot", help="accuracy (or difference, agreement) against a parameter")
    pl.add_argument("dir", help="results folder")
    pl.add_argument("--x", required=True, metavar="PARAM",
                    help="the parameter on the x axis, or a cost column (energy_pj_per_query, "
                         "latency_ns_per_query) for a trade-off figure: one point per configuration")
    pl.add_argument("--hue", default=None, metavar="PARAM", help="one line per value of this parameter")
    pl.add_argument("--col", default=None, metavar="PARAM", help="one panel per value of this parameter")
    pl.add_argument("--y", default=None, metavar="PARAM", help="a heat map of --metric over --x and --y")
    pl.add_argument("--metric", choices=METRICS, default="accuracy",
                    help="accuracy (crossbar, digital dashed; default), difference (crossbar - digital, pp) "
                         "or agreement (top-1, %%)")
    pl.add_argument("--out", required=True, metavar="FILE", help="output figure, .png or .svg")
    pl.set_defaults(func=run_plot)


def run_run(args: argparse.Namespace) -> int:
    from batmann.study import load_study
    from batmann.study.run import run_study

    study = load_study(args.file)
    summary = run_study(study, args.out, executor=args.executor, workers=args.workers,
                        dask_address=args.dask_address, extend=args.extend, device=args.device,
                        progress=not args.json)
    if args.json:
        print(json.dumps(summary.to_json(), indent=2))
    else:
        print(f"{summary.ran} cells run in {summary.seconds:.1f} s; {summary.done_before + summary.ran} of "
              f"{summary.cells} recorded in {summary.out}")
    return 0


def run_status(args: argparse.Namespace) -> int:
    from batmann.study import StudyStore
    from batmann.study.tables import status

    with StudyStore.open_existing(args.dir) as store:
        s = status(store)
    if args.json:
        print(json.dumps(s))
    else:
        print(f"{s['done']} of {s['cells']} cells recorded" + (f" ({s['name']})" if s["name"] else ""))
    return 0


def run_export(args: argparse.Namespace) -> int:
    from batmann.study import StudyStore
    from batmann.study.tables import export

    with StudyStore.open_existing(args.dir) as store:
        n = export(store, args.out, args.format, args.level)
    print(f"{n} rows written to {args.out}")
    return 0


def run_plot(args: argparse.Namespace) -> int:
    from batmann.study import StudyStore
    from batmann.study.plot import plot_study

    with StudyStore.open_existing(args.dir) as store:
        plot_study(store, args.out, x=args.x, hue=args.hue, col=args.col, y=args.y, metric=args.metric)
    print(f"figure written to {args.out}")
    return 0
