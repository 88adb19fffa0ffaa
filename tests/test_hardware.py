"""Digital versus in-memory evaluation of trained checkpoints (batmann.hardware, the CLI)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from batmann.config import EpisodeOptions
from batmann.hardware import compare, hardware_spec

pytestmark = [pytest.mark.memtorch, pytest.mark.usefixtures("one_thread")]

TWENTY_FIVE = EpisodeOptions(class_num=20, num_shot=5, pool_query_test=15, batch_size_test=5)


def test_ideal_keys_match_digital_on_20way_5shot(trained_run, omniglot_cache):
    """With the ideal preset and keys only, 20-way 5-shot accuracy lands
    within 0.5 pp of digital (here: identical predictions up to float rounding)."""
    ckpt = trained_run[0].run_dir / "best.safetensors"
    res = compare(ckpt, hardware_spec(analog="keys", preset="ideal"), episodes=12,
                  episode_options=TWENTY_FIVE, cache=omniglot_cache)
    assert res.hardware["ways"] == 20 and res.hardware["shots"] == 5
    assert abs(res.crossbar_accuracy_pct - res.digital_accuracy_pct) <= 0.5
    assert res.top1_agreement >= 0.99
    assert res.score_correlation > 0.9999
    assert res.digital_accuracy_pct > 20.0  # well above the 5 % chance: a real controller


def test_whole_system_on_ideal_crossbars_matches_digital(trained_run, omniglot_cache):
    ckpt = trained_run[0].run_dir / "best.safetensors"
    res = compare(ckpt, hardware_spec(analog="all", preset="ideal"), episodes=3, cache=omniglot_cache)
    assert res.top1_agreement >= 0.97
    assert res.score_correlation > 0.999


def test_non_idealities_degrade_agreement_and_are_seeded(trained_run, omniglot_cache):
    ckpt = trained_run[0].run_dir / "best.safetensors"
    spec = dict(analog="keys", preset="vteam", variability=0.3, stuck_lrs=0.1, stuck_hrs=0.1, adc_bits=3)
    a = compare(ckpt, hardware_spec(**spec, seed=1), episodes=3, episode_options=TWENTY_FIVE, cache=omniglot_cache)
    b = compare(ckpt, hardware_spec(**spec, seed=1), episodes=3, episode_options=TWENTY_FIVE, cache=omniglot_cache)
    c = compare(ckpt, hardware_spec(**spec, seed=2), episodes=3, episode_options=TWENTY_FIVE, cache=omniglot_cache)
    assert a.score_correlation < 0.99 and a.top1_agreement < 0.99
    strip = lambda r: {k: v for k, v in r.to_json().items() if k != "seconds"}  # noqa: E731
    assert strip(a) == strip(b)
    assert strip(a) != strip(c)


def test_crossbar_cli_json_and_errors(trained_run):
    ckpt = str(trained_run[0].run_dir / "best.safetensors")
    out = subprocess.run([sys.executable, "-m", "batmann", "crossbar", "evaluate", "--checkpoint", ckpt,
                          "--preset", "ideal", "--episodes", "3", "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    for part in ("digital", "crossbar"):
        assert set(data[part]) >= {"accuracy_pct", "ci95_pct"}
    assert data["episodes"] == 3 and 0 <= data["top1_agreement"] <= 1 and "score_correlation" in data
    for bad, needle in ((["--variability", "-0.1"], "variab"), (["--stuck-lrs", "0.7", "--stuck-hrs", "0.5"], "stuck"),
                        (["--states", "1"], "states"), (["--preset", "nope"], "nope")):
        err = subprocess.run([sys.executable, "-m", "batmann", "crossbar", "evaluate", "--checkpoint", ckpt,
                              "--episodes", "1", *bad], capture_output=True, text=True)
        assert err.returncode == 2, (bad, err.stderr)
        lines = err.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0].lower() and "Traceback" not in err.stderr, err.stderr


def test_evaluate_cli_json_and_saved_result(trained_run):
    run = trained_run[0].run_dir
    out = subprocess.run([sys.executable, "-m", "batmann", "evaluate", "--checkpoint", str(run),
                          "--episodes", "5", "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert {"accuracy_pct", "ci95_pct", "episodes", "ways", "shots"} <= set(data)
    assert data["episodes"] == 5 and data["ways"] == 5 and data["shots"] == 1
    saved = json.loads((run / "best.eval.json").read_text())
    entry = [r for r in saved["results"] if r["settings"]["episodes"] == 5][0]
    assert entry["accuracy_pct"] == data["accuracy_pct"] and "--episodes 5" in entry["command"]


def test_convert_takes_a_checkpoint_and_its_key_codec(trained_run, omniglot_cache):
    """``crossbar.convert(checkpoint, spec)`` exports the controller itself and scales the
    crossbar's dot products with the checkpoint's key format: on ideal devices, the digital
    system's similarities and predictions. A bare controller gives the raw dot products."""
    from batmann.checkpoint import load_checkpoint
    from batmann.evaluate import DigitalSystem, score_episode
    from batmann.memory import KeyCodec, quantize_keys
    from batmann.tasks import make_sampler
    from crossbar import HardwareSpec, convert

    ckpt = load_checkpoint(trained_run[0].run_dir)
    ep = make_sampler(omniglot_cache, ckpt.config.episodes, "test", seed=5).sample(index=0)
    digital = score_episode(DigitalSystem(ckpt.model, keys=ckpt.config.keys), ep)
    for keys in ("bipolar", "binary", "real"):
        codec = KeyCodec(keys)
        want = score_episode(DigitalSystem(ckpt.model, keys=keys), ep)
        got = score_episode(convert(ckpt, HardwareSpec(analog="all"), codec=codec), ep)
        torch.testing.assert_close(got.similarities, want.similarities, atol=2e-4, rtol=0)
        assert (got.predictions == want.predictions).float().mean() >= 0.95
    assert torch.equal(score_episode(convert(ckpt, HardwareSpec()), ep).predictions, digital.predictions)
    raw = convert(ckpt.model, HardwareSpec(analog="keys"))
    feats = raw.features(ep.support)
    raw.write(feats)
    torch.testing.assert_close(raw.similarities(feats), feats @ feats.T, atol=1e-3, rtol=1e-5)
    q = quantize_keys(feats, "bipolar")
    assert convert(ckpt, HardwareSpec()).codec.encode(feats).equal(q)
