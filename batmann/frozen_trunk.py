"""Frozen controller layers during training, and the feature cache they make possible.

``batmann train --freeze conv1,...`` keeps the named layers fixed (``requires_grad`` off; the
optimiser never sees them). When the whole convolutional trunk (conv1..conv4) is frozen, its
output for an image depends only on the image and the episode's rotation, so
:class:`TrunkCache` computes it once per ``(image, rotation)`` and training only runs ``fc1``.
On the 2-core CPU that turns a 100-way 5-shot episode from seconds into milliseconds once the
cache is warm (``benchmarks/bench_frozen_trunk.py``; README, Performance).

The cache holds ``(2048,)`` float32 vectors keyed by :func:`batmann.evaluate.image_ids`; for the
964 training characters of a split with 4 rotations that is at most 77,120 entries (632 MB).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from batmann.evaluate import DigitalSystem, cached_rows

TRUNK_LAYERS = ("conv1", "conv2", "conv3", "conv4")


def freeze_layers(model: nn.Module, names: list[str] | tuple[str, ...]) -> list[nn.Parameter]:
    """Turn off gradients of the controller layers ``names`` (``conv1``..``conv4``, ``fc1``).

    Returns the parameters that still train, in module order (what the optimiser gets).
    """
    for name in names:
        layer = model.fc1 if name == "fc1" else getattr(model.features, name)
        for p in layer.parameters():
            p.requires_grad_(False)
    return [p for p in model.parameters() if p.requires_grad]


def trunk_is_cacheable(model: nn.Module, frozen: list[str] | tuple[str, ...]) -> bool:
    """True when every conv layer is frozen and none changes between episodes (RBNN layers
    re-fit their rotations every episode, so their output is not a function of the image)."""
    from batmann.models.layers import _RbnnMixin

    if not set(TRUNK_LAYERS) <= set(frozen):
        return False
    return not any(isinstance(m, _RbnnMixin) for m in model.features.modules())


class TrunkCache:
    """``flatten(features(x))`` of a frozen trunk, computed once per image id.

    ``autocast_bf16`` runs the trunk under CPU/CUDA bf16 autocast (the run's precision); the
    cached values are float32 either way.
    """

    def __init__(self, model: nn.Module, autocast_bf16: bool = False) -> None:
        self.model = model
        self.autocast_bf16 = autocast_bf16
        self._store: dict[int, Tensor] = {}

    def __len__(self) -> int:
        return len(self._store)

    @torch.no_grad()
    def _trunk(self, images: Tensor) -> Tensor:
        m = self.model
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=self.autocast_bf16):
            return m.flatten(m.features(images)).float()

    def __call__(self, images: Tensor, ids: Tensor | None) -> Tensor:
        """Images (B, C, 32, 32) -> trunk outputs (B, 2048), float32, no gradient.

        ``ids`` (B,) identify the images (with their rotation); ``None`` computes without caching.
        """
        if ids is None:
            return self._trunk(images)
        return cached_rows(self._store, images, ids, self._trunk)


class CachedTrunkSystem(DigitalSystem):
    """A :class:`~batmann.evaluate.DigitalSystem` whose features are ``fc1`` of the cached trunk
    (for validation during a frozen-trunk run; same numbers as the full model)."""

    def __init__(self, model: nn.Module, trunk: TrunkCache, keys: str = "bipolar") -> None:
        super().__init__(model, keys=keys, cache_features=False, autocast=trunk.autocast_bf16)
        self.trunk = trunk

    @torch.no_grad()
    def features(self, images: Tensor, ids: Tensor | None = None) -> Tensor:  # noqa: D102
        x = self.trunk(images, ids)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return self.model.fc1(x).float()
