"""Figures of the seed's experiments: ours (95 % CI) beside the seed's number, per setting."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from batmann.experiments.catalog import Experiment


def plot_experiment(exp: Experiment, rows: list[dict[str, Any]], out: Path, scale: str) -> Path:
    """The experiment's figure: t-SNE panels, accuracy against epsilon for attacked rows, else bars."""
    if exp.kind == "tsne":
        return plot_tsne(exp, rows, out.parent, scale)
    if any(r.get("epsilon") not in ("", None) for r in rows):
        return plot_attack(exp, rows, out, scale)
    return plot_table(exp, rows, out, scale)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path) -> Path:
    import matplotlib.pyplot as plt

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{out.suffix}")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(out)
    return out


def plot_attack(exp: Experiment, rows: list[dict[str, Any]], out: Path, scale: str) -> Path:
    """Accuracy (95 % CI bars) against FGSM epsilon, one line per setting; crossbar rows dashed."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    for i, setting in enumerate(settings):
        pts = sorted((float(r["epsilon"]), r) for r in rows if r["setting"] == setting)
        eps = [e for e, _ in pts]
        color = f"C{i % 10}"
        ax.errorbar(eps, [float(r["accuracy_pct"]) for _, r in pts], yerr=[float(r["ci95_pct"]) for _, r in pts],
                    marker="o", ms=3, capsize=2, color=color, label=setting)
        chip = [(e, r) for e, r in pts if r.get("crossbar_accuracy_pct")]
        if chip:
            ax.errorbar([e for e, _ in chip], [float(r["crossbar_accuracy_pct"]) for _, r in chip],
                        yerr=[float(r["crossbar_ci95_pct"]) for _, r in chip], marker="s", ms=3, capsize=2,
                        color=color, ls="--", label=f"{setting}, crossbar chip")
    ax.set_xlabel("FGSM epsilon (pixel units)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{exp.title} ({scale} settings)", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return _save(fig, out)


def plot_table(exp: Experiment, rows: list[dict[str, Any]], out: Path, scale: str) -> Path:
    """Horizontal bars per setting: ours digitally (95 % CI), on each chip of the table's chip
    rows (crossbar accuracy, 95 % CI) and the seed's number; written to ``out`` (.png/.svg)."""
    plt = _pyplot()
    digital = [r for r in rows if not r.get("chip")]
    chips = list(dict.fromkeys(r["chip"] for r in rows if r.get("chip")))
    on_chip = {(r["setting"], r["chip"]): r for r in rows if r.get("chip")}
    series = [("ours, digital", "tab:blue", [float(r["accuracy_pct"]) for r in digital],
               [float(r["ci95_pct"]) for r in digital])]
    for i, chip in enumerate(chips):
        got = [on_chip.get((r["setting"], chip)) for r in digital]
        series.append((f"ours, {chip} chip", ("tab:green", "tab:orange", "tab:red")[i % 3],
                       [float(g["crossbar_accuracy_pct"]) if g else float("nan") for g in got],
                       [float(g["crossbar_ci95_pct"]) if g else 0.0 for g in got]))
    series.append(("seed (paper)", "tab:gray", [float(r["seed_accuracy_pct"] or "nan") for r in digital], None))
    labels = [f"{r['setting']}: {r['description']}" for r in digital]
    n = len(series)
    h = 0.8 / n
    fig, ax = plt.subplots(figsize=(8.5, (0.22 + 0.16 * n) * len(digital) + 1.8))
    for j, (name, color, values, err) in enumerate(series):
        ys = [i - 0.4 + h * (j + 0.5) for i in range(len(digital))]
        ax.barh(ys, values, height=h, xerr=err, capsize=2 if err else 0, color=color,
                alpha=0.6 if err is None else 1.0, label=name + (f" ({scale} settings, 95 % CI)" if j == 0 else ""))
    ax.set_yticks(range(len(digital)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("test accuracy (%)")
    ax.set_title(exp.title, fontsize=9)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.09 - 0.6 / len(digital)), ncol=2, fontsize=8,
              frameon=False)
    fig.tight_layout()
    return _save(fig, out)


def plot_tsne(exp: Experiment, rows: list[dict[str, Any]], folder: Path, scale: str) -> Path:
    """``tsne_clean.png`` and ``tsne_fgsm.png`` in ``folder``: one panel per setting (the saved
    embeddings of ``folder/tsne``), points coloured by class, the same characters in every panel.
    Returns the clean figure's path."""
    import numpy as np

    plt = _pyplot()
    first = None
    for attacked, name in ((False, "tsne_clean.png"), (True, "tsne_fgsm.png")):
        sel = [r for r in rows if bool(r.get("epsilon")) == attacked]
        if not sel:
            continue
        cols = 5
        nrows = math.ceil(len(sel) / cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(2.6 * cols, 2.6 * nrows + 0.6), squeeze=False)
        for ax in axes.flat:
            ax.set_axis_off()
        for ax, r in zip(axes.flat, sel):
            key = r["setting"] if not attacked else f"{r['setting']}@{float(r['epsilon']):g}"
            data = np.load(folder / "tsne" / f"{key}.npz")
            emb, labels = data["embedding"], data["labels"]
            ax.scatter(emb[:, 0], emb[:, 1], c=labels, cmap="tab10", s=7, vmin=0, vmax=9)
            ax.set_title(f"{r['setting']} ({r['keys']} keys): {float(r['accuracy_pct']):.0f} %", fontsize=8)
            ax.set_axis_on()
            ax.set_xticks([])
            ax.set_yticks([])
        what = f"FGSM epsilon {sel[0]['epsilon']}" if attacked else "clean"
        fig.suptitle(f"{exp.title}: {what} ({scale} settings; colour = character, the same in every panel; "
                     "title: the episode's accuracy)", fontsize=9)
        fig.tight_layout()
        path = _save(fig, folder / name)
        first = first or path
    return first
