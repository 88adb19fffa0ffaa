"""What a worker computes: digital feature chunks and cells. Plain functions of plain data, so
any executor (a local process pool, a Dask cluster) can ship them.

A worker keeps, per process, the loaded checkpoint, the image cache, the episode sampler and the
digital features of each episode set it has seen (:func:`context`), so the controller runs once
per image per process, never once per cell. Every task runs on one thread
(:func:`~batmann.utils.determinism.deterministic_kernels`): a cell's numbers are the same bits
whichever worker computes it and however many run beside it.
"""

from __future__ import annotations

import math
import os
import socket
import time
from dataclasses import dataclass, replace
from typing import Any

import torch

from batmann.feature_store import FeatureStore, chunks, compute_features
from batmann.utils.determinism import deterministic_kernels


@dataclass(frozen=True)
class EpisodeSet:
    """The episodes every cell of one checkpoint sees: the checkpoint's test episodes with the
    study's overrides (``ways``, ``shots``, ``queries``, ``within_alphabet``,
    ``distinct_drawers``), ``count`` of them from ``seed``."""

    checkpoint: str  # resolved path
    checkpoint_sha: str
    count: int
    seed: int
    ways: int | None = None
    shots: int | None = None
    queries: int | None = None
    within_alphabet: bool | None = None
    distinct_drawers: bool | None = None

    @classmethod
    def from_study(cls, path: str, sha: str, episodes: dict[str, int]) -> "EpisodeSet":
        return cls(path, sha, episodes["count"], episodes["seed"], episodes.get("ways"), episodes.get("shots"),
                   episodes.get("queries"), episodes.get("within_alphabet"), episodes.get("distinct_drawers"))


class Context:
    """One process's loaded state for an :class:`EpisodeSet` (see :func:`context`)."""

    def __init__(self, es: EpisodeSet, device: str = "cpu"):
        from batmann.checkpoint import load_checkpoint
        from batmann.data import load_episode_images
        from batmann.tasks import make_sampler

        self.es = es
        self.device = torch.device(device)
        self.ckpt = load_checkpoint(es.checkpoint, "cpu")
        self.cache = load_episode_images(self.ckpt.config.episodes.dataset, self.ckpt.config.model.image_size)
        opts = self.ckpt.config.episodes
        over = {k: v for k, v in (("class_num", es.ways), ("num_shot", es.shots), ("batch_size_test", es.queries),
                                  ("within_alphabet", es.within_alphabet), ("distinct_drawers", es.distinct_drawers))
                if v is not None}
        if es.queries is not None and es.queries > opts.pool_query_test:
            over["pool_query_test"] = es.queries
        self.opts = replace(opts, **over).validate()
        self.sampler = make_sampler(self.cache, self.opts, "test", es.seed)
        self.store = FeatureStore(es.checkpoint_sha, _cache_digest(self.cache))
        self._features: dict[int, torch.Tensor] | None = None
        self._digital_scores: dict[str, list] = {}
        self._systems: dict[str, object] = {}
        self._ids: list[int] | None = None

    def image_ids(self) -> list[int]:
        """Every (image, rotation) id of the episode set, sorted, without repeats."""
        if self._ids is not None:
            return self._ids
        ids: set[int] = set()
        for i in range(self.es.count):
            _, s, q, _, rot = self.sampler.indices(i)
            r = (rot // 90) % 4
            ids.update(int(x) * 4 + r for x in s.ravel())
            ids.update(int(x) * 4 + r for x in q.ravel())
        self._ids = sorted(ids)
        return self._ids

    def missing_chunks(self) -> list[list[int]]:
        have = self.features()
        return chunks(i for i in self.image_ids() if i not in have)

    def features(self, reload: bool = False) -> dict[int, torch.Tensor]:
        if self._features is None or reload:
            self._features = self.store.load()
        return self._features

    def digital_system(self, keys: str):
        """A :class:`~batmann.evaluate.DigitalSystem` whose feature cache holds every stored
        feature (missing ones are computed in the fixed chunks and stored)."""
        from batmann.evaluate import DigitalSystem

        if keys in self._systems:
            return self._systems[keys]
        feats = self.features()
        missing = [i for i in self.image_ids() if i not in feats]
        if missing:
            feats = self.features(reload=True)
            new = {}
            for chunk in chunks(i for i in missing if i not in feats):
                new.update(zip(chunk, compute_features(self.ckpt.model, self.cache, chunk, self.device)))
            self.store.save(new)
            feats.update(new)
        system = DigitalSystem(self.ckpt.model.cpu().eval(), keys=keys)
        system._cache = feats  # shared, read-only from here on (every id is present)
        self._systems[keys] = system
        return system


    def digital_scores(self, keys: str) -> list:
        """The digital system's (:class:`~batmann.evaluate.EpisodeScores`, exact accuracy) of every
        episode, computed once per process and key format; every cell compares with them."""
        from batmann.evaluate import score_episode

        if keys not in self._digital_scores:
            system = self.digital_system(keys)
            out = []
            for i in range(self.es.count):
                ep = self.sampler.sample(index=i)
                scores = score_episode(system, ep)
                out.append((scores, _exact(scores, ep)))
            self._digital_scores[keys] = out
        return self._digital_scores[keys]


_CONTEXTS: dict[tuple, Context] = {}


def context(es: EpisodeSet, device: str = "cpu") -> Context:
    """The process's :class:`Context` for ``es`` (built on first use; the last few are kept)."""
    key = (es, str(device))
    if key not in _CONTEXTS:
        if len(_CONTEXTS) >= 4:
            _CONTEXTS.pop(next(iter(_CONTEXTS)))
        _CONTEXTS[key] = Context(es, device)
    return _CONTEXTS[key]


def _cache_digest(cache) -> str:
    from batmann.feature_store import cache_digest

    if not hasattr(cache, "_batmann_digest"):
        cache._batmann_digest = cache_digest(cache)
    return cache._batmann_digest


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# -- tasks ----------------------------------------------------------------------------------------
def feature_chunk(task: dict[str, Any]) -> tuple[EpisodeSet, list[int], torch.Tensor]:
    """Task: digital features (len(ids), d) of one fixed chunk of image ids (``task``: ``es``,
    ``ids``, ``device``)."""
    es, ids = task["es"], task["ids"]
    ctx = context(es, task.get("device", "cpu"))
    return es, ids, compute_features(ctx.ckpt.model, ctx.cache, ids, ctx.device)


def digital_reference(es: EpisodeSet, keys: str, device: str = "cpu") -> dict[str, Any]:
    """The digital system's per-episode accuracies on the episode set (features from the store)."""
    from batmann.evaluate import mean_ci95

    ctx = context(es, device)
    with deterministic_kernels(device):
        accs = [acc for _, acc in ctx.digital_scores(keys)]
    mean, ci = mean_ci95(accs)
    return {"keys": keys, "accuracy_pct": mean, "ci95_pct": ci, "per_episode": accs,
            "ways": ctx.opts.class_num, "shots": ctx.opts.num_shot, "queries": ctx.opts.batch_size_test}


def _exact(scores, ep) -> float:
    """An episode's accuracy as correct / queries in float64 (not a float32 mean)."""
    labels = ep.query_labels.cpu()
    return int((scores.predictions == labels).sum()) / labels.numel()


def run_cell(task: dict[str, Any]) -> dict[str, Any]:
    """Task: one cell. ``task`` holds ``es`` (:class:`EpisodeSet`), ``keys``, ``hardware``
    (HardwareSpec fields), ``chip_seed``, ``device`` and the cell's identity; returns the store
    row (per-episode crossbar accuracies and agreements, paired statistics)."""
    from batmann.evaluate import score_episode
    from batmann.hardware import Pearson, calibrate, hardware_spec
    from batmann.memory import KeyCodec
    from batmann.study.spec import spec_fields
    from batmann.study.stats import paired
    from crossbar import convert

    t0 = time.perf_counter()
    es: EpisodeSet = task["es"]
    device = task.get("device", "cpu")
    ctx = context(es, device)
    spec = hardware_spec(**spec_fields(task["hardware"]), seed=task["chip_seed"])
    with deterministic_kernels(device):
        digital = ctx.digital_system(task["keys"])
        scores = ctx.digital_scores(task["keys"])
        system = convert(ctx.ckpt, spec, codec=KeyCodec(task["keys"]), digital_features=digital.features)
        calibrate(system, spec, ctx.cache, ctx.opts)
        acc_d, acc_a, agree, n_q = [], [], [], 0
        pearson = Pearson()
        for i in range(es.count):
            ep = ctx.sampler.sample(index=i)
            rd, acc = scores[i]
            ra = score_episode(system, ep)
            acc_d.append(acc)
            acc_a.append(_exact(ra, ep))
            agree.append(int((rd.predictions == ra.predictions).sum()))
            n_q = rd.predictions.numel()
            pearson.add(rd.similarities, ra.similarities)
        cost = cell_cost(system, ctx.sampler.sample(index=0))
    corr = pearson.value()
    corr = None if math.isnan(corr) else corr  # undefined (one side constant): no value
    p = paired(acc_a, acc_d)
    return {
        "cell_id": task["cell_id"], "config_id": task["config_id"], "ref_id": task["ref_id"],
        "checkpoint": task["checkpoint"], "chip": task["chip"], "chip_seed": task["chip_seed"],
        "params": task["params"], "hardware": spec.describe(), "episodes": es.count,
        "crossbar_accuracy_pct": p["a_pct"], "crossbar_ci95_pct": p["a_ci95_pct"],
        "digital_accuracy_pct": p["b_pct"], "difference_pp": p["difference_pp"],
        "difference_ci95_pp": p["difference_ci95_pp"], "top1_agreement": sum(agree) / max(1, n_q * es.count),
        "score_correlation": corr, "per_episode": {"crossbar": acc_a, "agree": agree, "queries": n_q},
        "seconds": time.perf_counter() - t0, "worker": worker_name(), "cost": cost,
    }


def cell_cost(system, episode) -> dict[str, float]:
    """The cost columns (``batmann.study.tables.COST_RESULTS``) of a cell's chip: energy and latency
    per query on ``episode`` (the episode set's first) with the default periphery
    (``device_models.periphery``), and its ADC count."""
    from crossbar.cost import estimate

    r = estimate(system, [episode], digital_mac="int8").to_json()
    return {"energy_pj_per_query": r["energy_pj_per_query"]["total"],
            "energy_pj_per_query_digital": r["energy_pj_per_query"]["digital"],
            "latency_ns_per_query": r["latency_ns_per_query"]["total"], "adcs": r["adcs"]["total"]}
