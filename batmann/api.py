"""High-level Python API: the same operations as the ``batmann`` commands."""

from __future__ import annotations

import copy
import os
from pathlib import Path

from batmann.checkpoint import Checkpoint, load_checkpoint
from batmann.config import KEY_MODES, EpisodeOptions
from batmann.errors import ConfigError
from batmann.evaluate import EvalResult, check_test_views, evaluate_model, inference_precision
from batmann.utils.device import resolve_device


def evaluate_checkpoint(checkpoint: str | Path | Checkpoint, episodes: int = 1000, seed: int = 0,
                        keys: str | None = None, episode_options: EpisodeOptions | None = None,
                        device: str = "auto", progress: bool = False, cache=None,
                        precision: str = "fp32", feature_cache: bool | None = None,
                        test_views: int = 0) -> EvalResult:
    """Test-only evaluation of a checkpoint on ``episodes`` test episodes.

    ``keys`` and ``episode_options`` default to the checkpoint's own; ``seed`` fixes the
    episodes (the same seed gives the same episodes for every checkpoint). ``precision``:
    ``fp32``, ``bf16`` or ``auto`` (:func:`batmann.evaluate.inference_precision`; the command
    line's default). With ``feature_cache`` (default: on unless ``$BATMANN_FEATURE_CACHE`` is
    ``0``) the features of a checkpoint file are kept on disk
    (:func:`batmann.feature_store.evaluation_store`): a second evaluation of the same checkpoint
    on the same images costs seconds and gives the same result bit for bit. ``test_views``:
    test-time augmentation, each image's feature averaged over it and that many random affine
    views (the training's ``--augment`` ranges, drawn from ``seed`` and the image; no feature
    store then).
    """
    if episodes < 1:
        raise ConfigError(f"episodes must be >= 1 (got {episodes})")
    check_test_views(test_views)
    dev = resolve_device(device)
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint, dev)
    config = copy.deepcopy(ckpt.config)  # overrides below must not change the caller's checkpoint
    if keys is not None:
        if keys not in KEY_MODES:
            raise ConfigError(f"keys {keys!r} is not one of {', '.join(KEY_MODES)}")
        config.keys = keys
    if episode_options is not None:
        config.episodes = episode_options.validate()
    if cache is None:
        from batmann.data import load_episode_images

        cache = load_episode_images(config.episodes.dataset, config.model.image_size)
    precision = inference_precision(config.model.controller, precision, dev)
    store = None
    if feature_cache is None:
        feature_cache = os.environ.get("BATMANN_FEATURE_CACHE", "1") != "0"
    if feature_cache and Path(ckpt.path).is_file() and not test_views:
        from batmann.feature_store import evaluation_store

        store = evaluation_store(ckpt.path, cache, precision, dev)
    return evaluate_model(ckpt.model.to(dev), config, cache, dev, episodes, seed, progress=progress,
                          precision=precision, store=store, test_views=test_views)
