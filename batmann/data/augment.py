"""Random affine augmentation of training images: rotation, shear, scale and translation.

:func:`random_affine` resamples each image of a batch through its own affine map (bilinear,
edges continued with the border pixels, which are background in Omniglot and MNIST);
:func:`augment_episode` applies it to a training episode's supports and queries with a
generator derived from the run's seed and the episode index (:func:`episode_generator`), so an
episode's images are the same whenever it is drawn, in a fresh or a resumed run.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from batmann.config import AugmentConfig

#: a constant word mixed into the augmentation seeds, so that they differ from the samplers'
_STREAM = 0xA06
#: the same for the test-time views (:func:`image_views`), so that they differ from training's
_VIEW_STREAM = 0x7E57


def _generator(seed: int, *words: int) -> torch.Generator:
    """A generator seeded from ``seed`` and ``words`` (non-negative ints) through a SeedSequence."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *words]).generate_state(2, np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


def episode_generator(seed: int, episode: int) -> torch.Generator:
    """The augmentation generator of training episode ``episode`` of a run seeded ``seed``."""
    return _generator(seed, int(episode), _STREAM)


def affine_matrices(n: int, size: int, cfg: AugmentConfig, generator: torch.Generator) -> Tensor:
    """``n`` random sampling maps (n, 2, 3) float64 in ``F.affine_grid``'s normalised coordinates
    for ``size`` x ``size`` images: rotation, shear (of x along y), isotropic scale and shift."""
    u = torch.rand(n, 5, generator=generator, dtype=torch.float64) * 2 - 1  # uniform in [-1, 1]
    a = u[:, 0] * math.radians(cfg.rotation)
    sh = torch.tan(u[:, 1] * math.radians(cfg.shear))
    k = 1 + u[:, 2] * cfg.scale
    t = u[:, 3:5] * (2.0 * cfg.translate / size)  # pixels -> normalised units
    cos, sin = torch.cos(a), torch.sin(a)
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    # R(a) @ [[1, sh], [0, 1]] @ k
    theta[:, 0, 0] = k * cos
    theta[:, 0, 1] = k * (cos * sh - sin)
    theta[:, 1, 0] = k * sin
    theta[:, 1, 1] = k * (sin * sh + cos)
    theta[:, :, 2] = t
    return theta


def random_affine(images: Tensor, cfg: AugmentConfig, generator: torch.Generator) -> Tensor:
    """Images (B, C, S, S) each resampled through a random affine map of ``cfg`` (unchanged when
    ``cfg`` is off); the parameters are drawn on the CPU from ``generator``."""
    if not cfg.enabled or images.shape[0] == 0:
        return images
    return _resample(images, affine_matrices(images.shape[0], images.shape[-1], cfg, generator))


def _resample(images: Tensor, theta: Tensor) -> Tensor:
    """Images (B, C, S, S) resampled through the sampling maps ``theta`` (B, 2, 3)."""
    grid = F.affine_grid(theta.to(device=images.device, dtype=torch.float32), list(images.shape), align_corners=False)
    return F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border",
                         align_corners=False).to(images.dtype)


def image_views(images: Tensor, ids: list[int], cfg: AugmentConfig, seed: int, view: int) -> Tensor:
    """Test-time view ``view`` (1, 2, ...) of images (B, C, S, S): each image resampled through its
    own random affine map of ``cfg``, drawn from ``seed``, its id (``ids``, B) and ``view`` alone,
    so an image has the same views in every episode and batch."""
    size = images.shape[-1]
    return _resample(images, torch.cat([
        affine_matrices(1, size, cfg, _generator(seed, int(i) & 0xFFFFFFFFFFFF, int(view), _VIEW_STREAM)) for i in ids]))


def augment_episode(episode, cfg: AugmentConfig, seed: int, index: int):
    """Training episode ``index`` of a run seeded ``seed`` with its supports and queries augmented
    (one batch: supports first); the episode itself when ``cfg`` is off."""
    if not cfg.enabled:
        return episode
    n = episode.support.shape[0]
    both = random_affine(torch.cat([episode.support, episode.query]), cfg, episode_generator(seed, index))
    return dataclasses.replace(episode, support=both[:n], query=both[n:])
