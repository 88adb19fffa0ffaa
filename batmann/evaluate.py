"""Episodic evaluation: the same loop for the digital system and for in-memory systems.

A *system* turns images into features and scores queries against the keys written into its
memory (see :class:`System`). :class:`DigitalSystem` is the BATMANN model on the CPU/GPU;
``batmann.hardware`` wraps the crossbar simulation behind the same interface, so one
evaluator runs both on the very same episodes.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Protocol

import numpy as np
import torch

from batmann.errors import ConfigError
from batmann.memory import class_logits, inference_similarity, quantize_keys


class System(Protocol):
    """What the evaluator needs from a (digital or in-memory) BATMANN system."""

    def features(self, images: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """Images (B, C, H, W) -> features (B, d). ``ids`` identify images for caching."""

    def write(self, keys: torch.Tensor) -> None:
        """Store support features (N, d) as keys (quantised by the system's key mode)."""

    def similarities(self, queries: torch.Tensor) -> torch.Tensor:
        """Query features (Q, d) -> similarities (Q, N) against the stored keys."""


class DigitalSystem:
    """The BATMANN controller and key memory, computed digitally.

    ``keys`` is the key mode at inference: ``real`` (cosine on real features), ``bipolar``
    ({-1, 1}: q.k/d) or ``binary`` ({0, 1}: 1/2 + q.k/(2d)). Features of images with known
    ``ids`` are cached (the model is fixed in eval mode), so an image seen in an earlier
    episode is never recomputed. ``autocast`` (bf16) on the CPU puts the model's weights in
    channels-last memory format (in place; the same values).
    """

    def __init__(self, model: torch.nn.Module, keys: str = "bipolar", cache_features: bool = True,
                 autocast: bool = False, store=None, test_views: int = 0, view_seed: int = 0) -> None:
        self.model = model.eval()
        self.keys_mode = keys
        self.autocast = autocast
        if autocast and _on_cpu(model):  # oneDNN's bf16 convolutions run faster on channels-last weights
            self.model = model.to(memory_format=torch.channels_last)
        #: test-time augmentation: each image's feature is the mean over the image and this many
        #: random affine views of it (:func:`batmann.data.augment.image_views`, the training's
        #: ``--augment`` ranges, drawn from ``view_seed`` and the image's id); 0 = off
        self.test_views = check_test_views(test_views)
        self.view_seed = view_seed
        self._cache: dict[int, torch.Tensor] | None = {} if cache_features else None
        self._keys: torch.Tensor | None = None
        #: a :class:`batmann.feature_store.FeatureStore` backing the feature cache on disk
        self.store = store if cache_features else None
        self._stored: set[int] = set()
        if self.store is not None:
            dev = next(iter(model.parameters()), torch.zeros(())).device
            self._cache.update({k: v.to(dev) for k, v in self.store.load().items()})
            self._stored = set(self._cache)

    def save_features(self) -> int:
        """Write the features computed since the store was read to the store (atomically, merged
        with what other processes wrote); returns how many rows were new."""
        if self.store is None:
            return 0
        new = {k: v for k, v in self._cache.items() if k not in self._stored}
        self.store.save(new)
        self._stored.update(new)
        return len(new)

    @torch.no_grad()
    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.autocast and images.device.type in ("cpu", "cuda"):
            with torch.autocast(images.device.type, dtype=torch.bfloat16):
                return self.model(images).float()
        return self.model(images).float()

    @torch.no_grad()
    def _viewed(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The mean feature over ``images`` and their :attr:`test_views` views (B, d)."""
        from batmann.config import AUGMENT_DEFAULTS
        from batmann.data.augment import image_views

        cfg, id_list = AUGMENT_DEFAULTS, ids.tolist()
        total = self._forward(images)
        for view in range(1, self.test_views + 1):
            total += self._forward(image_views(images, id_list, cfg, self.view_seed, view))
        return total / (self.test_views + 1)

    @torch.no_grad()
    def features(self, images: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        if self.test_views:
            if ids is None:
                raise ConfigError("test-time views need the images' ids (an episode's *_index)")
            if self._cache is None:
                return self._viewed(images, ids)
            return cached_rows(self._cache, images, ids, self._viewed, with_ids=True)
        if ids is None or self._cache is None:
            return self._forward(images)
        return cached_rows(self._cache, images, ids, self._forward)

    def with_keys(self, keys: str) -> "DigitalSystem":
        """The same model and feature cache with another key format: features depend on the
        images only, so several key formats are scored without recomputing them."""
        other = DigitalSystem(self.model, keys=keys, cache_features=False, autocast=self.autocast,
                              test_views=self.test_views, view_seed=self.view_seed)
        other._cache = self._cache
        return other

    def write(self, keys: torch.Tensor) -> None:
        self._keys = quantize_keys(keys, self.keys_mode)

    def similarities(self, queries: torch.Tensor) -> torch.Tensor:
        if self._keys is None:
            raise RuntimeError("write() keys before asking for similarities")
        return inference_similarity(quantize_keys(queries, self.keys_mode), self._keys, self.keys_mode)


def _on_cpu(model: torch.nn.Module) -> bool:
    return next(iter(model.parameters()), torch.zeros(())).device.type == "cpu"


def check_test_views(views) -> int:
    """``views`` if it is a whole number >= 0 (test-time views per image), else a one-line error."""
    if isinstance(views, bool) or not isinstance(views, int) or views < 0:
        raise ConfigError(f"test views must be a whole number >= 0 (0 = off), got {views!r}")
    return views


def cached_rows(store: dict[int, torch.Tensor], images: torch.Tensor, ids: torch.Tensor,
                compute: Callable[..., torch.Tensor], with_ids: bool = False) -> torch.Tensor:
    """``compute(images)`` row by row, memoised in ``store`` by image id: rows whose id is not
    stored yet are computed in one batch (an id that appears twice in ``ids`` only once), the
    rest are looked up. Images (B, ...) and ids (B,) -> (B, ...). ``with_ids``: call
    ``compute(images, their ids)``."""
    id_list = ids.tolist()
    first: dict[int, int] = {}
    for i, key in enumerate(id_list):
        if key not in store:
            first.setdefault(key, i)
    if first:
        idx = torch.tensor(list(first.values()), device=images.device)
        rows = compute(images[idx], torch.tensor(list(first.keys()))) if with_ids else compute(images[idx])
        for key, row in zip(first.keys(), rows):
            store[key] = row
    return torch.stack([store[key] for key in id_list])


def image_ids(indices: torch.Tensor | None, rotation: int) -> torch.Tensor | None:
    """Cache keys for images: the global image index and the rotation (0..3) of the episode."""
    if indices is None:
        return None
    return indices.to("cpu", torch.int64) * 4 + (rotation // 90) % 4


@dataclass
class EpisodeScores:
    """One episode's outcome for one system."""

    predictions: torch.Tensor  # (Q,) predicted labels
    similarities: torch.Tensor  # (Q, N) raw similarities
    accuracy: float


def score_episode(system: System, episode, use_val: bool = False,
                  query_features: torch.Tensor | None = None) -> EpisodeScores:
    """Write the episode's supports into ``system`` and classify its queries (or val images).

    ``query_features``: the queries' features (Q, d) if already computed by ``system`` (e.g.
    shared by several key formats of one digital model); otherwise computed here."""
    rot = int(episode.rotation)
    s_ids = image_ids(getattr(episode, "support_index", None), rot)
    queries = episode.val if use_val else episode.query
    labels = episode.val_labels if use_val else episode.query_labels
    q_idx = getattr(episode, "val_index" if use_val else "query_index", None)
    keys = system.features(episode.support, s_ids)
    q = system.features(queries, image_ids(q_idx, rot)) if query_features is None else query_features
    system.write(keys)
    sims = system.similarities(q)
    ways = int(episode.support_labels.max().item()) + 1
    logits = class_logits(sims, episode.support_labels.to(sims.device), ways)
    pred = logits.argmax(dim=1).cpu()
    acc = (pred == labels.cpu()).float().mean().item()
    return EpisodeScores(predictions=pred, similarities=sims.detach().cpu(), accuracy=acc)


@dataclass
class EvalResult:
    """Mean accuracy over episodes with a 95 % confidence interval (normal approximation)."""

    accuracy_pct: float
    ci95_pct: float
    episodes: int
    ways: int
    shots: int
    queries_per_class: int
    per_episode: list[float] = field(default_factory=list, repr=False)

    def to_dict(self, per_episode: bool = False) -> dict:
        d = asdict(self)
        if not per_episode:
            d.pop("per_episode")
        return d


def mean_ci95(values: Iterable[float]) -> tuple[float, float]:
    """Mean and 95 % CI half-width (1.96 standard errors) of per-episode accuracies, in %."""
    arr = np.asarray(list(values), dtype=np.float64) * 100.0
    if arr.size == 0:
        return float("nan"), float("nan")
    if arr.size == 1:
        return float(arr.mean()), 0.0
    return float(arr.mean()), float(1.96 * arr.std(ddof=1) / math.sqrt(arr.size))


def evaluate_system(system: System, sampler, episodes: int, progress: bool = False,
                    use_val: bool = False, desc: str = "evaluate") -> EvalResult:
    """Run ``episodes`` episodes from ``sampler`` through ``system``."""
    from tqdm import tqdm

    accs: list[float] = []
    ways = shots = queries = 0
    bar = tqdm(range(episodes), desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    for _ in bar:
        ep = sampler.sample()
        res = score_episode(system, ep, use_val=use_val)
        accs.append(res.accuracy)
        ways = int(ep.support_labels.max().item()) + 1
        shots = ep.support.shape[0] // ways
        queries = (ep.val if use_val else ep.query).shape[0] // ways
        if progress:
            bar.set_postfix(acc=f"{100 * sum(accs) / len(accs):.2f}%")
    mean, ci = mean_ci95(accs)
    return EvalResult(accuracy_pct=mean, ci95_pct=ci, episodes=episodes, ways=ways, shots=shots,
                      queries_per_class=queries, per_episode=accs)


def inference_precision(controller: str, precision: str, device: torch.device | str) -> str:
    """The precision an evaluation runs in: ``fp32``, ``bf16`` (autocast), or for ``auto`` bf16
    for a full-precision controller where ``device`` runs bf16 natively and fp32 elsewhere and
    for binarized controllers (their +-1 products are exact in int8 anyway). bf16 inference of
    the shipped fp controllers gave the same prediction as fp32 for 99.75-99.94 % of the queries
    (``benchmarks/bench_precision.py``, docs/performance.md#precision)."""
    from batmann.options import PRECISIONS

    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if controller != "fp":
        return "fp32"
    from batmann.utils.device import has_fast_bf16, resolve_device

    return "bf16" if has_fast_bf16(resolve_device(device)) else "fp32"


def evaluate_model(model: torch.nn.Module, config, cache, device: torch.device | str, episodes: int,
                   seed: int, progress: bool = False, precision: str = "fp32", store=None,
                   test_views: int = 0) -> EvalResult:
    """Digital accuracy of ``model`` on ``episodes`` test episodes (test characters of
    ``config.episodes.split``, test query pool, key mode ``config.keys``; a
    :class:`~batmann.config.TrainConfig`), drawn with ``seed``; features cached per image, and
    with ``store`` (a :class:`~batmann.feature_store.FeatureStore`) read from and saved to disk,
    also when interrupted; ``precision`` ``fp32`` or ``bf16`` (autocast; see
    :func:`inference_precision`); ``test_views``: test-time augmentation (:class:`DigitalSystem`,
    views drawn from ``seed``; no ``store`` then)."""
    from batmann.tasks import make_sampler

    if test_views and store is not None:
        raise ConfigError("a feature store holds plain features; evaluate test-time views without one")
    if precision not in ("fp32", "bf16"):
        raise ConfigError(f"evaluation precision must be fp32 or bf16, got {precision!r}")
    sampler = make_sampler(cache, config.episodes, "test", seed, device)
    system = DigitalSystem(model, keys=config.keys, cache_features=True, autocast=precision == "bf16", store=store,
                           test_views=test_views, view_seed=seed)
    try:
        return evaluate_system(system, sampler, episodes, progress=progress, desc="test")
    finally:
        try:
            system.save_features()
        except OSError as err:  # e.g. a read-only home: the evaluation itself stands
            warnings.warn(f"features not stored in {store.path}: {err}", stacklevel=2)
