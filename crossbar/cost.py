"""Energy, latency and area of few-shot queries on a chip, against a digital processor.

:func:`estimate` pushes real episodes through an :class:`crossbar.system.InMemorySystem` and counts,
for every weight layer on crossbars and for the key memory, what its arrays and periphery do:

- **array read energy**, from the programmed conductances and the actual read voltages:
  ``t_read * sum_i V_i^2 * sum_j (G+_ij + G-_ij)`` per input vector (every device of a driven row
  conducts); ``V`` are the DAC's voltages of the layer's real inputs, ``G`` the conductances the
  reads see (drift included);
- **ADC conversions**: one per column pair of every array per input vector, ``FOM_W * 2^bits``
  each (none without an ADC in the spec: an ideal readout is not costed);
- **DAC conversions**: one per driven row of every array per input vector (``dac_energy_pj`` each);
- **digital periphery**: a 32-bit add per column per extra row tile (shift-and-add of the tiles'
  partial sums) and one multiply per output (scaling back to weight units);
- **key writes**: every episode writes its support keys, ``V_w^2 * G * t_w`` per device and pulse
  at its programmed conductance, both planes;
- **latency**: per input vector the read pulse plus ``columns_per_adc`` conversions (one ADC per
  ``columns_per_adc`` columns), the arrays of a layer in parallel or in series, layers and the
  vectors of a layer one after another;
- **area**: arrays, devices and ADCs (``columns_per_adc`` columns per ADC, per array).

The digital baseline is the same query's multiply-accumulates (conv/linear weights, then the
key dot products) times the energy of one MAC. Parts of the system that stay digital in the spec
(the controller with ``analog="keys"``) are costed as MACs too. Layers between the weight layers
(normalisation, sign, pooling) are the same in both and not counted. The formulas are in
``docs/cost-model.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Iterable

import torch
from torch import nn
from torch.nn import functional as F

from crossbar import conductance
from crossbar.spec import HardwareSpec
from device_models.periphery import Periphery, get_periphery


@dataclass
class PartCost:
    """Counts and energies of one part (controller or key memory) per unit of work (pJ, s)."""

    array_pj: float = 0.0
    adc_pj: float = 0.0
    dac_pj: float = 0.0
    digital_pj: float = 0.0
    mac_pj: float = 0.0  # the part's MACs when it is digital in the spec
    latency_s: float = 0.0
    macs: float = 0.0
    conversions: float = 0.0

    @property
    def energy_pj(self) -> float:
        return self.array_pj + self.adc_pj + self.dac_pj + self.digital_pj + self.mac_pj

    def add(self, other: "PartCost", weight: float = 1.0) -> None:
        """``self += weight * other``, every field."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + weight * getattr(other, f.name))

    def breakdown(self) -> dict[str, float]:
        return {"array": self.array_pj, "adc": self.adc_pj, "dac": self.dac_pj, "digital_periphery": self.digital_pj,
                "digital_macs": self.mac_pj}


@dataclass
class Footprint:
    arrays: int = 0
    devices: int = 0
    adcs: int = 0


@dataclass
class CostReport:
    """Per query and per episode; see :meth:`to_json` for the keys."""

    controller: PartCost
    keys: PartCost
    key_write_pj: float
    digital_controller_macs: float
    digital_key_macs: float
    footprint: dict[str, Footprint]
    periphery: Periphery
    spec: dict[str, Any]
    supports: int
    queries: int
    digital_mac: str = "int8"
    digital_wall_s_per_query: float | None = None
    notes: list[str] = field(default_factory=list)

    def _digital_pj(self) -> float:
        return (self.digital_controller_macs + self.digital_key_macs) * self.periphery.mac_pj[self.digital_mac]

    def to_json(self) -> dict[str, Any]:
        p = self.periphery
        c, k = self.controller, self.keys
        images = self.supports + self.queries
        per_episode = {
            "controller": c.energy_pj * images,
            "keys_read": k.energy_pj * self.queries,
            "keys_write": self.key_write_pj,
        }
        per_episode["total"] = sum(per_episode.values())
        per_episode["digital"] = (self.digital_controller_macs * images + self.digital_key_macs * self.queries) \
            * p.mac_pj[self.digital_mac]
        fp = self.footprint
        return {
            "energy_pj_per_query": {"controller": c.energy_pj, "keys": k.energy_pj,
                                    "total": c.energy_pj + k.energy_pj, "digital": self._digital_pj()},
            "latency_ns_per_query": {"controller": c.latency_s * 1e9, "keys": k.latency_s * 1e9,
                                     "total": (c.latency_s + k.latency_s) * 1e9,
                                     "digital": None if self.digital_wall_s_per_query is None
                                     else self.digital_wall_s_per_query * 1e9},
            "energy_pj_per_episode": per_episode,
            "energy_breakdown_pj_per_query": {"controller": c.breakdown(), "keys": k.breakdown()},
            "devices": {part: f.devices for part, f in fp.items()},
            "arrays": {part: f.arrays for part, f in fp.items()},
            "adcs": {part: f.adcs for part, f in fp.items()},
            "adc_area_mm2": {part: f.adcs * p.adc_area_mm2 for part, f in fp.items()},
            "macs_per_query": {"controller": self.digital_controller_macs, "keys": self.digital_key_macs,
                               "total": self.digital_controller_macs + self.digital_key_macs},
            "adc_conversions_per_query": {"controller": c.conversions, "keys": k.conversions},
            "episode": {"supports": self.supports, "queries": self.queries},
            "digital_baseline": {"mac": self.digital_mac, "mac_pj": p.mac_pj[self.digital_mac],
                                 "latency": "measured wall time per query image on this CPU (batched), "
                                            "controller and similarities"},
            "hardware": self.spec,
            "periphery": p.to_dict(),
            "notes": list(self.notes),
        }


def _tiles(spec: HardwareSpec, rows: int, cols: int) -> tuple[list[slice], list[slice]]:
    t = spec.tiles_spec
    if t is None:
        return [slice(0, rows)], [slice(0, cols)]
    return t.row_slices(rows), t.col_slices(cols)


def array_footprint(spec: HardwareSpec, rows: int, cols: int, periphery: Periphery) -> Footprint:
    """Arrays, devices (two per weight) and ADCs of a (rows x cols) differential matrix."""
    rs, cs = _tiles(spec, rows, cols)
    adcs = 0
    if spec.adc_spec is not None:
        adcs = len(rs) * sum(math.ceil((c.stop - c.start) / periphery.columns_per_adc) for c in cs)
    return Footprint(arrays=len(rs) * len(cs), devices=2 * rows * cols, adcs=adcs)


def _row_conductance_sums(array: conductance.ProgrammedArray, spec: HardwareSpec) -> torch.Tensor:
    """sum_j (G+_ij + G-_ij) per weight row (R,), in the weights' row order, as reads see them (S)."""
    g, _, _ = conductance.read_state(spec, array)
    sums = g.double().sum(dim=(0, 2))
    if array.row_index is not None:  # physical row i holds weight row row_index[i]
        out = torch.empty_like(sums)
        out[array.row_index] = sums
        sums = out
    return sums


def read_cost(spec: HardwareSpec, array: conductance.ProgrammedArray, v_sq_sum: float, vectors: float,
              periphery: Periphery) -> PartCost:
    """Cost of ``vectors`` input vectors on ``array`` whose voltages give ``v_sq_sum`` =
    sum over vectors and rows of V_i^2 * sum_j (G+_ij + G-_ij) (in W, i.e. V^2 S)."""
    p = periphery
    rows, cols = array.rows, array.cols
    rs, cs = _tiles(spec, rows, cols)
    out = PartCost()
    out.array_pj = p.read_pulse_s * v_sq_sum * 1e12
    out.dac_pj = vectors * rows * len(cs) * p.dac_energy_pj
    adc = spec.adc_spec
    per_vector_s = p.read_pulse_s
    if adc is not None:
        out.conversions = vectors * len(rs) * cols
        out.adc_pj = out.conversions * p.adc_energy_pj(adc.bits)
        widest = max(c.stop - c.start for c in cs)
        per_vector_s += min(p.columns_per_adc, widest) * p.adc_conversion_s
    if p.tiles == "serial":
        per_vector_s *= len(rs) * len(cs)
    out.latency_s = vectors * per_vector_s
    out.digital_pj = vectors * ((len(rs) - 1) * cols * p.add_pj + cols * p.multiply_pj)
    out.macs = vectors * rows * cols
    return out


class _LayerProbe:
    """Forward hooks on a controller's weight layers: per layer, the input vectors per image and
    (for layers on crossbars) sum V^2 * G_row of the real inputs."""

    def __init__(self, model: nn.Module, spec: HardwareSpec, arrays: dict[str, conductance.ProgrammedArray]):
        self.spec = spec
        self.arrays = arrays
        self.layers: dict[str, dict[str, float]] = {}
        self._sums = {name: _row_conductance_sums(a, spec) for name, a in arrays.items()}
        self.handles = [m.register_forward_hook(self._hook(name)) for name, m in model.named_modules()
                        if isinstance(m, (nn.Conv2d, nn.Linear))]

    def _hook(self, name: str):
        def hook(module, inputs, output):
            x = inputs[0].detach().float()
            b = x.shape[0]
            rec = self.layers.setdefault(name, {"images": 0, "vectors": 0.0, "v_sq_g": 0.0, "macs": 0.0})
            if isinstance(module, nn.Conv2d):
                vectors = output.shape[-1] * output.shape[-2]
                macs = module.weight.numel() * vectors
            else:
                vectors = x.numel() // (b * x.shape[-1])
                macs = module.weight.numel() * vectors
            rec["images"] += b
            rec["vectors"] += vectors * b
            rec["macs"] += macs * b
            if name in self.arrays:
                rec["v_sq_g"] += self._energy_sum(module, x, name)

        return hook

    def _energy_sum(self, module, x: torch.Tensor, name: str) -> float:
        dac = self.spec.dac_spec
        gs = self._sums[name]
        b = x.shape[0]
        if isinstance(module, nn.Conv2d):  # fp32 products of positive numbers, summed per image in fp64
            flat, _ = dac.encode(x.reshape(b, -1), x.reshape(b, -1).abs().amax(dim=1))
            v2 = (flat * flat).reshape(x.shape)
            k = module.kernel_size[0]
            kernel = gs.float().view(1, x.shape[1], k, k)
            return float(F.conv2d(v2, kernel, stride=module.stride, padding=module.padding).double().sum())
        v, _ = dac.encode(x.reshape(-1, x.shape[-1]).double())
        return float(((v * v) @ gs).sum())

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@torch.no_grad()
def estimate(system, episodes: Iterable, periphery: Periphery | str | None = None, digital_mac: str = "int8",
             digital_wall_s_per_query: float | None = None) -> CostReport:
    """Energy, latency and area of ``system`` (an :class:`crossbar.system.InMemorySystem`) on
    ``episodes`` (objects with ``support`` (S, C, H, W) and ``query`` (Q, C, H, W) images),
    averaged over them. ``digital_mac``: the baseline's MAC precision (``int8`` or ``fp32``);
    ``digital_wall_s_per_query``: the baseline's measured time, reported as it is."""
    from device_models.errors import HardwareSpecError
    from device_models.periphery import DIGITAL_MACS

    if digital_mac not in DIGITAL_MACS:
        raise HardwareSpecError(f"digital_mac must be one of {', '.join(DIGITAL_MACS)}, got {digital_mac!r}")
    p = periphery if isinstance(periphery, Periphery) else get_periphery(periphery or "survey2025")
    spec: HardwareSpec = system.spec
    ctrl = system.controller
    arrays = ctrl.arrays if ctrl.analog else {}
    probe = _LayerProbe(ctrl.model, spec, arrays)
    keys_cost, key_write, key_macs = PartCost(), 0.0, 0.0
    n_eps, supports, queries = 0, 0, 0
    key_fp = Footprint()
    try:
        for ep in episodes:
            n_eps += 1
            support, query = ep.support.detach().cpu().float(), ep.query.detach().cpu().float()
            supports, queries = support.shape[0], query.shape[0]
            feats_s = ctrl._compute(torch.cat([support, query]))  # through the hooks, never from a cache
            ks, qs = feats_s[:supports], feats_s[supports:]
            system.write(ks)
            q = system.codec.encode(qs.float())
            n_keys, dim = ks.shape[0], q.shape[1]
            key_macs += dim * n_keys
            if spec.keys_analog:
                arr = system.key_chip.array
                gs = _row_conductance_sums(arr, spec)
                v, _ = spec.dac_spec.encode(q.double())
                keys_cost.add(read_cost(spec, arr, float(((v * v) @ gs).sum()), queries, p), 1.0 / queries)
                g = arr.g.double()
                key_write += p.write_voltage_v ** 2 * p.write_pulse_s * p.write_pulses * float(g.sum()) * 1e12
                key_fp = array_footprint(spec, dim, n_keys, p)
            else:
                keys_cost.mac_pj += dim * n_keys * p.mac_pj[digital_mac]
                keys_cost.macs += dim * n_keys
    finally:
        probe.remove()
    if n_eps == 0:
        raise HardwareSpecError("no episodes to estimate the cost on")
    keys_cost, per_episode = PartCost(), keys_cost
    keys_cost.add(per_episode, 1.0 / n_eps)  # the mean over the episodes
    ctrl_cost, ctrl_fp, ctrl_macs = PartCost(), Footprint(), 0.0
    for name, rec in probe.layers.items():
        per_image = 1.0 / rec["images"]
        ctrl_macs += rec["macs"] * per_image
        if name in arrays:
            a = arrays[name]
            ctrl_cost.add(read_cost(spec, a, rec["v_sq_g"] * per_image, rec["vectors"] * per_image, p))
            f = array_footprint(spec, a.rows, a.cols, p)
            ctrl_fp.arrays += f.arrays
            ctrl_fp.devices += f.devices
            ctrl_fp.adcs += f.adcs
        else:
            ctrl_cost.mac_pj += rec["macs"] * per_image * p.mac_pj[digital_mac]
            ctrl_cost.macs += rec["macs"] * per_image
    if not spec.controller_analog and digital_wall_s_per_query is not None:
        ctrl_cost.latency_s = digital_wall_s_per_query  # the digital controller's measured time
    total = Footprint(ctrl_fp.arrays + key_fp.arrays, ctrl_fp.devices + key_fp.devices, ctrl_fp.adcs + key_fp.adcs)
    notes = []
    if spec.adc_spec is None and (spec.keys_analog or spec.controller_analog):
        notes.append("the spec has no ADC (an ideal readout): conversions are not costed; set adc_bits")
    if not spec.controller_analog:
        notes.append("the controller is digital in this spec: its energy is its MACs at the baseline's MAC energy, "
                     "its latency the digital baseline's measured time")
    if not spec.keys_analog:
        notes.append("the key memory is digital in this spec: its energy is its MACs at the baseline's MAC energy")
    return CostReport(controller=ctrl_cost, keys=keys_cost, key_write_pj=key_write / n_eps,
                      digital_controller_macs=ctrl_macs, digital_key_macs=key_macs / n_eps,
                      footprint={"controller": ctrl_fp, "keys": key_fp, "total": total}, periphery=p,
                      spec=spec.describe(), supports=supports, queries=queries, digital_mac=digital_mac,
                      digital_wall_s_per_query=digital_wall_s_per_query, notes=notes)
