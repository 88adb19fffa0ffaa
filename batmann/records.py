"""Evaluation records: ``<checkpoint>.eval.json``, one entry per distinct evaluation settings.

A user's own checkpoint keeps its record beside it (``runs/x/best.eval.json``). The records of
the checkpoints shipped inside the package are written only by ``scripts/ship_checkpoint.py``;
a user's evaluations of a shipped checkpoint go to ``$BATMANN_HOME/evaluations/<name>.eval.json``,
so running the documented commands never modifies the installed package.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from batmann.utils.atomic import atomic_write_json
from batmann.utils.paths import batmann_home


def is_shipped(checkpoint_path: str | Path) -> bool:
    """Whether ``checkpoint_path`` is one of the checkpoints shipped inside the package."""
    from batmann.checkpoint import SHIPPED_DIR

    return Path(checkpoint_path).resolve().parent == SHIPPED_DIR


def eval_record_path(checkpoint_path: str | Path) -> Path:
    """Where evaluations of ``checkpoint_path`` are recorded (see the module docstring)."""
    path = Path(checkpoint_path)
    if is_shipped(path):
        return batmann_home() / "evaluations" / f"{path.stem}.eval.json"
    return path.with_suffix(".eval.json")


def eval_settings(opts, keys: str, episodes: int, seed: int, precision: str = "fp32",
                  test_views: int = 0) -> dict[str, Any]:
    """The settings an evaluation record is keyed by (``opts``: the
    :class:`~batmann.config.EpisodeOptions` evaluated; ``precision``: the one it ran in;
    ``test_views``: test-time views per image, named only when on)."""
    out = {"ways": opts.class_num, "shots": opts.num_shot, "queries": opts.batch_size_test,
           "split": opts.split, "keys": keys, "episodes": episodes, "seed": seed, "precision": precision}
    for name in ("within_alphabet", "distinct_drawers"):  # named only when on (older records lack them)
        if getattr(opts, name, False):
            out[name] = True
    if test_views:
        out["test_views"] = test_views
    return out


def save_eval_result(checkpoint_path: str | Path, result, settings: dict[str, Any], command: str,
                     out: str | Path | None = None) -> Path:
    """Record ``result`` (an :class:`~batmann.evaluate.EvalResult`) for ``settings`` in ``out``
    (default :func:`eval_record_path`), replacing an earlier entry with the same settings;
    written atomically. Returns the record's path."""
    out = Path(out) if out is not None else eval_record_path(checkpoint_path)
    entries: list[dict[str, Any]] = []
    if out.exists():
        try:
            entries = json.loads(out.read_text()).get("results", [])
        except (json.JSONDecodeError, AttributeError):
            entries = []
    entries = [e for e in entries if e.get("settings") != settings]
    entries.append({"settings": settings, **result.to_dict(), "command": command,
                    "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, {"results": entries})
    return out
