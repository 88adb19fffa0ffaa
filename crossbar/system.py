"""The in-memory system: the controller and the key memory as ``HardwareSpec`` says, one interface.

``InMemorySystem`` offers what the digital BATMANN system offers, so one evaluator runs both on
the same episodes: ``features(images, ids=None)`` and, after ``write_keys(keys)`` (every episode),
``similarities(queries)``. The chip (the programmed controller, the key-memory devices) is made
once per ``spec.seed``; only the keys are rewritten per episode.
"""

from __future__ import annotations

from typing import Hashable, Sequence

import torch
from torch import nn

from crossbar.controller import AnalogController, convert
from crossbar.key_memory import KeyCrossbar
from crossbar.spec import HardwareSpec
from device_models.errors import HardwareSpecError


class InMemorySystem:
    """Controller + key memory on (simulated) crossbars; see :func:`convert_system`."""

    def __init__(self, controller: AnalogController, spec: HardwareSpec):
        self.controller = controller
        self.spec = spec
        self.key_chip: KeyCrossbar | None = None
        self._keys: torch.Tensor | None = None

    def features(self, images: torch.Tensor, ids: Sequence[Hashable] | None = None) -> torch.Tensor:
        """(B, C, H, W) -> (B, d); cached per image id (see ``AnalogController.features``)."""
        return self.controller.features(images, ids)

    def write_keys(self, keys: torch.Tensor) -> None:
        """Store ``keys`` (N, d) in the key memory (analog: rewrite the chip's devices)."""
        if keys.dim() != 2:
            raise HardwareSpecError(f"keys must have shape (N, d), got {tuple(keys.shape)}")
        if self.spec.keys_analog:
            if self.key_chip is None or self.key_chip.dim != keys.shape[1]:
                self.key_chip = KeyCrossbar(self.spec, int(keys.shape[1]))
            self.key_chip.program(keys)
        self._keys = keys.detach()

    def similarities(self, queries: torch.Tensor) -> torch.Tensor:
        """Dot products (Q, N) of ``queries`` (Q, d) with the stored keys."""
        if self._keys is None:
            raise RuntimeError("no keys written: call write_keys(keys) first")
        if self.spec.keys_analog:
            return self.key_chip.similarities(queries)
        return queries @ self._keys.to(queries.dtype).T

    def describe(self) -> dict:
        return self.spec.describe()


def convert_system(plain_controller: nn.Module, spec: HardwareSpec, read: str = "vectorised") -> InMemorySystem:
    """Build the in-memory system for ``spec`` from the exported plain controller.

    ``read`` is passed to :func:`crossbar.convert` (``"vectorised"`` or ``"memtorch"``).
    """
    return InMemorySystem(convert(plain_controller, spec, read=read), spec)
