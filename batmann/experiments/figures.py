"""Figures of the seed's experiments: ours (95 % CI) beside the seed's number, per setting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from batmann.experiments.catalog import Experiment


def plot_table(exp: Experiment, rows: list[dict[str, Any]], out: Path, scale: str) -> Path:
    """A horizontal bar chart of ``rows`` (the experiment table) written to ``out`` (.png/.svg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['setting']}: {r['description']}" for r in rows]
    ours = [float(r["accuracy_pct"]) for r in rows]
    ci = [float(r["ci95_pct"]) for r in rows]
    seed = [float(r["seed_accuracy_pct"]) for r in rows]
    y = list(range(len(rows)))
    fig, ax = plt.subplots(figsize=(8.5, 0.45 * len(rows) + 1.8))
    h = 0.38
    ax.barh([v - h / 2 for v in y], ours, height=h, xerr=ci, capsize=2, color="tab:blue",
            label=f"ours ({scale} settings, 95 % CI)")
    ax.barh([v + h / 2 for v in y], seed, height=h, color="tab:gray", alpha=0.6, label="seed (paper)")
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("test accuracy (%)")
    ax.set_title(exp.title, fontsize=9)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.09 - 0.6 / len(rows)), ncol=2, fontsize=8,
              frameon=False)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{out.suffix}")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(out)
    return out
