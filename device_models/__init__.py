"""RRAM device presets and non-ideality specifications. Knows nothing about BATMANN.

- :mod:`device_models.presets`: :class:`DevicePreset` (name, r_on, r_off, MemTorch model and
  parameters, source) and :data:`PRESETS` (``ideal``, ``vteam``, ``linear_ion_drift``,
  ``data_driven``, ``stanford_pku``); :func:`get_preset`.
- :mod:`device_models.nonidealities`: :class:`DeviceVariability`, :class:`ConductanceStates`,
  :class:`StuckAtFaults`, :class:`ProgrammingNoise`, :class:`ReadNoise`, :class:`Drift`,
  :class:`IRDrop`, :class:`ADC`, :class:`InputDAC`, :class:`TileShape`, all behind :class:`NonIdeality` (hooks by
  stage: device, program, read, circuit).
- :mod:`device_models.ir_drop`: the circuit solve of a crossbar with line resistance (exact
  nodal analysis and a fast line relaxation).
- :mod:`device_models.errors`: :class:`HardwareSpecError`.
- :mod:`device_models.options`: the option lists (plain tuples, no torch).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_NONIDEALITIES = ("ADC", "NONIDEALITY_TYPES", "ConductanceStates", "DeviceVariability", "Drift", "Endurance",
                  "InputDAC", "IRDrop", "NonIdeality", "ProgrammingNoise", "ReadNoise", "StuckAtFaults",
                  "TileShape", "parse_duration", "program_fraction")
#: each public name and the module that defines it: imported on first use (PEP 562), so that
#: ``device_models.options`` and ``device_models.errors`` are read without importing torch
_EXPORTS = {
    **{name: "device_models.nonidealities" for name in _NONIDEALITIES},
    **{name: "device_models.presets" for name in ("PRESETS", "DevicePreset", "get_preset", "list_presets")},
    "HardwareSpecError": "device_models.errors",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from device_models.errors import HardwareSpecError
    from device_models.nonidealities import (ADC, NONIDEALITY_TYPES, ConductanceStates, DeviceVariability, Drift,
                                             Endurance, InputDAC, IRDrop, NonIdeality, ProgrammingNoise, ReadNoise,
                                             StuckAtFaults, TileShape, parse_duration, program_fraction)
    from device_models.presets import PRESETS, DevicePreset, get_preset, list_presets


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'device_models' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
