"""Every checkpoint shipped in batmann/checkpoints loads by its short name and classifies well."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from batmann.checkpoint import load_checkpoint, shipped_checkpoints
from batmann.evaluate import DigitalSystem, score_episode
from batmann.tasks import make_sampler

SHIPPED = sorted(shipped_checkpoints())


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_runs_one_episode(name, omniglot_cache):
    ckpt = load_checkpoint(name)
    assert ckpt.path.stat().st_size < 8 * 1024 * 1024
    assert ckpt.path.with_suffix(".json").exists() and ckpt.path.with_suffix(".eval.json").exists()
    opts = ckpt.config.episodes
    ep = make_sampler(omniglot_cache, opts, "test", seed=7).sample(index=0)
    res = score_episode(DigitalSystem(ckpt.model, keys=ckpt.config.keys), ep)
    # one episode (25-500 queries) within 15 pp of the recorded 1000-episode accuracy, and at
    # least 80 % for those above 95 % (Lake's protocol checkpoints record about 81 %)
    import json

    recorded = json.loads(ckpt.path.with_suffix(".eval.json").read_text())["results"][0]["accuracy_pct"] / 100
    assert res.accuracy >= min(0.8, recorded - 0.15), (name, res.accuracy, recorded)


def test_checkpoints_command_lists_what_is_shipped():
    out = subprocess.run([sys.executable, "-m", "batmann", "checkpoints", "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert sorted(r["name"] for r in rows) == SHIPPED
    # a checkpoint trained for Lake's protocol says that its accuracy is the protocol's
    protocols = {r["name"]: r["protocol"] for r in rows}
    assert protocols["20w1s-fp-lake"] == "lake" and protocols["20w5s-fp-lake"] is None


def test_reference_numbers_and_demo_table(omniglot_cache):
    from batmann.cli.demo_cmd import format_digital_table
    from batmann.evaluate import evaluate_system
    from batmann.reference import reference_rows

    assert reference_rows(20, 5, "xnor")[0] == ("seed BATMANN binary (S2)", 95.11)
    assert reference_rows(100, 5, "fp")[0] == ("seed BATMANN full precision (S1)", 95.68)
    assert reference_rows(7, 3, "fp") == []
    ckpt = load_checkpoint("20w5s-binary")
    sampler = make_sampler(omniglot_cache, ckpt.config.episodes, "test", seed=0)
    result = evaluate_system(DigitalSystem(ckpt.model, keys=ckpt.config.keys), sampler, 1)
    table = format_digital_table(ckpt, result).splitlines()
    assert table[0].startswith("digital accuracy, 20-way 5-shot Omniglot, split seed, controller xnor")
    assert table[2].startswith("20w5s-binary (this run, 1 episodes)")
    assert f"{result.accuracy_pct:.2f}" in table[2] and "95.11" in table[3]


def _results_table(*args: str) -> list[str]:
    """The lines ``scripts/results_table.py ARGS`` prints."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "scripts" / "results_table.py"), *args],
                         capture_output=True, text=True, cwd=root)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()


def test_readme_results_table_is_current():
    """The README's checkpoint table is what scripts/results_table.py prints from the shipped
    checkpoints' own records (configuration, provenance and 1000-episode evaluation)."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rows = _results_table()
    assert len(rows) == 2 + len(SHIPPED)
    for line in rows:
        assert line in readme, f"README results table is stale; rerun scripts/results_table.py --write README.md:\n{line}"


def test_training_doc_full_table_is_current():
    """docs/training.md holds the full table (with each checkpoint's training history), current."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    rows = _results_table("--full")
    assert len(rows) == 2 + len(SHIPPED)
    assert all("min" in line for line in rows[2:]) and "training to the shipped weights" in rows[0]
    for line in rows:
        assert line in doc, (f"docs/training.md results table is stale; rerun scripts/results_table.py "
                             f"--full --write docs/training.md:\n{line}")


def test_readme_training_commands_exist():
    """Every ``sh scripts/train_shipped.sh NAME`` that the README or docs/training.md names is a
    recipe of the script, and the script refuses an unknown name without training anything."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    script = (root / "scripts" / "train_shipped.sh").read_text()
    recipes = set(re.findall(r"^  ([\w-]+)\)", script, flags=re.M))
    assert set(SHIPPED) <= recipes
    for doc in ("README.md", "docs/training.md"):
        named = set(re.findall(r"sh scripts/train_shipped\.sh ([\w-]+)", (root / doc).read_text()))
        assert named, f"{doc} names no recipe"
        assert named <= recipes, f"{doc} names recipes that scripts/train_shipped.sh lacks: {sorted(named - recipes)}"
    out = subprocess.run(["sh", str(root / "scripts" / "train_shipped.sh"), "no-such-recipe"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "usage:" in out.stderr


def _script_module(name: str = "results_table"):
    """``scripts/<name>.py`` imported as a module (scripts/ is not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_results_table_write_replaces_only_the_table(tmp_path):
    """``results_table.py --write FILE`` swaps the stale table for the current one and keeps
    the text around it, in either form (``--full`` for the full one); a file without a table is
    refused and left as it was."""
    mod = _script_module()
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nbefore\n\n{mod.HEADER}\n|---|\n| stale row |\n\nafter\n")
    assert mod.main(["--write", str(readme)]) == 0
    text = readme.read_text()
    assert "stale row" not in text
    assert text.startswith("# Title\n\nbefore\n\n") and text.endswith("\n\nafter\n")
    assert all(line in text for line in mod.table())
    assert mod.FULL_HEADER not in text
    # the full form, into a file holding an older form of the table (another header)
    doc = tmp_path / "training.md"
    doc.write_text("# Training\n\n| problem | setting | ours (1000 episodes) | seed | old | columns |\n"
                   "|---|\n| stale row |\n\nafter\n")
    assert mod.main(["--full", "--write", str(doc)]) == 0
    text = doc.read_text()
    assert "stale row" not in text and "old | columns" not in text and text.endswith("\n\nafter\n")
    assert all(line in text for line in mod.table(full=True))
    assert mod.main(["--full", "--write", str(doc)]) == 0 and doc.read_text() == text  # idempotent
    other = tmp_path / "other.md"
    other.write_text("no table here\n")
    with pytest.raises(SystemExit, match="no results table"):
        mod.main(["--write", str(other)])
    assert other.read_text() == "no table here\n"


def test_results_table_short_and_full_forms():
    """The short table (README) names the recipes only; the full one adds each checkpoint's
    training history, its storage and the evaluation command. No column names an aim."""
    mod = _script_module()
    short, full = mod.table(), mod.table(full=True)
    assert len(short) == len(full) == 2 + len(SHIPPED)
    assert short[0].count("|") == short[1].count("|") and full[0].count("|") == full[1].count("|")
    for s_line, f_line in zip(short[2:], full[2:]):
        assert s_line.count("|") == short[0].count("|") and f_line.count("|") == full[0].count("|")
        assert "sh scripts/train_shipped.sh" in s_line and " min" not in s_line and "episodes," not in s_line
        assert "batmann evaluate --checkpoint" in f_line and " min" in f_line
    assert not any("aim" in line or "issue" in line for line in short + full)
    assert mod._reproduce({"episodes_trained": 1}, "a") == "`sh scripts/train_shipped.sh a`"


def test_results_table_renders_a_fine_tuning_chain(tmp_path, monkeypatch):
    """A two-stage checkpoint shows every stage: the first parent by name, then each stage's
    episodes and minutes."""
    mod = _script_module()
    monkeypatch.setattr(mod, "SHIPPED_DIR", tmp_path)  # the made-up parents are not shipped
    root = {"name": "20w5s-fp", "episodes_trained": 4500, "train_seconds": 3300.0}
    stage1 = {"name": "runs/a-stage1", "episodes_trained": 900, "train_seconds": 3060.0, "init_from": root}
    prov = {"episodes_trained": 1200, "train_seconds": 4200.0, "init_from": stage1}
    assert mod._training(prov) == ("fine-tuned from `20w5s-fp` (4,500 episodes, 55 min) + 900 episodes, "
                                   "51 min + 1,200 episodes, 70 min")
    assert mod._training({"episodes_trained": 10, "train_seconds": 60.0}) == "10 episodes, 1 min"
    assert mod._train_commands(prov, "a") == ("`sh scripts/train_shipped.sh a-stage1`, "
                                              "`sh scripts/train_shipped.sh a`")
    assert mod._reproduce(prov, "a") == ("`sh scripts/train_shipped.sh a-stage1`, then "
                                         "`sh scripts/train_shipped.sh a`")
    nll = {**prov, "command": "batmann train --loss nll --ways 100 --run-dir runs/a"}
    assert mod._training(nll).endswith("+ 1,200 episodes with `--loss nll`, 70 min")
    assert "`--loss" not in mod._training({**prov, "command": "batmann train --loss ce"})
    # a shipped parent that is itself two stages: named, its stages in brackets, and its recipe
    # lines left out of the reproduce column (its file is shipped)
    two = {"name": "20w5s-fp", "episodes_trained": 2000, "train_seconds": 1020.0, "command": "--loss nll",
           "init_from": {"name": "runs/20w5s-fp-stage1", "episodes_trained": 4500, "train_seconds": 3300.0}}
    child = {"episodes_trained": 700, "train_seconds": 120.0, "init_from": two}
    assert mod._training(child) == ("fine-tuned from `20w5s-fp` (4,500 episodes, 55 min + 2,000 episodes "
                                    "with `--loss nll`, 17 min) + 700 episodes, 2 min")
    assert mod._train_commands(child, "5w1s-fp") == "`sh scripts/train_shipped.sh 5w1s-fp`"
    assert mod._train_commands({**two, "name": None}, "20w5s-fp") == (
        "`sh scripts/train_shipped.sh 20w5s-fp-stage1`, `sh scripts/train_shipped.sh 20w5s-fp`")


def test_results_table_names_the_gpu_a_stage_trained_on():
    """A stage trained on a CUDA device says so (by the recorded device's name, or from
    ``--device cuda`` in an older record's command); CPU stages stay unmarked."""
    mod = _script_module()
    stage = {"episodes_trained": 3500, "train_seconds": 172.0}
    h100 = {**stage, "device": "cuda: NVIDIA H100 80GB HBM3", "command": "batmann train --device cuda"}
    assert mod._training(h100) == "3,500 episodes, 3 min on NVIDIA H100 80GB HBM3"
    assert mod._training({**stage, "command": "batmann train --loss nll --device cuda:0"}) == (
        "3,500 episodes with `--loss nll`, 3 min on a CUDA GPU")
    assert mod._where({**stage, "command": "batmann train --gpu cuda"}) == " on a CUDA GPU"
    for cpu in ({**stage, "device": "cpu: AMD EPYC, AVX2, 2 threads", "command": "batmann train --device cuda"},
                {**stage, "command": "batmann train --device cpu"}, stage):
        assert mod._where(cpu) == ""


@pytest.mark.parametrize("command,want", [
    ("batmann train --ways 20", ""),
    ("batmann train --loss ce --train-keys real", ""),
    ("batmann train --loss=nll", " with `--loss nll`"),
    ("batmann train --freeze features --loss nll --train-keys bipolar",
     " with `--loss nll --freeze features --train-keys bipolar`"),
])
def test_results_table_names_the_recipe_options_a_stage_changed(command, want):
    assert _script_module()._noted_options({"command": command}) == want


def test_results_table_names_a_parent_that_was_re_shipped_since(tmp_path, monkeypatch):
    """A child fine-tuned from a shipped checkpoint that has been re-trained since must not
    read as if it came from the checkpoint now shipped under that name."""
    mod = _script_module()
    monkeypatch.setattr(mod, "SHIPPED_DIR", tmp_path)
    record = {"episodes_trained": 4500, "train_seconds": 3300.0, "command": "batmann train --ways 20"}
    (tmp_path / "20w5s-fp.json").write_text(json.dumps({"provenance": record}))
    child = {"episodes_trained": 700, "train_seconds": 120.0, "init_from": {"name": "20w5s-fp", **record}}
    assert mod._training(child).startswith("fine-tuned from `20w5s-fp` (4,500 episodes")
    assert mod._train_commands(child, "5w1s-fp") == "`sh scripts/train_shipped.sh 5w1s-fp`"
    retrained = {**record, "episodes_trained": 2000, "init_from": {"name": "runs/20w5s-fp-stage1"}}
    (tmp_path / "20w5s-fp.json").write_text(json.dumps({"provenance": retrained}))
    assert mod._training(child).startswith("fine-tuned from an earlier `20w5s-fp` (4,500 episodes")
    assert mod._train_commands(child, "5w1s-fp") == ("`sh scripts/train_shipped.sh 20w5s-fp-stage1`, "
                                                     "`sh scripts/train_shipped.sh 5w1s-fp`")
    (tmp_path / "20w5s-fp.json").unlink()  # a parent that is not shipped (any more): its name
    assert mod._training(child).startswith("fine-tuned from `20w5s-fp` (4,500 episodes")


def test_ship_checkpoint_fills_in_a_chain_older_runs_did_not_record(tmp_path):
    """A stage-3 run whose stage-2 parent was trained before parents recorded their own chain:
    every missing link is read from the checkpoint each record names, and a record whose
    checkpoint is gone or was retrained (another command) ends the chain there."""
    from batmann.checkpoint import build_model, save_checkpoint
    from batmann.config import ModelConfig, TrainConfig

    mod = _script_module("ship_checkpoint")
    cfg = TrainConfig(model=ModelConfig(feature_dim=16))
    model = build_model(cfg)

    def record(name, command, episodes, **more):
        return {"name": str(name), "command": command, "episodes_trained": episodes, **more}

    root = record("20w5s-fp", "train root", 4500)
    stage1 = tmp_path / "stage1.safetensors"
    save_checkpoint(stage1, model, cfg, {"command": "train s1", "episodes_trained": 900, "init_from": root})
    stage2 = tmp_path / "stage2.safetensors"  # an old run: its parent record stops at stage 1
    save_checkpoint(stage2, model, cfg, {"command": "train s2", "episodes_trained": 1200,
                                         "init_from": record(stage1, "train s1", 900)})
    got = mod.complete_chain(record(stage2, "train s2", 1200))
    assert got["init_from"]["name"] == str(stage1) and got["init_from"]["init_from"] == root
    assert mod.complete_chain(record(stage2, "train s2 again", 1200)) == record(stage2, "train s2 again", 1200)
    gone = record(tmp_path / "gone.safetensors", "x", 1)
    assert mod.complete_chain(gone) == gone
    done = record("a", "b", 1, init_from=None)
    assert mod.complete_chain(done) == done
