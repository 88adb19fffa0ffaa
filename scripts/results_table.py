"""Print the results table of the shipped checkpoints from their own records.

Every number comes from ``batmann/checkpoints/<name>.json`` (configuration, provenance, training
time) and ``<name>.eval.json`` (the ``batmann evaluate --checkpoint <name> --episodes 1000
--precision fp32`` result, episode seed 0, the checkpoint's own problem and split). A checkpoint without that
evaluation is listed as not evaluated.

Two forms: the default, short one (the README's: accuracy beside the seed's and the published
software number, and the recipes that rebuild the checkpoint) and ``--full`` (docs/training.md:
adds each checkpoint's training history, stage by stage, and its storage precision).

    .venv/bin/python scripts/results_table.py                                  # print the short table
    .venv/bin/python scripts/results_table.py --write README.md                # replace it in the README
    .venv/bin/python scripts/results_table.py --full --write docs/training.md  # the full table
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from batmann.checkpoint import SHIPPED_DIR
from batmann.config import EpisodeOptions, protocol_options, trained_for_protocol
from batmann.records import eval_settings
from batmann.reference import LAKE_PROTOCOL_ERROR, NAT_COMM_SOFTWARE, SEED_BINARY, SEED_FP, is_binary

ORDER = ["5w1s-fp", "5w1s-binary", "20w5s-fp", "20w5s-binary", "20w5s-binary-hwa", "100w5s-fp", "100w5s-binary",
         "20w5s-fp-lake", "20w5s-binary-lake", "20w1s-fp-lake", "20w1s-binary-lake"]


def _minutes(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds / 60:.0f} min"


#: recipe options a row names when a stage used them (the seed's defaults are not named)
NOTED_OPTIONS = {"--loss": "ce", "--freeze": "", "--train-keys": "real"}


def _option(words: list[str], flag: str) -> str | None:
    """The value of ``flag`` in a command's words (``--flag V`` or ``--flag=V``; the last wins)."""
    value = None
    for i, w in enumerate(words):
        if w == flag and i + 1 < len(words):
            value = words[i + 1]
        elif w.startswith(flag + "="):
            value = w.split("=", 1)[1]
    return value


def _noted_options(prov: dict) -> str:
    """`` with --loss X --freeze Y ...`` for the options of :data:`NOTED_OPTIONS` that a stage's
    recorded command set to other than the seed's default."""
    words = str(prov.get("command") or "").split()
    noted = [f"{flag} {v}" for flag, default in NOTED_OPTIONS.items()
             if (v := _option(words, flag)) is not None and v != default]
    return f" with `{' '.join(noted)}`" if noted else ""


def _where(prov: dict) -> str:
    """`` on GPU NAME`` for a stage trained on a CUDA device (the record's ``device``, or
    ``--device cuda`` in a command recorded before records named the device); else nothing
    (this project's 2-core CPU)."""
    device = str(prov.get("device") or "")
    if device.startswith("cuda"):
        return f" on {device.split(':', 1)[1].strip() or 'a CUDA GPU'}"
    words = str(prov.get("command") or "").split()
    flag = _option(words, "--device") or _option(words, "--gpu") or ""
    return " on a CUDA GPU" if not device and flag.startswith("cuda") else ""


def _training(prov: dict) -> str:
    """``N episodes, M min``, preceded by the stages it was fine-tuned from: an earlier stage of
    the same recipe (a run folder, ``runs/<stage>``) as its own ``+`` term, a shipped checkpoint
    by name with its whole training in brackets."""
    own = f"{prov['episodes_trained']:,} episodes{_noted_options(prov)}, {_minutes(prov.get('train_seconds'))}{_where(prov)}"
    parent = prov.get("init_from")
    if not parent:
        return own
    if _is_stage(parent):
        return f"{_training(parent)} + {own}"
    return f"fine-tuned from {_shipped_parent(parent)} ({_training(parent)}) + {own}"


def _shipped_parent(parent: dict) -> str:
    """A shipped parent's name, as ``an earlier `NAME` `` when it was re-trained since."""
    return f"an earlier `{parent['name']}`" if _is_earlier(parent) else f"`{parent['name']}`"


def _is_earlier(parent: dict) -> bool:
    """Whether the checkpoint shipped now under a parent's (shipped) name is another one than the
    parent: its record's episodes, training time or command differ. Its recipe is then
    ``NAME-stage1`` in ``train_shipped.sh`` (the re-trained checkpoint continues from it)."""
    path = SHIPPED_DIR / f"{parent['name']}.json"
    if _is_stage(parent) or not path.is_file():
        return False
    now = json.loads(path.read_text())["provenance"]
    return any(now.get(k) != parent.get(k) for k in ("episodes_trained", "train_seconds", "command"))


def _is_stage(parent: dict) -> bool:
    """Whether a parent record names a run folder (an earlier stage) rather than a shipped name."""
    return str(parent.get("name", "")).startswith("runs/")


def _train_commands(prov: dict, name: str) -> str:
    """The ``train_shipped.sh`` lines that rebuild ``name``: one per earlier stage trained in a
    run folder (``runs/<stage>``), first stage first, then ``name`` itself. A shipped parent
    ends the list: its file is in the repository (and its own row rebuilds it), unless it has
    been re-trained since: then its first stage's recipe, ``NAME-stage1``, starts the list."""
    stages, parent = [name], prov.get("init_from")
    while parent and _is_stage(parent):
        stages.append(parent["name"].removeprefix("runs/").rstrip("/"))
        parent = parent.get("init_from")
    if parent and _is_earlier(parent):
        stages.append(f"{parent['name']}-stage1")
    return ", ".join(f"`sh scripts/train_shipped.sh {s}`" for s in reversed(stages))


def _protocol(cfg: dict) -> str | None:
    """The fixed protocol a checkpoint was trained for (its record is that protocol's), or None."""
    return trained_for_protocol(EpisodeOptions(**cfg["episodes"]))


def _evaluation(name: str, cfg: dict) -> dict | None:
    path = SHIPPED_DIR / f"{name}.eval.json"
    if not path.exists():
        return None
    opts = EpisodeOptions(**cfg["episodes"])
    if _protocol(cfg) is not None:
        opts = protocol_options(_protocol(cfg), opts)
    want = eval_settings(opts, cfg["keys"], 1000, 0)
    want.pop("precision")
    for entry in json.loads(path.read_text())["results"]:
        settings = dict(entry["settings"])
        if settings.pop("precision", "fp32") == "fp32" and settings == want:  # fp32 and the seed's episodes
            return entry
    return None


def _reproduce(prov: dict, name: str) -> str:
    """The short reproduce column: the recipes in order, ``A, B, then C``."""
    commands = _train_commands(prov, name).split(", ")
    return commands[0] if len(commands) == 1 else f"{', '.join(commands[:-1])}, then {commands[-1]}"


def row(name: str, full: bool = False) -> str | None:
    """One checkpoint's line of the table (``full``: with its training history and storage)."""
    path = SHIPPED_DIR / f"{name}.json"
    if not path.exists():
        return None
    meta = json.loads(path.read_text())
    cfg, prov = meta["config"], meta["provenance"]
    ep, controller = cfg["episodes"], cfg["model"]["controller"]
    key = (ep["class_num"], ep["num_shot"])
    binary = is_binary(controller)
    protocol = _protocol(cfg)
    problem = f"{key[0]}-way {key[1]}-shot" + (" (lake split)" if ep["split"] == "lake" else "")
    if protocol == "lake":
        problem = "Lake's one-shot protocol (20-way 1-shot, one alphabet, distinct drawers)"
    setting = (f"binary ({controller}, 8-bit first/last, +-1 keys)" if binary
               else "full precision (bipolar keys)")
    hardware_aware = bool((cfg.get("hardware_aware") or {}).get("spec"))
    if hardware_aware:  # not a setting of the seed's or the literature's tables
        setting += ", hardware-aware (docs/hardware-aware.md)"
    ev = _evaluation(name, cfg)
    ours = "not evaluated" if ev is None else f"**{ev['accuracy_pct']:.2f} +- {ev['ci95_pct']:.2f} %**"
    if ev is not None and protocol is not None:
        ours += f" (error {100.0 - ev['accuracy_pct']:.2f} %)"
    theirs = ep["split"] == "seed" and not hardware_aware
    seed_ref = (SEED_BINARY if binary else SEED_FP).get(key) if theirs else None
    nat = NAT_COMM_SOFTWARE.get(key) if theirs else None
    fmt = lambda v: "-" if v is None else f"{v:.2f} %"  # noqa: E731
    literature = fmt(nat)
    if protocol == "lake":  # the protocol's published error rates, as accuracies
        literature = ", ".join(f"{100 - e:.1f} % {who}" for who, e in LAKE_PROTOCOL_ERROR.items())
    head = f"| {problem} | {setting} | {ours} | {fmt(seed_ref)} | {literature} | "
    if not full:
        return head + f"{_reproduce(prov, name)} |"
    storage = prov.get("stored_as", "?").split(" ")[0]
    return (head + f"{_training(prov)} | {storage} | {_train_commands(prov, name)}, then "
            f"`batmann evaluate --checkpoint {name} --episodes 1000 --precision fp32"
            f"{f' --protocol {protocol}' if protocol else ''}` |")


#: the short table's header (the README's)
HEADER = "| problem | setting | ours (1000 episodes) | seed | literature (Nat Comm software) | reproduce |"
#: the full table's header (docs/training.md)
FULL_HEADER = ("| problem | setting | ours (1000 episodes) | seed | literature (Nat Comm software) "
               "| training to the shipped weights (2-core CPU unless a GPU is named) | stored | reproduce |")
#: how every form of the table starts (``--write`` finds a table by it)
TABLE_START = "| problem | setting | ours (1000 episodes) | seed |"


def table(full: bool = False) -> list[str]:
    """The table's lines: header, separator and one row per shipped checkpoint."""
    header = FULL_HEADER if full else HEADER
    rows = [row(name, full) for name in ORDER]
    return [header, "|" + "---|" * header.count(" | ") + "---|"] + [r for r in rows if r]


def write_into(path: Path, lines: list[str]) -> None:
    """Replace the table in ``path`` (from its header line to the next blank line), atomically.

    The table replaced is the one whose header is ``lines[0]``, else the first one of any form
    (a line starting with :data:`TABLE_START`: a table written by an earlier version)."""
    if not path.is_file():
        raise SystemExit(f"error: --write {path}: no such file (expected a Markdown file holding the table)")
    text = path.read_text()
    old = text.split("\n")
    start = next((i for i, line in enumerate(old) if line == lines[0]), None)
    if start is None:
        start = next((i for i, line in enumerate(old) if line.startswith(TABLE_START)), None)
    if start is None:
        raise SystemExit(f"error: {path} has no results table (a line starting with {TABLE_START!r})")
    end = next((i for i in range(start, len(old)) if not old[i].strip()), len(old))
    new = "\n".join(old[:start] + lines + old[end:])
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(new)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true",
                    help="the full table: with each checkpoint's training history and storage (docs/training.md)")
    ap.add_argument("--write", type=Path, metavar="FILE",
                    help="replace the table in FILE (README.md; with --full, docs/training.md) instead of printing it")
    args = ap.parse_args(argv)
    lines = table(args.full)
    if args.write is None:
        print("\n".join(lines))
    else:
        write_into(args.write, lines)
        print(f"wrote {len(lines) - 2} rows into {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
