"""Fine-tuning options of ``batmann train``: frozen layers, the trunk cache, quantised training keys."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from batmann.checkpoint import build_model, read_safetensors
from batmann.config import TrainConfig, normalize_freeze
from batmann.errors import ConfigError
from batmann.frozen_trunk import TrunkCache, cached_depth, freeze_layers, trunk_is_cacheable
from batmann.memory import class_logits, sharpened_attention
from batmann.train import train, train_step
from test_train import tiny_config


@pytest.mark.parametrize("given,want", [
    ("", []),
    ("features", ["conv1", "conv2", "conv3", "conv4"]),
    ("conv3, conv1,conv3", ["conv1", "conv3"]),
    (["fc1", "conv2"], ["conv2", "fc1"]),
])
def test_freeze_names_are_normalised(given, want):
    assert normalize_freeze(given) == want


@pytest.mark.parametrize("given,msg", [
    ("conv9", "freeze: layer 'conv9' is not one of conv1, conv2, conv3, conv4, fc1, features"),
    ("features,fc1", "freeze names every layer"),
    (3, "freeze must be a list of layer names"),
])
def test_bad_freeze_refused(given, msg):
    with pytest.raises(ConfigError, match=msg):
        normalize_freeze(given)
    with pytest.raises(ConfigError, match="train_keys 'ternary'"):
        tiny_config(train_keys="ternary").validate()


def _episode(ways=3, shots=2, queries=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    n_s, n_q = ways * shots, ways * queries
    return SimpleNamespace(
        support=torch.randn(n_s, 1, 32, 32, generator=g), query=torch.randn(n_q, 1, 32, 32, generator=g),
        support_labels=torch.arange(ways).repeat_interleave(shots),
        query_labels=torch.arange(ways).repeat_interleave(queries),
        support_index=torch.arange(n_s), query_index=torch.arange(n_s, n_s + n_q), rotation=90)


@pytest.mark.parametrize("controller", ["fp", "xnor"])
def test_cached_trunk_gives_the_full_models_loss_and_fc_gradient(controller):
    """With conv1..conv4 frozen, fc1 on the cached trunk is the full forward pass: same loss,
    same fc1 gradient, no gradient on the frozen layers; a second call hits the cache."""
    cfg = tiny_config(controller=controller, freeze=["conv1", "conv2", "conv3", "conv4"]).validate()
    cfg.episodes.class_num = 3
    model = build_model(cfg)
    freeze_layers(model, cfg.freeze)
    assert trunk_is_cacheable(model, cfg.freeze)
    ep = _episode()
    full, _ = train_step(model, ep, cfg.sim_cal, cfg, torch.device("cpu"))
    full.backward()
    g_full = model.fc1.weight.grad.clone()
    model.zero_grad()
    trunk = TrunkCache(model)
    cached, _ = train_step(model, ep, cfg.sim_cal, cfg, torch.device("cpu"), trunk)
    cached.backward()
    torch.testing.assert_close(cached, full)
    torch.testing.assert_close(model.fc1.weight.grad, g_full)
    assert all(p.grad is None for p in model.features.parameters())
    assert len(trunk) == ep.support.shape[0] + ep.query.shape[0]
    # cached values are reused, not recomputed: poison the images, the loss does not change
    ep.support.fill_(float("nan"))
    again, _ = train_step(model, ep, cfg.sim_cal, cfg, torch.device("cpu"), trunk)
    torch.testing.assert_close(again, cached)


@pytest.mark.parametrize("controller", ["fp", "xnor"])
@pytest.mark.parametrize("depth", [2, 3])
def test_cached_prefix_gives_the_full_models_loss_and_gradients(controller, depth):
    """With conv1..conv<depth> frozen, the layers above the cached prefix give the full forward
    pass's loss and the same gradients on every trainable layer; cache hits are reused."""
    frozen = [f"conv{i}" for i in range(1, depth + 1)]
    cfg = tiny_config(controller=controller, freeze=frozen).validate()
    cfg.episodes.class_num = 3
    model = build_model(cfg)
    freeze_layers(model, cfg.freeze)
    assert cached_depth(model, cfg.freeze) == depth
    ep = _episode()
    full, _ = train_step(model, ep, cfg.sim_cal, cfg, torch.device("cpu"))
    full.backward()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(not n.startswith(tuple(f"features.{c}." for c in frozen)) for n in trainable)
    g_full = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    trunk = TrunkCache(model, depth=depth)
    assert trunk.layers == tuple(frozen)
    cached, _ = train_step(model, ep, cfg.sim_cal, cfg, torch.device("cpu"), trunk)
    cached.backward()
    torch.testing.assert_close(cached, full)
    for n, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, g_full[n], msg=n)
        else:
            assert p.grad is None, n
    assert len(trunk) == ep.support.shape[0] + ep.query.shape[0]
    ep.support.fill_(float("nan"))  # cached prefix outputs are reused, not recomputed
    again, _ = train_step(model, ep, cfg.sim_cal, cfg, torch.device("cpu"), trunk)
    torch.testing.assert_close(again, cached)


def test_which_frozen_prefix_is_cached():
    """Only a frozen prefix from conv1 that reaches conv2 is cached; never an RBNN layer."""
    model = build_model(tiny_config())
    assert cached_depth(model, ["conv1", "conv2", "conv3"]) == 3
    assert cached_depth(model, ["conv1", "conv2", "conv4", "fc1"]) == 2
    assert not trunk_is_cacheable(model, ["conv1"])  # conv1 alone: too large for what it saves
    assert not trunk_is_cacheable(model, ["conv2", "conv3", "conv4"])  # conv1 trains
    assert not trunk_is_cacheable(model, ["fc1"])
    rbnn = build_model(tiny_config(controller="rbnn"))
    assert not trunk_is_cacheable(rbnn, ["conv1", "conv2", "conv3", "conv4"])
    with pytest.raises(ValueError, match="depth must be 2..4, got 1"):
        TrunkCache(model, depth=1)


def test_rbnn_layers_cannot_be_frozen():
    """RBNN layers change their forward every episode (rotations, k/t schedule): refused by
    name; the full-precision conv1 (and fc1 of ``rbnn``) of an RBNN controller may be frozen."""
    with pytest.raises(ConfigError, match="freeze: conv2,conv3 of a rbnn controller are RBNN layers"):
        tiny_config(controller="rbnn", freeze=["conv2", "conv3"]).validate()
    with pytest.raises(ConfigError, match="freeze: fc1 of a rbnn-binary-fc controller"):
        tiny_config(controller="rbnn-binary-fc", freeze=["fc1"]).validate()
    assert tiny_config(controller="rbnn", freeze=["conv1", "fc1"]).validate().freeze == ["conv1", "fc1"]


@pytest.mark.parametrize("clip", [0.0, 1.0])
def test_bipolar_training_keys_use_signs_with_a_straight_through_gradient(clip):
    """train_keys='bipolar': the similarity sees sign(features) (as inference does); the
    gradient reaches the layer below as if the sign were the identity (ste_clip 0) or, with
    ste_clip C, the identity where |feature| <= C and zero elsewhere."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(12, 8)
    support, query = torch.randn(6, 12), torch.randn(4, 12)
    s_lab, q_lab = torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([0, 1, 2, 0])
    ep = SimpleNamespace(support=support, query=query, support_labels=s_lab, query_labels=q_lab)
    cfg = tiny_config(loss="nll", train_keys="bipolar", ste_clip=clip)
    cfg.episodes.class_num = 3
    got, _ = train_step(lin, ep, "cos_softabs", cfg, torch.device("cpu"))

    def sgn(x):
        return torch.where(x > 0, 1.0, -1.0)

    p = class_logits(sharpened_attention(sgn(lin(query)), sgn(lin(support))), s_lab, 3)
    torch.testing.assert_close(got, -p[torch.arange(4), q_lab].log().mean())
    got.backward()
    assert lin.weight.grad.abs().sum() > 0
    # the straight-through gradient is the real-feature gradient of the same expression
    feats = torch.cat([lin(support), lin(query)]).detach().requires_grad_(True)
    b = feats + (sgn(feats) - feats).detach()
    q = class_logits(sharpened_attention(b[6:], b[:6]), s_lab, 3)
    (-q[torch.arange(4), q_lab].log().mean()).backward()
    grad = feats.grad if clip == 0 else feats.grad * (feats.abs() <= clip)
    if clip:
        assert 0 < int((feats.abs() > clip).sum()) < feats.numel()  # the clip masks some, not all
    want = grad.T @ torch.cat([support, query])
    torch.testing.assert_close(lin.weight.grad, want)


def test_ste_clip_is_validated_and_old_runs_read_as_identity(tmp_path, omniglot_cache):
    """ste_clip must be a finite number >= 0; a run saved before it existed trained with
    quantised keys through the identity STE, so its missing ste_clip reads as 0, and resuming
    it with the hardtanh STE is refused."""
    import json

    from safetensors.torch import load_file, save_file

    from batmann.errors import CheckpointError

    for bad in (-1.0, float("nan"), "1", True):
        with pytest.raises(ConfigError, match="ste_clip must be a finite number >= 0"):
            tiny_config(ste_clip=bad).validate()
    old = tiny_config(train_keys="bipolar").to_dict()
    del old["ste_clip"]
    assert TrainConfig.from_dict(old).ste_clip == 0.0
    old["train_keys"] = "real"
    assert TrainConfig.from_dict(old).ste_clip == 1.0
    run = tmp_path / "old-bipolar"
    train(tiny_config(train_episode=3, train_keys="bipolar", ste_clip=0.0), run, progress=False,
          cache=omniglot_cache)
    path = run / "last.safetensors"
    _, meta = read_safetensors(path)
    cfg = json.loads(meta["config"])
    del cfg["ste_clip"]
    save_file(load_file(str(path)), str(path), metadata={**meta, "config": json.dumps(cfg)})
    with pytest.raises(CheckpointError, match="option ste_clip was 0.0, now 1.0"):
        train(tiny_config(train_keys="bipolar"), run, resume=True, progress=False, cache=omniglot_cache)
    done = train(tiny_config(train_keys="bipolar", ste_clip=0.0), run, resume=True, progress=False,
                 cache=omniglot_cache)
    assert done.episodes_done == 6


@pytest.mark.parametrize("frozen", [("conv1", "conv2", "conv3", "conv4"), ("conv1", "conv2")])
def test_frozen_run_trains_only_the_rest_and_resumes_exactly(tmp_path, omniglot_cache, frozen):
    """A run with a cached frozen prefix (and bipolar training keys) changes only the layers
    above it, and a resumed run reproduces the uninterrupted one bit for bit."""
    opts = dict(freeze=list(frozen), train_keys="bipolar", loss="nll")
    parent = train(tiny_config(train_episode=2), tmp_path / "parent", progress=False, cache=omniglot_cache)
    straight = train(tiny_config(init_from=str(parent.run_dir / "best.safetensors"), **opts),
                     tmp_path / "a", progress=False, cache=omniglot_cache)
    assert straight.episodes_done == 6
    train(tiny_config(init_from=str(parent.run_dir / "best.safetensors"), train_episode=3, **opts),
          tmp_path / "b", progress=False, cache=omniglot_cache)
    train(tiny_config(init_from=str(parent.run_dir / "best.safetensors"), **opts),
          tmp_path / "b", resume=True, progress=False, cache=omniglot_cache)
    start, _ = read_safetensors(parent.run_dir / "best.safetensors")
    a, _ = read_safetensors(tmp_path / "a" / "last.safetensors")
    b, _ = read_safetensors(tmp_path / "b" / "last.safetensors")
    for k in start:
        same = torch.equal(a["model." + k], start[k])
        assert same == k.startswith(tuple(f"features.{c}." for c in frozen)), k
        assert torch.equal(a["model." + k], b["model." + k]), k
    names = ",".join(frozen)
    assert f"frozen layers {names} ({names} outputs cached)" in (tmp_path / "a" / "train.log").read_text()


def test_train_cli_fine_tuning_options():
    from batmann.cli import build_parser
    from batmann.cli.train_cmd import train_config_from_args

    cfg = train_config_from_args(build_parser().parse_args(["train", "--freeze", "features", "--train-keys", "bipolar"]))
    assert cfg.freeze == ["conv1", "conv2", "conv3", "conv4"] and cfg.train_keys == "bipolar"
    cfg = train_config_from_args(build_parser().parse_args(["train"]))
    assert cfg.freeze == [] and cfg.train_keys == "real"


def test_resume_accepts_a_state_saved_before_the_fine_tuning_options(tmp_path, omniglot_cache):
    """A training state written before ``train_keys``/``freeze`` existed resumes with their
    defaults; resuming it with another value is refused, naming the default it had."""
    import json

    from safetensors.torch import load_file, save_file

    from batmann.errors import CheckpointError

    run = tmp_path / "old"
    train(tiny_config(train_episode=3), run, progress=False, cache=omniglot_cache)
    path = run / "last.safetensors"
    _, meta = read_safetensors(path)
    cfg = json.loads(meta["config"])
    del cfg["train_keys"], cfg["freeze"]
    save_file(load_file(str(path)), str(path), metadata={**meta, "config": json.dumps(cfg)})
    with pytest.raises(CheckpointError, match="option train_keys was 'real', now 'bipolar'"):
        train(tiny_config(train_keys="bipolar"), run, resume=True, progress=False, cache=omniglot_cache)
    assert train(tiny_config(), run, resume=True, progress=False, cache=omniglot_cache).episodes_done == 6
