"""Running a study: plan the cells, fill the digital features, run the cells, record each one.

:func:`run_study` is what ``batmann study run`` calls. In order:

1. The store in ``out`` is opened; a store that holds another study is refused unless
   ``extend`` (then only the new study's cells that are not recorded yet run). A checkpoint whose
   content changed since the store was started is refused.
2. For every checkpoint the digital features of every image of the episode set are made
   present in the feature store (``$BATMANN_HOME/features``): missing ones are computed in fixed
   chunks, as tasks of the executor, and written by this process.
3. The digital reference (per-episode accuracy, per checkpoint and key format) is recorded once.
4. The cells not yet recorded run as tasks; each result is written in its own transaction as
   soon as it arrives. One progress bar counts the cells, with an ETA.

Interrupting (Ctrl-C, ``kill``) loses only the cells in flight; the same command resumes.
"""

from __future__ import annotations

import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batmann.errors import ConfigError
from batmann.study.spec import Study
from batmann.study.store import StudyStore


@dataclass
class RunSummary:
    """What a :func:`run_study` call did."""

    cells: int
    done_before: int
    ran: int
    seconds: float
    out: Path

    def to_json(self) -> dict[str, Any]:
        return {"cells": self.cells, "done_before": self.done_before, "ran": self.ran,
                "seconds": self.seconds, "out": str(self.out)}


def _resolve_checkpoints(study: Study) -> dict[str, tuple[str, str]]:
    """name -> (path, sha256 of the file)."""
    from batmann.checkpoint import resolve_checkpoint
    from batmann.feature_store import file_digest

    out = {}
    for name in study.checkpoints:
        path = resolve_checkpoint(name)
        out[name] = (str(path), file_digest(path))
    return out


def _prepare(study: Study, store: StudyStore, ckpts: dict[str, tuple[str, str]], extend: bool, cells) -> None:
    """Check that ``store`` may take ``study``, then record the study, its checkpoints, the
    command and the planned cells in one transaction."""
    import json

    old = store.get_meta("fingerprint")
    if old is not None and old != study.fingerprint() and not extend:
        raise ConfigError(f"{store.root} holds another study (fingerprint {old}, this file's is "
                          f"{study.fingerprint()}); use --extend to add this study's new cells, or another --out")
    recorded = store.get_meta("checkpoints") or {}
    for name, (path, sha) in ckpts.items():
        if name in recorded and recorded[name] != sha:
            raise ConfigError(f"checkpoint {name!r} ({path}) changed since this study store recorded it; "
                              "use another --out folder")
    history = store.get_meta("history") or []
    meta = {"study": study.to_dict(), "fingerprint": study.fingerprint(), "format": "batmann-study/1",
            "checkpoints": {**recorded, **{n: sha for n, (_, sha) in ckpts.items()}},
            "history": history + [{"time": time.time(), "argv": shlex.join(sys.argv), "fingerprint": study.fingerprint()}]}
    now = time.time()
    store._write([("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (k, json.dumps(v, sort_keys=True)))
                  for k, v in meta.items()] +
                 [("INSERT OR IGNORE INTO plan (cell_id, config_id, checkpoint, chip, chip_seed, params, added) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (c.cell_id, c.config_id, c.configuration.checkpoint, c.chip, c.chip_seed,
                    json.dumps(c.configuration.params, sort_keys=True), now)) for c in cells])


def run_study(study: Study, out: str | Path, executor: str = "local", workers: int | None = None,
              dask_address: str | None = None, extend: bool = False, device: str = "cpu",
              progress: bool = True, log=None) -> RunSummary:
    """Run every cell of ``study`` not yet recorded in the store in ``out``; see the module docs."""
    from tqdm import tqdm

    from batmann.study.executors import make_executor
    from batmann.study.work import EpisodeSet, context, digital_reference, feature_chunk, run_cell
    from batmann.utils.device import resolve_device

    say = log or (lambda msg: print(msg, file=sys.stderr))
    device = str(resolve_device(device))
    t_start = time.perf_counter()
    ckpts = _resolve_checkpoints(study)  # a bad name fails before anything is written
    cells = study.cells()
    with StudyStore.open(out) as store:
        _prepare(study, store, ckpts, extend, cells)
        done = store.done_ids()
        todo = [c for c in cells if c.cell_id not in done]
        summary = RunSummary(cells=len(cells), done_before=len(cells) - len(todo), ran=0, seconds=0.0, out=Path(out))
        if not todo:
            say(f"study: all {len(cells)} cells are recorded in {store.path}")
            summary.seconds = time.perf_counter() - t_start
            return summary
        sets = {name: EpisodeSet.from_study(path, sha, study.episodes) for name, (path, sha) in ckpts.items()}
        needed = {c.configuration.checkpoint for c in todo}
        with make_executor(executor, workers, dask_address) as ex:
            # 2. digital features, in fixed chunks, written here
            jobs = []
            for name in needed:
                ctx = context(sets[name], device)
                jobs += [{"es": sets[name], "ids": chunk, "device": device} for chunk in ctx.missing_chunks()]
            if jobs:
                n_img = sum(len(j["ids"]) for j in jobs)
                say(f"study: digital features of {n_img} images ({len(jobs)} chunks, {ex.workers} workers)")
                bar = tqdm(total=n_img, desc="digital features", unit="img", disable=not progress, dynamic_ncols=True)
                pending: dict = {}  # written every 30 s and at the end (each write rewrites the file)
                last = time.monotonic()
                for es, ids, feats in ex.unordered(feature_chunk, jobs):
                    pending.setdefault(es, {}).update(zip(ids, feats))
                    bar.update(len(ids))
                    if time.monotonic() - last > 30:
                        for e, new in pending.items():
                            context(e, device).store.save(new)
                        pending, last = {}, time.monotonic()
                for e, new in pending.items():
                    context(e, device).store.save(new)
                bar.close()
            # 3. digital references
            refs: dict[tuple[str, str], str] = {}
            for c in todo:
                name = c.configuration.checkpoint
                keys = c.configuration.params.get("keys") or context(sets[name], device).ckpt.config.keys
                if (name, keys) in refs:
                    continue
                ref_id = f"{sets[name].checkpoint_sha[:16]}-{keys}-{study.fingerprint_episodes()}"
                refs[(name, keys)] = ref_id
                if store.get_digital(ref_id) is None:
                    ref = digital_reference(sets[name], keys, device)
                    store.put_digital({"ref_id": ref_id, "checkpoint": name, "keys": keys,
                                       "episodes": {**study.episodes, "ways": ref["ways"], "shots": ref["shots"],
                                                    "queries": ref["queries"]},
                                       "accuracy_pct": ref["accuracy_pct"], "ci95_pct": ref["ci95_pct"],
                                       "per_episode": ref["per_episode"]})
            # 4. the cells
            tasks = []
            for c in todo:
                name = c.configuration.checkpoint
                keys = c.configuration.params.get("keys") or context(sets[name], device).ckpt.config.keys
                tasks.append({"es": sets[name], "keys": keys, "hardware": c.configuration.hardware,
                              "chip_seed": c.chip_seed, "chip": c.chip, "device": device, "cell_id": c.cell_id,
                              "config_id": c.config_id, "ref_id": refs[(name, keys)], "checkpoint": name,
                              "params": c.configuration.params})
            say(f"study: {len(todo)} of {len(cells)} cells to run ({ex.name} executor, {ex.workers} workers); "
                f"results in {store.path}")
            bar = tqdm(total=len(cells), initial=len(cells) - len(todo), desc="study", unit="cell",
                       disable=not progress, dynamic_ncols=True)
            for row in ex.unordered(run_cell, tasks):
                store.put_cell(row)
                summary.ran += 1
                bar.update(1)
            bar.close()
    summary.seconds = time.perf_counter() - t_start
    return summary
