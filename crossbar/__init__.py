"""Mapping plain ``nn.Linear``/``nn.Conv2d`` layers and key matrices onto simulated crossbars.

Depends on :mod:`device_models`; knows nothing about episodes or BATMANN.

- :class:`HardwareSpec`: which parts are analog (``keys``, ``controller``, ``all``), the device
  preset, the non-idealities, the seed.
- :func:`convert` (plain controller -> :class:`AnalogController` with ``features(images, ids)``),
  :func:`program_keys` (keys -> :class:`KeyCrossbar` with ``similarities(queries)``),
  :func:`convert_system` (-> :class:`InMemorySystem`: ``features``, ``write_keys``,
  ``similarities``).
- :mod:`crossbar.conductance`: the vectorised programming/reading pipeline;
  :mod:`crossbar.memtorch_compat`: importing MemTorch without torchvision.
"""

from crossbar.controller import AnalogController, convert
from crossbar.key_memory import KeyCrossbar, program_keys
from crossbar.spec import ANALOG_PARTS, HardwareSpec
from crossbar.system import InMemorySystem, convert_system
from device_models.errors import HardwareSpecError

__all__ = [
    "ANALOG_PARTS", "AnalogController", "HardwareSpec", "HardwareSpecError", "InMemorySystem",
    "KeyCrossbar", "convert", "convert_system", "program_keys",
]
