"""Crossbar non-idealities: one small class per effect, all behind one interface.

Every class is a frozen dataclass derived from :class:`NonIdeality`: a ``kind`` (a hardware
specification holds at most one of each), a ``stage`` and an ``order`` saying where it acts,
argument checks in ``validate()`` (run on construction; a bad value raises
:class:`~device_models.errors.HardwareSpecError` with a one-line message), ``describe()`` for
results tables, the ``HardwareSpec`` shortcut fields that build it (``shortcuts``), and the
hooks of its stage. The crossbar pipeline (``crossbar.conductance``) calls the hooks of every
non-ideality in force, sorted by (stage, order)::

    stage     hook                                   when                     classes (order)
    device    sample(shape, generator, g_off, g_on)  once per chip and array  DeviceVariability (0),
                -> per-device tensors                                          StuckAtFaults (10), Drift (20),
                                                                               Endurance (30: lifetimes)
    program   program(g, target, devices, gen)       every write              ConductanceStates (10),
                -> conductances                                                ProgrammingNoise (20),
                                                                               Endurance (80: worn out),
                                                                               StuckAtFaults (90: last,
                                                                               nothing un-sticks a device)
    read      read_conductance(g, devices, time)     once per programmed      Drift (10),
                -> conductances; output_gain(...)    array and read time      IRDrop (15: per physical
                                                                               array, G -> effective G)
              read_current(current, variance, gen)   every read               ReadNoise (20)
    circuit   (the read circuit's own methods)       every read               InputDAC, TileShape, ADC

``devices`` is the array's per-device state (``g_lo``/``g_hi`` bounds and the tensors the device
stage sampled, e.g. ``devices.props["stuck_lrs"]``), all of shape (2, rows, cols): plane 0 holds
G+, plane 1 G-. Adding a non-ideality is one class here (with a ``HardwareSpec`` field per
shortcut) and its tests.

This module needs torch only; it knows nothing about MemTorch or BATMANN.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, fields
from typing import ClassVar

import torch

from device_models.errors import HardwareSpecError
from device_models.options import (  # noqa: F401 - the option lists, re-exported
    ADC_METHODS,
    ADC_RANGES,
    DRIFT_COMPENSATIONS,
    IR_DROP_SOLVERS,
    PROGRAMMING_NOISE_MODES,
    STAGES,
    VARIABILITY_MODES,
)


def _is_number(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def _is_int(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, int)


class NonIdeality(ABC):
    """Common interface of the non-idealities (see the module docstring for the stage table).

    Subclasses set ``kind``, ``stage``, ``order`` and ``shortcuts`` (``HardwareSpec`` field ->
    this class's field), implement ``validate()`` and override the hooks of their stage; the
    defaults leave everything unchanged.
    """

    kind: ClassVar[str]
    stage: ClassVar[str]
    order: ClassVar[int] = 50
    #: position among the device-stage samplers (random draws happen in this order)
    sample_order: ClassVar[int] = 50
    shortcuts: ClassVar[dict[str, str]] = {}
    #: read stage: the pipeline computes the current variance sum(V^2 G^2) for read_current
    wants_variance: ClassVar[bool] = False
    #: read stage: read_conductance acts on each physical array (tile) on its own, one plane at a time
    per_array: ClassVar[bool] = False

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_shortcuts(cls, values: dict) -> "NonIdeality":
        """An instance from ``HardwareSpec`` shortcut values (``{spec_field: value}``, the unset
        ones left out; fields without a value keep their defaults)."""
        try:
            return cls(**{cls.shortcuts[k]: v for k, v in values.items()})
        except TypeError as exc:
            raise HardwareSpecError(f"{', '.join(values)}: {exc}") from None

    @abstractmethod
    def validate(self) -> None:
        """Raise :class:`HardwareSpecError` (one line) when a field is out of range."""

    def describe(self) -> dict:
        """Flat ``{kind_field: value}`` dict (for results tables)."""
        return {f"{self.kind}_{k}": v for k, v in asdict(self).items()}

    @classmethod
    def describe_absent(cls) -> dict:
        """The keys of :meth:`describe` with None: the non-ideality is not in force."""
        return {f"{cls.kind}_{f.name}": None for f in fields(cls)}

    @property
    def is_identity(self) -> bool:
        """True when these parameters change nothing (e.g. a sigma of 0)."""
        return False

    # -- device stage -----------------------------------------------------------------------------
    def sample(self, shape, generator: torch.Generator, g_off: float, g_on: float,
               devices: dict[str, torch.Tensor], rewritten: bool = False) -> dict[str, torch.Tensor]:
        """Per-device properties of a new array of ``shape`` (2, rows, cols), drawn once per
        chip: a dict of tensors of ``shape`` merged into the array's devices (``g_lo``/``g_hi``
        are the bounds). ``devices`` holds what earlier items sampled; ``rewritten`` is True for
        an array rewritten every episode (the key memory), False for one programmed once."""
        return {}

    # -- program stage ----------------------------------------------------------------------------
    def program(self, g: torch.Tensor, target: torch.Tensor, devices, generator: torch.Generator | None) -> torch.Tensor:
        """Conductances after this effect, for one write. ``target`` is what the write aimed at
        (after the window mapping); ``generator`` is fresh for every write."""
        return g

    # -- read stage -------------------------------------------------------------------------------
    def read_conductance(self, g: torch.Tensor, devices, time: float) -> torch.Tensor:
        """The conductances seen by reads ``time`` seconds after programming (deterministic)."""
        return g

    def output_gain(self, g_programmed: torch.Tensor, g_read: torch.Tensor) -> float | None:
        """A digital gain applied to the array's outputs (e.g. drift compensation), or None."""
        return None

    def read_current(self, current: torch.Tensor, variance: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The column currents of one read, given their noise-free values and ``variance`` =
        sum over the column's devices of V^2 G^2 (only when ``wants_variance``)."""
        return current


@dataclass(frozen=True)
class DeviceVariability(NonIdeality):
    """Device-to-device variability: each device draws its own r_on and r_off.

    As MemTorch does with ``StochasticParameter(loc=r, scale=sigma * r)``: every device samples
    ``r_on_d ~ N(r_on, (sigma r_on)^2)`` and ``r_off_d ~ N(r_off, (sigma r_off)^2)``
    independently (clamped below at ``min_fraction`` of the nominal value; ``r_off_d`` is raised
    to ``r_on_d`` where a draw inverts the window, giving a device with no window).

    ``mode`` says how a device is programmed inside its own window:

    - ``"own_range"`` (default): the target is the same fraction of the device's own window
      (``g = 1/r_off_d + f (1/r_on_d - 1/r_off_d)``); a fully SET/RESET device (a +-1 weight)
      sits at its own r_on_d / r_off_d, so the LRS and HRS resistances spread with relative
      standard deviation ``sigma``.
    - ``"memtorch_clip"``: MemTorch's semantics (``Crossbar.write_conductance_matrix``): the
      target is computed from the nominal window and clipped to the device's own window. Only
      devices whose window is narrower than nominal move, so the spread is one-sided and
      smaller than ``sigma``.
    """

    sigma: float
    mode: str = "own_range"
    min_fraction: float = 0.05

    kind: ClassVar[str] = "variability"
    stage: ClassVar[str] = "device"
    order: ClassVar[int] = 0
    sample_order: ClassVar[int] = 0
    shortcuts: ClassVar[dict[str, str]] = {"variability": "sigma"}

    @property
    def is_identity(self) -> bool:
        return self.sigma == 0.0

    def sample(self, shape, generator, g_off, g_on, devices, rewritten=False):
        """The bounds ``g_lo``/``g_hi`` of every device (1/r_off_d, 1/r_on_d)."""
        if self.sigma == 0.0:
            return {}
        g_lo, g_hi = self.sample_bounds(1.0 / g_on, 1.0 / g_off, shape, generator, devices["g_lo"].dtype)
        return {"g_lo": g_lo, "g_hi": g_hi}

    def validate(self) -> None:
        if not _is_number(self.sigma) or not 0.0 <= self.sigma < 1.0:
            raise HardwareSpecError(f"variability sigma must be a relative standard deviation in [0, 1), got {self.sigma!r}")
        if self.mode not in VARIABILITY_MODES:
            raise HardwareSpecError(f"variability mode must be one of {', '.join(VARIABILITY_MODES)}, got {self.mode!r}")
        if not _is_number(self.min_fraction) or not 0.0 < self.min_fraction <= 1.0:
            raise HardwareSpecError(f"variability min_fraction must be in (0, 1], got {self.min_fraction!r}")

    def sample_bounds(self, r_on: float, r_off: float, shape, generator: torch.Generator,
                      dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-device conductance bounds ``(g_lo = 1/r_off_d, g_hi = 1/r_on_d)`` of ``shape``."""
        f64 = torch.float64
        if self.sigma == 0.0:
            ones = torch.ones(shape, dtype=f64)
            return (ones / r_off).to(dtype), (ones / r_on).to(dtype)
        r_on_d = r_on * (1.0 + self.sigma * torch.randn(shape, generator=generator, dtype=f64))
        r_off_d = r_off * (1.0 + self.sigma * torch.randn(shape, generator=generator, dtype=f64))
        r_on_d = r_on_d.clamp_min(self.min_fraction * r_on)
        r_off_d = torch.maximum(r_off_d.clamp_min(self.min_fraction * r_off), r_on_d)
        return (1.0 / r_off_d).to(dtype), (1.0 / r_on_d).to(dtype)

    def program(self, fraction: torch.Tensor, g_lo: torch.Tensor, g_hi: torch.Tensor,
                g_off: float, g_on: float) -> torch.Tensor:
        """Conductances for target ``fraction`` in [0, 1] of the window (see ``mode``)."""
        return program_fraction(fraction, g_lo, g_hi, g_off, g_on, self.mode)


def program_fraction(fraction: torch.Tensor, g_lo: torch.Tensor, g_hi: torch.Tensor,
                     g_off: float, g_on: float, mode: str = "own_range") -> torch.Tensor:
    """Program ``fraction`` of the window into devices with bounds ``g_lo``/``g_hi``.

    Without variability (bounds equal to the nominal ``g_off``/``g_on``) both modes agree.
    """
    fraction = fraction.to(g_lo.dtype)
    if mode == "own_range":  # lerp is exact at both ends: f = 1 gives g_hi bit for bit
        return torch.lerp(g_lo, g_hi, fraction)
    if mode == "memtorch_clip":
        target = torch.lerp(torch.full_like(fraction, g_off), torch.full_like(fraction, g_on), fraction)
        return torch.minimum(torch.maximum(target, g_lo), g_hi)
    raise HardwareSpecError(f"variability mode must be one of {', '.join(VARIABILITY_MODES)}, got {mode!r}")


@dataclass(frozen=True)
class ConductanceStates(NonIdeality):
    """A finite number of programmable conductance levels per device.

    The ``levels`` states are evenly spaced in conductance between the device's own bounds
    (1/r_off_d and 1/r_on_d: with variability each device has its own grid; without, all devices
    share the nominal grid and the array holds exactly ``levels`` distinct values). A target is
    rounded to the nearest level. Binary weights already use the two end levels.
    """

    levels: int

    kind: ClassVar[str] = "states"
    stage: ClassVar[str] = "program"
    order: ClassVar[int] = 10
    shortcuts: ClassVar[dict[str, str]] = {"states": "levels"}

    def describe(self) -> dict:
        return {"states": self.levels}

    @classmethod
    def describe_absent(cls) -> dict:
        return {"states": None}

    def program(self, g, target, devices, generator):
        return self.quantize(g, devices.g_lo, devices.g_hi)

    def validate(self) -> None:
        if not _is_int(self.levels) or not 2 <= self.levels <= 65536:
            raise HardwareSpecError(f"conductance states must be an integer number of levels in [2, 65536], got {self.levels!r}")

    def quantize(self, g: torch.Tensor, g_lo: torch.Tensor, g_hi: torch.Tensor) -> torch.Tensor:
        span = g_hi - g_lo
        safe = torch.where(span > 0, span, torch.ones_like(span))
        k = torch.round(((g - g_lo) / safe).clamp(0.0, 1.0) * (self.levels - 1))
        # lerp: the end levels are g_lo / g_hi exactly (the values stuck devices hold, too)
        return torch.where(span > 0, torch.lerp(g_lo, g_hi, k / (self.levels - 1)), g_lo)


@dataclass(frozen=True)
class StuckAtFaults(NonIdeality):
    """Devices stuck at their own LRS (1/r_on_d) or HRS (1/r_off_d), whatever is written.

    Each device independently is stuck at LRS with probability ``lrs``, at HRS with probability
    ``hrs`` (never both). The fault map is a property of the chip (drawn once per seed); it is
    applied last when programming, so no other non-ideality can undo it.
    """

    lrs: float = 0.0
    hrs: float = 0.0

    kind: ClassVar[str] = "stuck"
    stage: ClassVar[str] = "program"  # the map is sampled at the device stage, applied last when programming
    order: ClassVar[int] = 90
    shortcuts: ClassVar[dict[str, str]] = {"stuck_lrs": "lrs", "stuck_hrs": "hrs"}
    sample_order: ClassVar[int] = 10

    def describe(self) -> dict:
        return {"stuck_lrs": self.lrs, "stuck_hrs": self.hrs}

    @classmethod
    def describe_absent(cls) -> dict:
        return {"stuck_lrs": None, "stuck_hrs": None}

    @property
    def is_identity(self) -> bool:
        return self.lrs + self.hrs == 0.0

    def sample(self, shape, generator, g_off, g_on, devices, rewritten=False):
        if self.is_identity:
            return {}
        lrs, hrs = self.sample_masks(shape, generator)
        return {"stuck_lrs": lrs, "stuck_hrs": hrs}

    def program(self, g, target, devices, generator):
        if "stuck_lrs" not in devices.props:
            return g
        return self.apply(g, devices.g_lo, devices.g_hi, devices.props["stuck_lrs"], devices.props["stuck_hrs"])

    def validate(self) -> None:
        for name in ("lrs", "hrs"):
            v = getattr(self, name)
            if not _is_number(v) or not 0.0 <= v <= 1.0:
                raise HardwareSpecError(f"stuck-at-{name.upper()} fraction must be in [0, 1], got {v!r}")
        if self.lrs + self.hrs > 1.0 + 1e-12:
            raise HardwareSpecError(f"stuck-at fractions sum to {self.lrs + self.hrs:g} > 1 (lrs {self.lrs:g} + hrs {self.hrs:g})")

    def sample_masks(self, shape, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Boolean masks ``(stuck_lrs, stuck_hrs)`` of ``shape``, disjoint."""
        u = torch.rand(shape, generator=generator, dtype=torch.float64)
        lrs = u < self.lrs
        hrs = (u >= self.lrs) & (u < self.lrs + self.hrs)
        return lrs, hrs

    @staticmethod
    def apply(g: torch.Tensor, g_lo: torch.Tensor, g_hi: torch.Tensor,
              stuck_lrs: torch.Tensor, stuck_hrs: torch.Tensor) -> torch.Tensor:
        g = torch.where(stuck_lrs, g_hi, g)
        return torch.where(stuck_hrs, g_lo, g)


@dataclass(frozen=True)
class ADC(NonIdeality):
    """Output ADC: uniform quantisation of each tile's differential column current.

    ``method="linear"`` (the only one): a mid-rise uniform quantiser with exactly ``2**bits``
    levels over a fixed range ``[-FS, +FS]``; values beyond are clipped. ``FS = full_scale x``
    the largest current a tile column can carry (all rows at the read voltage, every device pair
    at the full window): ``rows_in_tile * v_read * (g_on - g_off)``. The range is fixed by the
    hardware, not by the data, so a vector's output never depends on its batch (unlike MemTorch's
    ``quantize(..., 'linear')``, which picks a power-of-two range from each tensor it is given).
    Unknown methods are refused (MemTorch ignores them silently).

    ``range``: ``"worst"`` (default: FS as above), ``"calibrated"`` (FS per array tile: the
    ``percentile`` of |current| over calibration reads, e.g. a few episodes of training
    characters) or ``"calibrated_column"`` (the same per tile column). The worst case is
    rarely approached (it needs every input at full scale and every device at LRS), so at low
    bit counts it leaves real currents a few levels; a calibrated range is set once per chip
    and then fixed like the worst case.
    """

    bits: int
    method: str = "linear"
    full_scale: float = 1.0
    range: str = "worst"
    percentile: float = 99.99
    calibration_episodes: int = 4

    kind: ClassVar[str] = "adc"
    stage: ClassVar[str] = "circuit"
    shortcuts: ClassVar[dict[str, str]] = {"adc_bits": "bits", "adc_range": "range"}

    @classmethod
    def from_shortcuts(cls, values: dict) -> "ADC":
        if values.get("adc_bits") is None:
            raise HardwareSpecError(f"adc_range needs adc_bits (the ADC's resolution), got only {', '.join(values)}")
        return super().from_shortcuts(values)

    @property
    def calibrated(self) -> bool:
        return self.range != "worst"

    def describe(self) -> dict:
        return {"adc_bits": self.bits, "adc_full_scale": self.full_scale, "adc_range": self.range,
                "adc_percentile": self.percentile if self.calibrated else None}

    @classmethod
    def describe_absent(cls) -> dict:
        return {"adc_bits": None, "adc_full_scale": None, "adc_range": None, "adc_percentile": None}

    def validate(self) -> None:
        if not _is_int(self.bits) or not 1 <= self.bits <= 24:
            raise HardwareSpecError(f"ADC resolution must be an integer number of bits in [1, 24], got {self.bits!r}")
        if self.method not in ADC_METHODS:
            raise HardwareSpecError(f"ADC method {self.method!r} is not implemented (only {', '.join(ADC_METHODS)})")
        if not _is_number(self.full_scale) or not 0.0 < self.full_scale <= 1.0:
            raise HardwareSpecError(f"ADC full_scale must be a fraction of the worst-case column current in (0, 1], got {self.full_scale!r}")
        if self.range not in ADC_RANGES:
            raise HardwareSpecError(f"adc_range must be one of {', '.join(ADC_RANGES)}, got {self.range!r}")
        if not _is_number(self.percentile) or not 50.0 <= self.percentile <= 100.0:
            raise HardwareSpecError(f"ADC calibration percentile must be in [50, 100], got {self.percentile!r}")
        if not _is_int(self.calibration_episodes) or not 1 <= self.calibration_episodes <= 1000:
            raise HardwareSpecError(f"ADC calibration episodes must be an integer in [1, 1000], got {self.calibration_episodes!r}")

    def quantize(self, current: torch.Tensor, fs) -> torch.Tensor:
        """Quantise ``current`` with range ``[-fs, fs]`` (``fs`` a float or broadcastable tensor)."""
        return self.quantize_(current.clone(), fs)

    def quantize_(self, current: torch.Tensor, fs) -> torch.Tensor:
        """:meth:`quantize` in place (``current`` is overwritten and returned): mid-rise levels
        (floor(I / step) + 1/2) step, clipped at +-(fs - step / 2), step = 2 fs / 2^bits."""
        step = self.step(fs)
        lim = fs - step / 2.0
        if isinstance(step, torch.Tensor):
            step, lim = step.to(current.dtype), lim.to(current.dtype)
        return current.div_(step).floor_().add_(0.5).mul_(step).clamp_(-lim, lim)

    def step(self, fs):
        """The quantisation step ``2 fs / 2^bits`` of range ``[-fs, fs]`` (a float or a tensor like ``fs``)."""
        return 2.0 * fs / (2 ** self.bits)

    def accumulate_(self, total: torch.Tensor, current: torch.Tensor, fs, clip: bool = True) -> torch.Tensor:
        """``total += quantize(current, fs) - step / 2`` with fewer passes over memory (``current``
        is overwritten): the level codes floor(I / step), clipped to [-2^(bits-1), 2^(bits-1) - 1],
        times the step. Returns the half step (a float or a tensor like ``fs``) the caller adds
        once after the last tile; the sum then equals the sum of :meth:`quantize` up to float
        rounding. ``clip=False`` skips the clipping pass, for a caller that has shown no current
        reaches ``+-fs`` (it would change nothing)."""
        step = self.step(fs)
        if isinstance(step, torch.Tensor):
            step = step.to(current.dtype)
        return self.accumulate_steps_(total, current.div_(step), step, clip)

    def accumulate_steps_(self, total: torch.Tensor, steps: torch.Tensor, step, clip: bool = True) -> torch.Tensor:
        """:meth:`accumulate_` of a current already in units of ``step`` (``steps = I / step``,
        e.g. read through conductances divided by the step: one pass fewer); ``steps`` is
        overwritten. Returns the half step."""
        half = 2 ** (self.bits - 1)
        codes = steps.floor_()
        if clip:
            codes.clamp_(-half, half - 1)
        if isinstance(step, torch.Tensor):
            total.addcmul_(codes, step)
        else:
            total.add_(codes, alpha=step)
        return step / 2.0


@dataclass(frozen=True)
class InputDAC(NonIdeality):
    """Input encoding: each input vector becomes read voltages on the rows.

    A vector ``x`` (one query, one image's patches, one FC input) is scaled by its own largest
    magnitude to ``[-v_read, v_read]`` (the scale is undone digitally after the ADC, so a vector's
    result never depends on its batch). ``bits`` (optional) quantises the voltages to
    ``2**(bits-1) - 1`` levels per polarity (symmetric, with 0). With ohmic devices the amplitude
    ``v_read`` itself cancels out; it matters through ``bits`` and the ADC range.
    """

    v_read: float = 0.2
    bits: int | None = None

    kind: ClassVar[str] = "dac"
    stage: ClassVar[str] = "circuit"
    shortcuts: ClassVar[dict[str, str]] = {"read_voltage": "v_read", "dac_bits": "bits"}

    def describe(self) -> dict:
        return {"read_voltage": self.v_read, "dac_bits": self.bits}

    @classmethod
    def describe_absent(cls) -> dict:
        return {"read_voltage": None, "dac_bits": None}

    @property
    def is_identity(self) -> bool:
        return self.bits is None

    def validate(self) -> None:
        if not _is_number(self.v_read) or not 0.0 < self.v_read <= 5.0:
            raise HardwareSpecError(f"read voltage must be in (0, 5] V, got {self.v_read!r}")
        if self.bits is not None and (not _is_int(self.bits) or not 2 <= self.bits <= 24):
            raise HardwareSpecError(f"DAC resolution must be an integer number of bits in [2, 24] or None, got {self.bits!r}")

    def encode(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Voltages for rows of ``x`` (B, R) and the per-row scale (B,) that maps them back.

        ``scale`` (B,) overrides the per-row maximum (e.g. one scale per image for conv patches).
        """
        if scale is None:
            scale = x.abs().amax(dim=1)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        v = x / scale.unsqueeze(1)
        if self.bits is not None:
            n = 2 ** (self.bits - 1) - 1
            v = torch.round(v * n) / n
        return v * self.v_read, scale


@dataclass(frozen=True)
class TileShape(NonIdeality):
    """Physical array size: a matrix is cut into ``rows x cols`` tiles.

    Each tile's column currents go through their own ADC and the partial results are summed
    digitally. Without an ADC tiling changes nothing but float rounding.
    """

    rows: int
    cols: int

    kind: ClassVar[str] = "tiles"
    stage: ClassVar[str] = "circuit"
    shortcuts: ClassVar[dict[str, str]] = {"tile_shape": "shape"}

    @classmethod
    def from_shortcuts(cls, values: dict) -> "TileShape":
        ts = values["tile_shape"]
        if isinstance(ts, (str, bytes)) or not hasattr(ts, "__len__") or len(ts) != 2:
            raise HardwareSpecError(f"tile_shape must be (rows, cols), got {ts!r}")
        return cls(ts[0], ts[1])

    def describe(self) -> dict:
        return {"tile_rows": self.rows, "tile_cols": self.cols}

    @classmethod
    def describe_absent(cls) -> dict:
        return {"tile_rows": None, "tile_cols": None}

    @property
    def is_identity(self) -> bool:
        return True  # without an ADC tiling changes nothing but float rounding

    def validate(self) -> None:
        for name in ("rows", "cols"):
            v = getattr(self, name)
            if not _is_int(v) or not 1 <= v <= 1 << 20:
                raise HardwareSpecError(f"tile {name} must be a positive integer, got {v!r}")

    def row_slices(self, n_rows: int) -> list[slice]:
        return [slice(i, min(i + self.rows, n_rows)) for i in range(0, n_rows, self.rows)]

    def col_slices(self, n_cols: int) -> list[slice]:
        return [slice(j, min(j + self.cols, n_cols)) for j in range(0, n_cols, self.cols)]


@dataclass(frozen=True)
class ProgrammingNoise(NonIdeality):
    """Write noise: every write lands at its target plus N(0, sigma_p^2), redrawn at each write.

    ``mode="window"`` (default): sigma_p = ``sigma`` x the device's own window (g_hi - g_lo),
    the same for every state; ``mode="state"``: sigma_p = ``sigma`` x (g - g_lo), growing with
    the programmed conductance (filamentary devices are noisier in their low-resistance
    states); ``mode="measured"``: sigma_p(G) = ``sigma`` x max(0, sum_i c_i (G / 1 uS)^i) uS, a
    polynomial fitted to measured devices (``coefficients_us`` = (c_0, c_1, ...); ``sigma`` scales
    it, 1 = as measured; the measured device presets carry one). The result is clipped to the
    device's bounds. Write-verify: with
    ``verify_iterations`` = N > 0, devices farther than ``tolerance`` x window from the target
    are written again (fresh noise), up to N times. The key memory gets fresh errors every
    episode (it is rewritten); the controller once per chip.
    """

    sigma: float
    mode: str = "window"
    verify_iterations: int = 0
    tolerance: float = 0.0
    coefficients_us: tuple[float, ...] = ()

    kind: ClassVar[str] = "programming_noise"
    stage: ClassVar[str] = "program"
    order: ClassVar[int] = 20
    shortcuts: ClassVar[dict[str, str]] = {"programming_noise": "sigma"}

    def __post_init__(self) -> None:
        if isinstance(self.coefficients_us, list):
            object.__setattr__(self, "coefficients_us", tuple(self.coefficients_us))
        self.validate()

    def validate(self) -> None:
        if self.mode not in PROGRAMMING_NOISE_MODES:
            raise HardwareSpecError(f"programming noise mode must be one of {', '.join(PROGRAMMING_NOISE_MODES)}, got {self.mode!r}")
        if self.mode == "measured":
            if not _is_number(self.sigma) or not 0.0 <= self.sigma <= 10.0:
                raise HardwareSpecError(f"measured programming noise: sigma scales the measured spread, in [0, 10], got {self.sigma!r}")
            if (not isinstance(self.coefficients_us, tuple) or not self.coefficients_us
                    or not all(_is_number(c) for c in self.coefficients_us)):
                raise HardwareSpecError(f"measured programming noise needs coefficients_us (finite numbers), got {self.coefficients_us!r}")
        else:
            if not _is_number(self.sigma) or not 0.0 <= self.sigma <= 1.0:
                raise HardwareSpecError(f"programming noise sigma must be a fraction of the device window in [0, 1], got {self.sigma!r}")
            if self.coefficients_us:
                raise HardwareSpecError(f"coefficients_us is for mode 'measured', not {self.mode!r}")
        if not _is_int(self.verify_iterations) or not 0 <= self.verify_iterations <= 100:
            raise HardwareSpecError(f"write-verify iterations must be an integer in [0, 100], got {self.verify_iterations!r}")
        if not _is_number(self.tolerance) or not 0.0 <= self.tolerance <= 1.0:
            raise HardwareSpecError(f"write-verify tolerance must be a fraction of the window in [0, 1], got {self.tolerance!r}")

    def describe(self) -> dict:
        return {"programming_noise": self.sigma, "programming_noise_mode": self.mode,
                "programming_verify_iterations": self.verify_iterations, "programming_verify_tolerance": self.tolerance}

    @classmethod
    def describe_absent(cls) -> dict:
        return {"programming_noise": None, "programming_noise_mode": None, "programming_verify_iterations": None,
                "programming_verify_tolerance": None}

    @property
    def is_identity(self) -> bool:
        return self.sigma == 0.0

    def program(self, g, target, devices, generator):
        if self.sigma == 0.0:
            return g
        if generator is None:
            raise HardwareSpecError("programming noise needs a generator for every write")
        lo, hi = devices.g_lo.to(g.dtype), devices.g_hi.to(g.dtype)
        window = hi - lo

        def write(aim: torch.Tensor) -> torch.Tensor:
            if self.mode == "measured":
                scale = self.spread(aim)
            else:
                scale = window if self.mode == "window" else (aim - lo)
            noise = torch.randn(aim.shape, generator=generator, dtype=torch.float64).to(g.dtype)
            return torch.minimum(torch.maximum(aim + self.sigma * scale * noise, lo), hi)

        out = write(g)
        for _ in range(self.verify_iterations):
            bad = (out - g).abs() > self.tolerance * window
            if not bool(bad.any()):
                break
            out = torch.where(bad, write(g), out)
        return out


    def spread(self, g: torch.Tensor) -> torch.Tensor:
        """The measured sigma_p (siemens) of devices programmed to ``g`` (siemens), mode measured."""
        gu = g * 1e6
        sig = torch.zeros_like(g)
        for c in reversed(self.coefficients_us):  # Horner
            sig = sig * gu + c
        return sig.clamp_min(0.0) * 1e-6


@dataclass(frozen=True)
class ReadNoise(NonIdeality):
    """Read (cycle-to-cycle) noise: at every read each device conducts G (1 + sigma e), e ~ N(0, 1),
    independently per device and per read; the same input read twice gives two answers.

    The column current of one read is then exactly Gaussian around its noise-free value with
    variance ``sigma^2 sum_r V_r^2 (G+_r^2 + G-_r^2)``, which the pipeline draws directly (one
    extra matrix product instead of a noisy copy of the array per input). ``reads`` = k > 1
    averages k reads (variance / k).
    """

    sigma: float
    reads: int = 1

    kind: ClassVar[str] = "read_noise"
    stage: ClassVar[str] = "read"
    order: ClassVar[int] = 20
    shortcuts: ClassVar[dict[str, str]] = {"read_noise": "sigma"}
    wants_variance: ClassVar[bool] = True

    def validate(self) -> None:
        if not _is_number(self.sigma) or not 0.0 <= self.sigma <= 1.0:
            raise HardwareSpecError(f"read noise sigma must be a relative standard deviation in [0, 1], got {self.sigma!r}")
        if not _is_int(self.reads) or not 1 <= self.reads <= 1_000_000:
            raise HardwareSpecError(f"reads to average must be a positive integer, got {self.reads!r}")

    def describe(self) -> dict:
        return {"read_noise": self.sigma, "read_noise_reads": self.reads}

    @classmethod
    def describe_absent(cls) -> dict:
        return {"read_noise": None, "read_noise_reads": None}

    @property
    def is_identity(self) -> bool:
        return self.sigma == 0.0

    def read_current(self, current, variance, generator):
        if self.sigma == 0.0:
            return current
        e = torch.randn(current.shape, generator=generator, dtype=current.dtype)  # drawn at the read's precision
        noise = variance.clamp_min(0).sqrt_().mul_(e)
        return current.add(noise, alpha=self.sigma / math.sqrt(self.reads))


def parse_duration(value) -> float:
    """Seconds from a number or a string with a unit: ``"30s"``, ``"5min"``, ``"1h"``, ``"1d"``,
    ``"1w"``, ``"1y"`` (365 days)."""
    units = {"s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, "y": 31536000.0}
    if _is_number(value):
        return float(value)
    if isinstance(value, str):
        text = value.strip().lower()
        for unit in sorted(units, key=len, reverse=True):
            if text.endswith(unit):
                try:
                    return float(text[: -len(unit)]) * units[unit]
                except ValueError:
                    break
        try:
            return float(text)
        except ValueError:
            pass
    raise HardwareSpecError(f"time must be seconds or a number with a unit (s, min, h, d, w, y), got {value!r}")


@dataclass(frozen=True)
class Drift(NonIdeality):
    """Conductance drift (retention): G(t) = G(t0) (t / t0)^(-nu), ``time`` = t seconds after
    programming (t0 = ``t0`` s, the first read).

    Each device has its own exponent nu ~ N(``nu_mean``, ``nu_sigma``^2), clipped at 0, drawn once
    per chip. A drift shared by every device only scales all currents, which no argmax notices;
    what hurts is its spread across devices and a fixed ADC range. ``compensation="global"``
    (aihwkit's ``GlobalDriftCompensation``): each array's outputs are multiplied by
    sum_c |sum_r (G+ - G-)(t0)| / sum_c |sum_r (G+ - G-)(t)|, the ratio of an all-ones read at t0
    and at t (measured on the chip, applied digitally). Only arrays programmed once (the
    controller) are read at ``time``; the key memory is rewritten every episode and read fresh.
    """

    nu_mean: float
    nu_sigma: float = 0.0
    time: float = 1.0
    t0: float = 1.0
    compensation: str = "none"

    kind: ClassVar[str] = "drift"
    stage: ClassVar[str] = "read"
    order: ClassVar[int] = 10
    sample_order: ClassVar[int] = 20
    shortcuts: ClassVar[dict[str, str]] = {"drift_nu": "nu_mean", "drift_nu_sigma": "nu_sigma", "time": "time",
                                           "drift_compensation": "compensation"}

    def __post_init__(self) -> None:
        object.__setattr__(self, "time", parse_duration(self.time))
        object.__setattr__(self, "t0", parse_duration(self.t0))
        self.validate()

    @classmethod
    def from_shortcuts(cls, values: dict) -> "Drift":
        if values.get("drift_nu") is None:
            raise HardwareSpecError(f"drift needs drift_nu (the mean drift exponent), got only {', '.join(values)}")
        return super().from_shortcuts(values)

    def validate(self) -> None:
        if not _is_number(self.nu_mean) or not 0.0 <= self.nu_mean <= 1.0:
            raise HardwareSpecError(f"drift_nu must be a drift exponent in [0, 1], got {self.nu_mean!r}")
        if not _is_number(self.nu_sigma) or not 0.0 <= self.nu_sigma <= 1.0:
            raise HardwareSpecError(f"drift_nu_sigma must be in [0, 1], got {self.nu_sigma!r}")
        if not 0.0 < self.t0 <= self.time:
            raise HardwareSpecError(f"time must be >= t0 = {self.t0:g} s (the first read), got {self.time:g} s")
        if self.compensation not in DRIFT_COMPENSATIONS:
            raise HardwareSpecError(f"drift_compensation must be one of {', '.join(DRIFT_COMPENSATIONS)}, got {self.compensation!r}")

    def describe(self) -> dict:
        return {"drift_nu": self.nu_mean, "drift_nu_sigma": self.nu_sigma, "time": self.time,
                "drift_compensation": self.compensation}

    @classmethod
    def describe_absent(cls) -> dict:
        return {"drift_nu": None, "drift_nu_sigma": None, "time": None, "drift_compensation": None}

    @property
    def is_identity(self) -> bool:
        return self.nu_mean == 0.0 and self.nu_sigma == 0.0

    def sample(self, shape, generator, g_off, g_on, devices, rewritten=False):
        if self.nu_sigma == 0.0:
            return {}
        nu = self.nu_mean + self.nu_sigma * torch.randn(shape, generator=generator, dtype=torch.float64)
        return {"drift_nu": nu.clamp_min(0.0).to(devices["g_lo"].dtype)}

    def exponent(self, devices) -> torch.Tensor | float:
        return devices.props.get("drift_nu", self.nu_mean)

    def read_conductance(self, g, devices, time):
        if time <= self.t0:
            return g
        nu = self.exponent(devices)
        if isinstance(nu, torch.Tensor):
            nu = nu.to(g.dtype)
        return g * torch.pow(torch.as_tensor(time / self.t0, dtype=g.dtype), -nu)

    def output_gain(self, g_programmed, g_read):
        if self.compensation != "global":
            return None
        ref = (g_programmed[0] - g_programmed[1]).sum(dim=0).abs().sum()
        now = (g_read[0] - g_read[1]).sum(dim=0).abs().sum()
        return float(ref / now) if float(now) > 0 else None


@dataclass(frozen=True)
class Endurance(NonIdeality):
    """Write endurance: each device survives a number of write cycles drawn once per chip,
    log-normal with median ``cycles`` and log-sigma ``sigma``; a write beyond it leaves the device
    stuck for good, at its own LRS or HRS (even odds, drawn per device).

    Every write of an array counts one cycle for all its devices (the key memory: one per
    episode, for the columns written; the controller: one). ``served``: the cycles an array
    rewritten every episode (the key memory) has already had before the evaluation starts, so
    a chip can be evaluated after 10^6 episodes without simulating them; arrays programmed once
    start at 0.
    """

    cycles: float
    sigma: float = 0.5
    served: int = 0

    kind: ClassVar[str] = "endurance"
    stage: ClassVar[str] = "program"
    order: ClassVar[int] = 80
    sample_order: ClassVar[int] = 30
    shortcuts: ClassVar[dict[str, str]] = {"endurance": "cycles", "episodes_served": "served"}

    @classmethod
    def from_shortcuts(cls, values: dict) -> "Endurance":
        if values.get("endurance") is None:
            raise HardwareSpecError(f"episodes_served needs endurance (the median cycles to failure), got only {', '.join(values)}")
        return super().from_shortcuts(values)

    def validate(self) -> None:
        if not _is_number(self.cycles) or not 1.0 <= self.cycles <= 1e15:
            raise HardwareSpecError(f"endurance must be a median number of write cycles in [1, 1e15], got {self.cycles!r}")
        if not _is_number(self.sigma) or not 0.0 <= self.sigma <= 5.0:
            raise HardwareSpecError(f"endurance sigma (of the log of the cycles) must be in [0, 5], got {self.sigma!r}")
        if not _is_int(self.served) or self.served < 0:
            raise HardwareSpecError(f"episodes_served must be a non-negative integer, got {self.served!r}")

    def describe(self) -> dict:
        return {"endurance": self.cycles, "endurance_sigma": self.sigma, "episodes_served": self.served}

    @classmethod
    def describe_absent(cls) -> dict:
        return {"endurance": None, "endurance_sigma": None, "episodes_served": None}

    def sample(self, shape, generator, g_off, g_on, devices, rewritten=False):
        z = torch.randn(shape, generator=generator, dtype=torch.float64)
        lifetime = torch.exp(math.log(self.cycles) + self.sigma * z)
        fails_lrs = torch.rand(shape, generator=generator, dtype=torch.float64) < 0.5
        start = float(self.served) if rewritten else 0.0
        return {"endurance_lifetime": lifetime, "endurance_fails_lrs": fails_lrs,
                "endurance_writes": torch.full(shape, start, dtype=torch.float64)}

    def program(self, g, target, devices, generator):
        writes = devices.props["endurance_writes"]
        writes += 1.0  # in place: the count belongs to the chip's devices
        dead = writes > devices.props["endurance_lifetime"]
        if not bool(dead.any()):
            return g
        lrs = devices.props["endurance_fails_lrs"]
        worn = torch.where(lrs, devices.g_hi.to(g.dtype), devices.g_lo.to(g.dtype))
        return torch.where(dead, worn, g)


@dataclass(frozen=True)
class IRDrop(NonIdeality):
    """IR drop: word and bit lines with ``wire_resistance`` ohms per cell-to-cell segment and
    ``source_resistance`` ohms at the drivers and the sinks (``device_models.ir_drop`` draws the
    circuit).

    The array stays linear, so its reads are ``V @ G_eff``: the hook replaces each plane of each
    physical array (tile) by its effective conductances, solved once per programmed array.
    ``solver``: ``exact`` (sparse nodal solve), ``approx`` (line relaxation until ``G_eff`` moves
    by less than ``tolerance`` of its largest entry) or ``auto`` (exact up to ``AUTO_EXACT_CELLS``
    devices per array; beyond, approx, switching to exact when it has not converged after
    ``AUTO_MAX_SWEEPS`` sweeps: a very strong drop). Devices far
    from the drivers and sinks see less than the applied voltage, so every output shrinks,
    unevenly; the read noise is still drawn from the device conductances.
    """

    wire_resistance: float
    source_resistance: float = 0.0
    solver: str = "auto"
    tolerance: float = 1e-5

    kind: ClassVar[str] = "ir_drop"
    stage: ClassVar[str] = "read"
    order: ClassVar[int] = 15
    per_array: ClassVar[bool] = True
    shortcuts: ClassVar[dict[str, str]] = {"wire_resistance": "wire_resistance",
                                           "source_resistance": "source_resistance",
                                           "ir_drop_solver": "solver"}
    AUTO_EXACT_CELLS: ClassVar[int] = 32 * 32
    #: auto: sweeps of relaxation before switching to the exact solve (a sweep costs about 1/20
    #: of an exact solve at 128 x 128)
    AUTO_MAX_SWEEPS: ClassVar[int] = 12

    @classmethod
    def from_shortcuts(cls, values: dict) -> "IRDrop":
        if values.get("wire_resistance") is None:
            raise HardwareSpecError(f"IR drop needs wire_resistance (ohms per segment), got only {', '.join(values)}")
        return super().from_shortcuts(values)

    def validate(self) -> None:
        if not _is_number(self.wire_resistance) or not 0.0 <= self.wire_resistance <= 1e6:
            raise HardwareSpecError(f"wire_resistance must be ohms per segment in [0, 1e6], got {self.wire_resistance!r}")
        if not _is_number(self.source_resistance) or not 0.0 <= self.source_resistance <= 1e9:
            raise HardwareSpecError(f"source_resistance must be ohms in [0, 1e9], got {self.source_resistance!r}")
        if self.solver not in IR_DROP_SOLVERS:
            raise HardwareSpecError(f"ir_drop_solver must be one of {', '.join(IR_DROP_SOLVERS)}, got {self.solver!r}")
        if not _is_number(self.tolerance) or not 0.0 < self.tolerance <= 0.1:
            raise HardwareSpecError(f"IR drop tolerance must be in (0, 0.1], got {self.tolerance!r}")

    def describe(self) -> dict:
        return {"wire_resistance": self.wire_resistance, "source_resistance": self.source_resistance,
                "ir_drop_solver": self.solver}

    @classmethod
    def describe_absent(cls) -> dict:
        return {"wire_resistance": None, "source_resistance": None, "ir_drop_solver": None}

    @property
    def is_identity(self) -> bool:
        return self.wire_resistance == 0.0

    def method(self, rows: int, cols: int) -> str:
        """The solver used for a (rows x cols) array."""
        if self.solver != "auto":
            return self.solver
        return "exact" if rows * cols <= self.AUTO_EXACT_CELLS else "approx"

    def read_conductance(self, g, devices, time):
        from device_models import ir_drop

        if self.wire_resistance == 0.0:
            return g
        args = (g, self.wire_resistance, self.source_resistance)
        if self.method(*g.shape) == "exact":
            return ir_drop.effective_conductance_exact(*args).to(g.dtype)
        if self.solver == "approx":
            return ir_drop.effective_conductance_approx(*args, self.tolerance).to(g.dtype)
        try:  # auto: relaxation, unless the drop is so strong that it converges slowly
            return ir_drop.effective_conductance_approx(*args, self.tolerance, max_sweeps=self.AUTO_MAX_SWEEPS,
                                                        strict=True).to(g.dtype)
        except ir_drop.NotConverged:
            return ir_drop.effective_conductance_exact(*args).to(g.dtype)


NONIDEALITY_TYPES: dict[str, type[NonIdeality]] = {
    cls.kind: cls for cls in (DeviceVariability, ConductanceStates, StuckAtFaults, ProgrammingNoise, Endurance,
                              ReadNoise, Drift, IRDrop, ADC, InputDAC, TileShape)
}
