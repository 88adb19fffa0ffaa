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
"""

from crossbar.key_memory import KeyCrossbar
from crossbar.spec import ANALOG_PARTS, HardwareSpec
from crossbar.system import InMemorySystem, KeyCodec, RawDots, convert
from device_models.errors import HardwareSpecError

__all__ = [
    "ANALOG_PARTS", "HardwareSpec", "HardwareSpecError", "InMemorySystem", "KeyCodec", "KeyCrossbar",
    "RawDots", "convert",
]
