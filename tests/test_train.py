"""Training, resume, checkpoints, evaluation and classification on real Omniglot episodes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from batmann.checkpoint import load_checkpoint, save_checkpoint
from batmann.config import EpisodeOptions, ModelConfig, TrainConfig
from batmann.errors import CheckpointError, ConfigError
from batmann.train import train


def tiny_config(**over) -> TrainConfig:
    cfg = TrainConfig(
        model=ModelConfig(controller=over.pop("controller", "fp"), feature_dim=over.pop("feature_dim", 64)),
        episodes=EpisodeOptions(class_num=5, num_shot=1, pool_query_train=4, pool_val_train=2,
                                batch_size_train=2, val_num_train=2, pool_query_test=4, batch_size_test=2),
        train_episode=6, log_interval=2, val_episode=2, val_interval=3, test_episode=0,
        checkpoint_interval=3, learning_rate=1e-3, precision="fp32", seed=3, device="cpu",
    )
    for k, v in over.items():
        setattr(cfg, k, v)
    return cfg


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from batmann.checkpoint import read_safetensors

    tensors, _ = read_safetensors(run / "last.safetensors")
    return {k: v for k, v in tensors.items() if k.startswith(("model.", "optim."))}


@pytest.mark.parametrize("controller,precision,compile", [
    ("fp", "fp32", "off"), ("xnor", "fp32", "off"),
    # XNOR: exact forward, bf16 gradient products, compiled element-wise kernels
    pytest.param("xnor", "bf16", "on", marks=pytest.mark.skipif(
        not __import__("batmann.models.fused", fromlist=["x"]).compiler_available(), reason="no C++ compiler")),
])
def test_resume_reproduces_uninterrupted_run(tmp_path, omniglot_cache, controller, precision, compile):
    opts = dict(controller=controller, precision=precision, compile=compile)
    total, stop = 6, 3
    if precision == "bf16":  # emulated where the CPU has no bf16 units (10-30x slower): less work
        opts["episodes"] = EpisodeOptions(class_num=3, num_shot=1, pool_query_train=1, pool_val_train=1,
                                          batch_size_train=1, val_num_train=1, pool_query_test=1, batch_size_test=1)
        total, stop = 4, 2
        opts.update(checkpoint_interval=2, val_interval=2)
    straight = train(tiny_config(train_episode=total, **opts), tmp_path / "a", progress=False, cache=omniglot_cache)
    assert straight.episodes_done == total
    # the same run, stopped half-way and resumed to the end
    train(tiny_config(train_episode=stop, **opts), tmp_path / "b", progress=False, cache=omniglot_cache)
    train(tiny_config(train_episode=total, **opts), tmp_path / "b", resume=True, progress=False, cache=omniglot_cache)
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys() and len(a) > 4
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("controller,precision,compile", [
    ("xnor", "fp32", "off"), ("fp", "fp32", "off"), ("xnor", "bf16", "off"), ("fp", "bf16", "off"),
    pytest.param("xnor", "fp32", "on", marks=pytest.mark.skipif(
        not __import__("batmann.models.fused", fromlist=["x"]).compiler_available(), reason="no C++ compiler")),
])
def test_deterministic_runs_are_the_same_bits_whatever_the_native_kernels_threads(controller, precision, compile,
                                                                                  tmp_path, omniglot_cache):
    """--deterministic leaves the C kernels (popcount forward, pooled backward), the compiled
    element-wise kernels and torch's convolutions in fixed image ranges (one thread each; bf16:
    XNOR's gradient products, the fp controller's autocast convolutions) their threads: their
    sums do not depend on how many threads run them, so neither do the weights."""
    threads = torch.get_num_threads()
    runs = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)  # deterministic training keeps this count for the C kernels only
            run = tmp_path / f"threads{n}"
            steps = 3 if precision == "fp32" else 2  # bf16 is emulated (slow) on CPUs without it
            train(tiny_config(controller=controller, precision=precision, compile=compile, train_episode=steps,
                              val_interval=steps, checkpoint_interval=steps), run, progress=False,
                  cache=omniglot_cache)
            runs.append(_weights(run))
    finally:
        torch.set_num_threads(threads)
    assert runs[0].keys() == runs[1].keys() and len(runs[0]) > 4
    for k in runs[0]:
        assert torch.equal(runs[0][k], runs[1][k]), k


def test_resume_survives_sigkill(tmp_path, omniglot_cache):
    """A run killed with SIGKILL mid-way resumes from its last checkpoint (never half-written)."""
    run = tmp_path / "killed"
    code = (
        "import os, signal, batmann.train as T\n"
        "from batmann.data import load_image_cache\n"
        "orig = T.save_train_state\n"
        "n = [0]\n"
        "def save(*a, **k):\n"
        "    orig(*a, **k); n[0] += 1\n"
        "    if n[0] == 1: os.kill(os.getpid(), signal.SIGKILL)\n"
        "T.save_train_state = save\n"
        "import sys; sys.path.insert(0, 'tests')\n"
        "from test_train import tiny_config\n"
        f"T.train(tiny_config(), {str(run)!r}, progress=False)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert (run / "last.safetensors").exists()
    assert not list(run.glob(".*.tmp"))
    resumed = train(tiny_config(), run, resume=True, progress=False, cache=omniglot_cache)
    assert resumed.episodes_done == 6
    train(tiny_config(), tmp_path / "ref", progress=False, cache=omniglot_cache)
    a, b = _weights(run), _weights(tmp_path / "ref")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_stops_at_an_episode_boundary(tmp_path, omniglot_cache):
    """SIGTERM in the middle of episode 5 finishes that episode, saves exactly 5 episodes and
    stops; the resumed run ends with the weights of an uninterrupted one."""
    run = tmp_path / "termed"
    code = (
        "import os, signal, batmann.train as T\n"
        "orig = T.train_step\n"
        "n = [0]\n"
        "def step(*a, **k):\n"
        "    n[0] += 1\n"
        "    if n[0] == 5: os.kill(os.getpid(), signal.SIGTERM)\n"
        "    return orig(*a, **k)\n"
        "T.train_step = step\n"
        "import sys; sys.path.insert(0, 'tests')\n"
        "from test_train import tiny_config\n"
        "try:\n"
        f"    T.train(tiny_config(), {str(run)!r}, progress=False)\n"
        "except T.Terminated:\n"
        "    sys.exit(143)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True)
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert "stopped after episode 5" in (run / "train.log").read_text()
    resumed = train(tiny_config(), run, resume=True, progress=False, cache=omniglot_cache)
    assert resumed.episodes_done == 6
    assert "at episode 5 " in (run / "train.log").read_text().split("stopped after episode 5")[1]
    train(tiny_config(), tmp_path / "ref", progress=False, cache=omniglot_cache)
    a, b = _weights(run), _weights(tmp_path / "ref")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_run_folder_in_use_is_refused(tmp_path, omniglot_cache):
    """Two processes never train into one folder: a held lock is a one-line error naming the pid."""
    from batmann.train import lock_run_dir

    held = lock_run_dir(tmp_path)
    try:
        with pytest.raises(ConfigError, match=f"in use by another training process \\(pid {os.getpid()}\\)"):
            train(tiny_config(train_episode=3), tmp_path, progress=False, cache=omniglot_cache)
    finally:
        held.close()
    assert train(tiny_config(train_episode=3), tmp_path, progress=False, cache=omniglot_cache).episodes_done == 3


def test_existing_run_needs_resume_and_same_options(tmp_path, omniglot_cache):
    train(tiny_config(train_episode=3), tmp_path, progress=False, cache=omniglot_cache)
    with pytest.raises(ConfigError, match="--resume"):
        train(tiny_config(), tmp_path, progress=False, cache=omniglot_cache)
    with pytest.raises(CheckpointError, match="learning_rate"):
        train(tiny_config(learning_rate=5e-4), tmp_path, resume=True, progress=False, cache=omniglot_cache)


def test_state_saved_before_newer_options_resumes(tmp_path, omniglot_cache):
    """A state written before ``episodes.dataset`` and ``compile`` existed resumes: missing
    options, nested ones included, count as their defaults; other options must still match."""
    from safetensors.torch import save_file

    from batmann.checkpoint import read_safetensors

    train(tiny_config(train_episode=3), tmp_path, progress=False, cache=omniglot_cache)
    last = tmp_path / "last.safetensors"
    tensors, meta = read_safetensors(last)
    cfg = json.loads(meta["config"])
    del cfg["episodes"]["dataset"], cfg["compile"]
    save_file(tensors, str(last), metadata={**meta, "config": json.dumps(cfg)})
    with pytest.raises(CheckpointError, match="option episodes was"):
        bad = tiny_config()
        bad.episodes.class_num = 4
        train(bad, tmp_path, resume=True, progress=False, cache=omniglot_cache)
    assert train(tiny_config(), tmp_path, resume=True, progress=False, cache=omniglot_cache).episodes_done == 6


def test_init_from_starts_at_the_parent_weights(tmp_path, omniglot_cache):
    """Fine-tuning: the run starts from the parent's weights, validates them first (so the best
    checkpoint is never worse than the start), records the parent, and refuses another architecture."""
    parent = train(tiny_config(train_episode=3), tmp_path / "parent", progress=False, cache=omniglot_cache)
    parent_file = parent.run_dir / "best.safetensors"
    child_cfg = tiny_config(init_from=str(parent_file), train_episode=3, learning_rate=1e-12)
    child = train(child_cfg, tmp_path / "child", progress=False, cache=omniglot_cache)
    log = (child.run_dir / "train.log").read_text()
    assert "episode 0 validation" in log and "initial weights from" in log
    a = load_checkpoint(parent_file).model.state_dict()
    b = load_checkpoint(child.run_dir / "best.safetensors")
    assert b.provenance["init_from"]["file"] == "best.safetensors"
    assert b.provenance["init_from"]["episodes_trained"] == 3
    # where each stage trained: this test runs on the CPU, named with its SIMD level and threads
    for prov in (b.provenance, load_checkpoint(parent_file).provenance):
        assert prov["device"].startswith("cpu: ") and prov["device"].endswith(" threads")
    for k, v in a.items():  # lr 1e-12: every saved weight is (almost) the parent's
        if v.is_floating_point():
            torch.testing.assert_close(b.model.state_dict()[k], v, rtol=0, atol=1e-6)
    with pytest.raises(CheckpointError, match="controller fp .* not controller xnor"):
        train(tiny_config(controller="xnor", init_from=str(parent_file)), tmp_path / "bad",
              progress=False, cache=omniglot_cache)
    # a second stage records the whole chain: its parent's record holds the grandparent's
    grandchild = train(tiny_config(init_from=str(child.run_dir), train_episode=2, learning_rate=1e-12),
                       tmp_path / "grandchild", progress=False, cache=omniglot_cache)
    chain = load_checkpoint(grandchild.run_dir / "best.safetensors").provenance["init_from"]
    assert chain["name"] == str(child.run_dir) and chain["file"] == "best.safetensors"
    assert chain["init_from"]["name"] == str(parent_file) and chain["init_from"]["episodes_trained"] == 3
    with pytest.raises(ConfigError, match="init_from must be"):
        tiny_config(init_from="  ").validate()


def test_short_training_learns(trained_run, omniglot_cache):
    """5-way 1-shot, 60 episodes: the loss on 30 fixed training episodes falls from the initial
    weights to the trained ones, and held-out accuracy is well above chance. (The per-episode
    training loss is too noisy over 60 episodes to compare windows of it: its first and last
    15 episodes came out in either order on different CPUs.)"""
    from batmann.checkpoint import build_model
    from batmann.tasks import make_sampler
    from batmann.train import train_step

    res, losses = trained_run
    assert len(losses) == 60
    trained = load_checkpoint(res.run_dir)
    cfg = trained.config
    sampler = make_sampler(omniglot_cache, cfg.episodes, "train", 123)
    episodes = [sampler.sample() for _ in range(30)]

    def mean_loss(model) -> float:
        with torch.no_grad():
            return float(np.mean([train_step(model, e, cfg.sim_cal, cfg, torch.device("cpu"))[0].item()
                                  for e in episodes]))

    before, after = mean_loss(build_model(cfg)), mean_loss(trained.model)
    assert after < before - 0.01, (before, after)
    assert res.test is not None and res.test.episodes == 100
    # chance is 20 %; the CI is a few points wide
    assert res.test.accuracy_pct - res.test.ci95_pct > 35.0, res.test
    saved = json.loads((res.run_dir / "best.eval.json").read_text())["results"]
    assert [r["episodes"] for r in saved if r["settings"]["episodes"] == 100] == [100]


def test_checkpoint_round_trip(tmp_path):
    from batmann.checkpoint import build_model

    cfg = tiny_config(controller="xnor")
    model = build_model(cfg)
    path = save_checkpoint(tmp_path / "m.safetensors", model, cfg, {"note": "test"})
    assert json.loads(path.with_suffix(".json").read_text())["config"]["model"]["controller"] == "xnor"
    ck = load_checkpoint(path)
    assert ck.config.model == cfg.model and ck.provenance == {"note": "test"}
    x = torch.randn(3, 1, 32, 32)
    assert torch.equal(ck.model(x), model.eval()(x))


def test_bad_checkpoints_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    from batmann.checkpoint import build_model

    cfg = tiny_config()
    path = save_checkpoint(tmp_path / "m.safetensors", build_model(cfg), cfg, {})
    # truncated
    data = path.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "trunc.safetensors")
    # a missing tensor
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
    tensors = load_file(str(path))
    first = sorted(tensors)[0]
    tensors.pop(first)
    save_file(tensors, str(tmp_path / "missing.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match=f"lacks tensor '{first}'"):
        load_checkpoint(tmp_path / "missing.safetensors")
    # another architecture
    other = tiny_config(controller="xnor")
    with pytest.raises(CheckpointError, match="not controller xnor"):
        load_checkpoint(path, expect=other)
    xnor_path = save_checkpoint(tmp_path / "x.safetensors", build_model(other), other, {})
    save_file(load_file(str(xnor_path)), str(tmp_path / "mixed.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="another architecture"):
        load_checkpoint(tmp_path / "mixed.safetensors")
    # not a checkpoint at all
    (tmp_path / "junk.safetensors").write_bytes(b"hello world, not safetensors")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "junk.safetensors")
    with pytest.raises(CheckpointError, match="neither a file"):
        load_checkpoint(tmp_path / "nope")


@pytest.mark.parametrize("field,value,msg", [
    ("sim_cal", "cos_nope", "sim_cal 'cos_nope' is not one of"),
    ("keys", "ternary", "keys 'ternary' is not one of"),
    ("precision", "fp8", "precision 'fp8'"),
    ("train_episode", 0, "train_episode must be an integer >= 1"),
    ("learning_rate", -1.0, "learning_rate must be > 0"),
    ("loss", "hinge", "loss 'hinge' is not one of ce, nll"),
])
def test_bad_options_refused(field, value, msg):
    cfg = tiny_config()
    setattr(cfg, field, value)
    with pytest.raises(ConfigError, match=msg):
        cfg.validate()


@pytest.mark.parametrize("avx512_bf16,amx,want", [(False, False, "fp32"), (True, False, "bf16"),
                                                   (False, True, "bf16")])
def test_auto_precision_uses_bf16_only_where_the_cpu_runs_it(monkeypatch, avx512_bf16, amx, want):
    """bf16 autocast for the fp controller only on a CPU with native bf16 (emulated bf16 on an
    AVX2 CPU was 14-30x slower); binarized controllers and an explicit choice are never changed."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert tiny_config(precision="auto").effective_precision == want
    assert tiny_config(precision="auto", controller="xnor").effective_precision == "fp32"
    assert tiny_config(precision="bf16").effective_precision == "bf16"


def test_nll_loss_needs_a_normalised_class_attention():
    cfg = tiny_config(loss="nll", sim_cal="cos_softmax")
    with pytest.raises(ConfigError, match="loss 'nll' needs sim_cal 'cos_softabs'"):
        cfg.validate()
    tiny_config(loss="nll").validate()


@pytest.mark.parametrize("loss", ["ce", "nll"])
def test_train_step_losses(loss):
    """ce is the seed's cross-entropy over the class attention as logits; nll is -log of the
    attention the true class gets. Both computed by hand from the features here."""
    from types import SimpleNamespace

    from batmann.memory import class_logits, sharpened_attention
    from batmann.train import train_step

    torch.manual_seed(0)
    lin = torch.nn.Linear(12, 8)
    support, query = torch.randn(6, 12), torch.randn(4, 12)
    s_lab, q_lab = torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([0, 1, 2, 0])
    ep = SimpleNamespace(support=support, query=query, support_labels=s_lab, query_labels=q_lab)
    cfg = tiny_config(loss=loss)
    cfg.episodes.class_num = 3
    got, _ = train_step(lin, ep, "cos_softabs", cfg, torch.device("cpu"))
    p = class_logits(sharpened_attention(lin(query), lin(support)), s_lab, 3)
    torch.testing.assert_close(p.sum(1), torch.ones(4))
    true = p[torch.arange(4), q_lab]
    want = -true.log().mean() if loss == "nll" else (torch.logsumexp(p, 1) - true).mean()
    torch.testing.assert_close(got, want)
    got.backward()
    assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0


def test_seed_rules_enforced_through_config():
    cfg = tiny_config()
    cfg.episodes.pool_query_train = 18
    with pytest.raises(ConfigError, match="num_shot \\+ pool_query_train \\+ pool_val_train"):
        cfg.validate()


def _write_png(path: Path, arr: np.ndarray, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr)
    if mode != "L":
        img = img.convert(mode)
    img.save(path)


def test_classify_tiny_folder(tmp_path, omniglot_cache, trained_run):
    """Two Omniglot characters as the support set; their other drawings are the queries."""
    from batmann.classify import classify_folders

    res = trained_run[0]
    home = Path(os.environ["BATMANN_HOME"]) / "omniglot" / "images_background"
    alphabet = sorted(p for p in home.iterdir() if p.is_dir())[0]
    truth = {}
    for name in ("character01", "character02"):  # the original 105x105 1-bit PNGs
        files = sorted((alphabet / name).glob("*.png"))
        for f in files[:3]:  # three shots, converted to RGB (any size or mode is fine)
            (tmp_path / "support" / name).mkdir(parents=True, exist_ok=True)
            Image.open(f).convert("RGB").save(tmp_path / "support" / name / f.name)
        for f in files[3:8]:
            (tmp_path / "query").mkdir(exist_ok=True)
            shutil.copy(f, tmp_path / "query" / f.name)
            truth[f.name] = name
    preds = classify_folders(res.run_dir, tmp_path / "support", tmp_path / "query", device="cpu")
    assert set(preds) == set(truth)
    correct = sum(preds[k] == v for k, v in truth.items())
    assert correct >= 7, (preds, truth)
    # the CLI prints the same as JSON
    from batmann.cli import main

    out = subprocess.run([sys.executable, "-m", "batmann", "classify", "--checkpoint", str(res.run_dir),
                          "--support", str(tmp_path / "support"), "--query", str(tmp_path / "query"), "--json"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["predictions"] == preds
    assert main(["classify", "--checkpoint", str(res.run_dir), "--support", str(tmp_path / "query"),
                 "--query", str(tmp_path / "query")]) == 2


def test_train_cli_runs_resumes_and_refuses_bad_input(tmp_path, omniglot_cache):
    base = [sys.executable, "-m", "batmann", "train", "--ways", "5", "--shots", "1", "--feature-dim", "32",
            "--queries-train", "2", "--val-episode", "2", "--val-interval", "2", "--test-episode", "2",
            "--checkpoint-interval", "1", "--precision", "fp32", "--device", "cpu", "--no-progress",
            "--run-dir", str(tmp_path / "run")]
    first = subprocess.run(base + ["--episodes", "2"], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert "test:" in first.stdout and (tmp_path / "run" / "best.safetensors").exists()
    again = subprocess.run(base + ["--episodes", "3"], capture_output=True, text=True)
    assert again.returncode == 2 and "--resume" in again.stderr
    resumed = subprocess.run(base + ["--episodes", "3", "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "episodes: 3" in resumed.stdout
    log = (tmp_path / "run" / "train.log").read_text()
    assert "resumed from" in log and "episode 2 validation" in log
    assert "convolutions train with " in log  # the path chosen for this CPU, named once
    seed_names = subprocess.run(base[:4] + ["--quantization-learn", "XNOR", "--quantization-infer", "1",
                                            "--binary-id", "2", "--keys", "bipolar"], capture_output=True, text=True)
    assert seed_names.returncode == 2 and "contradicts" in seed_names.stderr
    assert len(seed_names.stderr.strip().splitlines()) == 1


def test_train_cli_loss_option(capsys):
    from batmann.cli import build_parser, main
    from batmann.cli.train_cmd import train_config_from_args

    args = build_parser().parse_args(["train", "--loss", "nll"])
    assert train_config_from_args(args).loss == "nll"
    assert train_config_from_args(build_parser().parse_args(["train"])).loss == "ce"
    assert main(["train", "--loss", "nll", "--sim-cal", "cos_softmax"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "loss 'nll' needs sim_cal 'cos_softabs'" in err[0]


def test_train_cli_without_validation_says_so(tmp_path, omniglot_cache):
    out = subprocess.run([sys.executable, "-m", "batmann", "train", "--ways", "5", "--shots", "1",
                          "--feature-dim", "32", "--queries-train", "2", "--episodes", "1", "--val-episode", "0",
                          "--test-episode", "0", "--precision", "fp32", "--device", "cpu", "--no-progress",
                          "--loss", "nll", "--run-dir", str(tmp_path / "run")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "best validation: none (no validation ran)" in out.stdout
    assert json.loads((tmp_path / "run" / "config.json").read_text())["loss"] == "nll"


def test_deterministic_kernels_switch_and_restore():
    """Inside the block: one thread and oneDNN's deterministic attribute; as before afterwards."""
    from batmann.utils.determinism import deterministic_kernels

    def state():
        return torch.get_num_threads(), torch.backends.mkldnn.deterministic

    before = state()
    with deterministic_kernels("cpu"):
        assert state() == (1, True)
    assert state() == before
    with deterministic_kernels("cpu", enabled=False):
        assert state() == before


def test_native_kernels_keep_their_threads_in_deterministic_blocks():
    """The C kernels give the same bits on any thread count (tests/test_pooled_grad.py,
    test_popcount_kernels.py), so one torch thread does not bind them."""
    from batmann.models import native
    from batmann.utils.determinism import deterministic_kernels, in_deterministic_block, invariant_threads

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert invariant_threads() == 2 and native.split(10) == [(0, 5), (5, 10)] and not in_deterministic_block()
        with deterministic_kernels("cpu", enabled=False):
            assert not in_deterministic_block()
        with deterministic_kernels("cpu"):
            assert torch.get_num_threads() == 1 and invariant_threads() == 2 and in_deterministic_block()
            assert native.split(10) == [(0, 5), (5, 10)]
            with deterministic_kernels("cpu"):  # nested: still the outermost count
                assert invariant_threads() == 2
            assert invariant_threads() == 2
        assert invariant_threads() == 2 and not in_deterministic_block()
        torch.set_num_threads(1)
        assert invariant_threads() == 1 and native.split(10) == [(0, 10)]
    finally:
        torch.set_num_threads(threads)


def test_deterministic_option(tmp_path):
    from batmann.cli import build_parser
    from batmann.cli.train_cmd import train_config_from_args

    assert train_config_from_args(build_parser().parse_args(["train"])).deterministic is True
    assert train_config_from_args(build_parser().parse_args(["train", "--no-deterministic"])).deterministic is False
    with pytest.raises(ConfigError, match="deterministic must be true or false"):
        tiny_config(deterministic="yes").validate()


def test_evaluating_a_shipped_checkpoint_leaves_the_package_alone(omniglot_cache, capsys):
    """``batmann evaluate --checkpoint NAME`` records under $BATMANN_HOME/evaluations, never in
    the package's own NAME.eval.json (which only the ship script writes)."""
    from batmann.checkpoint import SHIPPED_DIR
    from batmann.cli import main
    from batmann.records import eval_record_path

    shipped = SHIPPED_DIR / "5w1s-binary.eval.json"
    before = shipped.read_bytes()
    record = Path(os.environ["BATMANN_HOME"]) / "evaluations" / "5w1s-binary.eval.json"
    assert eval_record_path(SHIPPED_DIR / "5w1s-binary.safetensors") == record
    assert main(["evaluate", "--checkpoint", "5w1s-binary", "--episodes", "2", "--seed", "11", "--json"]) == 0
    assert shipped.read_bytes() == before
    entries = json.loads(record.read_text())["results"]
    assert any(e["settings"]["episodes"] == 2 and e["settings"]["seed"] == 11 for e in entries)
    assert eval_record_path("runs/x/best.safetensors") == Path("runs/x/best.eval.json")
