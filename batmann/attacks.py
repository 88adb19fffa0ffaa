"""FGSM on few-shot episodes: perturb the query images against the controller and its memory.

The attack (Goodfellow et al., 2015) takes one step of size ``epsilon`` along the sign of the
gradient of the training loss with respect to the query pixels: the seed's cross-entropy over
the per-class sums of the sharpened attention (``sim_cal`` of the checkpoint), with the
support features as keys (clean, not attacked). The gradient runs through the binarized layers
with their straight-through estimators, as in training. ``epsilon`` is in pixel units (images
in [0, 1] before the seed's normalisation); attacked pixels are clipped to [0, 1].

The direction does not depend on ``epsilon``, so one backward pass serves every ``epsilon``
(:func:`fgsm_direction`, then :func:`perturb`).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor

from batmann.data.images import NORM_MEAN, NORM_STD
from batmann.memory import class_logits, sharpened_attention

#: the valid range of a normalised pixel: (0 - mean) / std .. (1 - mean) / std
PIXEL_LO = (0.0 - NORM_MEAN) / NORM_STD
PIXEL_HI = (1.0 - NORM_MEAN) / NORM_STD


def fgsm_direction(model: torch.nn.Module, episode, sim_cal: str, keys: Tensor | None = None) -> Tensor:
    """``sign(d loss / d query)`` (Q, C, H, W) for ``episode`` under ``model`` (eval mode kept).

    ``keys``: the support features (N, d) if already computed (e.g. cached by an evaluator);
    otherwise they are computed here. Only the gradient with respect to the queries is formed:
    the parameters' gradients are switched off for the pass (and restored), which skips the
    weight-gradient products and changes no bit of the query gradient."""
    was_training = model.training
    params = [p for p in model.parameters() if p.requires_grad]
    model.eval()
    try:
        for p in params:
            p.requires_grad_(False)
        if keys is None:
            with torch.no_grad():
                keys = model(episode.support)
        q = episode.query.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            att = sharpened_attention(model(q).float(), keys.float(), sim_cal)
            logits = class_logits(att, episode.support_labels, episode.ways)
            loss = F.cross_entropy(logits, episode.query_labels)
            (grad,) = torch.autograd.grad(loss, q)
    finally:
        for p in params:
            p.requires_grad_(True)
        model.train(was_training)
    return grad.sign()


def perturb(queries: Tensor, direction: Tensor, epsilon: float) -> Tensor:
    """``queries + epsilon * direction`` in pixel units, clipped to the valid pixel range
    (normalised images in, normalised images out)."""
    if not epsilon >= 0:
        raise ValueError(f"epsilon must be >= 0 (got {epsilon!r})")
    return (queries + (epsilon / NORM_STD) * direction).clamp(PIXEL_LO, PIXEL_HI)


def attacked_episode(episode, direction: Tensor, epsilon: float):
    """A copy of ``episode`` whose queries are perturbed (their image ids dropped, so that no
    feature cache returns the clean features)."""
    q = perturb(episode.query, direction, epsilon)
    return dataclasses.replace(episode, query=q, query_index=None if epsilon else episode.query_index)
