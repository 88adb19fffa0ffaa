"""RRAM device presets: a name, the resistance window and the MemTorch model behind it.

A preset describes one kind of device, nothing else: its low/high resistance states (``r_on`` /
``r_off``, ohms), the MemTorch memristor model class that simulates it (by name, so this package
needs neither MemTorch nor torch to import) with that model's parameters, and where the numbers
come from. Non-idealities (variability, finite states, faults, ADC, ...) are separate
specifications (:mod:`device_models.nonidealities`); no preset carries any.

Reads are ohmic (I = G V) for every preset, as in MemTorch's own forward pass (MemTorch only
simulates I-V non-linearity with its ``NonLinear`` non-ideality, which we do not use). The model
class matters for how MemTorch builds and programs its device objects; the crossbar maths uses
``r_on`` and ``r_off``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from device_models.errors import HardwareSpecError
from device_models.nonidealities import ProgrammingNoise

MEMTORCH_MODELS = ("VTEAM", "LinearIonDrift", "Data_Driven", "Data_Driven2021", "Stanford_PKU")


@dataclass(frozen=True)
class DevicePreset:
    """One RRAM device: resistance window, MemTorch model and the source of the numbers.

    ``memtorch_params`` are the keyword arguments for ``memtorch.bh.memristor.<memtorch_model>``;
    they always include ``r_on`` and ``r_off`` (filled in from the fields) and
    ``time_series_resolution``.
    """

    name: str
    r_on: float
    r_off: float
    memtorch_model: str
    memtorch_params: Mapping[str, object] = field(default_factory=dict)
    source: str = ""
    description: str = ""
    #: non-idealities measured on this device: in force unless the hardware spec sets its own
    #: of the same kind (e.g. ``programming_noise=0`` switches the measured one off)
    measured: tuple = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise HardwareSpecError("device preset name must be a non-empty string")
        for attr in ("r_on", "r_off"):
            v = getattr(self, attr)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise HardwareSpecError(f"preset {self.name}: {attr} must be a positive finite number of ohms, got {v!r}")
        if not self.r_off > self.r_on:
            raise HardwareSpecError(f"preset {self.name}: r_off ({self.r_off:g}) must exceed r_on ({self.r_on:g})")
        if self.memtorch_model not in MEMTORCH_MODELS:
            raise HardwareSpecError(
                f"preset {self.name}: unknown MemTorch model {self.memtorch_model!r} (one of {', '.join(MEMTORCH_MODELS)})"
            )
        params = dict(self.memtorch_params)
        for attr in ("r_on", "r_off"):
            if attr in params and params[attr] != getattr(self, attr):
                raise HardwareSpecError(f"preset {self.name}: memtorch_params[{attr!r}] disagrees with {attr}")
        params["r_on"] = float(self.r_on)
        params["r_off"] = float(self.r_off)
        params.setdefault("time_series_resolution", 1e-10)
        object.__setattr__(self, "memtorch_params", MappingProxyType(params))
        from device_models.nonidealities import NonIdeality

        kinds = [ni.kind for ni in self.measured if isinstance(ni, NonIdeality)]
        if len(kinds) != len(self.measured) or len(set(kinds)) != len(kinds):
            raise HardwareSpecError(f"preset {self.name}: measured must be NonIdeality objects, one per kind")

    @property
    def g_on(self) -> float:
        """Nominal high conductance 1/r_on (siemens)."""
        return 1.0 / self.r_on

    @property
    def g_off(self) -> float:
        """Nominal low conductance 1/r_off (siemens)."""
        return 1.0 / self.r_off

    @property
    def on_off_ratio(self) -> float:
        return self.r_off / self.r_on

    def describe(self) -> dict:
        """Flat, JSON-friendly description (for results tables)."""
        return {
            "preset": self.name,
            "r_on": self.r_on,
            "r_off": self.r_off,
            "memtorch_model": self.memtorch_model,
        }


_MEMTORCH_SRC = "the defaults of memtorch/bh/memristor/{}.py (memtorch-cpu 1.1.6)"
_LINEAR = {"time_series_resolution": 1e-4}  # measured presets: MemTorch's linear ion drift model
# carries their window (MemTorch has no model of these devices; the programming="memtorch" route
# only needs r_on / r_off)

PRESETS: Mapping[str, DevicePreset] = MappingProxyType({
    p.name: p
    for p in (
        DevicePreset(
            name="ideal",
            r_on=10e3,
            r_off=100e3,
            memtorch_model="LinearIonDrift",
            memtorch_params={"time_series_resolution": 1e-4},
            source="idealised device (not a measured one): any r_off > r_on is exact with the differential pair",
            description="ideal device: continuous conductance, no variability, no faults, no ADC; "
            "analog results equal digital ones up to float rounding",
        ),
        DevicePreset(
            name="vteam",
            r_on=50.0,
            r_off=1000.0,
            memtorch_model="VTEAM",
            memtorch_params={
                "time_series_resolution": 1e-10, "d": 3e-9, "k_on": -10, "k_off": 5e-4,
                "alpha_on": 3, "alpha_off": 1, "v_on": -0.2, "v_off": 0.02, "x_on": 0, "x_off": 3e-9,
            },
            source="Kvatinsky et al., IEEE TCAS-II 62(8):786-790, 2015 (VTEAM); numbers: "
            + _MEMTORCH_SRC.format("VTEAM"),
            description="VTEAM threshold model with MemTorch's default parameters (on/off ratio 20)",
        ),
        DevicePreset(
            name="linear_ion_drift",
            r_on=100.0,
            r_off=16e3,
            memtorch_model="LinearIonDrift",
            memtorch_params={
                "time_series_resolution": 1e-4, "u_v": 1e-14, "d": 10e-9,
                "pos_write_threshold": 0.55, "neg_write_threshold": -0.55, "p": 1,
            },
            source="Strukov et al., Nature 453:80-83, 2008 (HP TiO2 linear ion drift); numbers: "
            + _MEMTORCH_SRC.format("LinearIonDrift"),
            description="linear ion drift model with MemTorch's default parameters (on/off ratio 160)",
        ),
        DevicePreset(
            name="data_driven",
            r_on=1280.0,
            r_off=17e3,
            memtorch_model="Data_Driven",
            memtorch_params={
                "time_series_resolution": 1e-8, "A_p": 743.47, "A_n": -68012.28374, "t_p": 6.51,
                "t_n": 0.31645, "k_p": 5.11e-4, "k_n": 1.17e-3, "r_p": (16719, 0),
                "r_n": (29304.82557, 23692.77225), "eta": 1, "a_p": 0.24, "a_n": 0.24, "b_p": 3, "b_n": 3,
            },
            source="Messaris et al., IEEE TCAD 37(12):3151-3162, 2018 (data-driven Verilog-A ReRAM model, "
            "fitted to measured TiO2 devices); numbers: " + _MEMTORCH_SRC.format("Data_Driven"),
            description="data-driven ReRAM model fitted to measured devices (on/off ratio 13.3)",
        ),
        DevicePreset(
            name="stanford_pku",
            r_on=542.0,
            r_off=218586.0,
            memtorch_model="Stanford_PKU",
            memtorch_params={
                "time_series_resolution": 1e-4, "gap_init": 2e-10, "g_0": 0.25e-9, "V_0": 0.25,
                "I_0": 1000e-6, "read_voltage": 0.1, "T_init": 298, "R_th": 2.1e3, "gamma_init": 16,
                "beta": 0.8, "t_ox": 12e-9, "F_min": 1.4e9, "vel_0": 10, "E_a": 0.6, "a_0": 0.25e-9,
                "delta_g_init": 0.02, "model_switch": 0, "T_crit": 450, "T_smth": 500,
            },
            source="Jiang et al., IEEE TED 63(5):1884-1892, 2016 (Stanford-PKU RRAM compact model); numbers: "
            + _MEMTORCH_SRC.format("Stanford_PKU"),
            description="Stanford-PKU filamentary RRAM model (on/off ratio 403). MemTorch's "
            "Stanford_PKU.set_conductance does not update the device's g (see MEMTORCH-NOTES)",
        ),
        DevicePreset(
            name="rram_wan2022",
            r_on=1 / 39e-6,
            r_off=1e6,
            memtorch_model="LinearIonDrift",
            memtorch_params=_LINEAR,
            source="Wan et al., Nature 608:504-512, 2022 (NeuRRAM), Extended Data Fig. 3: programming "
            "error at t = 1 s after write-verify, cubic fit in uS as in CrossSim "
            "simulator/devices/custom/RRAM_Wan.py (valid up to 39.26 uS); the same data back aihwkit's "
            "ReRamWan2022NoiseModel",
            description="NeuRRAM RRAM, 1-39 uS (g_min of 1 uS is ours: the fit gives none); programming "
            "error 1.3-2.5 uS, measured",
            measured=(ProgrammingNoise(1.0, mode="measured", coefficients_us=(1.053, 0.2374, -1.167e-2, 1.536e-4)),),
        ),
        DevicePreset(
            name="rram_milo2021",
            r_on=1 / 225e-6,
            r_off=1 / 50e-6,
            memtorch_model="LinearIonDrift",
            memtorch_params=_LINEAR,
            source="Milo et al., IEEE IRPS 2021, Fig. 4 (IGVVA-100 incremental gate-voltage write-verify): "
            "programming error fit sigma = 4.782321 - 0.009107 G uS, 50-225 uS, as in CrossSim "
            "simulator/devices/custom/RRAM_Milo.py",
            description="HfO2 1T1R RRAM with write-verify, 50-225 uS (on/off 4.5); programming error "
            "2.7-4.3 uS, measured",
            measured=(ProgrammingNoise(1.0, mode="measured", coefficients_us=(4.782321, -0.009107)),),
        ),
        DevicePreset(
            name="rram_mao2022",
            r_on=1 / 150e-6,
            r_off=1e6,
            memtorch_model="LinearIonDrift",
            memtorch_params=_LINEAR,
            source="Mao et al., Nat. Commun. 13:6284, 2022 (memristive MANN: crossbar TCAM and LSH in 64 x 64 "
            "1T1R arrays), numbers from the authors' simulation code (github.com/Jaylenne/TLSH_MANN, "
            "lib_simlsh.py: cells programmed to 150 uS or 0 uS with programming error sigma 5 uS, read at "
            "0.2 V; 1 Ohm wire segments in 64 x 64 arrays)",
            description="1T1R memristor arrays of a memristive MANN, 1-150 uS (the 1 uS floor is ours: the "
            "authors program 0 uS and fold the error at zero); programming error 5 uS at every state, "
            "measured. Their read fluctuation (state-dependent, log-normal) is not carried: add --read-noise",
            measured=(ProgrammingNoise(1.0, mode="measured", coefficients_us=(5.0,)),),
        ),
        DevicePreset(
            name="hfox_cmo2025",
            r_on=1 / 88.2e-6,
            r_off=1 / 9e-6,
            memtorch_model="LinearIonDrift",
            memtorch_params=_LINEAR,
            source="Falcone et al., arXiv:2502.04524, 2025 (IBM CMO/HfOx ReRAM), via aihwkit "
            "inference/noise/reram.py ReRamCMONoiseModel: 9-88.2 uS, programming error sigma = "
            "0.0112185 + 0.0112903 G uS with a 2 % write-verify acceptance range",
            description="CMO/HfOx ReRAM, 9-88.2 uS (on/off 9.8); programming error 0.11-1.0 uS, measured",
            measured=(ProgrammingNoise(1.0, mode="measured", coefficients_us=(0.0112185391, 0.01129027418)),),
        ),
    )
})


def get_preset(preset: str | DevicePreset) -> DevicePreset:
    """Return a preset by name (case-insensitive, ``-`` and ``_`` alike), or ``preset`` itself."""
    if isinstance(preset, DevicePreset):
        return preset
    if not isinstance(preset, str):
        raise HardwareSpecError(f"device preset must be a name or a DevicePreset, got {type(preset).__name__}")
    key = preset.strip().lower().replace("-", "_")
    if key not in PRESETS:
        raise HardwareSpecError(f"unknown device preset {preset!r} (one of {', '.join(PRESETS)})")
    return PRESETS[key]


def list_presets() -> list[str]:
    return list(PRESETS)
