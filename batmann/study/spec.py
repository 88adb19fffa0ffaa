"""A study file: which checkpoints, which episodes, how many chips, and the grid of hardware.

A study is a TOML file (read with the standard library's ``tomllib``)::

    checkpoint = ["20w5s-binary"]   # one or more (shipped names, .safetensors files, run folders)
    chips = 5                       # chip seeds per configuration: chip_seed, chip_seed + 1, ...
    chip_seed = 0                   # optional (default 0)
    [episodes]
    count = 200
    seed = 0                        # ways / shots / queries default to the checkpoint's
    [hardware]                      # fixed for every cell: any HardwareSpec field, or keys
    analog = "all"
    adc_bits = 8
    [grid]                          # every combination of these
    preset = ["vteam", "ideal"]
    variability = [0.0, 0.1, 0.2, 0.4]
    [[zip]]                         # optional: lists that move together (one value per step)
    stuck_lrs = [0.0, 0.01, 0.05]
    stuck_hrs = [0.0, 0.01, 0.05]

Parameter keys (in ``[hardware]``, ``[grid]`` and ``[[zip]]``) are the fields of
:class:`crossbar.HardwareSpec` (``preset``, ``analog``, ``variability``, ``states``,
``stuck_lrs``, ``stuck_hrs``, ``adc_bits``, ``tile_shape``, ``read_voltage``, ``dac_bits``,
``weight_mapping``, and every field added later) plus ``keys`` (the key format at inference,
``bipolar``/``binary``/``real``; default: each checkpoint's). ``tile_shape`` takes ``128`` (square),
``"128x64"`` or ``[128, 64]``. The chip's ``seed`` is not a parameter: ``chips`` sets it. As on the
command line, 0 for ``variability``, ``stuck_lrs`` or ``stuck_hrs`` means "off".

A *configuration* is one checkpoint with one value of every parameter; a *cell* is a
configuration on one chip. Everything is validated on load (:func:`load_study`): unknown keys,
out-of-range values (each configuration's :class:`~crossbar.HardwareSpec` is built once) and
empty grids are one-line :class:`~batmann.errors.ConfigError` messages naming the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batmann.errors import ConfigError
from batmann.options import KEY_MODES

TOP_KEYS = ("checkpoint", "chips", "chip_seed", "episodes", "hardware", "grid", "zip", "name", "description")
EPISODE_KEYS = ("count", "seed", "ways", "shots", "queries", "within_alphabet", "distinct_drawers")
#: HardwareSpec fields a study may not set (``seed`` is the chip, ``nonidealities`` the long form).
NOT_PARAMETERS = ("seed", "nonidealities", "programming")


def parameter_keys() -> tuple[str, ...]:
    """Every key a study's ``[hardware]``, ``[grid]`` and ``[[zip]]`` tables accept."""
    from crossbar.spec import HardwareSpec

    names = [f.name for f in dataclasses.fields(HardwareSpec) if f.init and f.name not in NOT_PARAMETERS]
    return tuple(names) + ("keys",)


def _tile(value: Any, where: str) -> list[int]:
    if isinstance(value, bool):
        raise ConfigError(f"{where}: tile_shape must be ROWS, 'ROWSxCOLS' or [ROWS, COLS], got {value!r}")
    if isinstance(value, int):
        return [value, value]
    if isinstance(value, str):
        try:
            r, c = (int(v) for v in value.lower().split("x"))
        except ValueError:
            raise ConfigError(f"{where}: tile_shape {value!r} is not 'ROWSxCOLS' (e.g. '128x128')") from None
        return [r, c]
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                   for v in value):
        return [int(value[0]), int(value[1])]
    raise ConfigError(f"{where}: tile_shape must be ROWS, 'ROWSxCOLS' or [ROWS, COLS], got {value!r}")


def normalize_value(key: str, value: Any, where: str) -> Any:
    """One parameter value in its canonical, JSON-able form (a tile shape as [rows, cols])."""
    if key == "tile_shape":
        return _tile(value, where)
    if key == "keys":
        if value not in KEY_MODES:
            raise ConfigError(f"{where}: keys {value!r} is not one of {', '.join(KEY_MODES)}")
        return value
    if isinstance(value, (dict, list)):
        raise ConfigError(f"{where}: {key} takes a single value here, got {value!r}")
    return value


def format_value(key: str, value: Any) -> str:
    """A parameter value as a short label (``128x128`` for a tile shape, ``off`` for None)."""
    if value is None:
        return "off"
    if key == "tile_shape" and isinstance(value, (list, tuple)):
        return f"{value[0]}x{value[1]}"
    return str(value)


@dataclass(frozen=True)
class Configuration:
    """One checkpoint with one value of every parameter (``params``: key -> value)."""

    checkpoint: str
    params: dict[str, Any]

    @property
    def hardware(self) -> dict[str, Any]:
        """The HardwareSpec fields (every parameter but ``keys``)."""
        return {k: v for k, v in self.params.items() if k != "keys"}


@dataclass(frozen=True)
class Cell:
    """A configuration on one chip: what one task computes and one store row records."""

    configuration: Configuration
    chip: int
    chip_seed: int
    cell_id: str = field(compare=False)
    config_id: str = field(compare=False)


@dataclass(frozen=True)
class Study:
    """A validated study (see the module docstring); build it with :func:`load_study` or
    :meth:`from_dict`."""

    checkpoints: tuple[str, ...]
    chips: int
    chip_seed: int
    episodes: dict[str, int]
    hardware: dict[str, Any]
    grid: dict[str, list]
    zips: tuple[dict[str, list], ...]
    name: str = ""
    description: str = ""

    # -- building ---------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "study") -> "Study":
        """Validate ``data`` (the TOML file's tables); one-line :class:`ConfigError` naming the key."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: a study must be a table, got {type(data).__name__}")
        unknown = sorted(set(data) - set(TOP_KEYS))
        if unknown:
            raise ConfigError(f"{source}: unknown key {unknown[0]!r} (expected {', '.join(TOP_KEYS)})")
        ck = data.get("checkpoint")
        if ck is None:
            raise ConfigError(f"{source}: 'checkpoint' is missing (a name or a list of names)")
        checkpoints = [ck] if isinstance(ck, str) else ck
        if not isinstance(checkpoints, list) or not checkpoints or not all(isinstance(c, str) and c for c in checkpoints):
            raise ConfigError(f"{source}: checkpoint must be a name or a non-empty list of names, got {ck!r}")
        if len(set(checkpoints)) != len(checkpoints):
            raise ConfigError(f"{source}: checkpoint lists a name twice")
        chips = data.get("chips", 1)
        if isinstance(chips, bool) or not isinstance(chips, int) or not 1 <= chips <= 100_000:
            raise ConfigError(f"{source}: chips must be an integer in [1, 100000], got {chips!r}")
        chip_seed = data.get("chip_seed", 0)
        if isinstance(chip_seed, bool) or not isinstance(chip_seed, int) or chip_seed < 0:
            raise ConfigError(f"{source}: chip_seed must be a non-negative integer, got {chip_seed!r}")
        episodes = cls._episodes(data.get("episodes", {}), source)
        keys = parameter_keys()
        hw = {}
        for k, v in cls._table(data, "hardware", source).items():
            cls._check_key(k, keys, f"{source}: hardware")
            hw[k] = normalize_value(k, v, f"{source}: hardware.{k}")
        grid = {}
        for k, values in cls._table(data, "grid", source).items():
            cls._check_key(k, keys, f"{source}: grid")
            grid[k] = cls._values(k, values, f"{source}: grid.{k}")
        zips_in = data.get("zip", [])
        if isinstance(zips_in, dict):
            zips_in = [zips_in]
        if not isinstance(zips_in, list):
            raise ConfigError(f"{source}: [[zip]] must be a list of tables, got {zips_in!r}")
        zips = []
        for i, z in enumerate(zips_in):
            where = f"{source}: zip[{i}]"
            if not isinstance(z, dict) or not z:
                raise ConfigError(f"{where}: must be a non-empty table of equally long lists")
            zz = {}
            for k, values in z.items():
                cls._check_key(k, keys, where)
                zz[k] = cls._values(k, values, f"{where}.{k}")
            lengths = {len(v) for v in zz.values()}
            if len(lengths) != 1:
                raise ConfigError(f"{where}: lists must be equally long, got lengths "
                                  f"{', '.join(f'{k}={len(v)}' for k, v in zz.items())}")
            zips.append(zz)
        seen: dict[str, str] = {}
        for part, names in [("hardware", hw), ("grid", grid)] + [(f"zip[{i}]", z) for i, z in enumerate(zips)]:
            for k in names:
                if k in seen:
                    raise ConfigError(f"{source}: {k!r} is given in both {seen[k]} and {part}")
                seen[k] = part
        name = data.get("name", "")
        description = data.get("description", "")
        if not isinstance(name, str) or not isinstance(description, str):
            raise ConfigError(f"{source}: name and description must be strings")
        study = cls(tuple(checkpoints), chips, chip_seed, episodes, hw, grid, tuple(zips), name, description)
        study.check_configurations(source)
        return study

    @staticmethod
    def _table(data: dict, name: str, source: str) -> dict:
        table = data.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: [{name}] must be a table, got {table!r}")
        return table

    @staticmethod
    def _check_key(k: str, keys: tuple[str, ...], where: str) -> None:
        if k not in keys:
            hint = " (the chip seed is set by 'chips' and 'chip_seed')" if k == "seed" else ""
            raise ConfigError(f"{where}: unknown parameter {k!r}{hint} (expected one of {', '.join(keys)})")

    @staticmethod
    def _values(k: str, values: Any, where: str) -> list:
        if not isinstance(values, list):
            raise ConfigError(f"{where}: must be a list of values, got {values!r}")
        if not values:
            raise ConfigError(f"{where}: the list of values is empty")
        out = [normalize_value(k, v, where) for v in values]
        canon = [json.dumps(v, sort_keys=True) for v in out]
        if len(set(canon)) != len(canon):
            raise ConfigError(f"{where}: a value is listed twice in {values!r}")
        return out

    @staticmethod
    def _episodes(ep: Any, source: str) -> dict[str, int]:
        if not isinstance(ep, dict):
            raise ConfigError(f"{source}: [episodes] must be a table, got {ep!r}")
        unknown = sorted(set(ep) - set(EPISODE_KEYS))
        if unknown:
            raise ConfigError(f"{source}: episodes: unknown key {unknown[0]!r} (expected {', '.join(EPISODE_KEYS)})")
        out = {"count": ep.get("count", 200), "seed": ep.get("seed", 0)}
        for k in ("ways", "shots", "queries"):
            if ep.get(k) is not None:
                out[k] = ep[k]
        for k, v in out.items():
            lo = 0 if k == "seed" else 1
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(f"{source}: episodes.{k} must be an integer >= {lo}, got {v!r}")
        for k in ("within_alphabet", "distinct_drawers"):  # Lake's protocol; named only when given
            if k in ep:
                if not isinstance(ep[k], bool):
                    raise ConfigError(f"{source}: episodes.{k} must be true or false, got {ep[k]!r}")
                out[k] = ep[k]
        return out

    # -- expanding --------------------------------------------------------------------------------
    def steps(self) -> list[dict[str, Any]]:
        """The parameter settings of one checkpoint: the product of the grid's lists and the
        zips' steps, each merged over ``[hardware]`` (in file order)."""
        axes: list[list[dict[str, Any]]] = [[{k: v} for v in values] for k, values in self.grid.items()]
        for z in self.zips:
            n = len(next(iter(z.values())))
            axes.append([{k: z[k][i] for k in z} for i in range(n)])
        out = []
        for combo in itertools.product(*axes):
            params = dict(self.hardware)
            for part in combo:
                params.update(part)
            out.append(params)
        return out

    def configurations(self) -> list[Configuration]:
        """Every (checkpoint, parameter setting), checkpoints outermost."""
        return [Configuration(c, p) for c in self.checkpoints for p in self.steps()]

    def cells(self) -> list[Cell]:
        """Every configuration on every chip (chip innermost)."""
        out = []
        for conf in self.configurations():
            cid = config_id(conf, self.episodes)
            for chip in range(self.chips):
                seed = self.chip_seed + chip
                out.append(Cell(conf, chip, seed, cell_id(cid, seed), cid))
        return out

    @property
    def varying(self) -> tuple[str, ...]:
        """The parameters that take more than one value (grid and zip keys)."""
        names = list(self.grid)
        for z in self.zips:
            names.extend(z)
        return tuple(names)

    @property
    def parameters(self) -> tuple[str, ...]:
        """Every parameter this study sets (fixed first, then varying)."""
        return tuple(self.hardware) + self.varying

    def check_configurations(self, source: str = "study") -> None:
        """Build every configuration's HardwareSpec once: a bad value names its key."""
        from batmann.hardware import hardware_spec
        from device_models.errors import HardwareSpecError

        first = {k: v[0] for k, v in self.grid.items()}
        for z in self.zips:
            first.update({k: v[0] for k, v in z.items()})

        def check(changed: dict[str, Any], name: str) -> None:
            params = {**self.hardware, **first, **changed}
            params.pop("keys", None)
            try:
                hardware_spec(**spec_fields(params))
            except (HardwareSpecError, ConfigError) as exc:
                raise ConfigError(f"{source}: {name}: {str(exc).splitlines()[0]}") from None

        # one value at a time first (the other parameters at their first value), so the message names the key
        for k, values in self.grid.items():
            for v in values:
                if k != "keys":
                    check({k: v}, f"{k} = {v!r}")
        for i, z in enumerate(self.zips):
            for j in range(len(next(iter(z.values())))):
                step = {k: vals[j] for k, vals in z.items()}
                check(step, f"zip[{i}] step {j} ({', '.join(f'{k} = {v!r}' for k, v in step.items())})")
        for params in self.steps():
            try:
                hardware_spec(**spec_fields({k: v for k, v in params.items() if k != "keys"}))
            except (HardwareSpecError, ConfigError) as exc:
                shown = ", ".join(f"{k}={format_value(k, v)}" for k, v in params.items() if k in self.varying)
                raise ConfigError(f"{source}: configuration ({shown or 'hardware'}): {str(exc).splitlines()[0]}") from None

    # -- identity ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The study as plain data (what :meth:`from_dict` reads back)."""
        d: dict[str, Any] = {"checkpoint": list(self.checkpoints), "chips": self.chips, "chip_seed": self.chip_seed,
                             "episodes": dict(self.episodes), "hardware": dict(self.hardware),
                             "grid": {k: list(v) for k, v in self.grid.items()},
                             "zip": [dict(z) for z in self.zips]}
        if self.name:
            d["name"] = self.name
        if self.description:
            d["description"] = self.description
        return d

    def fingerprint(self) -> str:
        """A hash of what the study computes (not of its name or description)."""
        d = self.to_dict()
        d.pop("name", None)
        d.pop("description", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def fingerprint_episodes(self) -> str:
        """A hash of the episode set (count, seed and overrides)."""
        return hashlib.sha256(json.dumps(self.episodes, sort_keys=True).encode()).hexdigest()[:12]


def spec_fields(params: dict[str, Any]) -> dict[str, Any]:
    """Study parameters (without ``keys``) as :func:`batmann.hardware.hardware_spec` arguments."""
    out = dict(params)
    if out.get("tile_shape") is not None:
        out["tile_shape"] = tuple(out["tile_shape"])
    return out


def config_id(conf: Configuration, episodes: dict[str, int]) -> str:
    """A hash of (checkpoint, parameters, episodes): the same configuration in any study."""
    body = {"checkpoint": conf.checkpoint, "params": conf.params, "episodes": episodes}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:20]


def cell_id(config: str, chip_seed: int) -> str:
    return f"{config}-{chip_seed}"


def load_study(path: str | Path) -> Study:
    """Read and validate a study file (TOML)."""
    import tomllib

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read study file {path}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"study file {path} is not valid TOML: {str(exc).splitlines()[0]}") from None
    return Study.from_dict(data, source=str(path))
