"""Episodes with the seed's semantics: rules, determinism, no overlap, rotation, splits."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from batmann.data import (NORM_MEAN, NORM_STD, EpisodeConfig, EpisodeSampler, images_to_tensor, split_characters,
                          validate_seed_options)
from batmann.errors import ConfigError

SEED_DEFAULTS = dict(num_shot=5, pool_query_train=10, pool_val_train=5, batch_size_train=5, val_num_train=3,
                     pool_query_test=15, batch_size_test=5, class_num=20, n_train_chars=964, n_test_chars=659)


@pytest.mark.parametrize("change, message", [
    (dict(pool_val_train=8), r"^num_shot \+ pool_query_train \+ pool_val_train must be <= 20 \(got 5 \+ 10 \+ 8 = 23\)$"),
    (dict(batch_size_train=11), r"^pool_query_train must be >= batch_size_train \(got 10 < 11\)$"),
    (dict(val_num_train=6), r"^pool_val_train must be >= val_num_train \(got 5 < 6\)$"),
    (dict(pool_query_test=16), r"^num_shot \+ pool_query_test must be <= 20 \(got 5 \+ 16 = 21\)$"),
    (dict(pool_query_test=4), r"^pool_query_test must be >= batch_size_test \(got 4 < 5\)$"),
    (dict(class_num=965), r"^class_num must be <= the number of characters in the training split \(got 965 > 964\)$"),
    (dict(class_num=700), r"^class_num must be <= the number of characters in the test split \(got 700 > 659\)$"),
    (dict(num_shot=0), r"^num_shot must be >= 1 \(got 0\)$"),
])
def test_seed_rules_each_named(change, message):
    validate_seed_options(**SEED_DEFAULTS)
    with pytest.raises(ConfigError, match=message):
        validate_seed_options(**{**SEED_DEFAULTS, **change})


@pytest.mark.parametrize("config, message", [
    (EpisodeConfig(5, 5, 5, 10, 3, 6), r"shots \+ query_pool \+ val_pool must be <= 20"),
    (EpisodeConfig(5, 5, 6, 5), r"query_pool must be >= queries \(got 5 < 6\)"),
    (EpisodeConfig(5, 5, 5, 5, 4, 3), r"val_pool must be >= val_queries \(got 3 < 4\)"),
    (EpisodeConfig(660, 5, 5, 15), r"ways must be <= the number of characters in the split \(got 660 > 659\)"),
    (EpisodeConfig(0, 5, 5, 15), r"ways must be >= 1"),
])
def test_episode_config_rules(config, message):
    with pytest.raises(ConfigError, match=message):
        config.validate(659)


def test_splits(omniglot_cache):
    cache = omniglot_cache
    bg = cache.character_background
    for split in ("seed", "lake"):
        train, test = split_characters(cache, split)
        assert (len(train), len(test)) == (964, 659)
        assert sorted(train + test) == list(range(1623))
    train, test = split_characters(cache, "lake")
    assert bg[train].all() and not bg[test].any()
    train, test = split_characters(cache, "seed")
    assert 0 < bg[train].sum() < 964 and 0 < bg[test].sum() < 659  # mixes both sets
    # the seed's recipe with the global generator, on sorted ALPHABET/CHARACTER paths
    names = [cache.character_names[c] for c in range(1623)]
    folders = sorted(names)
    state = random.getstate()
    try:
        random.seed(806)
        random.shuffle(folders)
    finally:
        random.setstate(state)
    assert [names[c] for c in train] == folders[:964]
    assert split_characters(cache, "seed") == (train, test)
    with pytest.raises(ConfigError, match="split 'x' is not one of seed, lake"):
        split_characters(cache, "x")


def _sampler(cache, seed=0, ways=20, shots=5, queries=5, pool=10, val=3, vpool=5, chars=None):
    train, _ = split_characters(cache, "seed")
    return EpisodeSampler(cache, chars if chars is not None else train,
                          EpisodeConfig(ways, shots, queries, pool, val, vpool), seed=seed)


def _same(a, b):
    return (torch.equal(a.support, b.support) and torch.equal(a.query, b.query) and torch.equal(a.val, b.val)
            and a.rotation == b.rotation and torch.equal(a.classes, b.classes))


def test_deterministic(omniglot_cache):
    a, b = _sampler(omniglot_cache, seed=7), _sampler(omniglot_cache, seed=7)
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    first = [a.sample() for _ in range(3)]
    torch.manual_seed(2), np.random.seed(2), random.seed(2)  # the global state does not matter
    second = [b.sample() for _ in range(3)]
    assert all(_same(x, y) for x, y in zip(first, second))
    assert _same(b.sample(index=1), first[1]) and b.next_index == 2
    assert not _same(_sampler(omniglot_cache, seed=8).sample(), first[0])
    assert not _same(first[0], first[1])
    assert _same(next(iter(_sampler(omniglot_cache, seed=7))), first[0])


@pytest.mark.parametrize("ways", [20, 100])
def test_shapes_labels_and_no_overlap(omniglot_cache, ways):
    cache = omniglot_cache
    sampler = _sampler(cache, seed=3, ways=ways)
    allowed = set(sampler.characters.tolist())
    for k in range(5):
        ep = sampler.sample()
        assert ep.support.shape == (ways * 5, 1, 32, 32) and ep.support.dtype == torch.float32
        assert ep.query.shape == (ways * 5, 1, 32, 32) and ep.val.shape == (ways * 3, 1, 32, 32)
        assert torch.equal(ep.support_labels, torch.arange(ways).repeat_interleave(5))
        assert torch.equal(ep.query_labels, torch.arange(ways).repeat_interleave(5))
        assert torch.equal(ep.val_labels, torch.arange(ways).repeat_interleave(3))
        classes = ep.classes.numpy()
        assert len(set(classes.tolist())) == ways and set(classes.tolist()) <= allowed
        s, q, v = ep.support_index.numpy(), ep.query_index.numpy(), ep.val_index.numpy()
        assert len(set(s) | set(q) | set(v)) == len(s) + len(q) + len(v)  # supports, queries, val disjoint
        for idx, per in ((s, 5), (q, 5), (v, 3)):  # every image belongs to its row's class
            assert np.array_equal(cache.char_index[idx], np.repeat(classes, per))


def test_pools_are_respected(omniglot_cache):
    """Over many episodes a class's queries come from 10 images and its val images from 5 others."""
    cache = omniglot_cache
    chars = split_characters(cache, "seed")[0][:3]
    sampler = _sampler(cache, seed=5, ways=3, shots=5, queries=5, pool=10, val=3, vpool=5, chars=chars)
    for _ in range(20):
        ep = sampler.sample()
        assert len(set(ep.query_index.tolist())) == 15 and len(set(ep.val_index.tolist())) == 9


def test_rotation_one_per_episode_as_pil(omniglot_cache):
    cache = omniglot_cache
    sampler = _sampler(cache, seed=11, ways=5, val=0, vpool=0)
    seen = set()
    for _ in range(24):
        ep = sampler.sample()
        seen.add(ep.rotation)
        indices = torch.cat([ep.support_index, ep.query_index]).numpy()
        expected = np.stack([np.asarray(Image.fromarray(cache.images[i]).rotate(ep.rotation)) for i in indices])
        got = torch.cat([ep.support, ep.query])
        assert torch.allclose(got, images_to_tensor(expected), atol=0, rtol=0)
    assert seen == {0, 90, 180, 270}


def test_normalisation(omniglot_cache):
    x = images_to_tensor(np.array([[[0, 255]]], dtype=np.uint8).repeat(2, 1))
    assert x.shape == (1, 1, 2, 2)
    assert torch.allclose(x[0, 0, 0], torch.tensor([-NORM_MEAN / NORM_STD, (1 - NORM_MEAN) / NORM_STD]))
    ep = _sampler(omniglot_cache, seed=0).sample()
    assert abs(ep.support.mean().item()) < 0.5  # normalised: the seed's mean/std fit Omniglot


def test_device_path_matches_cpu_path(omniglot_cache):
    """The torch path used on accelerators (cache moved to the device once, rot90 on the batch)
    gives exactly the CPU path's episodes; checked here with the CPU as the 'device'."""
    a, b = _sampler(omniglot_cache, seed=4), _sampler(omniglot_cache, seed=4)
    b._images = omniglot_cache.images_tensor("cpu")
    for _ in range(8):
        assert _same(a.sample(), b.sample())


def test_within_alphabet_episodes_draw_every_class_from_one_alphabet(omniglot_cache):
    from batmann.data import split_characters

    _, test = split_characters(omniglot_cache, "lake")
    alpha = omniglot_cache.character_alphabet
    s = EpisodeSampler(omniglot_cache, test, EpisodeConfig(20, 1, 1, 19, within_alphabet=True), seed=0)
    seen = set()
    for i in range(40):
        classes = s.indices(i)[0]
        assert len(set(alpha[classes].tolist())) == 1 and len(set(classes.tolist())) == 20
        seen.add(int(alpha[classes[0]]))
    assert len(seen) > 3  # many alphabets, not one
    sizes = np.bincount(alpha[np.asarray(test)])
    assert all(sizes[a] >= 20 for a in seen)  # only alphabets with enough characters
    too_many = int(sizes.max()) + 1
    with pytest.raises(ConfigError, match=f"within-alphabet episodes need an alphabet with at least {too_many} "
                                          f"characters \\(ways\\); the largest here has {int(sizes.max())}"):
        EpisodeSampler(omniglot_cache, test, EpisodeConfig(too_many, 1, 1, 19, within_alphabet=True))


def test_distinct_drawer_episodes_use_the_same_drawers_for_every_class(omniglot_cache):
    from batmann.data import split_characters

    _, test = split_characters(omniglot_cache, "lake")
    drawer = omniglot_cache.drawer_index
    s = EpisodeSampler(omniglot_cache, test, EpisodeConfig(20, 2, 3, 10, 2, 4, distinct_drawers=True), seed=1)
    support_drawers = set()
    for i in range(30):
        _, support, query, val, _ = s.indices(i)
        sd, qd, vd = drawer[support], drawer[query], drawer[val]
        assert (sd == sd[:1]).all() and (qd == qd[:1]).all() and (vd == vd[:1]).all()  # same for every class
        assert not set(sd[0]) & set(qd[0]) and not set(sd[0]) & set(vd[0]) and not set(qd[0]) & set(vd[0])
        support_drawers.add(tuple(sd[0]))
    assert len(support_drawers) > 20  # the drawers change from episode to episode
    plain = EpisodeSampler(omniglot_cache, test, EpisodeConfig(20, 2, 3, 10), seed=1)
    assert any(len(set(drawer[plain.indices(i)[1]][:, 0].tolist())) > 1 for i in range(5))  # the seed's: mixed


def test_episode_options_must_be_booleans():
    with pytest.raises(ConfigError, match="within_alphabet must be true or false \\(got 1\\)"):
        EpisodeConfig(5, 1, 1, 5, within_alphabet=1).validate(100)


def test_lake_protocol_options_reach_every_command(omniglot_cache, tmp_path, capsys):
    import json
    import os
    from pathlib import Path

    from batmann.cli import build_parser, main
    from batmann.cli.train_cmd import train_config_from_args
    from batmann.config import EpisodeOptions
    from batmann.study.spec import load_study
    from batmann.tasks import episode_config

    args = build_parser().parse_args(["train", "--within-alphabet", "--distinct-drawers", "--ways", "20",
                                      "--shots", "1", "--split", "lake"])
    cfg = train_config_from_args(args)
    assert cfg.episodes.within_alphabet and cfg.episodes.distinct_drawers
    assert episode_config(cfg.episodes, "train").within_alphabet and episode_config(cfg.episodes, "test").distinct_drawers
    assert not build_parser().parse_args(["train"]).within_alphabet  # off by default
    with pytest.raises(ConfigError, match="distinct_drawers must be true or false"):
        EpisodeOptions(distinct_drawers="yes").validate()

    out = tmp_path / "ep.png"
    assert main(["data", "episode", "--ways", "20", "--shots", "1", "--queries", "1", "--split", "lake",
                 "--within-alphabet", "--distinct-drawers", "--out", str(out)]) == 0
    assert out.stat().st_size > 0
    assert main(["data", "episode", "--ways", "60", "--shots", "1", "--split", "lake", "--within-alphabet",
                 "--out", str(out)]) == 2
    assert "within-alphabet episodes need an alphabet with at least 60 characters" in capsys.readouterr().err

    assert main(["evaluate", "--checkpoint", "5w1s-binary", "--episodes", "2", "--seed", "17", "--split", "lake",
                 "--within-alphabet", "--distinct-drawers", "--json"]) == 0
    record = Path(os.environ["BATMANN_HOME"]) / "evaluations" / "5w1s-binary.eval.json"
    settings = [e["settings"] for e in json.loads(record.read_text())["results"] if e["settings"]["seed"] == 17]
    assert settings and settings[-1]["within_alphabet"] is True and settings[-1]["distinct_drawers"] is True

    study = tmp_path / "s.toml"
    study.write_text('checkpoint = ["5w1s-binary"]\n[episodes]\ncount = 2\nwithin_alphabet = true\n'
                     '[grid]\nvariability = [0.1]\n')
    assert load_study(study).episodes["within_alphabet"] is True
    study.write_text('checkpoint = ["5w1s-binary"]\n[episodes]\ndistinct_drawers = 1\n[grid]\nvariability = [0.1]\n')
    with pytest.raises(ConfigError, match="episodes.distinct_drawers must be true or false, got 1"):
        load_study(study)


def test_evaluate_protocol_lake_fixes_lakes_episodes_and_reports_the_error(omniglot_cache, capsys):
    import json

    from batmann.cli import main
    from batmann.config import EpisodeOptions, protocol_options
    from batmann.tasks import make_sampler

    opts = protocol_options("lake", EpisodeOptions()).validate()
    assert (opts.split, opts.class_num, opts.num_shot, opts.batch_size_test) == ("lake", 20, 1, 1)
    ep = make_sampler(omniglot_cache, opts, "test", 0).sample()
    alpha, drawer = omniglot_cache.character_alphabet, omniglot_cache.drawer_index
    assert len(set(alpha[ep.classes.numpy()].tolist())) == 1 and not omniglot_cache.character_background[ep.classes.numpy()].any()
    assert len(set(drawer[ep.support_index.numpy()].tolist())) == 1 and len(set(drawer[ep.query_index.numpy()].tolist())) == 1
    assert drawer[ep.support_index[0]] != drawer[ep.query_index[0]]

    assert main(["evaluate", "--checkpoint", "5w1s-fp", "--protocol", "lake", "--episodes", "2", "--no-save", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["protocol"] == "lake" and (out["ways"], out["shots"], out["split"]) == (20, 1, "lake")
    assert out["error_pct"] == pytest.approx(100 - out["accuracy_pct"])
    assert main(["evaluate", "--checkpoint", "5w1s-fp", "--protocol", "lake", "--ways", "5", "--no-save"]) == 2
    assert "--protocol lake fixes the episodes; drop --ways" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="protocol 'x' is not one of lake"):
        protocol_options("x", EpisodeOptions())


def test_a_training_on_lake_episodes_is_recognised_as_the_protocols():
    """``trained_for_protocol``: lake split, 20-way 1-shot, one alphabet, distinct drawers (the
    query count is the training's own); any other episode is no protocol's."""
    from dataclasses import replace

    from batmann.config import EpisodeOptions, trained_for_protocol

    lake = EpisodeOptions(split="lake", class_num=20, num_shot=1, within_alphabet=True, distinct_drawers=True)
    assert trained_for_protocol(lake) == "lake" and trained_for_protocol(replace(lake, batch_size_test=5)) == "lake"
    for change in ({"split": "seed"}, {"num_shot": 5}, {"class_num": 5}, {"within_alphabet": False},
                   {"distinct_drawers": False}):
        assert trained_for_protocol(replace(lake, **change)) is None, change
    assert trained_for_protocol(EpisodeOptions()) is None
