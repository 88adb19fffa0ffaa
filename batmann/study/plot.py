"""Figures of a study: a metric against one parameter (lines with 95 % CI bands, one per ``hue``
value, one panel per ``col`` value), a heat map over two parameters (``y``), or a trade-off: the
metric against a cost column (``x`` = ``energy_pj_per_query`` or ``latency_ns_per_query``, log
scale), one point per configuration labelled by the parameters that vary along a ``hue`` line,
with the digital baseline as a reference point.

Each point is a configuration, pooled over its chips (:func:`batmann.study.tables.config_rows`):
the band is the 95 % interval over chips and episodes. Every other parameter must take a single
value in the plotted rows, else the figure would average over it silently; the error says which.
"""

from __future__ import annotations

import math
from typing import Any

from batmann.errors import ConfigError

METRICS = ("accuracy", "difference", "agreement")
_METRIC = {  # metric -> (value column, CI column, axis label)
    "accuracy": ("crossbar_accuracy_pct", "crossbar_ci95_pct", "crossbar accuracy (%)"),
    "difference": ("difference_pp", "difference_ci95_pp", "crossbar - digital (pp)"),
    "agreement": ("top1_agreement_pct", "top1_agreement_ci95_pct", "top-1 agreement with digital (%)"),
}
LABELS = {
    "variability": "device-to-device variability sigma (relative)",
    "states": "conductance states per device",
    "stuck_lrs": "devices stuck at LRS (fraction)",
    "stuck_hrs": "devices stuck at HRS (fraction)",
    "adc_bits": "ADC resolution (bits)",
    "dac_bits": "DAC resolution (bits)",
    "tile_shape": "tile size (rows x cols)",
    "read_voltage": "read voltage (V)",
    "preset": "device preset",
    "analog": "analog part",
    "keys": "key format",
    "keys_used": "key format",
    "checkpoint": "checkpoint",
    "weight_mapping": "weight mapping",
    "conv_rows": "conv row order",
    "energy_pj_per_query": "energy per query (pJ)",
    "latency_ns_per_query": "latency per query (ns)",
}

#: cost columns a trade-off figure can put on its x axis (results, not parameters)
TRADEOFF_X = ("energy_pj_per_query", "latency_ns_per_query")


def _is_param(k: str) -> bool:
    from batmann.study.tables import COST_RESULTS

    return (k not in ("chips", "episodes", "keys_used", "score_correlation") and not k.endswith(("_pct", "_pp"))
            and k not in COST_RESULTS)


def label(param: str) -> str:
    return LABELS.get(param, param.replace("_", " "))


def _sort_key(v: Any):
    if v is None:
        return (0, 0.0, "")
    if isinstance(v, (int, float)):
        return (1, float(v), "")
    s = str(v)
    head = s.split("x")[0]
    return (2, float(head), s) if head.isdigit() else (3, 0.0, s)


def _numeric(values: list) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _partners(rows: list[dict], names: list[str]) -> list[str]:
    """Parameters that vary but move with the plotted ones (zip partners)."""
    return [k for k in rows[0] if _is_param(k) and k not in names and len({repr(r[k]) for r in rows}) > 1]


def _check(rows: list[dict], names: list[str]) -> None:
    if not rows:
        raise ConfigError("the study store holds no recorded cells yet")
    known = [k for k in rows[0] if _is_param(k) or k == "keys_used"]
    for n in names:
        if n not in rows[0]:
            raise ConfigError(f"parameter {n!r} is not in this study (expected one of {', '.join(known)})")
    for k in known:
        if k in names or k == "keys" and "keys_used" in names or k == "keys_used" and "keys" in names:
            continue
        groups: dict[tuple, set] = {}  # a parameter that moves with the plotted ones (a zip partner) is fine
        for r in rows:
            groups.setdefault(tuple(repr(r[n]) for n in names), set()).add(repr(r[k]))
        if any(len(v) > 1 for v in groups.values()):
            n = len({repr(r[k]) for r in rows})
            raise ConfigError(f"parameter {k!r} takes {n} values in this study; plot it as --hue, --col, "
                              f"--x or --y")


def plot_study(store, out: str, x: str, hue: str | None = None, col: str | None = None, y: str | None = None,
               metric: str = "accuracy") -> None:
    """Write the figure of ``store`` to ``out`` (.png or .svg); see the module docstring."""
    from batmann.study.tables import config_rows

    if metric not in METRICS:
        raise ConfigError(f"metric {metric!r} is not one of {', '.join(METRICS)}")
    fmt = str(out).rsplit(".", 1)[-1].lower()
    if fmt not in ("png", "svg"):
        raise ConfigError(f"figure {out!r} must end in .png or .svg")
    names = [n for n in (x, hue, col, y) if n]
    if len(set(names)) != len(names):
        raise ConfigError(f"--x, --hue, --col and --y must name different parameters, got {', '.join(names)}")
    rows = config_rows(store)
    if x in TRADEOFF_X:
        if y:
            raise ConfigError(f"--y makes a heat map of parameters; --x {x} is a cost column")
        if not rows:
            raise ConfigError("the study store holds no recorded cells yet")
        if any(r[x] is None for r in rows):
            raise ConfigError(f"some cells of this study have no {x} (recorded before costs were); run it again "
                              "into a new folder")
        _check(rows, names[1:] + _partners(rows, names[1:]))  # every configuration is its own point
    else:
        _check(rows, names)
    study = store.get_meta("study") or {}
    episodes = rows[0]["episodes"]
    chips = max(r["chips"] for r in rows)
    ckpts = sorted({r["checkpoint"] for r in rows})
    title = f"{', '.join(ckpts)}: {episodes} episodes x {chips} chip{'s' if chips > 1 else ''}"
    if study.get("name"):
        title = f"{study['name']} - {title}"
    moving = _partners(rows, names) if x not in TRADEOFF_X else []  # a trade-off labels them on its points
    if moving:
        title += f" ({', '.join(moving)} moving with the plotted parameters)"
    if x in TRADEOFF_X:
        _tradeoff(rows, out, fmt, x, hue, col, metric, title)
    elif y:
        _heatmap(rows, out, fmt, x, y, col, metric, title)
    else:
        _lines(rows, out, fmt, x, hue, col, metric, title)


def _panels(rows, col):
    if not col:
        return [(None, rows)]
    vals = sorted({repr(r[col]): r[col] for r in rows}.values(), key=_sort_key)
    return [(v, [r for r in rows if r[col] == v]) for v in vals]


def _save(fig, out: str, fmt: str) -> None:
    import matplotlib.pyplot as plt

    from batmann.utils.atomic import atomic_path

    with atomic_path(out) as tmp:
        fig.savefig(tmp, format=fmt, dpi=130)
    plt.close(fig)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _lines(rows, out, fmt, x, hue, col, metric, title) -> None:
    from batmann.study.spec import format_value

    plt = _pyplot()
    value, ci, ylabel = _METRIC[metric]
    panels = _panels(rows, col)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels) + 0.6, 3.8), sharey=True, squeeze=False)
    xs_all = sorted({repr(r[x]): r[x] for r in rows}.values(), key=_sort_key)
    numeric = _numeric(xs_all)
    pos = {repr(v): (float(v) if numeric else i) for i, v in enumerate(xs_all)}
    for ax, (cval, prows) in zip(axes[0], panels):
        hues = sorted({repr(r[hue]): r[hue] for r in prows}.values(), key=_sort_key) if hue else [None]
        for h in hues:
            hr = sorted([r for r in prows if not hue or r[hue] == h], key=lambda r: _sort_key(r[x]))
            px = [pos[repr(r[x])] for r in hr]
            py = [r[value] for r in hr]
            pc = [r[ci] if r[ci] is not None and not math.isnan(r[ci]) else 0.0 for r in hr]
            name = f"{label(hue)} = {format_value(hue, h)}" if hue else "crossbar"
            line, = ax.plot(px, py, marker="o", label=name)
            ax.fill_between(px, [a - b for a, b in zip(py, pc)], [a + b for a, b in zip(py, pc)],
                            color=line.get_color(), alpha=0.2, linewidth=0)
            if metric == "accuracy":
                ax.plot(px, [r["digital_accuracy_pct"] for r in hr], linestyle="--", color=line.get_color(),
                        alpha=0.7, linewidth=1)
        if metric == "difference":
            ax.axhline(0.0, color="grey", linewidth=0.8)
        if not numeric:
            ax.set_xticks(range(len(xs_all)), [format_value(x, v) for v in xs_all])
        ax.set_xlabel(label(x))
        if cval is not None:
            ax.set_title(f"{label(col)} = {format_value(col, cval)}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if metric == "accuracy":
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], color="grey", linestyle="--", linewidth=1))
        labels.append("digital (same episodes)")
    axes[0][-1].legend(handles, labels, fontsize=8, loc="best")
    fig.suptitle(title + "\nbands: 95 % CI over chips and episodes", fontsize=9)
    fig.tight_layout()
    _save(fig, out, fmt)


def _tradeoff(rows, out, fmt, x, hue, col, metric, title) -> None:
    from batmann.study.spec import format_value

    plt = _pyplot()
    value, ci, ylabel = _METRIC[metric]
    panels = _panels(rows, col)
    along = [k for k in _partners(rows, [n for n in (hue, col) if n])]  # what varies along a line
    fig, axes = plt.subplots(1, len(panels), figsize=(5.4 * len(panels) + 0.6, 4.2), sharey=True, squeeze=False)
    for ax, (cval, prows) in zip(axes[0], panels):
        hues = sorted({repr(r[hue]): r[hue] for r in prows}.values(), key=_sort_key) if hue else [None]
        for h in hues:
            hr = sorted([r for r in prows if not hue or r[hue] == h], key=lambda r: r[x])
            px, py = [r[x] for r in hr], [r[value] for r in hr]
            pc = [r[ci] if r[ci] is not None and not math.isnan(r[ci]) else 0.0 for r in hr]
            name = f"{label(hue)} = {format_value(hue, h)}" if hue else "crossbar"
            bars = ax.errorbar(px, py, yerr=pc, marker="o", capsize=2, label=name)
            for r, a, b in zip(hr, px, py):
                ax.annotate(", ".join(format_value(k, r[k]) for k in along), (a, b), textcoords="offset points",
                            xytext=(3, 3), fontsize=6, color=bars[0].get_color())
        if metric == "accuracy" and x == "energy_pj_per_query":
            dx = sum(r["energy_pj_per_query_digital"] for r in prows) / len(prows)
            dy = sum(r["digital_accuracy_pct"] for r in prows) / len(prows)
            ax.plot([dx], [dy], marker="*", markersize=12, color="black", linestyle="none",
                    label="digital (int8 MACs; same episodes)")
        ax.set_xscale("log")
        ax.set_xlabel(label(x) + (f"; points: {', '.join(label(k) for k in along)}" if along else ""))
        if cval is not None:
            ax.set_title(f"{label(col)} = {format_value(col, cval)}", fontsize=10)
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel(ylabel)
    axes[0][-1].legend(fontsize=8, loc="best")
    fig.suptitle(title + "\nerror bars: 95 % CI over chips and episodes", fontsize=9)
    fig.tight_layout()
    _save(fig, out, fmt)


def _heatmap(rows, out, fmt, x, y, col, metric, title) -> None:
    import numpy as np

    from batmann.study.spec import format_value

    plt = _pyplot()
    value, _, zlabel = _METRIC[metric]
    panels = _panels(rows, col)
    xs = sorted({repr(r[x]): r[x] for r in rows}.values(), key=_sort_key)
    ys = sorted({repr(r[y]): r[y] for r in rows}.values(), key=_sort_key)
    vals = [r[value] for r in rows]
    lo, hi = min(vals), max(vals)
    digits = 2 if hi - lo < 1 else 1
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels) + 1.4, 3.9), squeeze=False)
    im = None
    for ax, (cval, prows) in zip(axes[0], panels):
        z = np.full((len(ys), len(xs)), np.nan)
        for r in prows:
            z[ys.index(r[y]) if r[y] in ys else [repr(v) for v in ys].index(repr(r[y])),
              xs.index(r[x]) if r[x] in xs else [repr(v) for v in xs].index(repr(r[x]))] = r[value]
        im = ax.imshow(z, origin="lower", aspect="auto", cmap="viridis", vmin=lo, vmax=hi)
        for i in range(len(ys)):
            for j in range(len(xs)):
                if not np.isnan(z[i, j]):
                    ax.text(j, i, f"{z[i, j]:.{digits}f}", ha="center", va="center", fontsize=7,
                            color="white" if z[i, j] < (lo + hi) / 2 else "black")
        ax.set_xticks(range(len(xs)), [format_value(x, v) for v in xs])
        ax.set_yticks(range(len(ys)), [format_value(y, v) for v in ys])
        ax.set_xlabel(label(x))
        ax.set_ylabel(label(y))
        if cval is not None:
            ax.set_title(f"{label(col)} = {format_value(col, cval)}", fontsize=10)
    fig.colorbar(im, ax=axes[0].tolist(), label=zlabel)
    fig.suptitle(title, fontsize=9)
    _save(fig, out, fmt)
