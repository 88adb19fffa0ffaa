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
"""

from device_models.errors import HardwareSpecError
from device_models.nonidealities import (
    ADC,
    NONIDEALITY_TYPES,
    ConductanceStates,
    DeviceVariability,
    Drift,
    Endurance,
    InputDAC,
    IRDrop,
    NonIdeality,
    ProgrammingNoise,
    ReadNoise,
    StuckAtFaults,
    TileShape,
    parse_duration,
    program_fraction,
)
from device_models.presets import PRESETS, DevicePreset, get_preset, list_presets

__all__ = [
    "ADC", "NONIDEALITY_TYPES", "PRESETS", "ConductanceStates", "DevicePreset", "DeviceVariability", "Drift", "Endurance",
    "HardwareSpecError", "InputDAC", "IRDrop", "NonIdeality", "ProgrammingNoise", "ReadNoise", "StuckAtFaults", "TileShape",
    "get_preset", "list_presets", "parse_duration", "program_fraction",
]
