"""Crossbar non-idealities: small specification classes with one job each.

Every class is a frozen dataclass behind one interface (:class:`NonIdeality`): a ``kind`` (the
key a hardware specification holds at most one of), a ``stage`` saying where it acts, argument
checks in ``validate()`` (run on construction; a bad value raises
:class:`~device_models.errors.HardwareSpecError` with a one-line message) and ``describe()`` for
results tables. Each class also owns the vectorised tensor maths of its one job; the order in
which the jobs run is fixed by the crossbar pipeline (``crossbar.conductance``)::

    program (once per chip / per write):  target map -> DeviceVariability -> ConductanceStates
                                          -> StuckAtFaults (last, so nothing un-sticks a device)
    read (every input vector):            InputDAC -> I = V @ (G+ - G-) per TileShape tile
                                          -> ADC per tile -> digital sum of the tile outputs

Stages: ``"device"`` (a property of the physical devices, sampled once per chip and seed),
``"program"`` (applied to the conductances each time the array is written), ``"read"`` (applied
on every read) and ``"layout"`` (how a matrix is cut into arrays).

This module needs torch only; it knows nothing about MemTorch or BATMANN.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import ClassVar

import torch

from device_models.errors import HardwareSpecError

VARIABILITY_MODES = ("own_range", "memtorch_clip")
ADC_METHODS = ("linear",)


def _is_number(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def _is_int(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, int)


class NonIdeality(ABC):
    """Common interface of the non-ideality specifications."""

    kind: ClassVar[str]
    stage: ClassVar[str]

    def __post_init__(self) -> None:
        self.validate()

    @abstractmethod
    def validate(self) -> None:
        """Raise :class:`HardwareSpecError` (one line) when a field is out of range."""

    def describe(self) -> dict:
        """Flat ``{kind_field: value}`` dict (for results tables)."""
        return {f"{self.kind}_{k}": v for k, v in asdict(self).items()}


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
    stage: ClassVar[str] = "program"

    def validate(self) -> None:
        for name in ("lrs", "hrs"):
            v = getattr(self, name)
            if not _is_number(v) or not 0.0 <= v <= 1.0:
                raise HardwareSpecError(f"stuck-at-{name.upper()} fraction must be in [0, 1], got {v!r}")
        if self.lrs + self.hrs > 1.0 + 1e-12:
            raise HardwareSpecError(f"stuck-at fractions sum to {self.lrs + self.hrs:g} > 1 (lrs {self.lrs:g} + hrs {self.hrs:g})")

    def sample(self, shape, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
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
    """

    bits: int
    method: str = "linear"
    full_scale: float = 1.0

    kind: ClassVar[str] = "adc"
    stage: ClassVar[str] = "read"

    def validate(self) -> None:
        if not _is_int(self.bits) or not 1 <= self.bits <= 24:
            raise HardwareSpecError(f"ADC resolution must be an integer number of bits in [1, 24], got {self.bits!r}")
        if self.method not in ADC_METHODS:
            raise HardwareSpecError(f"ADC method {self.method!r} is not implemented (only {', '.join(ADC_METHODS)})")
        if not _is_number(self.full_scale) or not 0.0 < self.full_scale <= 1.0:
            raise HardwareSpecError(f"ADC full_scale must be a fraction of the worst-case column current in (0, 1], got {self.full_scale!r}")

    def quantize(self, current: torch.Tensor, fs) -> torch.Tensor:
        """Quantise ``current`` with range ``[-fs, fs]`` (``fs`` a float or broadcastable tensor)."""
        step = 2.0 * fs / (2 ** self.bits)
        q = (torch.floor(current / step) + 0.5) * step
        lim = fs - step / 2.0
        return torch.maximum(torch.minimum(q, torch.as_tensor(lim, dtype=q.dtype)), torch.as_tensor(-lim, dtype=q.dtype))


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
    stage: ClassVar[str] = "read"

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
    stage: ClassVar[str] = "layout"

    def validate(self) -> None:
        for name in ("rows", "cols"):
            v = getattr(self, name)
            if not _is_int(v) or not 1 <= v <= 1 << 20:
                raise HardwareSpecError(f"tile {name} must be a positive integer, got {v!r}")

    def row_slices(self, n_rows: int) -> list[slice]:
        return [slice(i, min(i + self.rows, n_rows)) for i in range(0, n_rows, self.rows)]

    def col_slices(self, n_cols: int) -> list[slice]:
        return [slice(j, min(j + self.cols, n_cols)) for j in range(0, n_cols, self.cols)]


NONIDEALITY_TYPES: dict[str, type[NonIdeality]] = {
    cls.kind: cls for cls in (DeviceVariability, ConductanceStates, StuckAtFaults, ADC, InputDAC, TileShape)
}
