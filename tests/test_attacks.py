"""FGSM on few-shot episodes (batmann.attacks)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from batmann.attacks import PIXEL_HI, PIXEL_LO, attacked_episode, fgsm_direction, perturb
from batmann.checkpoint import load_checkpoint
from batmann.config import EpisodeOptions
from batmann.data.images import NORM_STD
from batmann.memory import class_logits, sharpened_attention
from batmann.tasks import make_sampler


def test_perturb_steps_by_epsilon_in_pixel_units_and_clips():
    q = torch.tensor([PIXEL_LO, -5.0, PIXEL_HI]).view(3, 1, 1, 1)
    d = torch.tensor([-1.0, 1.0, 1.0]).view(3, 1, 1, 1)
    out = perturb(q, d, 0.2)
    lo, hi = torch.tensor(PIXEL_LO).item(), torch.tensor(PIXEL_HI).item()  # as float32
    assert out[0].item() == lo and out[2].item() == hi  # clipped to [0, 1] pixels
    assert abs(out[1].item() - (-5.0 + 0.2 / NORM_STD)) < 1e-5
    assert torch.equal(perturb(q, d, 0.0), q)


def _loss(model, ep, sim_cal):
    with torch.no_grad():
        keys, q = model(ep.support), model(ep.query)
        logits = class_logits(sharpened_attention(q, keys, sim_cal), ep.support_labels, ep.ways)
        return F.cross_entropy(logits, ep.query_labels).item()


def test_fgsm_raises_the_loss_through_the_binarized_controller(omniglot_cache):
    ck = load_checkpoint("20w5s-binary")
    ep = make_sampler(omniglot_cache, EpisodeOptions(class_num=5, num_shot=1, batch_size_test=2, pool_query_test=4),
                      "test", 0).sample(index=0)
    d = fgsm_direction(ck.model, ep, ck.config.sim_cal)
    assert d.shape == ep.query.shape and set(d.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert not ck.model.training  # eval mode kept
    attacked = attacked_episode(ep, d, 0.05)
    assert attacked.query_index is None and torch.equal(attacked.support, ep.support)
    base = _loss(ck.model, ep, ck.config.sim_cal)
    assert _loss(ck.model, attacked, ck.config.sim_cal) > base
    # the opposite direction lowers it: the sign is the gradient's, not its negative
    assert _loss(ck.model, attacked_episode(ep, -d, 0.05), ck.config.sim_cal) < base


def test_fgsm_direction_with_given_keys_is_the_same_and_leaves_parameters_as_they_were(omniglot_cache):
    ck = load_checkpoint("20w5s-binary")
    ep = make_sampler(omniglot_cache, EpisodeOptions(class_num=5, num_shot=1, batch_size_test=2, pool_query_test=4),
                      "test", 0).sample(index=1)
    first = next(ck.model.parameters())
    first.requires_grad_(False)  # a frozen parameter stays frozen, the others keep their gradients
    wanted = [p.requires_grad for p in ck.model.parameters()]
    d = fgsm_direction(ck.model, ep, ck.config.sim_cal)
    assert [p.requires_grad for p in ck.model.parameters()] == wanted
    assert all(p.grad is None for p in ck.model.parameters())  # no weight gradient was formed
    with torch.no_grad():
        keys = ck.model(ep.support)
    assert torch.equal(fgsm_direction(ck.model, ep, ck.config.sim_cal, keys=keys), d)
