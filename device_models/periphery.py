"""The cost constants of a chip's periphery and of a digital baseline, each with its source.

A :class:`Periphery` holds what the energy, latency and area model of ``crossbar.cost`` needs
beyond the devices' conductances: the ADC (energy per conversion from a Walden figure of merit,
conversion time, area), the read and write pulses, the digital shift-and-add, and the energy of
one multiply-accumulate of a digital processor. :data:`PERIPHERY_PRESETS` names the sourced sets;
every field can be overridden (``dataclasses.replace``, or the CLI's cost flags), and
:meth:`Periphery.describe` carries the sources into results.

Units: energies in pJ (``*_pj``) or fJ (``*_fj``), times in seconds (``*_s``), areas in mm^2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Mapping

from device_models.errors import HardwareSpecError

#: digital baselines: energy of one multiply-accumulate (multiply + add), pJ
DIGITAL_MACS = ("int8", "fp32")
#: how the arrays of one layer are read: all at once (one ADC bank per array) or one after another
TILE_SCHEDULES = ("parallel", "serial")

_HOROWITZ = ("Horowitz, 'Computing's energy problem (and what we can do about it)', IEEE ISSCC 2014, "
             "pp. 10-14, energy table for 45 nm at 0.9 V")
_MURMANN = ("Murmann, 'ADC Performance Survey 1997-2025' (github.com/bmurmann/ADC-survey, "
            "xls/ADCsurvey_rev20250609.xlsx): the 31 SAR ADCs of ISSCC and VLSI 2015-2025 with Nyquist "
            "rates of 1 MS/s to 1 GS/s; medians of their Walden figure of merit (FOMW_hf), rate and area")
_NEUROSIM = ("DNN+NeuroSim V1.3 (github.com/neurosim/DNN_NeuroSim_V1.3, Inference_pytorch/NeuroSIM/Param.cpp "
             "defaults)")


@dataclass(frozen=True)
class Periphery:
    """Cost constants of the periphery and of the digital baseline (see the module docstring).

    - ``adc_fom_fj``: Walden figure of merit (fJ per conversion step): one conversion of a
      ``b``-bit ADC costs ``adc_fom_fj * 2**b`` fJ;
    - ``adc_rate_hz``: conversions per second of one ADC (a conversion takes ``1 / rate``);
    - ``adc_area_mm2``: area of one ADC;
    - ``columns_per_adc``: columns that share one ADC through a multiplexer (read one after the other);
    - ``read_pulse_s``: how long the read voltages are applied per array read (integration time);
    - ``write_voltage_v``, ``write_pulse_s``, ``write_pulses``: the write pulses of one device write;
    - ``dac_energy_pj``: energy of one input conversion per row beyond the row's resistive read
      energy (which the array read energy already counts);
    - ``add_pj``, ``multiply_pj``: the digital periphery's 32-bit integer add (shift-and-add of
      tiles) and the fp32 multiply that scales each output back to weight units;
    - ``mac_pj``: energy per multiply-accumulate of the digital baseline, by precision.
    """

    name: str = "custom"
    adc_fom_fj: float = 17.7
    adc_rate_hz: float = 20e6
    adc_area_mm2: float = 0.027
    columns_per_adc: int = 8
    read_pulse_s: float = 10e-9
    write_voltage_v: float = 2.0
    write_pulse_s: float = 10e-9
    write_pulses: int = 1
    dac_energy_pj: float = 0.0
    add_pj: float = 0.1
    multiply_pj: float = 3.7
    mac_pj: Mapping[str, float] = field(default_factory=lambda: {"int8": 0.23, "fp32": 4.6})
    tiles: str = "parallel"
    sources: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for f in ("adc_fom_fj", "adc_rate_hz", "adc_area_mm2", "read_pulse_s", "write_voltage_v",
                  "write_pulse_s", "add_pj", "multiply_pj"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise HardwareSpecError(f"periphery {f} must be a positive number, got {v!r}")
        if isinstance(self.dac_energy_pj, bool) or not isinstance(self.dac_energy_pj, (int, float)) \
                or not math.isfinite(self.dac_energy_pj) or self.dac_energy_pj < 0:
            raise HardwareSpecError(f"periphery dac_energy_pj must be a number >= 0, got {self.dac_energy_pj!r}")
        for f in ("columns_per_adc", "write_pulses"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise HardwareSpecError(f"periphery {f} must be a positive integer, got {v!r}")
        if self.tiles not in TILE_SCHEDULES:
            raise HardwareSpecError(f"periphery tiles must be one of {', '.join(TILE_SCHEDULES)}, got {self.tiles!r}")
        macs = dict(self.mac_pj)
        if set(macs) != set(DIGITAL_MACS) or any(not isinstance(v, (int, float)) or v <= 0 for v in macs.values()):
            raise HardwareSpecError(f"periphery mac_pj must give a positive energy for each of {', '.join(DIGITAL_MACS)}, "
                                    f"got {macs!r}")
        object.__setattr__(self, "mac_pj", MappingProxyType(macs))
        object.__setattr__(self, "sources", MappingProxyType(dict(self.sources)))

    def adc_energy_pj(self, bits: int) -> float:
        """Energy of one conversion of a ``bits``-bit ADC, pJ (Walden: FOM x 2^bits)."""
        return self.adc_fom_fj * 2.0 ** bits * 1e-3

    @property
    def adc_conversion_s(self) -> float:
        """Time of one conversion, seconds."""
        return 1.0 / self.adc_rate_hz

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: every field (``mac_pj`` and ``sources`` as plain dicts)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["mac_pj"] = dict(self.mac_pj)
        d["sources"] = dict(self.sources)
        return d

    def describe(self) -> dict[str, Any]:
        """The constants without their sources (for result rows)."""
        d = self.to_dict()
        d.pop("sources")
        return d


PERIPHERY_PRESETS: Mapping[str, Periphery] = MappingProxyType({
    p.name: p for p in (
        Periphery(
            name="survey2025",
            sources={
                "adc_fom_fj": _MURMANN + ": 17.7 fJ/step",
                "adc_rate_hz": _MURMANN + ": 20 MS/s",
                "adc_area_mm2": _MURMANN + ": 0.027 mm^2",
                "columns_per_adc": _NEUROSIM + ": numColMuxed = 8",
                "read_pulse_s": _NEUROSIM + ": readPulseWidth = 10 ns",
                "write_voltage_v": _NEUROSIM + ": writeVoltage = 2 V",
                "write_pulse_s": "assumed equal to the read pulse (10 ns); no cited figure: set your devices'",
                "write_pulses": "one pulse per write (no write-verify); set the verify iterations of your scheme",
                "dac_energy_pj": "not modelled beyond the rows' resistive read energy (no cited figure)",
                "add_pj": _HOROWITZ + ": 32-bit integer add 0.1 pJ",
                "multiply_pj": _HOROWITZ + ": 32-bit float multiply 3.7 pJ",
                "mac_pj": _HOROWITZ + ": int8 multiply 0.2 + add 0.03 pJ; fp32 multiply 3.7 + add 0.9 pJ "
                          "(arithmetic only: no memory access)",
                "tiles": "every array of a layer has its own ADCs and is read at the same time",
            },
        ),
    )
})

#: the periphery used when none is named
DEFAULT_PERIPHERY = "survey2025"


def get_periphery(name: str | Periphery = DEFAULT_PERIPHERY, **overrides: Any) -> Periphery:
    """A periphery preset by name (or ``name`` itself) with ``overrides`` (field=value; None ignored)."""
    from dataclasses import replace

    if isinstance(name, Periphery):
        base = name
    elif isinstance(name, str) and name in PERIPHERY_PRESETS:
        base = PERIPHERY_PRESETS[name]
    else:
        raise HardwareSpecError(f"unknown periphery {name!r} (one of {', '.join(PERIPHERY_PRESETS)})")
    given = {k: v for k, v in overrides.items() if v is not None}
    names = {f.name for f in fields(Periphery)}
    unknown = sorted(set(given) - names)
    if unknown:
        raise HardwareSpecError(f"unknown periphery field(s) {', '.join(unknown)} (one of {', '.join(sorted(names))})")
    if not given:
        return base
    sources = dict(base.sources)
    for k in given:
        sources[k] = "set by the user"
    return replace(base, name=f"{base.name}+custom", sources=sources, **given)
