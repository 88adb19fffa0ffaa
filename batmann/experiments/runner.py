"""Run one of the seed's experiments into a folder: train what its rows need, evaluate each row,
write a tidy table, a figure and a record; a re-run resumes.

Layout of ``DIR``::

    runs/<controller>-<sim_cal>/   one ``batmann train`` run per training (resumable)
    NAME.csv                       one row per setting, rewritten atomically after each row
    NAME.png                       ours (95 % CI) beside the seed's number, per setting
    NAME.json                      the command, scale, seed, versions and machine
    NAME-episodes/<row>.csv        FGSM rows: each episode's accuracies, appended as computed

A row already in ``NAME.csv`` is not recomputed; an interrupted training resumes from its last
checkpoint (``batmann train --resume``), an interrupted FGSM row at the first episode it lacks
(``NAME-episodes/``). A folder holding the other scale of the experiment
(``--quick`` against full) is refused, so quick and full numbers never mix.
"""

from __future__ import annotations

import csv
import io
import json
import math
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from batmann.config import EpisodeOptions, ModelConfig, TrainConfig
from batmann.errors import ConfigError
from batmann.experiments.catalog import CHIPS, EXPERIMENTS, Experiment, Row, Training, row_key
from batmann.experiments.episode_log import EpisodeLog
from batmann.utils.atomic import atomic_path, atomic_write_json, atomic_write_text

COLUMNS = ("experiment", "setting", "epsilon", "description", "controller", "sim_cal", "keys", "train_episodes",
           "accuracy_pct", "ci95_pct", "episodes", "seed_accuracy_pct", "crossbar_accuracy_pct",
           "crossbar_ci95_pct", "chip", "checkpoint")


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
    #: the one episode whose query features the t-SNE views embed
    tsne_episodes: EpisodeOptions = field(default_factory=lambda: EpisodeOptions(
        class_num=10, num_shot=5, pool_query_test=15, batch_size_test=15))
    #: the trainings' precision where the CPU runs bf16 natively (AMX, AVX512-BF16); fp32 where
    #: it does not (:func:`training_precision`)
    precision: str = "bf16"
    #: whether the ablation's chip rows run (S1-S10 on each chip: a crossbar conversion per model
    #: and chip, minutes; the quick scale leaves them out, the FGSM chip rows stay)
    chip_rows: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: the seed's 20-way 5-shot task and test protocol (1000 episodes); our training recipe (Adam,
#: lr 5e-4 halved every 1,000 episodes, 3,000 episodes, best of a validation every 250 on 100
#: fixed episodes), not the seed's 10,000 episodes at lr 1e-4 (docs/experiments.md)
FULL = Scale("full", EpisodeOptions(), train_episode=3000, learning_rate=5e-4, lr_step=1000, lr_gamma=0.5,
             val_interval=250, val_episode=100, test_episodes=1000)
#: about a minute on 2 cores: 5-way 1-shot episodes, 8 training and 8 test episodes; checks the pipeline
QUICK = Scale("quick", EpisodeOptions(class_num=5, num_shot=1, pool_query_train=4, pool_val_train=2,
                                      batch_size_train=2, val_num_train=2, pool_query_test=4, batch_size_test=2),
              train_episode=8, learning_rate=1e-3, lr_step=1000, lr_gamma=0.5, val_interval=4, val_episode=2,
              test_episodes=8, tsne_episodes=EpisodeOptions(class_num=5, num_shot=1, pool_query_test=4,
                                                             batch_size_test=4), chip_rows=False)
#: the seed's MNIST study: 10-way 5-shot, 3 queries per class, 800 training episodes (10 classes x
#: 20 training images: 5 supports, 10 query and 5 validation candidates each), 1000 test episodes
_MNIST_TASK = EpisodeOptions(dataset="mnist", class_num=10, num_shot=5, pool_query_train=10, pool_val_train=5,
                             batch_size_train=3, val_num_train=3, pool_query_test=15, batch_size_test=3)
FULL_MNIST = Scale("full", _MNIST_TASK, train_episode=800, learning_rate=5e-4, lr_step=1000, lr_gamma=0.5,
                   val_interval=100, val_episode=50, test_episodes=1000)
#: the quick MNIST scale: 10-way 1-shot with 2 queries per class (the pipeline, not the task)
QUICK_MNIST = Scale("quick", EpisodeOptions(dataset="mnist", class_num=10, num_shot=1, pool_query_train=4,
                                            pool_val_train=2, batch_size_train=2, val_num_train=2,
                                            pool_query_test=4, batch_size_test=2),
                    train_episode=8, learning_rate=1e-3, lr_step=1000, lr_gamma=0.5,
                    val_interval=4, val_episode=2, test_episodes=8)
SCALES = {("omniglot", "full"): FULL, ("omniglot", "quick"): QUICK, ("mnist", "full"): FULL_MNIST,
          ("mnist", "quick"): QUICK_MNIST}


def training_precision(scale: Scale, device: str = "cpu") -> str:
    """The precision the scale's trainings run in on ``device`` (``cpu``, ``cuda``, ``cuda:N``):
    ``scale.precision``, except bf16 where the device emulates it (an AVX2-only CPU), which is
    fp32: an XNOR training step took 7x longer there in bf16 (``benchmarks/bench_train.py``,
    docs/experiments.md). Like determinism, how a training was computed, not which training it
    is (:func:`_config_key`)."""
    from batmann.utils.device import has_fast_bf16, resolve_device

    if scale.precision == "bf16" and not has_fast_bf16(resolve_device(device)):
        return "fp32"
    return scale.precision


def train_config(training: Training, scale: Scale, seed: int = 0, deterministic: bool = True,
                 device: str = "cpu") -> TrainConfig:
    """The ``batmann train`` configuration of ``training`` at ``scale`` on ``device``;
    ``deterministic=False`` trains on every core (the same recipe, not bit-reproducible); the
    precision is :func:`training_precision`'s."""
    return TrainConfig(
        model=ModelConfig(controller=training.controller), episodes=scale.episodes,
        train_episode=scale.train_episode, learning_rate=scale.learning_rate, lr_step=scale.lr_step,
        lr_gamma=scale.lr_gamma, val_interval=scale.val_interval, val_episode=scale.val_episode,
        test_episode=0, checkpoint_interval=max(1, min(50, scale.train_episode)), log_interval=50,
        sim_cal=training.sim_cal, keys="bipolar", precision=training_precision(scale, device), seed=seed, device=device,
        deterministic=deterministic,
    ).validate()


def _trained(training: Training, scale: Scale, out: Path) -> bool:
    """Whether ``training`` needs no (more) training: shipped, or its run reached the scale's episodes."""
    from batmann.checkpoint import read_safetensors

    if training.checkpoint is not None:
        return True
    run_dir = out / "runs" / training.name
    last, best = run_dir / "last.safetensors", run_dir / "best.safetensors"
    if best.exists() and (run_dir / FINISHED).exists():  # imported from a results folder
        return int(json.loads((run_dir / FINISHED).read_text()).get("episode", -1)) >= scale.train_episode
    if not (last.exists() and best.exists()):
        return False
    _, meta = read_safetensors(last, tensors=False)
    return int(json.loads(meta.get("scalars", "{}")).get("episode", -1)) >= scale.train_episode


#: marks a run folder holding only the best checkpoint of a finished training (imported by
#: :func:`import_results`), with the episode its training reached
FINISHED = "finished.json"

#: the folder of a results folder that holds its trainings' best checkpoints, ``<name>.safetensors``
TRAININGS = "trainings"


def _config_key(cfg: TrainConfig) -> dict[str, Any]:
    """A training's recipe: its configuration less how it was computed (compile, determinism,
    device, precision: bf16 or fp32 arithmetic of the same recipe, :func:`training_precision`)."""
    d = cfg.to_dict()
    for k in ("compile", "deterministic", "device", "precision"):
        d.pop(k, None)
    return d


def _copy(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` atomically (temp file + rename)."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def import_results(src: str | Path, out: Path, exp, scale: Scale, seed: int = 0) -> list[str]:
    """Resume ``exp`` in ``out`` from the results folder ``src`` (e.g. ``docs/results``): its
    table and record (``<name>.csv``, ``<name>.json``) when ``out`` has none, the per-episode
    logs of its rows (``<name>-episodes/<row>.csv``) that ``out`` lacks, and the best
    checkpoints of its finished trainings (``src/trainings/<training>.safetensors``) that ``out``
    lacks, each checked to be the training this scale and seed would run. Returns the imported
    trainings' names."""
    from batmann.checkpoint import load_checkpoint

    src = Path(src)
    if not src.is_dir():
        raise ConfigError(f"results folder {src} does not exist")
    for suffix in (".csv", ".json"):
        have, theirs = out / f"{exp.name}{suffix}", src / f"{exp.name}{suffix}"
        if theirs.is_file() and not have.exists():
            _copy(theirs, have)
    for theirs in sorted(episode_log_dir(src, exp).glob("*.csv")):  # rows part-way through
        if not (episode_log_dir(out, exp) / theirs.name).exists():
            _copy(theirs, episode_log_dir(out, exp) / theirs.name)
    imported = []
    for training in exp.trainings():
        path = src / TRAININGS / f"{training.name}.safetensors"
        if training.checkpoint is not None or not path.is_file() or _trained(training, scale, out):
            continue
        want = train_config(training, scale, seed)
        got = load_checkpoint(path, "cpu").config
        if _config_key(got) != _config_key(want):
            raise ConfigError(f"{path} was not trained as this experiment trains {training.name} "
                              f"(scale {scale.name}, seed {seed})")
        run_dir = out / "runs" / training.name
        run_dir.mkdir(parents=True, exist_ok=True)
        _copy(path, run_dir / "best.safetensors")
        atomic_write_json(run_dir / FINISHED, {"episode": want.train_episode, "source": str(path)})
        imported.append(training.name)
    return imported


def ensure_trained(training: Training, scale: Scale, out: Path, cache, progress: bool, seed: int = 0,
                   deterministic: bool = True, device: str = "cpu") -> Path:
    """Train ``training`` on ``device`` into ``out/runs/<name>`` (resuming an interrupted run) and
    return its best-validation checkpoint (a shipped checkpoint's file as it is).
    ``deterministic=False``: train on every core (:func:`train_config`)."""
    from batmann.checkpoint import resolve_checkpoint
    from batmann.train import train

    if training.checkpoint is not None:
        return resolve_checkpoint(training.checkpoint)
    run_dir = out / "runs" / training.name
    best, last = run_dir / "best.safetensors", run_dir / "last.safetensors"
    if _trained(training, scale, out):
        return best
    cfg = train_config(training, scale, seed, deterministic, device)
    flag = ("" if deterministic else " --no-deterministic") + ("" if device == "cpu" else f" --device {device}")
    command = (f"batmann train --controller {training.controller} --sim-cal {training.sim_cal} --dataset "
               f"{training.dataset}{flag} (experiment scale {scale.name})")
    train(cfg, run_dir, resume=last.exists(), progress=progress, cache=cache, command=command)
    return best


def _loaded(checkpoint, digital=None):
    """``(Checkpoint, DigitalSystem)`` of a checkpoint path or a loaded one; ``digital`` (over
    the same model) is reused, so its cached features serve every row of the checkpoint."""
    from batmann.checkpoint import Checkpoint, load_checkpoint
    from batmann.evaluate import DigitalSystem

    ck = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint, "cpu")
    return ck, digital if digital is not None else DigitalSystem(ck.model.eval(), keys=ck.config.keys)


def evaluate_row(row: Row, checkpoint, scale: Scale, cache, progress: bool, seed: int = 0, digital=None):
    """Digital accuracy of ``checkpoint`` (a path or a loaded checkpoint) with the row's key
    format, fp32, on the scale's test episodes."""
    from batmann.evaluate import evaluate_system
    from batmann.tasks import make_sampler

    _, digital = _loaded(checkpoint, digital)
    return evaluate_system(digital.with_keys(row.keys), make_sampler(cache, scale.episodes, "test", seed),
                           scale.test_episodes, progress=progress, desc="test")


def evaluate_chip_row(row: Row, checkpoint, scale: Scale, cache, progress: bool, seed: int = 0,
                      digital=None) -> dict[str, Any]:
    """A clean row on its chip (:data:`CHIPS`) and digitally, on the same test episodes
    (:func:`batmann.hardware.compare`), with the row's key format on both."""
    import copy
    import dataclasses

    from batmann.hardware import compare, hardware_spec

    ck, digital = _loaded(checkpoint, digital)
    ck = dataclasses.replace(ck, config=copy.deepcopy(ck.config))  # the same model, the row's keys
    ck.config.keys = row.keys
    c = compare(ck, hardware_spec(**CHIPS[row.chip]), episodes=scale.test_episodes, seed=seed,
                episode_options=scale.episodes, progress=progress, cache=cache, digital=digital.with_keys(row.keys))
    return {"accuracy_pct": f"{c.digital_accuracy_pct:.3f}", "ci95_pct": f"{c.digital_ci95_pct:.3f}",
            "episodes": c.episodes, "crossbar_accuracy_pct": f"{c.crossbar_accuracy_pct:.3f}",
            "crossbar_ci95_pct": f"{c.crossbar_ci95_pct:.3f}", "chip": row.chip}


def episode_log_dir(out: Path, exp: Experiment) -> Path:
    """The folder of ``exp``'s per-episode logs in ``out`` (:mod:`batmann.experiments.episode_log`)."""
    return out / f"{exp.name}-episodes"


def _episode_logs(rows: list[Row], log_dir: Path | None) -> dict[str, EpisodeLog]:
    return {r.key: EpisodeLog(None if log_dir is None else log_dir / f"{r.key}.csv", chip=bool(r.chip))
            for r in rows}


def episodes_left(rows: list[Row], scale: Scale, log_dir: Path | None) -> int:
    """How many test episodes :func:`evaluate_attacked` still computes for ``rows`` (those of
    one checkpoint), given the per-episode logs in ``log_dir``."""
    return scale.test_episodes - min(len(log) for log in _episode_logs(rows, log_dir).values())


def evaluate_attacked(rows: list[Row], checkpoint, scale: Scale, cache, progress: bool,
                      seed: int = 0, log_dir: Path | None = None, on_episode=None) -> dict[str, dict[str, Any]]:
    """FGSM rows of one checkpoint, on the same test episodes as the clean rows: per episode one
    attack direction (:func:`batmann.attacks.fgsm_direction`), then every row's ``epsilon`` and
    key format; rows with ``chip`` also on that chip's crossbars (:data:`CHIPS`; the same
    attacked queries). Returns, per row key, the accuracy columns.

    One intra-op thread and deterministic kernels, so a rerun gives the same attack. With
    ``log_dir`` every episode's accuracies are appended to one log per row there
    (:class:`EpisodeLog`) and an interrupted evaluation resumes at the first episode a row
    lacks, with the numbers of an uninterrupted one (for chips without read noise, as
    :data:`CHIPS`: a chip's read noise would restart its generator). The attacked queries' features are
    computed once per ``epsilon`` and serve every key format. ``on_episode()``, if given, is
    called after each episode computed (a worker's progress)."""
    from tqdm import tqdm

    from batmann.attacks import attacked_episode, fgsm_direction
    from batmann.checkpoint import Checkpoint, load_checkpoint
    from batmann.evaluate import DigitalSystem, image_ids, mean_ci95, score_episode
    from batmann.hardware import calibrate, hardware_spec
    from batmann.tasks import make_sampler
    from batmann.utils.determinism import deterministic_kernels

    ck = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint, "cpu")
    logs = _episode_logs(rows, log_dir)
    n = scale.test_episodes
    start = min(len(log) for log in logs.values())
    with deterministic_kernels("cpu", True):
        # a feature cache of its own, filled on one thread: the same bits in any process
        digital = DigitalSystem(ck.model.eval(), keys=ck.config.keys)
        model = digital.model
        systems = {k: digital.with_keys(k) for k in sorted({r.keys for r in rows})}
        chips = {}
        for name in sorted({r.chip for r in rows if r.chip and len(logs[r.key]) < n}):
            from crossbar import convert  # MemTorch: imported only where a chip is asked for

            spec = hardware_spec(**CHIPS[name])
            chips[name] = convert(ck, spec)
            calibrate(chips[name], spec, cache, scale.episodes)
        sampler = make_sampler(cache, scale.episodes, "test", seed)
        for i in tqdm(range(start, n), desc=f"fgsm {ck.path.stem}", disable=not progress or start >= n,
                      leave=False, dynamic_ncols=True, total=n, initial=start):
            need = [r for r in rows if len(logs[r.key]) == i]
            ep = sampler.sample(index=i)
            rot = int(ep.rotation)
            keys = digital.features(ep.support, image_ids(getattr(ep, "support_index", None), rot))
            direction = fgsm_direction(model, ep, ck.config.sim_cal, keys=keys)
            for eps in sorted({float(r.epsilon) for r in need}):
                attacked = attacked_episode(ep, direction, eps)
                q = digital.features(attacked.query, image_ids(attacked.query_index, rot))
                for r in (r for r in need if float(r.epsilon) == eps):
                    acc = [score_episode(systems[r.keys], attacked, query_features=q).accuracy]
                    if r.chip:
                        acc.append(score_episode(chips[r.chip], attacked).accuracy)
                    logs[r.key].append(*acc)
            if on_episode is not None:
                on_episode()
    result = {}
    for r in rows:
        m, c = mean_ci95(logs[r.key].column(0, n))
        cols = {"accuracy_pct": f"{m:.3f}", "ci95_pct": f"{c:.3f}", "episodes": n}
        if r.chip:
            mc, cc = mean_ci95(logs[r.key].column(1, n))
            cols.update(crossbar_accuracy_pct=f"{mc:.3f}", crossbar_ci95_pct=f"{cc:.3f}", chip=r.chip)
        result[r.key] = cols
    return result


_WORKER_CACHES: dict[str, Any] = {}


def _attacked_task(task: tuple) -> tuple[str, dict[str, dict[str, Any]]]:
    """One training's FGSM rows in a worker process: ``(experiment, row keys, checkpoint path,
    scale name, seed, episode log folder, ticks)`` -> ``(training name, columns per row key)``;
    ``ticks`` (a queue or None) gets one item per episode."""
    name, keys, ckpt, scale_name, seed, log_dir, ticks = task
    exp = EXPERIMENTS[name]
    if exp.dataset not in _WORKER_CACHES:  # loaded once per worker process
        from batmann.data import load_episode_images

        _WORKER_CACHES[exp.dataset] = load_episode_images(exp.dataset, 32)
    rows = [r for r in exp.rows if r.key in keys]
    tick = None if ticks is None else (lambda: ticks.put(1))
    result = evaluate_attacked(rows, ckpt, SCALES[(exp.dataset, scale_name)], _WORKER_CACHES[exp.dataset],
                               progress=False, seed=seed, log_dir=Path(log_dir), on_episode=tick)
    return rows[0].training.name, result


def _attacked_in_workers(exp: Experiment, groups: list[tuple[Training, list[Row], Path]], scale: Scale,
                         seed: int, workers: int, progress: bool, record, log_dir: Path) -> None:
    """The FGSM rows of several trainings, one training per task on ``workers`` spawned processes
    (each one thread, deterministic: the numbers of the serial run); each finished training's
    rows are recorded at once."""
    import multiprocessing as mp
    import threading

    from tqdm import tqdm

    from batmann.study.executors import make_executor

    manager = mp.get_context("spawn").Manager() if progress else None
    ticks = manager.Queue() if manager is not None else None
    bar = tqdm(total=sum(episodes_left(rows, scale, log_dir) for _, rows, _ in groups), desc=f"{exp.name} ({workers} workers)",
               disable=not progress, dynamic_ncols=True)

    def drain():
        while ticks.get() is not None:
            bar.update(1)

    drainer = threading.Thread(target=drain, daemon=True) if ticks is not None else None
    if drainer is not None:
        drainer.start()
    by_name = {t.name: (t, rows, ckpt) for t, rows, ckpt in groups}
    tasks = [(exp.name, [r.key for r in rows], str(ckpt), scale.name, seed, str(log_dir), ticks)
             for _, rows, ckpt in groups]
    try:
        with make_executor("local", min(workers, len(tasks))) as ex:
            for name, results in ex.unordered(_attacked_task, tasks):
                training, rows, ckpt = by_name[name]
                for row in rows:
                    record(row, training, ckpt, results[row.key])
    finally:
        if drainer is not None:
            ticks.put(None)
            drainer.join()
            manager.shutdown()
        bar.close()


def evaluate_tsne(rows: list[Row], checkpoint, scale: Scale, cache, out: Path,
                  seed: int = 0) -> dict[str, dict[str, Any]]:
    """t-SNE rows of one checkpoint: the queries of one fixed test episode (``scale.tsne_episodes``,
    episode seed ``seed``: the same characters for every setting), clean or FGSM-attacked, through
    the controller and quantised to the row's key format; their 2-D t-SNE embedding (scikit-learn,
    PCA start, ``random_state=seed``) is saved as ``out/tsne/<setting>[@eps].npz``. Columns: the
    episode's few-shot accuracy with a binomial 95 % CI over its queries."""
    import numpy as np
    from sklearn.manifold import TSNE as SkTSNE

    from batmann.attacks import attacked_episode, fgsm_direction
    from batmann.evaluate import DigitalSystem, score_episode
    from batmann.memory import quantize_keys
    from batmann.tasks import make_sampler
    from batmann.utils.atomic import atomic_path
    from batmann.utils.determinism import deterministic_kernels

    ck, _ = _loaded(checkpoint)
    model = ck.model.eval()
    ep = make_sampler(cache, scale.tsne_episodes, "test", seed).sample(index=0)
    result = {}
    with deterministic_kernels("cpu", True):
        direction = fgsm_direction(model, ep, ck.config.sim_cal) if any(r.epsilon for r in rows) else None
        for r in rows:
            e = attacked_episode(ep, direction, float(r.epsilon)) if r.epsilon else ep
            system = DigitalSystem(model, keys=r.keys, cache_features=False)
            acc = score_episode(system, e).accuracy
            feats = quantize_keys(system.features(e.query), r.keys).numpy().astype(np.float64)
            n = feats.shape[0]
            emb = SkTSNE(2, perplexity=min(30.0, (n - 1) / 3), init="pca", random_state=seed).fit_transform(feats)
            path = out / "tsne" / f"{r.key}.npz"
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                np.savez(f, embedding=emb, labels=e.query_labels.numpy(), classes=e.classes.numpy())
            ci = 196.0 * math.sqrt(acc * (1 - acc) / n)
            result[r.key] = {"accuracy_pct": f"{100 * acc:.3f}", "ci95_pct": f"{ci:.3f}", "episodes": 1}
    return result


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


def _row_key(row: dict[str, str]) -> str:
    return row_key(row["setting"], row.get("epsilon"), row.get("chip"))


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
                   command: str | None = None, cache=None, seed: int = 0,
                   resume_from: str | Path | None = None, rows: list[str] | None = None,
                   deterministic: bool = True, workers: int = 1, train_device: str = "cpu") -> ExperimentSummary:
    """Run experiment ``name`` (see :data:`EXPERIMENTS`) into ``out``; rows already recorded there
    are kept, the rest computed in the seed's order. ``resume_from``: a results folder whose
    table and finished trainings are taken first (:func:`import_results`). ``rows``: compute
    only the rows with these keys (``Row.key``: ``S5``, ``S5@ideal``, ``S3@0.1``).
    ``deterministic=False``: the trainings run on every core, not bit-reproducibly (the
    evaluations stay deterministic). ``workers > 1``: the FGSM rows of different trainings run
    in that many worker processes at once (the same numbers as one process). ``train_device``:
    where the trainings run (``cpu``, ``cuda``, ``cuda:N``); the evaluations run on the CPU,
    deterministically, wherever the trainings ran."""
    from batmann.utils.device import resolve_device

    resolve_device(train_device)  # a bad name fails here, before anything is written
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be a positive integer, got {workers!r}")
    if name not in EXPERIMENTS:
        raise ConfigError(f"experiment {name!r} is not one of {', '.join(EXPERIMENTS)}")
    exp = EXPERIMENTS[name]
    if rows is not None:
        known = [r.key for r in exp.rows]
        unknown = [k for k in rows if k not in known]
        if unknown or not rows:
            raise ConfigError(f"{name} has no row {', '.join(unknown) or '(none given)'} "
                              f"(its rows: {', '.join(known)})")
    scale = SCALES[(exp.dataset, "quick" if quick else "full")]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if resume_from is not None:
        import_results(resume_from, out, exp, scale, seed)
    _check_scale(out, exp, scale)
    t0 = time.perf_counter()
    planned = [r for r in exp.rows if scale.chip_rows or r.chip is None or r.epsilon is not None]
    _write_record(out, exp, planned, scale, command, seed)
    if cache is None or exp.dataset != "omniglot":  # a passed cache is Omniglot's
        from batmann.data import load_episode_images

        cache = load_episode_images(exp.dataset, 32)
    table = out / f"{exp.name}.csv"
    done = {_row_key(r): r for r in read_rows(table)}
    pending = [r for r in planned if r.key not in done and (rows is None or r.key in rows)]
    ran = 0
    def record(row: Row, training: Training, ckpt: Path, cols: dict[str, Any]) -> None:
        nonlocal ran
        done[row.key] = {
            "experiment": exp.name, "setting": row.setting,
            "epsilon": "" if row.epsilon is None else f"{row.epsilon:g}", "description": row.description,
            "controller": training.controller, "sim_cal": training.sim_cal, "keys": row.keys,
            "train_episodes": "" if training.checkpoint else scale.train_episode,
            "seed_accuracy_pct": "" if row.seed_accuracy_pct is None else f"{row.seed_accuracy_pct:.2f}",
            "checkpoint": training.checkpoint or str(ckpt.relative_to(out)), **cols,
        }
        write_rows(table, [done[r.key] for r in planned if r.key in done])  # one row at a time
        ran += 1
        if progress:
            r = done[row.key]
            seed_txt = f" (seed {r['seed_accuracy_pct']} %)" if r["seed_accuracy_pct"] else ""
            print(f"{exp.name} {row.key}: {r['accuracy_pct']} +- {r['ci95_pct']} %{seed_txt}", flush=True)

    # trainings already finished (or shipped) first: their rows need no training
    trainings = sorted(dict.fromkeys(r.training for r in pending), key=lambda t: not _trained(t, scale, out))
    parallel = []  # (training, its FGSM rows, checkpoint) for the worker processes
    for training in trainings:
        rows = [r for r in pending if r.training == training]
        ckpt = ensure_trained(training, scale, out, cache, progress, seed, deterministic, train_device)
        ck, digital = _loaded(ckpt)  # loaded once; its features are computed once for every row
        for row in rows:
            if row.epsilon is None and exp.kind == "accuracy" and row.chip is None:
                res = evaluate_row(row, ck, scale, cache, progress, seed, digital)
                record(row, training, ckpt, {"accuracy_pct": f"{res.accuracy_pct:.3f}",
                                             "ci95_pct": f"{res.ci95_pct:.3f}", "episodes": res.episodes})
            elif row.epsilon is None and exp.kind == "accuracy":
                record(row, training, ckpt, evaluate_chip_row(row, ck, scale, cache, progress, seed, digital))
        if exp.kind == "tsne":
            results = evaluate_tsne(rows, ck, scale, cache, out, seed)
            for row in rows:
                record(row, training, ckpt, results[row.key])
            continue
        attacked = [r for r in rows if r.epsilon is not None]
        if attacked and workers > 1:
            parallel.append((training, attacked, ckpt))
        elif attacked:
            results = evaluate_attacked(attacked, ck, scale, cache, progress, seed, episode_log_dir(out, exp))
            for row in attacked:
                record(row, training, ckpt, results[row.key])
    if parallel:
        _attacked_in_workers(exp, parallel, scale, seed, workers, progress, record, episode_log_dir(out, exp))
    rows = [done[r.key] for r in planned if r.key in done]
    from batmann.experiments.figures import plot_experiment

    figure = plot_experiment(exp, rows, out / f"{exp.name}.png", scale.name)
    return ExperimentSummary(exp.name, out, table, figure, len(rows), ran, time.perf_counter() - t0)


def _write_record(out: Path, exp: Experiment, rows: list[Row], scale: Scale, command: str | None,
                  seed: int) -> None:
    import torch

    from batmann import __version__

    atomic_write_json(out / f"{exp.name}.json", {
        "experiment": exp.name, "title": exp.title, "command": command, "seed": seed,
        "scale": scale.to_dict(),
        "rows": [{"setting": r.setting, "epsilon": r.epsilon, "description": r.description,
                  "training": r.training.name, "keys": r.keys, "seed_accuracy_pct": r.seed_accuracy_pct,
                  "chip": r.chip, "chip_spec": CHIPS.get(r.chip or "")} for r in rows],
        "versions": {"batmann": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "machine": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
