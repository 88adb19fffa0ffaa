"""The one way onto crossbars: :func:`convert` a controller into an in-memory few-shot system.

``convert(model, spec)`` takes a plain ``nn.Module`` of ``nn.Conv2d``/``nn.Linear`` layers, or
anything that exports one (an object with ``export_plain()``: a BATMANN controller or checkpoint),
and returns an :class:`InMemorySystem`: the controller and the key memory placed as
``spec.analog`` says, behind the three calls an episodic evaluator makes:

- ``features(images, ids=None)``: (B, C, H, W) -> (B, d), cached per image id on this chip;
- ``write(keys)``: encode the support features (N, d) and store them (analog: program the key
  memory's devices; every episode rewrites them);
- ``similarities(queries)``: (Q, d) -> (Q, N), the dot products with the stored keys (read
  from the crossbar's currents when the keys are analog) put on the similarity scale.

How features become stored vectors and how dot products become similarities is the *key
codec* (:class:`KeyCodec`): an object with ``encode(x)`` and ``scale(dots, queries, keys)``.
A model with ``key_codec()`` (a BATMANN checkpoint: bipolar, binary or real keys) brings its
own; without one the features are stored as they are and the similarities are the raw dot
products. The chip (the programmed controller, the key-memory devices) is made once per
``spec.seed``.
"""

from __future__ import annotations

from typing import Callable, Hashable, Protocol, Sequence

import torch
from torch import nn

from crossbar.controller import AnalogController, convert_controller
from crossbar.key_memory import KeyCrossbar
from crossbar.spec import HardwareSpec
from device_models.errors import HardwareSpecError


class KeyCodec(Protocol):
    """How features are stored in the key memory and how its dot products are scaled."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Features (N, d) -> the vectors written into (or applied to) the key memory."""

    def scale(self, dots: torch.Tensor, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Dot products (Q, N) of encoded queries (Q, d) and keys (N, d) -> similarities."""


class RawDots:
    """The identity codec: features stored as they are, similarities are the dot products."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def scale(self, dots: torch.Tensor, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        return dots


FeatureFn = Callable[[torch.Tensor, "torch.Tensor | Sequence[Hashable] | None"], torch.Tensor]


class InMemorySystem:
    """Controller + key memory on (simulated) crossbars as ``spec`` says; see :func:`convert`."""

    def __init__(self, controller: AnalogController, spec: HardwareSpec, codec: KeyCodec | None = None,
                 digital_features: FeatureFn | None = None):
        self.controller = controller
        self.spec = spec
        self.codec: KeyCodec = codec if codec is not None else RawDots()
        self._digital_features = digital_features if not spec.controller_analog else None
        self.key_chip: KeyCrossbar | None = None
        self._keys: torch.Tensor | None = None

    def features(self, images: torch.Tensor, ids: torch.Tensor | Sequence[Hashable] | None = None) -> torch.Tensor:
        """(B, C, H, W) -> (B, d) on the CPU; cached per image id (see ``AnalogController.features``)."""
        if self._digital_features is not None:  # keys-only: the digital controller's (shared) features
            return self._digital_features(images, ids).cpu()
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.controller.features(images, ids)

    def write(self, keys: torch.Tensor) -> None:
        """Encode ``keys`` (N, d) and store them (analog: rewrite the key memory's devices)."""
        if keys.dim() != 2:
            raise HardwareSpecError(f"keys must have shape (N, d), got {tuple(keys.shape)}")
        k = self.codec.encode(keys.detach().float().cpu())
        if self.spec.keys_analog:
            if self.key_chip is None or self.key_chip.dim != k.shape[1]:
                self.key_chip = KeyCrossbar(self.spec, int(k.shape[1]))
            self.key_chip.program(k)
        self._keys = k

    def similarities(self, queries: torch.Tensor) -> torch.Tensor:
        """Similarities (Q, N) of ``queries`` (Q, d) with the stored keys."""
        if self._keys is None:
            raise RuntimeError("no keys written: call write(keys) first")
        q = self.codec.encode(queries.detach().float().cpu())
        if self.spec.keys_analog:
            dots = self.key_chip.similarities(q)
        else:
            dots = q @ self._keys.to(q.dtype).T
        return self.codec.scale(dots, q, self._keys)

    @torch.no_grad()
    def calibrate(self, episodes) -> None:
        """Fix calibrated ADC ranges (``spec.adc_spec.range`` != "worst"; otherwise nothing
        happens) from calibration ``episodes`` (objects with ``support`` and ``query`` images,
        e.g. a few episodes of training characters): the analog controller records its tile
        currents on their images, then the key memory records its own on their keys and
        queries. Call once per chip, before evaluating."""
        adc = self.spec.adc_spec
        if adc is None or not adc.calibrated:
            return
        episodes = list(episodes)
        if self.spec.controller_analog:
            self.controller.calibrate(torch.cat([torch.cat([ep.support, ep.query]) for ep in episodes]))
        if self.spec.keys_analog:
            pairs = []
            for ep in episodes:
                keys = self.features(ep.support)
                queries = self.features(ep.query)
                pairs.append((self.codec.encode(keys.float().cpu()), self.codec.encode(queries.float().cpu())))
            dim = int(pairs[0][0].shape[1])
            if self.key_chip is None or self.key_chip.dim != dim:
                self.key_chip = KeyCrossbar(self.spec, dim)
            self.key_chip.calibrate(pairs)

    def describe(self) -> dict:
        return self.spec.describe()


def convert(model: nn.Module, spec: HardwareSpec, *, read: str = "vectorised", codec: KeyCodec | None = None,
            digital_features: FeatureFn | None = None) -> InMemorySystem:
    """Put ``model`` and its key memory on the crossbars of ``spec``.

    - ``model``: a plain ``nn.Module`` (``nn.Conv2d``/``nn.Linear`` and parameter-free layers),
      or an object with ``export_plain()`` returning one; its ``key_codec()``, if it has one, is
      the default ``codec``.
    - ``read``: ``"vectorised"`` (default) or ``"memtorch"`` (MemTorch's own forward; linear
      read only), for the controller's layers.
    - ``codec``: see :class:`KeyCodec` (default: the model's, else :class:`RawDots`).
    - ``digital_features``: with ``spec.analog == "keys"``, a ``(images, ids) -> features``
      callable used instead of the plain model (to share a digital system's feature cache).

    Seeds Python, NumPy and torch with ``spec.seed`` when the controller is analog (MemTorch
    draws from the global generators).
    """
    if not isinstance(spec, HardwareSpec):
        raise HardwareSpecError(f"spec must be a HardwareSpec, got {type(spec).__name__}")
    export = getattr(model, "export_plain", None)
    plain = export() if callable(export) else model
    if not isinstance(plain, nn.Module):
        raise HardwareSpecError(f"cannot convert a {type(model).__name__}: expected an nn.Module or an "
                                "object with export_plain()")
    if codec is None and callable(getattr(model, "key_codec", None)):
        codec = model.key_codec()
    return InMemorySystem(convert_controller(plain, spec, read=read), spec, codec, digital_features)
