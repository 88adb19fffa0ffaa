"""Frozen controller layers during training, and the feature cache they make possible.

``batmann train --freeze conv1,...`` keeps the named layers fixed (``requires_grad`` off; the
optimiser never sees them). When the first ``depth`` convolutions (conv1..conv2, conv1..conv3 or
conv1..conv4) are frozen, their output for an image depends only on the image and the episode's
rotation, so :class:`TrunkCache` computes that prefix once per ``(image, rotation)`` and training
runs only the layers above it (:meth:`TrunkCache.head`). On the 2-core CPU a 100-way 5-shot
episode then costs about a tenth (conv1..conv2 frozen: conv2 is about 90 % of the controller's
multiply-adds) or a few milliseconds (whole trunk frozen) once the cache is warm
(``benchmarks/bench_frozen_trunk.py``; docs/performance.md).

The cache holds float32 prefix outputs keyed by :func:`batmann.evaluate.image_ids`; for the 964
training characters of a split in 4 rotations (77,120 images) that is at most (computed, float32):

=====================  ===================  ==============
frozen prefix          one image            77,120 images
=====================  ===================  ==============
conv1..conv2           128 x 12 x 12        5.7 GB
conv1..conv3           128 x 10 x 10        3.9 GB
conv1..conv4           128 x 4 x 4          632 MB
=====================  ===================  ==============

conv1 alone is not cached: its output (128 x 28 x 28, 31 GB for a split) is large and it costs
about 1 % of the forward pass.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from batmann.evaluate import DigitalSystem, cached_rows

TRUNK_LAYERS = ("conv1", "conv2", "conv3", "conv4")
MIN_CACHED_DEPTH = 2  # conv1's output is too large to cache for what it saves


def freeze_layers(model: nn.Module, names: list[str] | tuple[str, ...]) -> list[nn.Parameter]:
    """Turn off gradients of the controller layers ``names`` (``conv1``..``conv4``, ``fc1``).

    Returns the parameters that still train, in module order (what the optimiser gets).
    """
    for name in names:
        layer = model.fc1 if name == "fc1" else getattr(model.features, name)
        for p in layer.parameters():
            p.requires_grad_(False)
    return [p for p in model.parameters() if p.requires_grad]


def cached_depth(model: nn.Module, frozen: list[str] | tuple[str, ...]) -> int:
    """The prefix depth :class:`TrunkCache` caches for these frozen layers: how many leading conv
    layers (conv1, conv2, ...) are frozen and depend only on the image, when that reaches at
    least conv2 (:data:`MIN_CACHED_DEPTH`), else 0 (no cache). Counting stops at the first
    trainable conv or RBNN layer (RBNN layers re-fit their rotations every episode, so their
    output is not a function of the image)."""
    from batmann.models.layers import _RbnnMixin

    depth = 0
    for name in TRUNK_LAYERS:
        if name not in frozen or isinstance(getattr(model.features, name), _RbnnMixin):
            break
        depth += 1
    return depth if depth >= MIN_CACHED_DEPTH else 0


def trunk_is_cacheable(model: nn.Module, frozen: list[str] | tuple[str, ...]) -> bool:
    """True when a frozen prefix of the trunk is worth caching (see :func:`cached_depth`)."""
    return cached_depth(model, frozen) > 0


class TrunkCache:
    """The output of the frozen prefix conv1..conv``depth`` (with its ReLU and pooling), computed
    once per image id; :meth:`head` runs the rest of the controller on it.

    ``depth`` defaults to 4 (the whole trunk: cached values are ``features(x)``).
    ``autocast_bf16`` runs the prefix under CPU/CUDA bf16 autocast (the run's precision); the
    cached values are float32 either way.
    """

    def __init__(self, model: nn.Module, autocast_bf16: bool = False, depth: int = len(TRUNK_LAYERS)) -> None:
        if not MIN_CACHED_DEPTH <= depth <= len(TRUNK_LAYERS):
            raise ValueError(f"cached prefix depth must be {MIN_CACHED_DEPTH}..{len(TRUNK_LAYERS)}, got {depth}")
        self.model = model
        self.autocast_bf16 = autocast_bf16
        self.depth = depth
        names = list(model.features._modules)
        # the prefix ends just before the next conv (its ReLU and pooling included)
        self._cut = names.index(TRUNK_LAYERS[depth]) if depth < len(TRUNK_LAYERS) else len(names)
        self._store: dict[int, Tensor] = {}

    def __len__(self) -> int:
        return len(self._store)

    @property
    def layers(self) -> tuple[str, ...]:
        """The conv layers whose output is cached."""
        return TRUNK_LAYERS[:self.depth]

    @torch.no_grad()
    def _prefix(self, images: Tensor) -> Tensor:
        m = self.model
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=self.autocast_bf16):
            return m.features[:self._cut](images).float()

    def __call__(self, images: Tensor, ids: Tensor | None) -> Tensor:
        """Images (B, C, 32, 32) -> prefix outputs (B, 128, H, W), float32, no gradient.

        ``ids`` (B,) identify the images (with their rotation); ``None`` computes without caching.
        """
        if ids is None:
            return self._prefix(images)
        return cached_rows(self._store, images, ids, self._prefix)

    def head(self, x: Tensor) -> Tensor:
        """The controller above the cached prefix: prefix outputs -> features (B, feature_dim).
        Runs with gradients on its trainable layers, under the caller's autocast."""
        m = self.model
        return m.fc1(m.flatten(m.features[self._cut:](x)))


class CachedTrunkSystem(DigitalSystem):
    """A :class:`~batmann.evaluate.DigitalSystem` whose features are the controller above the
    cached prefix (for validation during a frozen-prefix run; same numbers as the full model)."""

    def __init__(self, model: nn.Module, trunk: TrunkCache, keys: str = "bipolar") -> None:
        super().__init__(model, keys=keys, cache_features=False, autocast=trunk.autocast_bf16)
        self.trunk = trunk

    @torch.no_grad()
    def features(self, images: Tensor, ids: Tensor | None = None) -> Tensor:  # noqa: D102
        x = self.trunk(images, ids)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return self.trunk.head(x).float()
