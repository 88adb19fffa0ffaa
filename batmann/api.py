"""High-level Python API: the same operations as the ``batmann`` commands."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

from batmann.checkpoint import Checkpoint, load_checkpoint
from batmann.config import KEY_MODES, EpisodeOptions
from batmann.errors import ConfigError
from batmann.evaluate import EvalResult
from batmann.utils.atomic import atomic_write_json
from batmann.utils.device import resolve_device


def evaluate_checkpoint(checkpoint: str | Path | Checkpoint, episodes: int = 1000, seed: int = 0,
                        keys: str | None = None, episode_options: EpisodeOptions | None = None,
                        device: str = "auto", progress: bool = False, cache=None) -> EvalResult:
    """Test-only evaluation of a checkpoint on ``episodes`` test episodes.

    ``keys`` and ``episode_options`` default to the checkpoint's own; ``seed`` fixes the
    episodes (the same seed gives the same episodes for every checkpoint).
    """
    from batmann.train import test

    if episodes < 1:
        raise ConfigError(f"episodes must be >= 1 (got {episodes})")
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
        from batmann.data import load_image_cache

        cache = load_image_cache(config.model.image_size)
    return test(ckpt.model.to(dev), config, cache, dev, episodes, seed=seed, progress=progress)


def save_eval_result(checkpoint_path: Path, result: EvalResult, settings: dict[str, Any],
                     command: str) -> Path:
    """Record ``result`` in ``<checkpoint>.eval.json`` (one entry per distinct settings)."""
    out = checkpoint_path.with_suffix(".eval.json")
    entries: list[dict[str, Any]] = []
    if out.exists():
        try:
            entries = json.loads(out.read_text()).get("results", [])
        except (json.JSONDecodeError, AttributeError):
            entries = []
    entries = [e for e in entries if e.get("settings") != settings]
    entries.append({"settings": settings, **result.to_dict(), "command": command,
                    "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    atomic_write_json(out, {"results": entries})
    return out
