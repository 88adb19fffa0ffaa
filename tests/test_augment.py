"""Random affine augmentation of training images (``batmann train --augment``)."""

from __future__ import annotations

import math

import pytest
import torch

from batmann.cli import main
from batmann.cli.train_cmd import augment_from_args
from batmann.config import AUGMENT_DEFAULTS, AugmentConfig, TrainConfig
from batmann.data.augment import affine_matrices, augment_episode, episode_generator, random_affine
from batmann.errors import ConfigError


def _images(n=6, size=32):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, size, size, generator=g)


def test_each_parameter_stays_within_its_bound():
    n, size = 2000, 32
    rot = affine_matrices(n, size, AugmentConfig(rotation=10), episode_generator(1, 2))
    lin = rot[:, :, :2]
    assert torch.allclose(lin @ lin.transpose(1, 2), torch.eye(2, dtype=torch.float64).expand(n, 2, 2), atol=1e-12)
    angles = torch.atan2(lin[:, 1, 0], lin[:, 0, 0]).abs().rad2deg()
    assert angles.max() <= 10 and angles.max() > 9.5 and (rot[:, :, 2] == 0).all()  # uniform up to the bound
    sc = affine_matrices(n, size, AugmentConfig(scale=0.1), episode_generator(1, 2))
    k = sc[:, 0, 0]
    assert torch.equal(k, sc[:, 1, 1]) and k.min() >= 0.9 and k.max() <= 1.1 and (sc[:, 0, 1] == 0).all()
    sh = affine_matrices(n, size, AugmentConfig(translate=2), episode_generator(1, 2))
    shift_px = sh[:, :, 2] * size / 2
    assert shift_px.abs().max() <= 2 and shift_px.abs().max() > 1.9
    shear = affine_matrices(n, size, AugmentConfig(shear=10), episode_generator(1, 2))
    assert shear[:, 0, 1].abs().max() <= math.tan(math.radians(10)) and (shear[:, 1, 0] == 0).all()


def test_whole_pixel_shift_moves_the_image_and_borders_repeat_the_background():
    img = torch.full((1, 1, 8, 8), -1.0)
    img[0, 0, 3, 4] = 5.0
    theta = torch.tensor([[[1.0, 0.0, 2 * 2 / 8], [0.0, 1.0, 0.0]]])  # sample 2 px to the right
    grid = torch.nn.functional.affine_grid(theta, [1, 1, 8, 8], align_corners=False)
    out = torch.nn.functional.grid_sample(img, grid, padding_mode="border", align_corners=False)
    assert out[0, 0, 3, 2] == pytest.approx(5.0) and out[0, 0, 3, 4] == pytest.approx(-1.0)
    # a blank (background) image stays blank whatever the map
    blank = torch.full((50, 1, 32, 32), -0.7)
    assert torch.allclose(random_affine(blank, AUGMENT_DEFAULTS, episode_generator(0, 0)), blank, atol=1e-6)


def test_seeded_per_episode_and_per_image_and_off_is_the_identity():
    x = _images()
    a = random_affine(x, AUGMENT_DEFAULTS, episode_generator(3, 7))
    assert torch.equal(a, random_affine(x, AUGMENT_DEFAULTS, episode_generator(3, 7)))
    assert not torch.equal(a, random_affine(x, AUGMENT_DEFAULTS, episode_generator(3, 8)))
    assert not torch.equal(a, random_affine(x, AUGMENT_DEFAULTS, episode_generator(4, 7)))
    assert a.shape == x.shape and not torch.allclose(a, x)
    # one image's map does not depend on the others: each gets its own draw
    twice = random_affine(torch.cat([x[:1], x[:1]]), AUGMENT_DEFAULTS, episode_generator(3, 7))
    assert not torch.allclose(twice[0], twice[1])
    assert random_affine(x, AugmentConfig(), episode_generator(3, 7)) is x


def test_episode_supports_and_queries_are_augmented(omniglot_cache):
    from batmann.config import EpisodeOptions
    from batmann.tasks import make_sampler

    ep = make_sampler(omniglot_cache, EpisodeOptions(class_num=5, num_shot=1, batch_size_train=2), "train", 0).sample(
        index=0)
    aug = augment_episode(ep, AUGMENT_DEFAULTS, seed=0, index=0)
    assert aug.support.shape == ep.support.shape and aug.query.shape == ep.query.shape
    assert not torch.allclose(aug.support, ep.support) and not torch.allclose(aug.query, ep.query)
    assert torch.equal(aug.support_labels, ep.support_labels) and augment_episode(ep, AugmentConfig(), 0, 0) is ep


def test_config_validation_round_trip_and_cli(capsys):
    for bad in (dict(rotation=-1), dict(scale=0.6), dict(translate=float("nan")), dict(shear=True)):
        with pytest.raises(ConfigError) as e:
            AugmentConfig(**bad).validate()
        assert "\n" not in str(e.value)
    cfg = TrainConfig(augment=AugmentConfig(rotation=5.0)).validate()
    assert TrainConfig.from_dict(cfg.to_dict()).augment == AugmentConfig(rotation=5.0)
    assert TrainConfig.from_dict({k: v for k, v in cfg.to_dict().items() if k != "augment"}).augment == AugmentConfig()
    with pytest.raises(ConfigError, match="freeze"):
        TrainConfig(augment=AUGMENT_DEFAULTS, freeze=["conv1"]).validate()
    from batmann.cli import build_parser

    args = build_parser().parse_args(["train", "--augment", "--augment-rotation", "15"])
    assert augment_from_args(args) == AugmentConfig(rotation=15.0, shear=10.0, scale=0.1, translate=2.0)
    assert augment_from_args(build_parser().parse_args(["train", "--augment-translate", "1"])) == AugmentConfig(
        translate=1.0)
    assert main(["train", "--augment-scale", "0.9"]) == 2
    assert "augment scale must be a number in [0, 0.5], got 0.9" in capsys.readouterr().err


def test_augmented_training_changes_the_run_and_resumes_bit_exactly(tmp_path, omniglot_cache):
    from test_train import _weights, tiny_config

    from batmann.train import train

    plain = train(tiny_config(), tmp_path / "plain", progress=False, cache=omniglot_cache)
    straight = train(tiny_config(augment=AUGMENT_DEFAULTS), tmp_path / "a", progress=False, cache=omniglot_cache)
    assert plain.episodes_done == straight.episodes_done == 6
    a, p = _weights(tmp_path / "a"), _weights(tmp_path / "plain")
    assert any(not torch.equal(a[k], p[k]) for k in a)  # the images the controller saw differ
    train(tiny_config(augment=AUGMENT_DEFAULTS, train_episode=3), tmp_path / "b", progress=False, cache=omniglot_cache)
    train(tiny_config(augment=AUGMENT_DEFAULTS), tmp_path / "b", resume=True, progress=False, cache=omniglot_cache)
    b = _weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_test_views_average_each_image_over_its_own_fixed_views(omniglot_cache, tmp_path, monkeypatch):
    """``--test-views N``: an image's feature is the mean of the model over it and N views drawn
    from the seed and its id alone (the same alone or in any batch); a second evaluation gives
    the same bits; no feature store is read or written; the record names the views."""
    from batmann.api import evaluate_checkpoint
    from batmann.checkpoint import load_checkpoint
    from batmann.data.augment import image_views
    from batmann.evaluate import DigitalSystem
    from batmann.records import eval_settings

    monkeypatch.setenv("BATMANN_HOME", str(tmp_path))
    model = load_checkpoint("5w1s-fp", "cpu").model.eval()
    images = torch.as_tensor(omniglot_cache.images[:6]).float().unsqueeze(1) / 255
    ids = torch.arange(100, 106)
    system = DigitalSystem(model, keys="real", test_views=2, view_seed=3)
    got = system.features(images, ids)
    with torch.no_grad():
        views = [model(images)] + [model(image_views(images, ids.tolist(), AUGMENT_DEFAULTS, 3, v)) for v in (1, 2)]
    assert torch.allclose(got, sum(views) / 3, atol=1e-6)
    assert not torch.allclose(views[1], views[2]) and not torch.allclose(views[0], views[1])
    alone = DigitalSystem(model, keys="real", test_views=2, view_seed=3).features(images[4:5], ids[4:5])
    assert torch.allclose(alone[0], got[4], atol=1e-6)
    other_seed = DigitalSystem(model, keys="real", test_views=2, view_seed=4).features(images[:1], ids[:1])
    assert not torch.allclose(other_seed[0], got[0])

    ckpt = load_checkpoint("5w1s-fp", "cpu")
    a = evaluate_checkpoint(ckpt, episodes=3, seed=5, cache=omniglot_cache, test_views=2, feature_cache=True)
    b = evaluate_checkpoint(ckpt, episodes=3, seed=5, cache=omniglot_cache, test_views=2, feature_cache=True)
    assert a.per_episode == b.per_episode
    assert not list(tmp_path.rglob("*.safetensors"))  # no feature store with views
    assert eval_settings(ckpt.config.episodes, "real", 3, 5, test_views=2)["test_views"] == 2
    assert "test_views" not in eval_settings(ckpt.config.episodes, "real", 3, 5)
    with pytest.raises(ConfigError, match="test views must be a whole number >= 0"):
        evaluate_checkpoint(ckpt, episodes=1, cache=omniglot_cache, test_views=-1)


def test_test_views_cli_flag_and_bad_value(capsys):
    assert main(["evaluate", "--checkpoint", "5w1s-fp", "--episodes", "2", "--test-views", "1", "--no-save",
                 "--json"]) == 0
    assert __import__("json").loads(capsys.readouterr().out)["test_views"] == 1
    assert main(["evaluate", "--checkpoint", "5w1s-fp", "--episodes", "2", "--test-views", "-2", "--no-save"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "got -2" in err
