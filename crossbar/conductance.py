"""Vectorised programming and reading of differential crossbar arrays (tensor ops, no per-device objects).

A weight matrix ``W`` of shape (R, C) (rows = inputs / word lines, columns = outputs / bit-line
pairs) is held by two device planes, ``G+`` and ``G-`` (MemTorch's ``Scheme.DoubleColumn``).

Every non-ideality is a :class:`device_models.NonIdeality` with hooks by stage; this module runs
the hooks of the spec's non-idealities (``spec.stage(...)``) in their documented order:

1. **devices** (:func:`sample_planes`, once per chip and array): nominal bounds
   ``g_lo = 1/r_off``, ``g_hi = 1/r_on``, then each ``sample`` hook (DeviceVariability: own
   bounds per device; StuckAtFaults: the stuck map; Drift: exponents).
2. **program** (:func:`program`, every write): the target map -- fraction f+ = max(w, 0) / s_c,
   f- = max(-w, 0) / s_c in [0, 1], s_c the column's max |w| ("per_column") or the layer's
   ("naive", MemTorch's naive_map), programmed into each device's window (mode own_range or
   memtorch_clip) -- then each ``program`` hook: ConductanceStates, ProgrammingNoise (fresh
   generator per write), StuckAtFaults last, so nothing after can undo them (MemTorch trap 2).
3. **read** (:func:`read`, :func:`read_conductance`): the conductances seen ``time`` seconds after
   programming (``read_conductance`` hooks, e.g. Drift; IRDrop acts on each physical array and
   plane on its own, replacing G by the effective G of the circuit; computed once per array and
   time) and an
   output gain (``output_gain``, e.g. global drift compensation); then per input vector::

       V = x / max|x| * v_read                      (InputDAC, optional DAC bits)
       per row tile t (TileShape): I_t = V[t] @ (G+[t] - G-[t])
           -> read_current hooks (ReadNoise: + N(0, sigma^2 sum V^2 (G+^2 + G-^2)))
           -> ADC_t (fixed full scale)
       y = gain * sum_t I_t * max|x| / v_read / (1/r_on - 1/r_off) * s_c     (scale back, digital)

For the ideal device (no non-ideality in force) ``y == x @ W`` up to float rounding. The devices
of an array (:class:`DevicePlanes`) are sampled once; :func:`program` can be called again and
again on the same devices (the key memory is rewritten every episode).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from crossbar import lookup
from crossbar.cpu_features import has_fast_bf16
from crossbar.spec import HardwareSpec
from device_models.nonidealities import NonIdeality
from device_models.nonidealities import program_fraction


@dataclass
class DevicePlanes:
    """The physical devices of one differential array, all tensors of shape (2, R, C).

    Plane 0 holds G+, plane 1 holds G-. ``g_lo``/``g_hi``: each device's conductance bounds;
    ``props``: what the device-stage hooks sampled (``stuck_lrs``/``stuck_hrs`` masks,
    ``drift_nu`` exponents, ...).
    """

    g_lo: torch.Tensor
    g_hi: torch.Tensor
    props: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def stuck_lrs(self) -> torch.Tensor | None:
        return self.props.get("stuck_lrs")

    @property
    def stuck_hrs(self) -> torch.Tensor | None:
        return self.props.get("stuck_hrs")

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.g_lo.shape[1:])

    def _map(self, fn) -> "DevicePlanes":
        return DevicePlanes(fn("g_lo", self.g_lo), fn("g_hi", self.g_hi), {k: fn(k, v) for k, v in self.props.items()})

    @staticmethod
    def cat_columns(parts: list["DevicePlanes"]) -> "DevicePlanes":
        first = parts[0]
        return first._map(lambda name, _: torch.cat([getattr(p, name) if name in ("g_lo", "g_hi") else p.props[name]
                                                     for p in parts], dim=2))

    def rows(self, index: torch.Tensor) -> "DevicePlanes":
        """The planes with their rows reordered (or selected) by ``index``."""
        return self._map(lambda name, t: t[:, index])

    def columns(self, n: int) -> "DevicePlanes":
        return self._map(lambda name, t: t[:, :, :n])

    def to(self, device) -> "DevicePlanes":
        return self._map(lambda name, t: t.to(device))


def sample_planes(spec: HardwareSpec, rows: int, cols: int, generator: torch.Generator,
                  dtype=torch.float32, rewritten: bool = False) -> DevicePlanes:
    """Draw the devices of a (rows x cols) differential array: nominal bounds, then every
    device-stage hook in its sampling order (variability, stuck-at map, drift exponents,
    lifetimes). ``rewritten``: the array is rewritten every episode (the key memory)."""
    dev = spec.device
    shape = (2, rows, cols)
    devices = {"g_lo": torch.full(shape, dev.g_off, dtype=torch.float64).to(dtype),
               "g_hi": torch.full(shape, dev.g_on, dtype=torch.float64).to(dtype)}
    for ni in spec.stage("device"):
        devices.update(ni.sample(shape, generator, dev.g_off, dev.g_on, devices, rewritten))
    g_lo, g_hi = devices.pop("g_lo"), devices.pop("g_hi")
    return DevicePlanes(g_lo, g_hi, devices)


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
    """A written differential array: conductances ``g`` (2, R, C) and column scales (C,).

    ``time``: seconds after programming at which it is read (the key memory: fresh, at 0;
    the controller: the spec's drift time). ``read_generator`` draws the read noise of its
    reads, one after the other."""

    g: torch.Tensor
    col_scale: torch.Tensor
    planes: DevicePlanes
    g_off: float
    g_on: float
    time: float = 0.0
    read_generator: torch.Generator | None = None
    #: calibrated ADC full scales, one per row tile (a scalar or one per column), or None (worst case)
    adc_fs: list[torch.Tensor] | None = None
    #: while calibrating: one CurrentRecorder per row tile (reads are then not quantised)
    calibration: dict[int, "CurrentRecorder"] | None = None
    #: a convolution laid out kernel-major (``conv_rows="kernel"``): physical row i holds the
    #: weight row ``row_index[i]`` of the (c, kh, kw) order; None: rows in the weights' order
    row_index: torch.Tensor | None = None
    _read: tuple | None = field(default=None, repr=False)

    def with_rows(self, index: torch.Tensor) -> "ProgrammedArray":
        """This (unread) array with its rows laid out in the order ``index`` (see ``row_index``)."""
        if self._read is not None or self.calibration is not None or self.adc_fs is not None:
            raise RuntimeError("reorder an array's rows before it is read")
        return ProgrammedArray(g=self.g[:, index], col_scale=self.col_scale, planes=self.planes.rows(index),
                               g_off=self.g_off, g_on=self.g_on, time=self.time, read_generator=self.read_generator,
                               row_index=index)

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


def kernel_major_rows(c_in: int, kernel_size: int) -> torch.Tensor:
    """The (kh, kw, c) word-line order of a conv's (c, kh, kw) weight rows: entry i is the weight
    row on physical row i (``conv_rows="kernel"``)."""
    kk = kernel_size * kernel_size
    return torch.arange(c_in * kk).view(c_in, kk).T.reshape(-1)


def program(spec: HardwareSpec, planes: DevicePlanes, weights: torch.Tensor,
            generator: torch.Generator | None = None, time: float = 0.0, read_stream: str | None = None) -> ProgrammedArray:
    """Write ``weights`` (R, C) into ``planes``: target map, then every program-stage hook in order
    (states, programming noise, stuck-at faults last). ``generator`` draws this write's noise (a
    fresh one per write); ``time`` is when the array will be read (seconds after this write);
    ``read_stream`` names the chip stream its read noise is drawn from."""
    dev = spec.device
    dtype = planes.g_lo.dtype
    frac, scale = map_targets(weights.to(dtype), spec.weight_mapping)
    var = spec.variability_spec
    mode = var.mode if var is not None else "own_range"
    g = program_fraction(frac, planes.g_lo, planes.g_hi, dev.g_off, dev.g_on, mode)
    target = g
    for ni in spec.stage("program"):
        g = ni.program(g, target, planes, generator)
    reader = spec.generator(read_stream) if read_stream is not None and spec.stage("read") else None
    return ProgrammedArray(g=g, col_scale=scale, planes=planes, g_off=dev.g_off, g_on=dev.g_on, time=time,
                           read_generator=reader)


def read_state(spec: HardwareSpec, array: ProgrammedArray) -> tuple[torch.Tensor, float | None, tuple]:
    """The conductances reads see (after the ``read_conductance`` hooks at ``array.time``), the
    output gain (or None) and the read-current hooks; computed once per array."""
    if array._read is None:
        items = spec.stage("read")
        g = array.g
        for ni in items:
            if ni.per_array:
                g = _per_array(spec, ni, g, array)
            else:
                g = ni.read_conductance(g, array.planes, array.time)
        gain = None
        for ni in items:
            k = ni.output_gain(array.g, g)
            if k is not None:
                gain = k if gain is None else gain * k
        noisy = tuple(ni for ni in items if type(ni).read_current is not NonIdeality.read_current)
        array._read = (g, gain, noisy)
    return array._read


def _per_array(spec: HardwareSpec, ni: NonIdeality, g: torch.Tensor, array: ProgrammedArray) -> torch.Tensor:
    """Apply ``ni.read_conductance`` to each plane of each physical array (tile) on its own."""
    tiles = spec.tiles_spec
    rows = _row_slices(spec, array.rows)
    cols = tiles.col_slices(array.cols) if tiles is not None else [slice(0, array.cols)]
    out = torch.empty_like(g)
    for p in range(g.shape[0]):
        for rs in rows:
            for cs in cols:
                out[p, rs, cs] = ni.read_conductance(g[p, rs, cs], array.planes, array.time)
    return out


class CurrentRecorder:
    """A histogram of the |currents| a tile's ADC saw during calibration (per column, or over
    all columns), to set its range at a percentile: ``bins`` linear bins up to the tile's
    worst-case current, so the range is found to within worst / bins."""

    def __init__(self, per_column: bool, worst: float, bins: int = 1 << 16):
        self.per_column = per_column
        self.worst = float(worst)
        self.bins = bins
        self.hist: torch.Tensor | None = None
        self.n = 0

    def add(self, current: torch.Tensor, channel_dim: int = 1) -> None:
        cols = current.shape[channel_dim]
        if self.per_column:
            x = current.detach().abs().movedim(channel_dim, -1).reshape(-1, cols)
            idx = (x * (self.bins / self.worst)).long().clamp_(0, self.bins - 1)
            idx = idx + torch.arange(cols, device=idx.device) * self.bins
            counts = torch.bincount(idx.reshape(-1), minlength=cols * self.bins).reshape(cols, self.bins)
            self.n += x.shape[0]
        else:  # one histogram for the tile: no reordering needed
            x = current.detach().abs().float().clamp_(max=self.worst * (1 - 0.5 / self.bins))
            counts = torch.histc(x, self.bins, 0.0, self.worst).double().reshape(1, self.bins)
            self.n += x.numel()
        self.hist = counts if self.hist is None else self.hist + counts

    def full_scale(self, percentile: float) -> torch.Tensor:
        """The ``percentile`` of |current| (per column: shape (C,); else a scalar), as the upper
        edge of its histogram bin."""
        if self.hist is None:
            raise RuntimeError("no calibration reads were recorded")
        allowed = (1.0 - percentile / 100.0) * self.n  # values that may lie above the range
        above = self.hist.flip(1).cumsum(1).flip(1) - self.hist  # count strictly above each bin
        first = (above <= allowed).double().argmax(dim=1)  # the lowest bin with few enough above it
        fs = (first.double() + 1.0) * (self.worst / self.bins)
        return fs if self.per_column else fs[0]


def start_calibration(spec: HardwareSpec, array: ProgrammedArray, per_column: bool | None = None) -> None:
    """Record the array's tile currents from now on (reads are not quantised meanwhile)."""
    adc = spec.adc_spec
    per_col = (adc.range == "calibrated_column") if per_column is None else per_column
    window = array.g_on - array.g_off
    array.calibration = {t: CurrentRecorder(per_col, adc.full_scale * (rs.stop - rs.start) * spec.dac_spec.v_read * window)
                         for t, rs in enumerate(_row_slices(spec, array.rows))}


def finish_calibration(spec: HardwareSpec, array: ProgrammedArray) -> None:
    """Fix the array's ADC ranges at the spec's percentile of the recorded currents."""
    rec = array.calibration
    array.calibration = None
    array.adc_fs = [rec[t].full_scale(spec.adc_spec.percentile) for t in sorted(rec)]


def _row_slices(spec: HardwareSpec, rows: int) -> list[slice]:
    tiles = spec.tiles_spec
    return tiles.row_slices(rows) if tiles is not None else [slice(0, rows)]


def _adc(spec: HardwareSpec, array: ProgrammedArray, t: int, part: torch.Tensor, worst: float) -> torch.Tensor:
    """Tile ``t``'s column currents through its ADC (or recorded, while calibrating); ``part`` is
    quantised in place."""
    if array.calibration is not None:
        array.calibration[t].add(part, 1)
        return part
    return spec.adc_spec.quantize_(part, _full_scale(array, t, part, worst))


def _full_scale(array: ProgrammedArray, t: int, part: torch.Tensor, worst: float):
    """Tile ``t``'s ADC range for its currents ``part`` (B, C[, H, W]): the worst case, or the
    calibrated one (a scalar, or one per column shaped to broadcast over ``part``)."""
    return _per_column(_tile_range(array, t, worst, part.dtype), part.dim())


def _tile_range(array: ProgrammedArray, t: int, worst: float, dtype: torch.dtype):
    """Tile ``t``'s ADC range: ``worst`` (a float), or the calibrated one (a 0-d tensor, or (C,)
    per column) in ``dtype``."""
    return worst if array.adc_fs is None else array.adc_fs[t].to(dtype)


def _per_column(r, dims: int):
    """A per-column (C,) range or step shaped to broadcast over (B, C[, H, W]) currents; a float or
    0-d tensor as it is."""
    return r.view(1, -1, *([1] * (dims - 2))) if isinstance(r, torch.Tensor) and r.dim() == 1 else r


def _currents(items, current, variance, generator):
    """Apply the read-current hooks to ``current``; ``variance()`` gives sum V^2 (G+^2 + G-^2) of
    each output, computed only when a hook wants it."""
    if not items:
        return current
    var = variance() if any(ni.wants_variance for ni in items) else None
    for ni in items:
        current = ni.read_current(current, var, generator)
    return current


def read(spec: HardwareSpec, array: ProgrammedArray, x: torch.Tensor,
         row_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Analog matrix-vector products ``x`` (B, R) -> (B, C), in weight units.

    ``row_scale`` (B,) overrides the per-row input full scale (conv layers pass one per image).
    """
    dac, adc = spec.dac_spec, spec.adc_spec
    dtype = array.g.dtype
    x = x.to(dtype)
    if row_scale is not None:
        row_scale = row_scale.to(dtype)
    v, s = dac.encode(x, row_scale)
    g, gain, noisy = read_state(spec, array)
    gd = g[0] - g[1]
    g_sq = g[0] * g[0] + g[1] * g[1] if noisy else None
    gen = array.read_generator
    window = array.g_on - array.g_off
    if adc is None:
        # without an ADC the tile partial sums (and their independent noises) add up exactly
        current = _currents(noisy, v @ gd, lambda: (v * v) @ g_sq, gen)
    else:
        current = torch.zeros(x.shape[0], array.cols, dtype=dtype, device=x.device)
        for t, rs in enumerate(_row_slices(spec, array.rows)):
            fs = adc.full_scale * (rs.stop - rs.start) * dac.v_read * window
            part = _currents(noisy, v[:, rs] @ gd[rs], lambda rs=rs: (v[:, rs] * v[:, rs]) @ g_sq[rs], gen)
            current += _adc(spec, array, t, part, fs)
    return _scaled(current, _output_factor(s, dac.v_read, array.col_scale / window, gain, 0))


def _output_factor(scale: torch.Tensor, v_read: float, col_factor: torch.Tensor, gain, spatial: int) -> torch.Tensor:
    """What turns column currents into weight units, per input row (image) and column: (B, C) with
    ``spatial`` trailing singleton dims (one multiplication of the currents instead of two or three)."""
    f = (scale / v_read).unsqueeze(1) * col_factor
    if gain is not None:
        f = f * gain
    return f.view(*f.shape, *([1] * spatial))


def _scaled(current: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``current * factor``, in place (``current`` is a fresh sum) unless autograd records it."""
    if torch.is_grad_enabled() and (current.requires_grad or factor.requires_grad):
        return current * factor
    return current.mul_(factor)


def _low_precision_sums(a: torch.Tensor) -> bool:
    """Whether sums of positive products (the read-noise variance) may use bf16 products with fp32
    sums: ~0.3 % error, 5x faster where the CPU has native bf16."""
    return a.dtype == torch.float32 and has_fast_bf16(a.device)


def read_conv(spec: HardwareSpec, array: ProgrammedArray, x: torch.Tensor, kernel_size: int,
              stride: int = 1, padding: int = 0) -> torch.Tensor:
    """The analog convolution of images ``x`` (B, C_in, H, W) -> (B, C_out, H', W'), weight units.

    Same maths as :func:`read` on the unfolded patches (rows = C_in * k * k, one input full scale
    per image, zero padding at 0 V). Rows in (c, kh, kw) order (``conv_rows="channel"``): a row
    tile is a group of input channels with the rows outside the tile masked to zero, read as a
    convolution. Rows in (kh, kw, c) order (``"kernel"``, ``array.row_index`` set): a row tile is
    a range of input channels of one or more kernel positions, read as matrix products of the
    channels-last image with each position's weights. Much faster than unfolding each image.
    """
    from torch.nn import functional as F

    dac, adc = spec.dac_spec, spec.adc_spec
    dtype = array.g.dtype
    b, c_in = x.shape[:2]
    kk = kernel_size * kernel_size
    if array.rows != c_in * kk:
        raise ValueError(f"array has {array.rows} rows, the input gives {c_in} x {kk}")
    x = x.to(dtype)
    kernel_major = array.row_index is not None
    # kernel-major tiles read channels-last images: encode them in that order (a view of a
    # channels-last x, such as the previous analog layer's output; the same voltages either way,
    # the input full scale is per image)
    channels_last = adc is not None and kernel_major
    rows_ = (x.permute(0, 2, 3, 1) if channels_last else x).reshape(b, -1)
    flat, s = dac.encode(rows_, rows_.abs().amax(dim=1))
    v = flat.view(b, *x.shape[2:], c_in) if channels_last else flat.reshape(x.shape)
    window = array.g_on - array.g_off
    g, gain, noisy = read_state(spec, array)
    gd = g[0] - g[1]  # (R, C_out)
    g_sq = g[0] * g[0] + g[1] * g[1] if noisy else None
    gen = array.read_generator

    def kernel(mat, c=c_in):  # (rows of c channels, C_out) -> conv weights (C_out, c, k, k)
        if kernel_major:
            return mat.T.reshape(array.cols, kernel_size, kernel_size, c).permute(0, 3, 1, 2)
        return mat.T.reshape(array.cols, c, kernel_size, kernel_size)

    def conv(inp, mat, c=c_in, positive=False):
        k = kernel(mat, c)
        if positive and _low_precision_sums(inp):
            return F.conv2d(inp.bfloat16(), k.bfloat16(), stride=stride, padding=padding).float()
        return F.conv2d(inp, k, stride=stride, padding=padding)

    if adc is None:
        current = _currents(noisy, conv(v, gd), lambda: conv(v * v, g_sq, positive=True), gen)
    elif kernel_major:
        current = _tiled_adc_conv_kernel_major(spec, array, v, kernel_size, stride, padding, gd, g_sq, noisy, gen)
    else:
        current = _tiled_adc_conv(spec, array, v, kernel_size, stride, padding, gd, g_sq, noisy, gen, conv)
    return _scaled(current, _output_factor(s, dac.v_read, array.col_scale / window, gain, 2))


def _tiled_adc_conv(spec, array, v, kernel_size, stride, padding, gd, g_sq, noisy, gen, conv) -> torch.Tensor:
    """The column currents of :func:`read_conv` with an ADC, rows in (c, kh, kw) order: each row
    tile is a convolution over the input channels it holds, quantised by its own ADC, then the
    tiles are summed."""
    from torch.nn import functional as F

    dac, adc = spec.dac_spec, spec.adc_spec
    kk = kernel_size * kernel_size
    window = array.g_on - array.g_off
    b, _, height, width = v.shape
    slices = _row_slices(spec, array.rows)
    tiles_ = []  # per row tile: its channels, its conductances (rows outside the tile zeroed), its worst current
    for rs in slices:
        c0, c1 = rs.start // kk, (rs.stop - 1) // kk + 1

        def masked(m, rs=rs, c0=c0, c1=c1):
            w = m[c0 * kk:c1 * kk].clone()
            w[: rs.start - c0 * kk] = 0  # rows of the first/last channel that are not in this tile
            w[rs.stop - c0 * kk:] = 0
            return w

        sq = masked(g_sq) if noisy else None
        tiles_.append((c0, c1, masked(gd), sq, adc.full_scale * (rs.stop - rs.start) * dac.v_read * window))
    if noisy:  # the read noise is drawn tile by tile over the whole batch
        current = None
        for t, (c0, c1, wt, sq, fs) in enumerate(tiles_):
            vt = v[:, c0:c1]
            part = _currents(noisy, conv(vt, wt, c1 - c0), lambda: conv(vt * vt, sq, c1 - c0, positive=True), gen)
            part = _adc(spec, array, t, part, fs)
            current = part if current is None else current.add_(part)
    else:  # a few images at a time, so that each tile's partial sums stay in cache while the ADC
        # quantises and adds them (2x faster than whole-batch tiles here; the same numbers)
        h = (height + 2 * padding - kernel_size) // stride + 1
        w_ = (width + 2 * padding - kernel_size) // stride + 1
        step = max(1, TILE_CHUNK_ELEMENTS // (array.cols * h * w_))
        kernels = [wt.T.reshape(array.cols, c1 - c0, kernel_size, kernel_size).contiguous() for c0, c1, wt, _, _ in tiles_]
        current = torch.empty(b, array.cols, h, w_, dtype=v.dtype, device=v.device)
        for i in range(0, b, step):
            acc = None
            for t, ((c0, c1, _, _, fs), k) in enumerate(zip(tiles_, kernels)):
                part = F.conv2d(v[i:i + step, c0:c1], k, stride=stride, padding=padding)
                part = _adc(spec, array, t, part, fs)
                acc = part if acc is None else acc.add_(part)
            current[i:i + step] = acc
    return current


def _tiled_adc_conv_kernel_major(spec, array, v, kernel_size, stride, padding, gd, g_sq, noisy, gen) -> torch.Tensor:
    """The column currents of :func:`read_conv` with an ADC, rows in (kh, kw, c) order; ``v`` holds
    the input voltages channels-last, (B, H, W, C_in).

    Physical row r holds input channel r % C_in of kernel position r // C_in. A row tile's partial
    sums are the products of the padded image, shifted to each kernel position the tile covers,
    with that position's rows: one matrix product over the output pixels' inputs.
    Returns (B, C_out, H', W') in channels-last memory.
    """
    from torch.nn import functional as F

    dac, adc = spec.dac_spec, spec.adc_spec
    window = array.g_on - array.g_off
    c_in = array.rows // (kernel_size * kernel_size)
    b = v.shape[0]
    x = (F.pad(v, (0, 0, padding, padding, padding, padding)) if padding else v).contiguous()  # (B, Hp, Wp, C_in)
    _, hp, wp, _ = x.shape
    h = (hp - kernel_size) // stride + 1
    w_ = (wp - kernel_size) // stride + 1
    # per row tile: [(kh, kw, first channel, last channel + 1, first row)], its worst current, and
    # whether its ADC can clip: not when the largest current any column of the tile can carry
    # (v_read times the sum of |G+ - G-| over its rows) stays below the ADC's range
    tiles_ = []
    peak = None if noisy or array.calibration is not None else gd.abs() * dac.v_read  # read noise: unbounded
    for t, rs in enumerate(_row_slices(spec, array.rows)):
        segs = []
        r = rs.start
        while r < rs.stop:
            pos, c0 = divmod(r, c_in)
            c1 = min(c_in, c0 + rs.stop - r)
            segs.append((pos // kernel_size, pos % kernel_size, c0, c1, r))
            r += c1 - c0
        worst = adc.full_scale * (rs.stop - rs.start) * dac.v_read * window
        tiles_.append((segs, worst, peak is None or _may_clip(array, t, worst, peak[rs].sum(0))))

    def tile_sum(inp, mat, segs):  # (n, Hp, Wp, C_in) -> the tile's (n, C_out, H', W') sums (a view)
        out = None
        for kh, kw, c0, c1, r0 in segs:
            # the output pixels' inputs only (a copy, ~1 % of the product's time; whole image rows
            # would multiply (k - 1) / Wp of the columns in vain, 14-20 % on BATMANN's layers; one
            # copy per kernel column with a batched product per image was 15-20 % slower on two threads)
            rows_ = inp[:, kh:kh + stride * (h - 1) + 1:stride, kw:kw + stride * (w_ - 1) + 1:stride, c0:c1]
            part = torch.matmul(rows_.reshape(rows_.shape[0], -1, c1 - c0), mat[r0:r0 + c1 - c0]).to(v.dtype)
            part = part.view(rows_.shape[0], h, w_, -1)
            out = part if out is None else out.add_(part)
        return out.permute(0, 3, 1, 2)

    current = torch.zeros(b, h, w_, array.cols, dtype=v.dtype, device=v.device).permute(0, 3, 1, 2)
    offset = 0.0  # the half steps of the quantised tiles (see ADC.accumulate_)
    if noisy:  # the read noise is drawn tile by tile over the whole batch
        lookup_sum = _lookup_tile_sum(x, dac.v_read, gd, c_in, kernel_size, stride, h, w_, tiles_)
        if lookup_sum:  # +-v inputs: each tile's variance sum V^2 (G+^2 + G-^2) is v^2 times a column sum
            v2 = dac.v_read * dac.v_read
            for t, ((segs, fs, clip), rs) in enumerate(zip(tiles_, _row_slices(spec, array.rows))):
                part = lookup_sum(0, b, segs)
                var = lambda p=part, rs=rs: (g_sq[rs].sum(0) * v2).view(1, -1, 1, 1).expand(p.shape)
                offset = offset + _adc_add(spec, array, t, current, _currents(noisy, part, var, gen), fs)
        else:
            x2, g2 = x * x, g_sq
            if _low_precision_sums(x2):  # converted once for every tile
                x2, g2 = x2.bfloat16(), g2.bfloat16()
            for t, (segs, fs, clip) in enumerate(tiles_):
                part = _currents(noisy, tile_sum(x, gd, segs), lambda: tile_sum(x2, g2, segs), gen)
                offset = offset + _adc_add(spec, array, t, current, part, fs)
    elif array.calibration is not None:  # recording each tile's currents as they are
        for t, (segs, fs, clip) in enumerate(tiles_):
            _adc_add(spec, array, t, current, tile_sum(x, gd, segs), fs, clip)
    else:  # a few images at a time, so that each tile's partial sums stay in cache; each tile's
        # rows are read through conductances divided by its ADC step: the products come out in
        # steps, one pass over them fewer than dividing each chunk's currents
        steps = [adc.step(_tile_range(array, t, fs, gd.dtype)) for t, (_, fs, _) in enumerate(tiles_)]
        g_steps = gd.clone()
        for rs, st in zip(_row_slices(spec, array.rows), steps):
            g_steps[rs] /= st  # a (C,) step divides each column
        steps = [_per_column(st, 4) for st in steps]
        chunk = max(1, TILE_CHUNK_ELEMENTS // (array.cols * h * w_))
        lookup_sum = _lookup_tile_sum(x, dac.v_read, g_steps, c_in, kernel_size, stride, h, w_, tiles_)
        for i in range(0, b, chunk):
            acc = current[i:i + chunk]
            for (segs, _, clip), st in zip(tiles_, steps):
                part = lookup_sum(i, chunk, segs) if lookup_sum else tile_sum(x[i:i + chunk], g_steps, segs)
                half = adc.accumulate_steps_(acc, part, st, clip)
                if i == 0:
                    offset = offset + half
    if isinstance(offset, torch.Tensor):
        return current.add_(offset.view(1, -1, 1, 1) if offset.dim() == 1 else offset)
    return current.add_(offset) if offset else current


def _lookup_tile_sum(x, v_read, g, c_in, kernel_size, stride, h, w_, tiles_):
    """Where every voltage of the channels-last image ``x`` (B, Hp, Wp, C_in) is +-``v_read`` and
    every row segment of every tile covers whole lookup groups: a function ``(first image, images,
    segments) -> the tile's (n, C_out, H', W') sums`` computing them by table lookup
    (:mod:`crossbar.lookup`) from the conductances ``g`` (R, C_out) in kernel-major rows; else None."""
    bits = lookup.GROUP_BITS
    if c_in % bits or any(c0 % bits or c1 % bits for segs, _, _ in tiles_ for _, _, c0, c1, _ in segs):
        return None
    if not lookup.two_level(x, v_read):
        return None
    codes = lookup.pattern_codes(x, v_read)  # (B, Hp, Wp, C_in / bits)
    tables = lookup.pattern_table(g.view(kernel_size * kernel_size, c_in, g.shape[1]), v_read)

    def tile_sum(i, n, segs):
        out = None
        for kh, kw, c0, c1, _ in segs:
            idx = codes[i:i + n, kh:kh + stride * (h - 1) + 1:stride, kw:kw + stride * (w_ - 1) + 1:stride,
                        c0 // bits:c1 // bits]
            m = idx.shape[0] * h * w_
            part = lookup.lookup_currents(idx.reshape(m, -1), tables[kh * kernel_size + kw])
            out = part if out is None else out.add_(part)
        return out.view(-1, h, w_, out.shape[1]).permute(0, 3, 1, 2)

    return tile_sum


def _may_clip(array: ProgrammedArray, t: int, worst: float, peak: torch.Tensor) -> bool:
    """Whether tile ``t``'s ADC can clip a current, given ``peak`` (C,), the largest |current| each
    column can carry: unless every column stays below its range by a margin (0.1 %, far above the
    float rounding of a column sum), clipping is applied."""
    return not bool((peak * (1.0 + 1e-3) < _tile_range(array, t, worst, peak.dtype)).all())


def _adc_add(spec: HardwareSpec, array: ProgrammedArray, t: int, total: torch.Tensor, part: torch.Tensor,
             worst: float, clip: bool = True):
    """``total += `` tile ``t``'s column currents ``part`` (B, C, H, W) through its ADC, less half
    a step (returned, to add once; see ``ADC.accumulate_``; ``clip=False``: no current can reach
    the ADC's range, see :func:`_may_clip`); while calibrating, recorded and added as they are
    (0 returned)."""
    if array.calibration is not None:
        array.calibration[t].add(part, 1)
        total.add_(part)
        return 0.0
    return spec.adc_spec.accumulate_(total, part, _full_scale(array, t, part, worst), clip)


#: partial sums per image chunk of the tiled, ADC-read convolution (fp32: 2 MB, an L2 cache)
TILE_CHUNK_ELEMENTS = 1 << 19


def tile_count(spec: HardwareSpec, rows: int, cols: int) -> int:
    """Number of physical arrays (pairs of planes) a (rows x cols) matrix needs."""
    t = spec.tiles_spec
    if t is None:
        return 1
    return len(t.row_slices(rows)) * len(t.col_slices(cols))
