"""The key memory as a crossbar: keys in the devices, queries as read voltages, similarities from currents.

Key ``n`` (a d-vector) is column pair ``n`` of a (d x N) differential array; a query (a d-vector)
drives the d rows; the differential column currents, scaled back, are the dot products q.k_n.

The devices are a property of the chip: their windows (device-to-device variability) and the
stuck-at map are drawn once, per column from the chip's seed (column n has the same devices
whatever N is), and every episode only rewrites the keys into them. Writing 100 x 512 keys and
reading 100 queries are a few tensor operations (milliseconds), so re-programming per episode is
cheap. Computation is in float64: for the ideal device the similarities equal the digital dot
products to ~1e-12.

This path does not build MemTorch objects: MemTorch would create one Python object per device
(2 x 51,200 per 20-way 5-shot episode; about 15 us each here) only to have its matrices replaced.
The device numbers (r_on, r_off) come from the preset, which names the MemTorch model they
belong to; the variability distribution and the clip semantics are MemTorch's (checked against
MemTorch in the tests).
"""

from __future__ import annotations

import torch

from crossbar import conductance
from crossbar.spec import HardwareSpec
from device_models.errors import HardwareSpecError


class KeyCrossbar:
    """A key-memory chip with ``dim`` rows; grows its columns on demand (same devices per column)."""

    dtype = torch.float64

    def __init__(self, spec: HardwareSpec, dim: int):
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise HardwareSpecError(f"key dimension must be a positive integer, got {dim!r}")
        self.spec = spec
        self.dim = dim
        self._planes: conductance.DevicePlanes | None = None
        self.array: conductance.ProgrammedArray | None = None
        self.n_writes = 0
        self.adc_fs: list[torch.Tensor] | None = None  # calibrated ADC ranges (one per row tile)
        self._calibration: dict | None = None

    # -- devices ----------------------------------------------------------------------------------
    def _column_planes(self, col: int) -> conductance.DevicePlanes:
        gen = self.spec.generator(f"keys/d={self.dim}/col={col}")
        return conductance.sample_planes(self.spec, self.dim, 1, gen, self.dtype, rewritten=True)

    def devices(self, n_keys: int) -> conductance.DevicePlanes:
        """The devices of the first ``n_keys`` columns (drawn on first use, then kept)."""
        have = 0 if self._planes is None else self._planes.shape[1]
        if n_keys > have:
            new = [self._column_planes(c) for c in range(have, n_keys)]
            parts = ([self._planes] if self._planes is not None else []) + new
            self._planes = conductance.DevicePlanes.cat_columns(parts)
        return self._planes.columns(n_keys)

    # -- write / read -----------------------------------------------------------------------------
    def program(self, keys: torch.Tensor) -> "KeyCrossbar":
        """Write ``keys`` (N, d) into the first N column pairs (replacing the previous keys)."""
        if keys.dim() != 2 or keys.shape[1] != self.dim:
            raise HardwareSpecError(f"keys must have shape (N, {self.dim}), got {tuple(keys.shape)}")
        if not torch.isfinite(keys).all():
            raise HardwareSpecError("keys contain NaN or infinite values")
        planes = self.devices(keys.shape[0])
        stream = f"keys/d={self.dim}/write={self.n_writes}"  # every write draws fresh write and read noise
        self.array = conductance.program(self.spec, planes, keys.detach().cpu().to(self.dtype).T,
                                         generator=self.spec.generator(stream), time=0.0, read_stream=f"{stream}/read")
        self.array.adc_fs = self.adc_fs
        self.array.calibration = self._calibration
        self.n_writes += 1
        return self

    def similarities(self, queries: torch.Tensor) -> torch.Tensor:
        """Dot products (Q, N) of ``queries`` (Q, d) with the stored keys, read from the currents."""
        if self.array is None:
            raise RuntimeError("no keys written: call program(keys) first")
        if queries.dim() != 2 or queries.shape[1] != self.dim:
            raise HardwareSpecError(f"queries must have shape (Q, {self.dim}), got {tuple(queries.shape)}")
        out = conductance.read(self.spec, self.array, queries.detach().cpu())
        return out.to(dtype=queries.dtype if queries.is_floating_point() else torch.float32, device=queries.device)

    def calibrate(self, pairs) -> None:
        """Set calibrated ADC ranges (one per row tile, whatever ``spec.adc_spec.range`` says:
        the columns hold a different episode's keys at every write) from ``pairs`` of (keys
        (N, d), queries (Q, d)): each pair is written and read once while the tile currents are
        recorded. The writes count as writes of the chip."""
        adc = self.spec.adc_spec
        if adc is None or not adc.calibrated:
            return
        rows = conductance._row_slices(self.spec, self.dim)
        window = self.spec.device.g_on - self.spec.device.g_off
        self._calibration = {t: conductance.CurrentRecorder(False, adc.full_scale * (rs.stop - rs.start)
                                                            * self.spec.dac_spec.v_read * window)
                             for t, rs in enumerate(rows)}
        try:
            for keys, queries in pairs:
                self.program(keys)
                self.similarities(queries)
        finally:
            rec, self._calibration = self._calibration, None
            if self.array is not None:
                self.array.calibration = None
        self.adc_fs = [rec[t].full_scale(adc.percentile) for t in sorted(rec)]

    @property
    def conductances(self) -> torch.Tensor:
        """Programmed conductances (2, d, N): plane 0 is G+, plane 1 is G-."""
        if self.array is None:
            raise RuntimeError("no keys written")
        return self.array.g
