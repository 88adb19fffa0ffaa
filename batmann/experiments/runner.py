"""Run one of the seed's experiments into a folder: train what its rows need, evaluate each row,
write a tidy table, a figure and a record; a re-run resumes.

Layout of ``DIR``::

    runs/<controller>-<sim_cal>/   one ``batmann train`` run per training (resumable)
    NAME.csv                       one row per setting, rewritten atomically after each row
    NAME.png                       ours (95 % CI) beside the seed's number, per setting
    NAME.json                      the command, scale, seed, versions and machine

A row already in ``NAME.csv`` is not recomputed; an interrupted training resumes from its last
checkpoint (``batmann train --resume``). A folder holding the other scale of the experiment
(``--quick`` against full) is refused, so quick and full numbers never mix.
"""

from __future__ import annotations

import csv
import io
import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from batmann.config import EpisodeOptions, ModelConfig, TrainConfig
from batmann.errors import ConfigError
from batmann.experiments.catalog import EXPERIMENTS, Experiment, Row, Training
from batmann.utils.atomic import atomic_write_json, atomic_write_text

COLUMNS = ("experiment", "setting", "description", "controller", "sim_cal", "keys", "train_episodes",
           "accuracy_pct", "ci95_pct", "episodes", "seed_accuracy_pct", "checkpoint")


@dataclass(frozen=True)
class Scale:
    """How big an experiment runs: the training recipe and the test protocol of every row."""

    name: str
    episodes: EpisodeOptions
    train_episode: int
    learning_rate: float
    lr_step: int
    lr_gamma: float
    val_interval: int
    val_episode: int
    test_episodes: int
    precision: str = "bf16"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: the seed's 20-way 5-shot task and test protocol (1000 episodes); our training recipe (Adam,
#: lr 5e-4 halved every 1,000 episodes, 3,000 episodes, best of a validation every 250 on 100
#: fixed episodes), not the seed's 10,000 episodes at lr 1e-4 (docs/experiments.md)
FULL = Scale("full", EpisodeOptions(), train_episode=3000, learning_rate=5e-4, lr_step=1000, lr_gamma=0.5,
             val_interval=250, val_episode=100, test_episodes=1000)
#: a few minutes on 2 cores: 5-way 1-shot episodes, a few training episodes; checks the pipeline
QUICK = Scale("quick", EpisodeOptions(class_num=5, num_shot=1, pool_query_train=4, pool_val_train=2,
                                      batch_size_train=2, val_num_train=2, pool_query_test=4, batch_size_test=2),
              train_episode=12, learning_rate=1e-3, lr_step=1000, lr_gamma=0.5, val_interval=6, val_episode=4,
              test_episodes=20)
SCALES = {"full": FULL, "quick": QUICK}


def train_config(training: Training, scale: Scale, seed: int = 0) -> TrainConfig:
    """The ``batmann train`` configuration of ``training`` at ``scale``."""
    return TrainConfig(
        model=ModelConfig(controller=training.controller), episodes=scale.episodes,
        train_episode=scale.train_episode, learning_rate=scale.learning_rate, lr_step=scale.lr_step,
        lr_gamma=scale.lr_gamma, val_interval=scale.val_interval, val_episode=scale.val_episode,
        test_episode=0, checkpoint_interval=max(1, min(50, scale.train_episode)), log_interval=50,
        sim_cal=training.sim_cal, keys="bipolar", precision=scale.precision, seed=seed, device="cpu",
    ).validate()


def ensure_trained(training: Training, scale: Scale, out: Path, cache, progress: bool, seed: int = 0) -> Path:
    """Train ``training`` into ``out/runs/<name>`` (resuming an interrupted run) and return its
    best-validation checkpoint."""
    from batmann.checkpoint import read_safetensors
    from batmann.train import train

    run_dir = out / "runs" / training.name
    best, last = run_dir / "best.safetensors", run_dir / "last.safetensors"
    if last.exists():
        _, meta = read_safetensors(last)
        if int(json.loads(meta.get("scalars", "{}")).get("episode", -1)) >= scale.train_episode and best.exists():
            return best
    cfg = train_config(training, scale, seed)
    command = f"batmann train --controller {training.controller} --sim-cal {training.sim_cal} (experiment scale {scale.name})"
    train(cfg, run_dir, resume=last.exists(), progress=progress, cache=cache, command=command)
    return best


def evaluate_row(row: Row, checkpoint: Path, scale: Scale, cache, progress: bool, seed: int = 0):
    """Digital accuracy of ``checkpoint`` with the row's key format, fp32, on the scale's test episodes."""
    from batmann.api import evaluate_checkpoint

    return evaluate_checkpoint(checkpoint, episodes=scale.test_episodes, seed=seed, keys=row.keys,
                               device="cpu", progress=progress, cache=cache, precision="fp32")


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of an experiment table (empty if it does not exist)."""
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write the table atomically (temp file + rename): an interrupted write never leaves half a table."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in COLUMNS})
    atomic_write_text(path, buf.getvalue())


def _check_scale(out: Path, exp: Experiment, scale: Scale) -> None:
    record = out / f"{exp.name}.json"
    if record.exists():
        got = json.loads(record.read_text()).get("scale", {}).get("name")
        if got and got != scale.name:
            raise ConfigError(f"{out} holds a {got} run of {exp.name}; this is a {scale.name} run: "
                              "use another --out")


@dataclass
class ExperimentSummary:
    """What :func:`run_experiment` did."""

    name: str
    out: Path
    table: Path
    figure: Path | None
    rows: int
    ran: int
    seconds: float


def run_experiment(name: str, out: str | Path, quick: bool = False, progress: bool = True,
                   command: str | None = None, cache=None, seed: int = 0) -> ExperimentSummary:
    """Run experiment ``name`` (see :data:`EXPERIMENTS`) into ``out``; rows already recorded there
    are kept, the rest computed in the seed's order."""
    if name not in EXPERIMENTS:
        raise ConfigError(f"experiment {name!r} is not one of {', '.join(EXPERIMENTS)}")
    exp = EXPERIMENTS[name]
    scale = QUICK if quick else FULL
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _check_scale(out, exp, scale)
    t0 = time.perf_counter()
    _write_record(out, exp, scale, command, seed)
    if cache is None:
        from batmann.data import load_image_cache

        cache = load_image_cache(32)
    table = out / f"{exp.name}.csv"
    done = {r["setting"]: r for r in read_rows(table)}
    ran = 0
    for row in exp.rows:
        if row.setting in done:
            continue
        ckpt = ensure_trained(row.training, scale, out, cache, progress, seed)
        res = evaluate_row(row, ckpt, scale, cache, progress, seed)
        done[row.setting] = {
            "experiment": exp.name, "setting": row.setting, "description": row.description,
            "controller": row.training.controller, "sim_cal": row.training.sim_cal, "keys": row.keys,
            "train_episodes": scale.train_episode, "accuracy_pct": f"{res.accuracy_pct:.3f}",
            "ci95_pct": f"{res.ci95_pct:.3f}", "episodes": res.episodes,
            "seed_accuracy_pct": f"{row.seed_accuracy_pct:.2f}",
            "checkpoint": str(ckpt.relative_to(out)),
        }
        write_rows(table, [done[r.setting] for r in exp.rows if r.setting in done])
        ran += 1
        if progress:
            print(f"{exp.name} {row.setting}: {res.accuracy_pct:.2f} +- {res.ci95_pct:.2f} % "
                  f"(seed {row.seed_accuracy_pct:.2f} %)", flush=True)
    rows = [done[r.setting] for r in exp.rows]
    from batmann.experiments.figures import plot_table

    figure = plot_table(exp, rows, out / f"{exp.name}.png", scale.name)
    return ExperimentSummary(exp.name, out, table, figure, len(rows), ran, time.perf_counter() - t0)


def _write_record(out: Path, exp: Experiment, scale: Scale, command: str | None, seed: int) -> None:
    import torch

    from batmann import __version__

    atomic_write_json(out / f"{exp.name}.json", {
        "experiment": exp.name, "title": exp.title, "command": command, "seed": seed,
        "scale": scale.to_dict(),
        "rows": [{"setting": r.setting, "description": r.description, "training": r.training.name,
                  "keys": r.keys, "seed_accuracy_pct": r.seed_accuracy_pct} for r in exp.rows],
        "versions": {"batmann": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "machine": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
