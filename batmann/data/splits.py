"""Which characters train and which test.

- ``"seed"`` (the seed's split, the default): all 1,623 characters of both sets in one list,
  shuffled with Python's ``random.seed(806); random.shuffle(...)``; the first 964 train, the
  remaining 659 test, so both halves mix background and evaluation alphabets.
- ``"lake"`` (Lake et al.'s split): the 964 background characters train, the 659 evaluation
  characters test.
"""

from __future__ import annotations

import random

from batmann.errors import ConfigError
from batmann.options import SPLITS  # noqa: F401  (defined once there)

SEED_SHUFFLE = 806
SEED_TRAIN_CHARACTERS = 964
OMNIGLOT_CHARACTERS = 1623


def seed_character_order(cache) -> list[int]:
    """All characters in the order the seed lists them before its shuffle.

    The seed (``data/data_loading.py``, ``omniglot_character_folders``) keeps the 50 alphabets
    of both archives in one folder and lists ``ALPHABET/CHARACTER`` folders with nested
    ``os.listdir`` calls, alphabet by alphabet. ``os.listdir`` returns names in the file system's
    arbitrary order, so the seed's split depends on the machine; we use the reproducible version
    of the same listing: alphabets sorted by name across both sets (Python string order:
    ``Alphabet_of_the_Magi``, ``Angelic``, ``Anglo-Saxon_Futhorc``, ...), and within each alphabet
    its character folders sorted by name (``character01``, ``character02``, ...). Sorting the
    full paths gives the same order (no alphabet name is a prefix of another).
    """
    alphabets = cache.alphabet_names
    char_alphabet = cache.character_alphabet

    def key(c: int) -> tuple[str, str]:
        return alphabets[int(char_alphabet[c])], cache.character_names[c].rsplit("/", 1)[-1]

    return sorted(range(cache.n_characters), key=key)


def _background_split(cache) -> tuple[list[int], list[int]]:
    bg = cache.character_background
    return ([c for c in range(cache.n_characters) if bg[c]], [c for c in range(cache.n_characters) if not bg[c]])


def split_characters(cache, split: str = "seed") -> tuple[list[int], list[int]]:
    """``(train_chars, test_chars)``: global character indices into ``cache``.

    ``"seed"``: :func:`seed_character_order` shuffled by ``random.Random(806).shuffle`` (the same
    permutation as the seed's ``random.seed(806); random.shuffle(...)``, without touching the
    global generator); the first 964 train. For a cache that does not hold all 1,623 characters
    the same fraction (964/1623, rounded) trains. ``"lake"``: background characters train,
    evaluation characters test, in cache order. An MNIST cache (:mod:`batmann.data.mnist`) has
    one split whatever ``split`` says: each digit's training images train, its other images test.
    """
    if cache.manifest.get("dataset") == "mnist":  # one split: the training images of every digit
        return _background_split(cache)
    if split == "seed":
        order = seed_character_order(cache)
        random.Random(SEED_SHUFFLE).shuffle(order)
        n = len(order)
        n_train = SEED_TRAIN_CHARACTERS if n == OMNIGLOT_CHARACTERS else round(n * SEED_TRAIN_CHARACTERS /
                                                                                OMNIGLOT_CHARACTERS)
        return order[:n_train], order[n_train:]
    if split == "lake":
        return _background_split(cache)
    raise ConfigError(f"split {split!r} is not one of {', '.join(SPLITS)}")
