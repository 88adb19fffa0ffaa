"""The statistics of a study: paired differences per cell, means over chips per configuration.

Per cell (one chip, E episodes), digital and crossbar see the very same episodes, so their
difference is judged on the per-episode differences d_e = a_e - b_e:
mean(d) +- 1.96 sd(d) / sqrt(E). The common episode-to-episode variation cancels, which is why
a paired interval is much narrower than two independent ones.

Per configuration (C chips x the same E episodes), a value x_ce (accuracy, or difference) has
two sources of spread: the episodes and the chips. The configuration's mean is the grand mean,
and its 95 % interval is ``1.96 sqrt(s_chip^2 / C + s_episode^2 / E)``, where s_chip^2 is the
variance of the C chip means and s_episode^2 the variance of the E episode means (each averaged
over the other factor). With one chip the chip term is unknown and left out (the interval then
only covers the episodes).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

Z95 = 1.96


def _ci(values: np.ndarray) -> float:
    if values.size < 2:
        return 0.0
    return float(Z95 * values.std(ddof=1) / math.sqrt(values.size))


def paired(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Per-episode accuracies (fractions) ``a`` and ``b`` of the same episodes -> means and
    CIs in %, and the paired difference a - b in percentage points with its CI."""
    a_ = np.asarray(a, dtype=np.float64) * 100.0
    b_ = np.asarray(b, dtype=np.float64) * 100.0
    if a_.shape != b_.shape or a_.size == 0:
        raise ValueError(f"paired statistics need two equally long, non-empty sequences ({a_.size} and {b_.size})")
    d = a_ - b_
    return {"a_pct": float(a_.mean()), "a_ci95_pct": _ci(a_), "b_pct": float(b_.mean()), "b_ci95_pct": _ci(b_),
            "difference_pp": float(d.mean()), "difference_ci95_pp": _ci(d)}


def two_way(x: np.ndarray) -> tuple[float, float]:
    """Mean and 95 % half-width of ``x`` (chips, episodes), counting both chip and episode spread."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.size == 0:
        raise ValueError(f"expected a (chips, episodes) array, got shape {x.shape}")
    c, e = x.shape
    var = 0.0
    if c > 1:
        var += x.mean(axis=1).var(ddof=1) / c
    if e > 1:
        var += x.mean(axis=0).var(ddof=1) / e
    return float(x.mean()), float(Z95 * math.sqrt(var))


def aggregate(cells: list[dict], digital: dict[str, list[float]]) -> dict[str, float]:
    """One configuration's chips (store rows of the same ``config_id``) -> summary in %:
    crossbar and digital accuracy, the difference, top-1 agreement; each with a 95 % CI over
    chips and episodes (see the module docstring). ``digital`` maps ref_id -> per-episode
    digital accuracies."""
    a = np.array([c["per_episode"]["crossbar"] for c in cells], dtype=np.float64) * 100.0
    b = np.array([digital[c["ref_id"]] for c in cells], dtype=np.float64) * 100.0
    agree = np.array([np.asarray(c["per_episode"]["agree"], dtype=np.float64) / max(1, c["per_episode"]["queries"])
                      for c in cells]) * 100.0
    am, ac = two_way(a)
    dm, dc = two_way(a - b)
    gm, gc = two_way(agree)
    corr = [c["score_correlation"] for c in cells if c["score_correlation"] is not None]
    return {"chips": len(cells), "episodes": int(a.shape[1]),
            "crossbar_accuracy_pct": am, "crossbar_ci95_pct": ac,
            "digital_accuracy_pct": float(b.mean()), "digital_ci95_pct": _ci(b[0]),
            "difference_pp": dm, "difference_ci95_pp": dc,
            "top1_agreement_pct": gm, "top1_agreement_ci95_pct": gc,
            "score_correlation": float(np.mean(corr)) if corr else float("nan")}
