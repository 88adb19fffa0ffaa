"""``batmann data``: fetch (a no-op the second time), info, episode pictures, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from batmann.cli import main
from batmann.data import load_image_cache

REPO = Path(__file__).resolve().parents[1]
COUNTS = {"background": {"alphabets": 30, "characters": 964, "images": 19280},
          "evaluation": {"alphabets": 20, "characters": 659, "images": 13180}}


def test_fetch_again_is_noop_and_info_json(omniglot_home, capsys):
    source = os.environ["BATMANN_OMNIGLOT_SOURCE"]
    assert main(["data", "fetch", "--source", source, "--home", str(omniglot_home)]) == 0
    out = capsys.readouterr().out
    assert out.count("already present") == 2 and "already built" in out
    assert main(["data", "info", "--json", "--home", str(omniglot_home)]) == 0
    assert json.loads(capsys.readouterr().out) == COUNTS
    assert main(["data", "info"]) == 0  # $BATMANN_HOME
    assert "total" in capsys.readouterr().out


def test_cache_loads_fast(omniglot_cache):
    start = time.perf_counter()
    cache = load_image_cache(32)
    assert time.perf_counter() - start < 0.5
    assert cache.images.shape == (32460, 32, 32)
    assert {w: c.as_dict() for w, c in cache.counts().items()} == COUNTS


def test_episode_png_deterministic(omniglot_home, tmp_path, capsys):
    args = ["data", "episode", "--ways", "4", "--shots", "3", "--seed", "5"]
    for name in ("a.png", "b.png"):
        assert main(args + ["--out", str(tmp_path / name)]) == 0
    assert main(args[:-1] + ["6", "--out", str(tmp_path / "c.png")]) == 0
    a, b, c = ((tmp_path / n).read_bytes() for n in ("a.png", "b.png", "c.png"))
    assert a == b and a != c
    with Image.open(tmp_path / "a.png") as im:
        assert im.mode == "L" and im.height > 4 * 32 and im.width > 8 * 32
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["episode", "--ways", "0"], "ways must be >= 1"),
    (["episode", "--ways", "700"], "ways must be <= the number of characters in the split (got 700 > 659)"),
    (["episode", "--shots", "16"], "query_pool must be >= queries (got 4 < 5)"),
    (["episode", "--shots", "5", "--query-pool", "16"], "shots + query_pool + val_pool must be <= 20"),
    (["episode", "--split", "nope"], "invalid choice"),
    (["episode", "--size", "2"], "image size must be between"),
    (["episode", "--ways", "x"], "invalid int value"),
    (["info", "--home", "{tmp}/empty"], "not fetched"),
    (["fetch", "--home", "{tmp}/h", "--source", "{tmp}/missing"], "does not exist"),
    (["fetch", "--home", "{tmp}/h", "--source", "{tmp}"], "has no images_background.zip"),
    (["episode", "--out", "{tmp}/file.txt/x.png"], "cannot write"),
])
def test_bad_input_one_line_exit_2(omniglot_home, tmp_path, capsys, argv, message):
    (tmp_path / "file.txt").write_text("x")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    try:
        code = main(["data", *argv])
    except SystemExit as exc:  # argparse errors
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert message in err[-1] and err[-1].startswith("batmann data")
    assert not any("Traceback" in line for line in err)


def test_subprocess_error_has_no_traceback(tmp_path):
    env = {**os.environ, "BATMANN_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "batmann", "data", "info", "--json"], cwd=REPO, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "not fetched" in proc.stderr and "Traceback" not in proc.stderr
