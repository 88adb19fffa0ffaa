"""Mapping a few-shot controller and its key memory onto simulated RRAM crossbars.

Depends on :mod:`device_models`; knows nothing about episodes or BATMANN.

- :class:`HardwareSpec`: which parts are analog (``keys``, ``controller``, ``all``), the device
  preset, the non-idealities, the seed; saved and loaded with ``to_dict``/``from_dict`` and
  ``save``/``load`` (JSON or TOML).
- :func:`convert` (the one entry point): a controller (plain ``nn.Module``, or anything with
  ``export_plain()``) -> :class:`InMemorySystem` with ``features``, ``write`` and
  ``similarities``, the interface an episodic evaluator needs.
- Building blocks: :class:`KeyCrossbar` (a key-memory chip), :mod:`crossbar.controller`
  (controller layers patched with ``memtorch.mn``), :mod:`crossbar.conductance` (the vectorised
  programming/reading pipeline), :mod:`crossbar.lookup` (the currents of +-v inputs by table
  lookup), :mod:`crossbar.memtorch_compat` (importing MemTorch without torchvision).
- :mod:`crossbar.options`: the option lists (plain tuples, no torch). The names above are
  imported on first use, so importing ``crossbar.options`` alone loads no simulator.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

#: each public name and the module that defines it: imported on first use (PEP 562), so that
#: ``crossbar.options`` (the command line's choices) is read without importing torch
_EXPORTS = {
    "ANALOG_PARTS": "crossbar.options",
    "HardwareSpec": "crossbar.spec",
    "HardwareSpecError": "device_models.errors",
    "InMemorySystem": "crossbar.system",
    "KeyCodec": "crossbar.system",
    "KeyCrossbar": "crossbar.key_memory",
    "RawDots": "crossbar.system",
    "convert": "crossbar.system",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from crossbar.key_memory import KeyCrossbar
    from crossbar.options import ANALOG_PARTS
    from crossbar.spec import HardwareSpec
    from crossbar.system import InMemorySystem, KeyCodec, RawDots, convert
    from device_models.errors import HardwareSpecError


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'crossbar' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
