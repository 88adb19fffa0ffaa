"""Every checkpoint shipped in batmann/checkpoints loads by its short name and classifies well."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from batmann.checkpoint import load_checkpoint, shipped_checkpoints
from batmann.evaluate import DigitalSystem, score_episode
from batmann.tasks import make_sampler

SHIPPED = sorted(shipped_checkpoints())


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_runs_one_episode(name, omniglot_cache):
    ckpt = load_checkpoint(name)
    assert ckpt.path.stat().st_size < 8 * 1024 * 1024
    assert ckpt.path.with_suffix(".json").exists() and ckpt.path.with_suffix(".eval.json").exists()
    opts = ckpt.config.episodes
    ep = make_sampler(omniglot_cache, opts, "test", seed=7).sample(index=0)
    res = score_episode(DigitalSystem(ckpt.model, keys=ckpt.config.keys), ep)
    chance = 1.0 / opts.class_num
    assert res.accuracy > max(0.5, 5 * chance), (name, res.accuracy)


def test_checkpoints_command_lists_what_is_shipped():
    out = subprocess.run([sys.executable, "-m", "batmann", "checkpoints", "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert sorted(r["name"] for r in json.loads(out.stdout)) == SHIPPED
