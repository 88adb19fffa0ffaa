"""m-way n-shot episodes with the seed's semantics, sampled in a few vectorised operations.

Per episode (the seed's ``OmniglotTask`` + ``get_data_loader``):

1. ``ways`` distinct characters are drawn from the split's characters; class ``i`` is the i-th
   drawn character, labels are ``0..ways-1``.
2. Each class's 20 images are shuffled; the first ``shots`` are its supports, the next
   ``query_pool`` its query pool, the next ``val_pool`` its validation pool (no overlap).
3. ``queries`` images per class are drawn from its query pool (``val_queries`` from its
   validation pool), without replacement.
4. One rotation (0, 90, 180 or 270 degrees, counter-clockwise like PIL's ``Image.rotate``) is
   drawn per episode and applied to all its images (the seed draws ``degrees`` once per episode
   and passes it to the support, query and validation loaders).

Two options of Omniglot's own benchmark (Lake et al., Science 2015), both off by default (the
seed's episodes): ``within_alphabet`` draws the ``ways`` characters of an episode from one
alphabet (drawn uniformly among the alphabets with at least ``ways`` of the sampler's
characters); ``distinct_drawers`` shuffles the 20 drawers once per episode for every class, so
all supports of shot ``j`` come from one drawer, the query pools from other drawers, and the
chosen queries from the same drawers for every class.

Supports come class-major (row ``i * shots + j`` is shot ``j`` of class ``i``), as the seed's
unshuffled support loader; queries and validation images are class-major too (the seed
shuffles its query batch; the order does not change any result). Episode ``k`` of a sampler is
drawn from NumPy's generator seeded with ``(seed, k)``, so it depends neither on the global
random state nor on the episodes drawn before it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from batmann.data.images import normalise_uint8
from batmann.errors import ConfigError, DataError

#: Images per Omniglot character (20 drawers).
IMAGES_PER_CHARACTER = 20
ROTATIONS = (0, 90, 180, 270)


def _need_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name} must be an integer (got {value!r})")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum} (got {value})")
    return int(value)


def validate_seed_options(num_shot: int, pool_query_train: int, pool_val_train: int, batch_size_train: int,
                          val_num_train: int, pool_query_test: int, batch_size_test: int, class_num: int,
                          n_train_chars: int = 964, n_test_chars: int = 659,
                          images_per_character: int = IMAGES_PER_CHARACTER) -> None:
    """Check the seed's episode options; raise :class:`ConfigError` naming the rule that failed.

    Rules: num_shot + pool_query_train + pool_val_train <= 20; pool_query_train >=
    batch_size_train; pool_val_train >= val_num_train; num_shot + pool_query_test <= 20;
    pool_query_test >= batch_size_test; class_num <= the characters of each split half.
    """
    k = images_per_character
    num_shot = _need_int("num_shot", num_shot, 1)
    class_num = _need_int("class_num", class_num, 1)
    batch_size_train = _need_int("batch_size_train", batch_size_train, 1)
    batch_size_test = _need_int("batch_size_test", batch_size_test, 1)
    pool_query_train = _need_int("pool_query_train", pool_query_train, 1)
    pool_query_test = _need_int("pool_query_test", pool_query_test, 1)
    pool_val_train = _need_int("pool_val_train", pool_val_train, 0)
    val_num_train = _need_int("val_num_train", val_num_train, 0)
    total = num_shot + pool_query_train + pool_val_train
    if total > k:
        raise ConfigError(f"num_shot + pool_query_train + pool_val_train must be <= {k} "
                          f"(got {num_shot} + {pool_query_train} + {pool_val_train} = {total})")
    if pool_query_train < batch_size_train:
        raise ConfigError(f"pool_query_train must be >= batch_size_train "
                          f"(got {pool_query_train} < {batch_size_train})")
    if pool_val_train < val_num_train:
        raise ConfigError(f"pool_val_train must be >= val_num_train (got {pool_val_train} < {val_num_train})")
    total = num_shot + pool_query_test
    if total > k:
        raise ConfigError(f"num_shot + pool_query_test must be <= {k} "
                          f"(got {num_shot} + {pool_query_test} = {total})")
    if pool_query_test < batch_size_test:
        raise ConfigError(f"pool_query_test must be >= batch_size_test "
                          f"(got {pool_query_test} < {batch_size_test})")
    for half, n in (("training", n_train_chars), ("test", n_test_chars)):
        if class_num > n:
            raise ConfigError(f"class_num must be <= the number of characters in the {half} split "
                              f"(got {class_num} > {n})")


@dataclass(frozen=True)
class EpisodeConfig:
    """One phase's episode shape: ``ways`` classes, ``shots`` supports and ``queries`` queries per
    class (drawn from a pool of ``query_pool``), ``val_queries`` validation images per class
    (from a pool of ``val_pool``; 0 for none); ``within_alphabet`` and ``distinct_drawers`` as in
    the module's docstring."""

    ways: int
    shots: int
    queries: int
    query_pool: int
    val_queries: int = 0
    val_pool: int = 0
    within_alphabet: bool = False
    distinct_drawers: bool = False

    def validate(self, n_chars: int, images_per_character: int = IMAGES_PER_CHARACTER) -> "EpisodeConfig":
        """Raise :class:`ConfigError` naming the rule that fails; return self."""
        for name, minimum in (("ways", 1), ("shots", 1), ("queries", 1), ("query_pool", 1),
                              ("val_queries", 0), ("val_pool", 0)):
            _need_int(name, getattr(self, name), minimum)
        for name in ("within_alphabet", "distinct_drawers"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ConfigError(f"{name} must be true or false (got {getattr(self, name)!r})")
        k = images_per_character
        total = self.shots + self.query_pool + self.val_pool
        if total > k:
            raise ConfigError(f"shots + query_pool + val_pool must be <= {k} images per character "
                              f"(got {self.shots} + {self.query_pool} + {self.val_pool} = {total})")
        if self.query_pool < self.queries:
            raise ConfigError(f"query_pool must be >= queries (got {self.query_pool} < {self.queries})")
        if self.val_pool < self.val_queries:
            raise ConfigError(f"val_pool must be >= val_queries (got {self.val_pool} < {self.val_queries})")
        if self.ways > n_chars:
            raise ConfigError(f"ways must be <= the number of characters in the split (got {self.ways} > {n_chars})")
        return self


@dataclass
class Episode:
    """One episode, ready for a controller (float32, normalised, on the sampler's device).

    ``support`` (m*n, 1, S, S) class-major, ``support_labels`` (m*n,); ``query`` (m*q, 1, S, S),
    ``query_labels`` (m*q,); ``val`` / ``val_labels`` (m*v, ...; empty when v = 0); ``rotation``
    in degrees; ``classes`` (m,) global character ids; ``*_index`` global image indices into the
    cache (CPU int64), e.g. to look up features or draw the episode.
    """

    support: torch.Tensor
    support_labels: torch.Tensor
    query: torch.Tensor
    query_labels: torch.Tensor
    val: torch.Tensor
    val_labels: torch.Tensor
    rotation: int
    classes: torch.Tensor
    support_index: torch.Tensor
    query_index: torch.Tensor
    val_index: torch.Tensor
    index: int = 0

    @property
    def ways(self) -> int:
        return int(self.classes.numel())


def _seed_words(seed: int, index: int) -> list[int]:
    return [int(seed) % 2**64, int(index) % 2**64]


class EpisodeSampler:
    """Episodes over ``characters`` (global character ids of ``cache``) shaped by ``config``.

    ``sample()`` returns the next episode (0, 1, 2, ...); ``sample(index=k)`` returns episode
    ``k`` (and continues from ``k + 1``). The sampler is an endless iterator of episodes. The
    cache's images are moved to ``device`` once; each episode moves only its indices there.
    """

    def __init__(self, cache, characters, config: EpisodeConfig, seed: int = 0,
                 device: torch.device | str = "cpu") -> None:
        from batmann.utils.device import resolve_device

        chars = np.asarray(list(characters), dtype=np.int64)
        if chars.ndim != 1 or chars.size == 0:
            raise DataError("an episode sampler needs at least one character")
        if chars.min() < 0 or chars.max() >= cache.n_characters or np.unique(chars).size != chars.size:
            raise DataError("characters must be distinct character ids of the cache")
        per_char = np.bincount(cache.char_index, minlength=cache.n_characters)[chars]
        k = int(per_char.min())
        if int(per_char.max()) != k:
            raise DataError(f"characters have between {k} and {int(per_char.max())} images; "
                            "the sampler needs the same number for every character")
        self.images_per_character = k
        self.config = config.validate(len(chars), images_per_character=k)
        self.characters = chars
        self.seed = int(seed)
        self.device = resolve_device(device)
        self.cache = cache
        # table[i, j]: global index of character chars[i]'s j-th image (drawer order)
        order = np.lexsort((cache.drawer_index, cache.char_index))
        starts = np.concatenate([[0], np.cumsum(np.bincount(cache.char_index, minlength=cache.n_characters))])
        self.table = order[starts[chars][:, None] + np.arange(k)[None, :]]
        c = self.config
        if c.within_alphabet:  # positions in `chars` of each alphabet with enough characters
            alpha = cache.character_alphabet[chars]
            groups = [np.nonzero(alpha == a)[0] for a in np.unique(alpha)]
            self._alphabets = [g for g in groups if g.size >= c.ways]
            if not self._alphabets:
                raise ConfigError(f"within-alphabet episodes need an alphabet with at least {c.ways} characters "
                                  f"(ways); the largest here has {max(g.size for g in groups)}")
        if c.distinct_drawers:
            drawers = cache.drawer_index[self.table]
            if (drawers != drawers[:1]).any() or (drawers < 0).any():
                raise DataError("distinct-drawer episodes need the same drawers (file names NNNN_DD.png) "
                                "for every character")
        if self.device.type == "cpu":
            # NumPy on the CPU: a uint8 gather, a rotated view and one lookup-table gather that
            # yields the normalised float32 batch (same values as normalise_uint8), all in one
            # thread, so small batches never wait on a busy OpenMP pool.
            self._lut = normalise_uint8(torch.arange(256, dtype=torch.uint8)).numpy()
            self._images = None
        else:
            self._images = cache.images_tensor(self.device)
        self._labels = tuple(torch.arange(c.ways, device=self.device).repeat_interleave(r)
                             for r in (c.shots, c.queries, c.val_queries))
        self._next = 0

    @property
    def next_index(self) -> int:
        """The index of the episode :meth:`sample` returns next."""
        return self._next

    def indices(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
        """Episode ``index`` as global image indices: (classes, support (m, n), query (m, q),
        val (m, v), rotation in degrees). Pure NumPy, deterministic in (seed, index)."""
        c = self.config
        rng = np.random.default_rng(_seed_words(self.seed, index))
        if c.within_alphabet:
            group = self._alphabets[int(rng.integers(len(self._alphabets)))]
            pick = group[rng.choice(group.size, size=c.ways, replace=False)]
        else:
            pick = rng.choice(self.characters.size, size=c.ways, replace=False)
        # one shuffle of the drawers for every class (distinct drawers), or one per class
        shape = (1 if c.distinct_drawers else c.ways,)
        perm = np.argsort(rng.random(shape + (self.images_per_character,)), axis=1)
        rows = self.table[pick[:, None], perm]                        # (m, 20) shuffled images
        support = rows[:, :c.shots]
        pool = rows[:, c.shots:c.shots + c.query_pool]
        qsel = np.argsort(rng.random(shape + (c.query_pool,)), axis=1)[:, :c.queries]
        qsel = np.broadcast_to(qsel, (c.ways, c.queries))
        query = np.take_along_axis(pool, qsel, axis=1)
        if c.val_queries:
            vpool = rows[:, c.shots + c.query_pool:c.shots + c.query_pool + c.val_pool]
            vsel = np.argsort(rng.random(shape + (c.val_pool,)), axis=1)[:, :c.val_queries]
            vsel = np.broadcast_to(vsel, (c.ways, c.val_queries))
            val = np.take_along_axis(vpool, vsel, axis=1)
        else:
            val = np.empty((c.ways, 0), dtype=np.int64)
        rotation = ROTATIONS[int(rng.integers(len(ROTATIONS)))]
        return self.characters[pick], support, query, val, rotation

    def sample(self, index: int | None = None) -> Episode:
        """Episode ``index`` (default: the next one)."""
        if index is None:
            index = self._next
        self._next = int(index) + 1
        classes, support, query, val, rotation = self.indices(index)
        n_s, n_q = support.size, query.size
        flat = np.concatenate([support.ravel(), query.ravel(), val.ravel()])
        flat_t = torch.from_numpy(flat)
        if self._images is None:
            images = self.cache.images[flat]
            if rotation:
                images = np.rot90(images, rotation // 90, axes=(1, 2))
            batch = torch.from_numpy(self._lut[images]).unsqueeze(1)
        else:
            batch = self._images.index_select(0, flat_t.to(self.device, non_blocking=True))
            batch = normalise_uint8(batch)
            if rotation:
                batch = torch.rot90(batch, rotation // 90, dims=(1, 2))
            batch = batch.unsqueeze(1).contiguous()
        return Episode(support=batch[:n_s], support_labels=self._labels[0],
                       query=batch[n_s:n_s + n_q], query_labels=self._labels[1],
                       val=batch[n_s + n_q:], val_labels=self._labels[2], rotation=rotation,
                       classes=torch.from_numpy(classes), support_index=flat_t[:n_s],
                       query_index=flat_t[n_s:n_s + n_q], val_index=flat_t[n_s + n_q:], index=int(index))

    def __iter__(self) -> Iterator[Episode]:
        while True:
            yield self.sample()
