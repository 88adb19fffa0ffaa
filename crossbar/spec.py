"""The hardware specification: which parts are analog, on which device, with which non-idealities."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from crossbar.options import ANALOG_PARTS, CONV_ROW_ORDERS, PROGRAMMING_ROUTES, WEIGHT_MAPPINGS  # noqa: F401
from device_models.errors import HardwareSpecError
from device_models.nonidealities import (
    ADC,
    NONIDEALITY_TYPES,
    ConductanceStates,
    DeviceVariability,
    InputDAC,
    NonIdeality,
    StuckAtFaults,
    TileShape,
)
from device_models.presets import PRESETS, DevicePreset, get_preset

#: The shortcut fields of :class:`HardwareSpec` and the non-ideality kind each one sets (each
#: non-ideality class declares its own in ``shortcuts``).
SHORTCUT_KINDS = {name: cls.kind for cls in NONIDEALITY_TYPES.values() for name in cls.shortcuts}


def _build_nonidealities(items: dict) -> tuple[NonIdeality, ...]:
    """Non-ideality objects from ``{kind: {field: value}}`` (one-line errors naming the kind)."""
    kinds = nonideality_kinds()
    built = []
    for kind, fields in items.items():
        if kind not in kinds:
            raise HardwareSpecError(f"unknown non-ideality {kind!r} (expected one of {', '.join(kinds)})")
        try:
            built.append(kinds[kind](**(fields or {})))
        except TypeError as exc:
            raise HardwareSpecError(f"bad fields for non-ideality {kind!r}: {exc}") from None
    return tuple(built)


@dataclass(frozen=True)
class HardwareSpec:
    """What to simulate. Validated once, on construction (one-line :class:`HardwareSpecError`).

    - ``analog``: ``"keys"`` (key memory on a crossbar, controller digital), ``"controller"``
      (controller layers on crossbars, key memory digital) or ``"all"``.
    - ``preset``: a device preset name (see ``device_models.PRESETS``) or a ``DevicePreset``.
    - ``nonidealities``: specification objects (``device_models.nonidealities``), at most one
      of each kind; or use the shortcut fields ``variability`` (relative sigma), ``states``
      (levels), ``stuck_lrs`` / ``stuck_hrs`` (fractions), ``adc_bits``, ``tile_shape``
      (rows, cols), ``read_voltage`` / ``dac_bits``, ``programming_noise`` (sigma, fraction of
      the window), ``read_noise`` (relative sigma), ``drift_nu`` / ``drift_nu_sigma`` / ``time``
      (seconds, or ``"1d"``) / ``drift_compensation`` (``none``/``global``), ``adc_range``
      (``worst``/``calibrated``/``calibrated_column``), ``endurance`` (median write cycles) /
      ``episodes_served`` (cycles the key memory has had), ``wire_resistance`` (ohms per
      segment) / ``source_resistance`` (ohms) / ``ir_drop_solver`` (``auto``/``exact``/
      ``approx``). Giving a kind both
      ways is an error. :data:`SHORTCUT_KINDS` maps each shortcut to its non-ideality.
    - ``seed``: the chip. Device variability and the stuck-at map are drawn from it (once per
      chip), and ``seed_globals()`` seeds Python, NumPy and torch with it (MemTorch draws from
      the global generators). Same seed, same results.
    - ``weight_mapping``: ``"per_column"`` (default: each output column / key uses the full
      device window, its scale restored digitally; binary layers with per-channel scales use
      exactly two states per device) or ``"naive"`` (MemTorch's ``naive_map``: one scale per
      layer).
    - ``conv_rows``: the word-line order of a convolution's C_in x k x k weight rows.
      ``"kernel"`` (default): (kh, kw, c), one kernel position's input channels per row block
      (the kernel-splitting mapping of NeuroSim, Peng et al., ISCAS 2019); tiled convolutions
      are then read as matrix products, much faster. ``"channel"``: (c, kh, kw), PyTorch's,
      MemTorch's and aihwkit's unfold order, so a 128-row tile holds all k x k taps of a few
      input channels (the earlier default: the published studies made with it name it). Only
      which rows share a tile's ADC and where a row sits on the bit line (IR drop) change;
      devices are drawn per weight in the same order either way.
    - ``programming``: ``"fast"`` (default: MemTorch's ``patch_model`` builds the ``memtorch.mn``
      layers but the per-device Python objects are skipped; conductances come from the vectorised
      pipeline) or ``"memtorch"`` (MemTorch builds its device objects as usual, then the
      conductance matrices are overwritten with the pipeline's; slow, for cross-checks).
    """

    analog: str = "keys"
    preset: str | DevicePreset = "ideal"
    nonidealities: Sequence[NonIdeality] = ()
    variability: float | None = None
    states: int | None = None
    stuck_lrs: float | None = None
    stuck_hrs: float | None = None
    adc_bits: int | None = None
    adc_range: str | None = None
    tile_shape: tuple[int, int] | None = None
    read_voltage: float | None = None
    dac_bits: int | None = None
    programming_noise: float | None = None
    read_noise: float | None = None
    drift_nu: float | None = None
    drift_nu_sigma: float | None = None
    time: float | str | None = None
    drift_compensation: str | None = None
    endurance: float | None = None
    episodes_served: int | None = None
    wire_resistance: float | None = None
    source_resistance: float | None = None
    ir_drop_solver: str | None = None
    seed: int = 0
    weight_mapping: str = "per_column"
    conv_rows: str = "kernel"
    programming: str = "fast"
    _chain: dict = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.analog not in ANALOG_PARTS:
            raise HardwareSpecError(f"analog must be one of {', '.join(ANALOG_PARTS)}, got {self.analog!r}")
        object.__setattr__(self, "preset", get_preset(self.preset))
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise HardwareSpecError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.weight_mapping not in WEIGHT_MAPPINGS:
            raise HardwareSpecError(f"weight_mapping must be one of {', '.join(WEIGHT_MAPPINGS)}, got {self.weight_mapping!r}")
        if self.conv_rows not in CONV_ROW_ORDERS:
            raise HardwareSpecError(f"conv_rows must be one of {', '.join(CONV_ROW_ORDERS)}, got {self.conv_rows!r}")
        if self.programming not in PROGRAMMING_ROUTES:
            raise HardwareSpecError(f"programming must be one of {', '.join(PROGRAMMING_ROUTES)}, got {self.programming!r}")
        items = list(self.nonidealities) if self.nonidealities is not None else []
        chain: dict[str, NonIdeality] = {}
        for ni in items:
            if not isinstance(ni, NonIdeality):
                raise HardwareSpecError(f"nonidealities must be NonIdeality objects, got {type(ni).__name__}")
            if ni.kind in chain:
                raise HardwareSpecError(f"non-ideality {ni.kind!r} given twice")
            chain[ni.kind] = ni
        for cls in NONIDEALITY_TYPES.values():  # the shortcut fields, each class building itself
            given = {name: getattr(self, name) for name in cls.shortcuts if getattr(self, name) is not None}
            if not given:
                continue
            if cls.kind in chain:
                raise HardwareSpecError(f"non-ideality {cls.kind!r} given twice (in nonidealities and as "
                                        f"{'/'.join(given)})")
            chain[cls.kind] = cls.from_shortcuts(given)
        for ni in self.preset.measured:  # what was measured on the device, unless set above
            chain.setdefault(ni.kind, ni)
        chain.setdefault("dac", InputDAC())
        order = list(NONIDEALITY_TYPES)
        object.__setattr__(self, "_chain", dict(sorted(chain.items(), key=lambda kv: order.index(kv[0])
                                                       if kv[0] in order else len(order))))

    # -- the resolved non-idealities ------------------------------------------------------------
    @property
    def device(self) -> DevicePreset:
        return self.preset  # resolved in __post_init__

    @property
    def variability_spec(self) -> DeviceVariability | None:
        return self._chain.get("variability")

    @property
    def states_spec(self) -> ConductanceStates | None:
        return self._chain.get("states")

    @property
    def stuck_spec(self) -> StuckAtFaults | None:
        return self._chain.get("stuck")

    @property
    def adc_spec(self) -> ADC | None:
        return self._chain.get("adc")

    @property
    def dac_spec(self) -> InputDAC:
        return self._chain["dac"]

    @property
    def tiles_spec(self) -> TileShape | None:
        return self._chain.get("tiles")

    @property
    def resolved_nonidealities(self) -> tuple[NonIdeality, ...]:
        return tuple(self._chain.values())

    def get(self, kind: str) -> NonIdeality | None:
        """The non-ideality of ``kind`` in force, or None."""
        return self._chain.get(kind)

    def stage(self, stage: str) -> tuple[NonIdeality, ...]:
        """The non-idealities with a hook in ``stage`` ("device": in sampling order; "program",
        "read": in their documented order). Items whose parameters change nothing are left out."""
        items = [ni for ni in self._chain.values() if not ni.is_identity]
        if stage == "device":
            return tuple(sorted((ni for ni in items if type(ni).sample is not NonIdeality.sample),
                                key=lambda ni: ni.sample_order))
        return tuple(sorted((ni for ni in items if ni.stage == stage), key=lambda ni: ni.order))

    @property
    def keys_analog(self) -> bool:
        return self.analog in ("keys", "all")

    @property
    def controller_analog(self) -> bool:
        return self.analog in ("controller", "all")

    @property
    def linear_read(self) -> bool:
        """True when reading is exactly linear in the input (no ADC, no DAC quantisation)."""
        return self.adc_spec is None and self.dac_spec.bits is None

    @property
    def is_ideal(self) -> bool:
        """No non-ideality acts (any device preset is exact with the differential pair)."""
        return all(ni.is_identity for ni in self._chain.values()) and self.linear_read

    def describe(self) -> dict:
        """One flat dict with every parameter (absent non-idealities as None), for results tables;
        built from each non-ideality's ``describe()``."""
        d = {"analog": self.analog, **self.device.describe(), "seed": int(self.seed),
             "weight_mapping": self.weight_mapping, "conv_rows": self.conv_rows}
        for kind, cls in NONIDEALITY_TYPES.items():
            ni = self._chain.get(kind)
            d.update(ni.describe() if ni is not None else cls.describe_absent())
        return d

    # -- identity: two specs are equal when they describe the same chip --------------------------
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HardwareSpec):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    # -- saving and loading ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The whole chip as plain data (JSON/TOML-able): ``analog``, ``preset`` (a registered
        name, or the preset's fields), ``seed``, ``weight_mapping``, ``conv_rows``, ``programming`` and
        ``nonidealities`` (``{kind: {field: value}}``, every non-ideality in force with all its
        fields). :meth:`from_dict` rebuilds an equal spec."""
        preset = self.device
        registered = PRESETS.get(preset.name.strip().lower().replace("-", "_"))
        if registered != preset:
            preset = {f.name: (dict(getattr(preset, f.name)) if f.name == "memtorch_params" else getattr(preset, f.name))
                      for f in dataclasses.fields(preset)}
            preset["measured"] = {ni.kind: dataclasses.asdict(ni) for ni in preset["measured"]}
        else:
            preset = preset.name
        return {"analog": self.analog, "preset": preset, "seed": int(self.seed),
                "weight_mapping": self.weight_mapping, "conv_rows": self.conv_rows, "programming": self.programming,
                "nonidealities": {ni.kind: dataclasses.asdict(ni) for ni in self.resolved_nonidealities}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "HardwareSpec":
        """A spec from :meth:`to_dict`'s form, or from any of the constructor's fields (the
        shortcuts ``variability``, ``states``, ``adc_bits``, ``tile_shape``, ...); an unknown key
        or non-ideality kind is a one-line :class:`HardwareSpecError` naming it."""
        if not isinstance(data, dict):
            raise HardwareSpecError(f"a hardware spec must be a table of fields, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(data) - names)
        if unknown:
            raise HardwareSpecError(f"unknown hardware spec field {unknown[0]!r} (expected one of {', '.join(sorted(names))})")
        kw = dict(data)
        if isinstance(kw.get("preset"), dict):
            fields = dict(kw["preset"])
            if isinstance(fields.get("measured"), dict):
                fields["measured"] = _build_nonidealities(fields["measured"])
            try:
                kw["preset"] = DevicePreset(**fields)
            except TypeError as exc:
                raise HardwareSpecError(f"bad preset table: {exc}") from None
        items = kw.get("nonidealities") or {}
        if isinstance(items, dict):
            kw["nonidealities"] = _build_nonidealities(items)
        if isinstance(kw.get("tile_shape"), list):
            kw["tile_shape"] = tuple(kw["tile_shape"])
        return cls(**kw)

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` to ``path``: TOML for ``.toml``, else JSON; atomically (a
        temporary file renamed into place). Returns ``path``."""
        import os
        import tempfile

        path = Path(path)
        data = self.to_dict()
        text = to_toml(data) + "\n" if path.suffix.lower() == ".toml" else json.dumps(data, indent=2) + "\n"
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | Path) -> "HardwareSpec":
        """Read a spec written by :meth:`save` (or by hand): TOML for ``.toml``, else JSON."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise HardwareSpecError(f"cannot read hardware spec {path}: {exc.strerror or exc}") from None
        try:
            if path.suffix.lower() == ".toml":
                import tomllib

                data = tomllib.loads(text)
            else:
                data = json.loads(text)
        except ValueError as exc:
            raise HardwareSpecError(f"hardware spec {path} is not valid {'TOML' if path.suffix.lower() == '.toml' else 'JSON'}: "
                                    f"{str(exc).splitlines()[0]}") from None
        return cls.from_dict(data)

    # -- seeding ----------------------------------------------------------------------------------
    def seed_globals(self) -> None:
        """Seed Python's ``random``, NumPy's global generator and torch with ``seed``."""
        seed_globals(int(self.seed))

    def generator(self, stream: str) -> torch.Generator:
        """A dedicated torch generator for one named stream of this chip (e.g. a layer)."""
        return torch.Generator().manual_seed(derive_seed(int(self.seed), stream))


def nonideality_kinds() -> dict[str, type[NonIdeality]]:
    """Every non-ideality class by its ``kind`` (the keys of ``to_dict()["nonidealities"]``)."""
    found: dict[str, type[NonIdeality]] = {}
    todo = list(NonIdeality.__subclasses__())
    while todo:
        c = todo.pop()
        todo.extend(c.__subclasses__())
        if getattr(c, "kind", None):
            found[c.kind] = c
    return dict(sorted(found.items()))


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(float(v)) if isinstance(v, float) else str(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def to_toml(data: dict[str, Any], prefix: str = "") -> str:
    """``data`` (scalars, lists and nested tables; ``None`` values left out) as TOML text."""
    parts = ["\n".join(f"{k} = {_toml_value(v)}" for k, v in data.items()
                       if v is not None and not isinstance(v, dict))]
    for k, v in data.items():
        if isinstance(v, dict):
            name = f"{prefix}.{k}" if prefix else k
            body = to_toml(v, name)
            parts.append(f"[{name}]" + ("\n" + body if body else ""))
    return "\n\n".join(p for p in parts if p)


def derive_seed(seed: int, stream: str) -> int:
    """A 63-bit seed for ``stream`` derived from ``seed`` (stable across runs and platforms)."""
    digest = hashlib.sha256(f"batmann-rram:{seed}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def seed_globals(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
