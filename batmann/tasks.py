"""From the seed's episode options to samplers over the right characters."""

from __future__ import annotations

import torch

from batmann.config import EpisodeOptions


def episode_config(opts: EpisodeOptions, phase: str):
    """The sampler configuration for ``phase`` ("train": queries and a validation pool from
    the training characters; "test": queries from the test pool, no validation pool)."""
    from batmann.data import EpisodeConfig

    if phase == "train":
        return EpisodeConfig(ways=opts.class_num, shots=opts.num_shot, queries=opts.batch_size_train,
                             query_pool=opts.pool_query_train, val_queries=opts.val_num_train,
                             val_pool=opts.pool_val_train, within_alphabet=opts.within_alphabet,
                             distinct_drawers=opts.distinct_drawers)
    if phase == "test":
        return EpisodeConfig(ways=opts.class_num, shots=opts.num_shot, queries=opts.batch_size_test,
                             query_pool=opts.pool_query_test, within_alphabet=opts.within_alphabet,
                             distinct_drawers=opts.distinct_drawers)
    raise ValueError(f"phase {phase!r} is not train or test")


def make_sampler(cache, opts: EpisodeOptions, phase: str, seed: int,
                 device: torch.device | str = "cpu"):
    """An :class:`EpisodeSampler` over the ``phase`` characters of ``opts.split``."""
    from batmann.data import EpisodeSampler, split_characters

    train_chars, test_chars = split_characters(cache, opts.split)
    chars = train_chars if phase == "train" else test_chars
    return EpisodeSampler(cache, chars, episode_config(opts, phase), seed=seed, device=device)
