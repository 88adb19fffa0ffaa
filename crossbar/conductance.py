"""Vectorised programming and reading of differential crossbar arrays (tensor ops, no per-device objects).

A weight matrix ``W`` of shape (R, C) (rows = inputs / word lines, columns = outputs / bit-line
pairs) is held by two device planes, ``G+`` and ``G-`` (MemTorch's ``Scheme.DoubleColumn``).

Programming, in this fixed order (each step is one ``device_models`` class)::

    1. target map      fraction f+ = max(w, 0) / s_c, f- = max(-w, 0) / s_c in [0, 1]; s_c is the
                       column's max |w| ("per_column") or the layer's ("naive", = MemTorch's
                       naive_map). G = 1/r_off + f (1/r_on - 1/r_off); +-1 weights use two states.
    2. variability     each device has its own window [1/r_off_d, 1/r_on_d] (DeviceVariability,
                       drawn once per chip); f is programmed into it (mode own_range / memtorch_clip)
    3. finite states   G rounded to the device's own grid of N levels (ConductanceStates)
    4. stuck-at faults stuck devices forced to their own 1/r_on_d or 1/r_off_d (StuckAtFaults),
                       last, so nothing after can undo them (MemTorch trap 2)

Reading one input vector x (a row of the (B, R) input)::

    V = x / max|x| * v_read  (InputDAC, optional DAC bits)
    per row tile t (TileShape): I_t = V[t] @ (G+[t] - G-[t]) -> ADC_t (fixed full scale)
    y = sum_t I_t * max|x| / v_read / (1/r_on - 1/r_off) * s_c        (scale back, digital)

For the ideal device (no variability, states, faults, ADC or DAC bits) ``y == x @ W`` up to
float rounding. The physical devices of an array (windows and stuck map) are a :class:`DevicePlanes`
sampled once; :func:`program` can be called again and again on the same devices (the key memory is
rewritten every episode).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from crossbar.spec import HardwareSpec
from device_models.nonidealities import StuckAtFaults, program_fraction


@dataclass
class DevicePlanes:
    """The physical devices of one differential array: windows and stuck map, shape (2, R, C).

    Plane 0 holds G+, plane 1 holds G-. ``stuck_lrs``/``stuck_hrs`` are None without faults.
    """

    g_lo: torch.Tensor
    g_hi: torch.Tensor
    stuck_lrs: torch.Tensor | None
    stuck_hrs: torch.Tensor | None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.g_lo.shape[1:])

    @staticmethod
    def cat_columns(parts: list["DevicePlanes"]) -> "DevicePlanes":
        def cat(name):
            ts = [getattr(p, name) for p in parts]
            return None if ts[0] is None else torch.cat(ts, dim=2)

        return DevicePlanes(cat("g_lo"), cat("g_hi"), cat("stuck_lrs"), cat("stuck_hrs"))

    def columns(self, n: int) -> "DevicePlanes":
        def first(t):
            return None if t is None else t[:, :, :n]

        return DevicePlanes(first(self.g_lo), first(self.g_hi), first(self.stuck_lrs), first(self.stuck_hrs))


def sample_planes(spec: HardwareSpec, rows: int, cols: int, generator: torch.Generator,
                  dtype=torch.float32) -> DevicePlanes:
    """Draw the devices of a (rows x cols) differential array: variability first, then faults."""
    dev = spec.device
    shape = (2, rows, cols)
    var = spec.variability_spec
    if var is None:
        g_lo = torch.full(shape, dev.g_off, dtype=torch.float64).to(dtype)
        g_hi = torch.full(shape, dev.g_on, dtype=torch.float64).to(dtype)
    else:
        g_lo, g_hi = var.sample_bounds(dev.r_on, dev.r_off, shape, generator, dtype)
    stuck = spec.stuck_spec
    if stuck is not None and (stuck.lrs > 0 or stuck.hrs > 0):
        lrs, hrs = stuck.sample(shape, generator)
    else:
        lrs = hrs = None
    return DevicePlanes(g_lo, g_hi, lrs, hrs)


def map_targets(weights: torch.Tensor, mapping: str = "per_column") -> tuple[torch.Tensor, torch.Tensor]:
    """Window fractions (2, R, C) for ``weights`` (R, C) and the column scales s_c (C,)."""
    w = weights.detach()
    if mapping == "per_column":
        scale = w.abs().amax(dim=0)
    elif mapping == "naive":
        scale = w.abs().max().expand(w.shape[1]).clone()
    else:
        raise ValueError(f"unknown weight mapping {mapping!r}")
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    frac = torch.stack([w.clamp(min=0), (-w).clamp(min=0)]) / scale
    return frac.clamp(0.0, 1.0), scale


@dataclass
class ProgrammedArray:
    """A written differential array: conductances ``g`` (2, R, C) and column scales (C,)."""

    g: torch.Tensor
    col_scale: torch.Tensor
    planes: DevicePlanes
    g_off: float
    g_on: float

    @property
    def rows(self) -> int:
        return self.g.shape[1]

    @property
    def cols(self) -> int:
        return self.g.shape[2]

    @property
    def g_diff(self) -> torch.Tensor:
        return self.g[0] - self.g[1]

    def effective_weights(self) -> torch.Tensor:
        """The (R, C) weights this array computes with a linear read (for inspection)."""
        return self.g_diff / (self.g_on - self.g_off) * self.col_scale


def program(spec: HardwareSpec, planes: DevicePlanes, weights: torch.Tensor) -> ProgrammedArray:
    """Write ``weights`` (R, C) into ``planes``: target map -> variability -> states -> faults."""
    dev = spec.device
    dtype = planes.g_lo.dtype
    frac, scale = map_targets(weights.to(dtype), spec.weight_mapping)
    var = spec.variability_spec
    mode = var.mode if var is not None else "own_range"
    g = program_fraction(frac, planes.g_lo, planes.g_hi, dev.g_off, dev.g_on, mode)
    if spec.states_spec is not None:
        g = spec.states_spec.quantize(g, planes.g_lo, planes.g_hi)
    if planes.stuck_lrs is not None:
        g = StuckAtFaults.apply(g, planes.g_lo, planes.g_hi, planes.stuck_lrs, planes.stuck_hrs)
    return ProgrammedArray(g=g, col_scale=scale, planes=planes, g_off=dev.g_off, g_on=dev.g_on)


def read(spec: HardwareSpec, array: ProgrammedArray, x: torch.Tensor,
         row_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Analog matrix-vector products ``x`` (B, R) -> (B, C), in weight units.

    ``row_scale`` (B,) overrides the per-row input full scale (conv layers pass one per image).
    """
    dac, adc, tiles = spec.dac_spec, spec.adc_spec, spec.tiles_spec
    dtype = array.g.dtype
    x = x.to(dtype)
    if row_scale is not None:
        row_scale = row_scale.to(dtype)
    v, s = dac.encode(x, row_scale)
    gd = array.g_diff
    window = array.g_on - array.g_off
    if adc is None:
        current = v @ gd  # without an ADC the tile partial sums add up exactly
    else:
        current = torch.zeros(x.shape[0], array.cols, dtype=dtype)
        slices = tiles.row_slices(array.rows) if tiles is not None else [slice(0, array.rows)]
        for rs in slices:
            fs = adc.full_scale * (rs.stop - rs.start) * dac.v_read * window
            current += adc.quantize(v[:, rs] @ gd[rs], fs)
    return current * (s / dac.v_read).unsqueeze(1) * (array.col_scale / window)


def read_conv(spec: HardwareSpec, array: ProgrammedArray, x: torch.Tensor, kernel_size: int,
              stride: int = 1, padding: int = 0) -> torch.Tensor:
    """The analog convolution of images ``x`` (B, C_in, H, W) -> (B, C_out, H', W'), weight units.

    Same maths as :func:`read` on the unfolded patches (rows = C_in * k * k in (c, kh, kw) order,
    one input full scale per image, zero padding at 0 V), computed as convolutions with the
    conductance planes: a row tile is a range of (c, kh, kw) rows, i.e. a group of input channels
    with the rows outside the tile masked to zero. Much faster than unfolding each image.
    """
    from torch.nn import functional as F

    dac, adc, tiles = spec.dac_spec, spec.adc_spec, spec.tiles_spec
    dtype = array.g.dtype
    b, c_in = x.shape[:2]
    kk = kernel_size * kernel_size
    if array.rows != c_in * kk:
        raise ValueError(f"array has {array.rows} rows, the input gives {c_in} x {kk}")
    x = x.to(dtype)
    flat, s = dac.encode(x.reshape(b, -1), x.reshape(b, -1).abs().amax(dim=1))
    v = flat.reshape(x.shape)
    window = array.g_on - array.g_off
    gd = array.g_diff  # (R, C_out)
    kernel = gd.T.reshape(array.cols, c_in, kernel_size, kernel_size)
    if adc is None:
        current = F.conv2d(v, kernel, stride=stride, padding=padding)
    else:
        current = None
        slices = tiles.row_slices(array.rows) if tiles is not None else [slice(0, array.rows)]
        for rs in slices:
            c0, c1 = rs.start // kk, (rs.stop - 1) // kk + 1
            w = gd[c0 * kk:c1 * kk].clone()
            w[: rs.start - c0 * kk] = 0  # rows of the first/last channel that are not in this tile
            w[rs.stop - c0 * kk:] = 0
            wt = w.T.reshape(array.cols, c1 - c0, kernel_size, kernel_size)
            part = F.conv2d(v[:, c0:c1], wt, stride=stride, padding=padding)
            fs = adc.full_scale * (rs.stop - rs.start) * dac.v_read * window
            part = adc.quantize(part, fs)
            current = part if current is None else current + part
    return current * (s / dac.v_read).view(-1, 1, 1, 1) * (array.col_scale / window).view(1, -1, 1, 1)


def tile_count(spec: HardwareSpec, rows: int, cols: int) -> int:
    """Number of physical arrays (pairs of planes) a (rows x cols) matrix needs."""
    t = spec.tiles_spec
    if t is None:
        return 1
    return len(t.row_slices(rows)) * len(t.col_slices(cols))
