"""Tidy tables of a study store: one row per cell, or one row per configuration (chips pooled).

Every parameter the study sets is a column (named as in the study file; a tile shape as
``128x128``, an unset non-ideality as empty), followed by ``checkpoint``, ``chip`` (cells only)
and the results. Used by ``batmann study export``, ``batmann study plot`` and the notebooks.
"""

from __future__ import annotations

import json
import math
from typing import Any

from batmann.errors import ConfigError
from batmann.study.store import StudyStore

CELL_RESULTS = ("digital_accuracy_pct", "crossbar_accuracy_pct", "crossbar_ci95_pct", "difference_pp",
                "difference_ci95_pp", "top1_agreement", "score_correlation", "episodes", "seconds")
CONFIG_RESULTS = ("chips", "episodes", "digital_accuracy_pct", "digital_ci95_pct", "crossbar_accuracy_pct",
                  "crossbar_ci95_pct", "difference_pp", "difference_ci95_pp", "top1_agreement_pct",
                  "top1_agreement_ci95_pct", "score_correlation")
#: per query, from the cell's chip (empty for cells recorded before costs were)
COST_RESULTS = ("energy_pj_per_query", "energy_pj_per_query_digital", "latency_ns_per_query", "adcs")
LEVELS = ("cell", "config")
FORMATS = ("csv", "parquet", "json")


def _columns(store: StudyStore) -> list[str]:
    study = store.get_meta("study") or {}
    cols: list[str] = []
    for part in ("hardware", "grid"):
        cols += [k for k in study.get(part, {}) if k not in cols]
    for z in study.get("zip", []):
        cols += [k for k in z if k not in cols]
    for row in store.db.execute("SELECT params FROM plan"):  # parameters of earlier (--extend) studies
        cols += [k for k in json.loads(row[0]) if k not in cols]
    return cols


def _cell_value(key: str, value: Any) -> Any:
    if key == "tile_shape" and isinstance(value, (list, tuple)):
        return f"{value[0]}x{value[1]}"
    return value


def _param_columns(params: dict[str, Any], cols: list[str], row: dict[str, Any]) -> dict[str, Any]:
    """The row's parameters; one a cell does not set is filled from the cell's resolved spec."""
    fallback = {"preset": row["hardware"].get("preset"), "analog": row["hardware"].get("analog"),
                "keys": row.get("keys")}
    return {k: _cell_value(k, params[k]) if k in params else fallback.get(k) for k in cols}


def cell_rows(store: StudyStore) -> list[dict[str, Any]]:
    """One dict per recorded cell of the store's plan (every parameter a column)."""
    cols = _columns(store)
    keys_of = {r[0]: r[1] for r in store.db.execute("SELECT ref_id, keys FROM digital")}
    out = []
    for c in store.cells():
        c["keys"] = keys_of.get(c["ref_id"])
        row = _param_columns(c["params"], cols, c)
        row.update({"checkpoint": c["checkpoint"], "keys_used": c["keys"], "chip": c["chip_seed"]})
        row.update({k: c[k] for k in CELL_RESULTS})
        row.update({k: (c["cost"] or {}).get(k) for k in COST_RESULTS})
        out.append(row)
    return out


def config_rows(store: StudyStore) -> list[dict[str, Any]]:
    """One dict per configuration with at least one recorded chip: means over chips and
    episodes with 95 % CIs that count both (:func:`batmann.study.stats.aggregate`)."""
    from batmann.study.stats import aggregate

    cols = _columns(store)
    digital = {r[0]: json.loads(r[1]) for r in store.db.execute("SELECT ref_id, per_episode FROM digital")}
    keys_of = {r[0]: r[1] for r in store.db.execute("SELECT ref_id, keys FROM digital")}
    groups: dict[str, list[dict]] = {}
    for c in store.cells():
        groups.setdefault(c["config_id"], []).append(c)
    out = []
    for cells in groups.values():
        first = cells[0]
        first["keys"] = keys_of.get(first["ref_id"])
        row = _param_columns(first["params"], cols, first)
        row.update({"checkpoint": first["checkpoint"], "keys_used": first["keys"]})
        row.update(aggregate(cells, digital))
        row.update(_mean_cost(cells))
        out.append(row)
    return out


def _mean_cost(cells: list[dict]) -> dict[str, Any]:
    """The cost columns averaged over a configuration's chips (None where a cell has none)."""
    costs = [c.get("cost") for c in cells]
    if any(c is None for c in costs):
        return {k: None for k in COST_RESULTS}
    return {k: sum(c[k] for c in costs) / len(costs) for k in COST_RESULTS}


def rows(store: StudyStore, level: str = "cell") -> list[dict[str, Any]]:
    if level not in LEVELS:
        raise ConfigError(f"level {level!r} is not one of {', '.join(LEVELS)}")
    return cell_rows(store) if level == "cell" else config_rows(store)


def status(store: StudyStore) -> dict[str, Any]:
    """``{"cells": planned, "done": recorded}`` plus the study's name and fingerprint."""
    study = store.get_meta("study") or {}
    return {"cells": store.count_planned(), "done": store.count_done(), "name": study.get("name", ""),
            "fingerprint": store.get_meta("fingerprint")}


def export(store: StudyStore, path: str, fmt: str | None = None, level: str = "cell") -> int:
    """Write the tidy table to ``path`` (csv, parquet or json; from the suffix unless ``fmt``),
    atomically. Returns the number of rows."""
    import pandas as pd

    from batmann.utils.atomic import atomic_path

    fmt = fmt or str(path).rsplit(".", 1)[-1].lower()
    if fmt not in FORMATS:
        raise ConfigError(f"export format {fmt!r} is not one of {', '.join(FORMATS)}")
    data = rows(store, level)
    frame = pd.DataFrame(data)
    with atomic_path(path) as tmp:
        if fmt == "csv":
            frame.to_csv(tmp, index=False)
        elif fmt == "parquet":
            try:
                frame.to_parquet(tmp, index=False)
            except ImportError:
                raise ConfigError("parquet export needs pyarrow: pip install pyarrow") from None
        else:
            tmp.write_text(json.dumps([{k: (None if isinstance(v, float) and math.isnan(v) else v)
                                        for k, v in r.items()} for r in data], indent=2) + "\n")
    return len(data)
