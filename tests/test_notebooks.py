"""Every notebook in notebooks/ runs top to bottom (small settings), in a scratch folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch, omniglot_cache):
    monkeypatch.setenv("BATMANN_NOTEBOOK_EPISODES", "3")
    monkeypatch.chdir(tmp_path)  # what a notebook writes lands here, never in the checkout
    namespace: dict = {"__name__": "__main__"}
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    assert cells
    for i, cell in enumerate(cells):
        exec(compile("".join(cell["source"]), f"{path.name}[cell {i}]", "exec"), namespace)
    assert any(tmp_path.iterdir())
