"""The command line builds every parser and prints every help without importing the heavy
libraries (torch, MemTorch, matplotlib, pandas, NumPy): they load when a command runs."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "memtorch", "matplotlib", "pandas", "numpy")

_CODE = f"""
import argparse, json, sys
from batmann.cli import build_parser

def walk(parser, path):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, path + [name])

helps = {{" ".join(path): len(p.format_help()) for path, p in walk(build_parser(), [])}}
print(json.dumps({{"helps": helps, "loaded": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""


def test_every_help_without_the_heavy_libraries():
    proc = subprocess.run([sys.executable, "-c", _CODE], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["loaded"] == []
    assert {"", "train", "evaluate", "crossbar evaluate", "study"} <= set(out["helps"])
    assert all(n > 100 for n in out["helps"].values())


def test_hardware_flags_are_the_spec_shortcuts():
    from batmann.cli.crossbar_cmd import add_hardware_options, hardware_flags
    from crossbar.spec import SHORTCUT_KINDS

    parser = argparse.ArgumentParser()
    add_hardware_options(parser)
    dests = {a.dest for a in parser._actions}
    assert set(hardware_flags()) == {"preset", "analog", "conv_rows", *SHORTCUT_KINDS}
    assert set(hardware_flags()) <= dests  # every flag that sets a spec field has its option
