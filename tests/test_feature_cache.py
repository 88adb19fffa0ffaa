"""``batmann evaluate``'s features on disk: a second evaluation reuses them and gives the same bits."""

from __future__ import annotations

import json

import pytest
import torch

from batmann.api import evaluate_checkpoint
from batmann.checkpoint import load_checkpoint
from batmann.cli import main
from batmann.feature_store import evaluation_store


def _counting(ckpt):
    """Count the images the checkpoint's model is asked for."""
    seen = []
    ckpt.model.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    return seen


def test_second_evaluation_reads_the_store_and_reproduces_the_first(omniglot_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("BATMANN_HOME", str(tmp_path))
    ckpt = load_checkpoint("5w1s-binary", "cpu")
    seen = _counting(ckpt)
    first = evaluate_checkpoint(ckpt, episodes=6, seed=4, cache=omniglot_cache, feature_cache=True)
    computed = sum(seen)
    store = evaluation_store(ckpt.path, omniglot_cache, "fp32", "cpu")
    assert store.path.is_file() and store.path.name.endswith("-eval-fp32-cpu.safetensors")
    assert len(store.load()) == computed > 0  # every computed image, once
    seen.clear()
    again = evaluate_checkpoint(ckpt, episodes=6, seed=4, cache=omniglot_cache, feature_cache=True)
    assert sum(seen) == 0 and again.per_episode == first.per_episode
    # more episodes: the stored images are read, only the new ones computed and added
    more = evaluate_checkpoint(ckpt, episodes=9, seed=4, cache=omniglot_cache, feature_cache=True)
    assert 0 < sum(seen) and more.per_episode[:6] == first.per_episode
    assert len(store.load()) == computed + sum(seen)


def test_store_is_per_precision_and_off_when_asked(omniglot_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("BATMANN_HOME", str(tmp_path))
    ckpt = load_checkpoint("5w1s-fp", "cpu")
    evaluate_checkpoint(ckpt, episodes=1, cache=omniglot_cache, precision="bf16", feature_cache=True)
    assert [p.name.split("-eval-")[1] for p in (tmp_path / "features").iterdir()] == ["bf16-cpu.safetensors"]
    monkeypatch.setenv("BATMANN_FEATURE_CACHE", "0")  # the default follows the environment
    evaluate_checkpoint(ckpt, episodes=1, cache=omniglot_cache, precision="fp32")
    assert len(list((tmp_path / "features").iterdir())) == 1
    monkeypatch.setenv("BATMANN_FEATURE_CACHE", "1")
    evaluate_checkpoint(ckpt, episodes=1, cache=omniglot_cache, precision="fp32")
    assert len(list((tmp_path / "features").iterdir())) == 2


def test_damaged_store_is_recomputed_and_an_interrupted_evaluation_keeps_its_features(
        omniglot_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("BATMANN_HOME", str(tmp_path))
    ckpt = load_checkpoint("5w1s-binary", "cpu")
    store = evaluation_store(ckpt.path, omniglot_cache, "fp32", "cpu")
    store.path.parent.mkdir(parents=True)
    store.path.write_bytes(b"not a safetensors file")
    seen = _counting(ckpt)
    import batmann.evaluate as E

    real = E.score_episode
    calls = []

    def stop_after_three(system, episode, use_val=False):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(1)
        return real(system, episode, use_val)

    monkeypatch.setattr(E, "score_episode", stop_after_three)
    with pytest.raises(KeyboardInterrupt):
        evaluate_checkpoint(ckpt, episodes=10, seed=2, cache=omniglot_cache, feature_cache=True)
    assert sum(seen) > 0 and len(store.load()) == sum(seen)  # the three episodes' features, stored


def test_cli_evaluates_from_the_store_and_no_feature_cache_leaves_it_alone(omniglot_home, tmp_path, monkeypatch,
                                                                         capsys):
    monkeypatch.setenv("BATMANN_FEATURE_CACHE", "1")
    home = tmp_path / "home"
    home.mkdir()
    for entry in omniglot_home.iterdir():  # the prepared Omniglot, without anything stored
        if entry.name != "features":
            (home / entry.name).symlink_to(entry.resolve(), target_is_directory=entry.is_dir())
    monkeypatch.setenv("BATMANN_HOME", str(home))
    args = ["evaluate", "--checkpoint", "5w1s-binary", "--episodes", "3", "--no-save", "--json"]
    assert main(args + ["--no-feature-cache"]) == 0
    fresh = json.loads(capsys.readouterr().out)
    assert not (home / "features").exists()
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out) == fresh and (home / "features").is_dir()
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out) == fresh
