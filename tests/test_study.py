"""Studies: study files, the SQLite store, resuming, executors (in-process, processes, Dask on
loopback), statistics, export and plots."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from batmann.errors import ConfigError
from batmann.study import Study, StudyStore, load_study
from batmann.study.stats import paired, two_way

BATMANN = [sys.executable, "-m", "batmann"]


def _study(ckpt, grid=None, hardware=None, chips=2, count=3, **extra) -> dict:
    return {"checkpoint": [str(ckpt)], "chips": chips, "episodes": {"count": count, "seed": 1},
            "hardware": hardware or {"analog": "keys"}, "grid": grid or {"variability": [0.0, 0.3]}, **extra}


def _toml(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture(scope="module")
def ckpt(trained_run):
    return trained_run[0].run_dir / "best.safetensors"


def _strip(rows):
    return sorted(({k: v for k, v in r.items() if k != "seconds"} for r in rows), key=lambda r: json.dumps(r, sort_keys=True, default=str))


# -- the study file ---------------------------------------------------------------------------------
def test_the_issue_form_loads_and_expands(tmp_path):
    s = load_study(_toml(tmp_path / "s.toml", """
        checkpoint = ["20w5s-binary"]   # one or more
        chips = 5                       # chip seeds per configuration
        [episodes]
        count = 200
        seed = 0
        [hardware]
        analog = "all"
        adc_bits = 8
        [grid]
        preset = ["vteam", "ideal"]
        variability = [0.0, 0.1, 0.2, 0.4]
        """))
    assert len(s.configurations()) == 8 and len(s.cells()) == 40
    assert s.varying == ("preset", "variability")
    assert {c.chip_seed for c in s.cells()} == set(range(5))
    assert s.cells()[0].configuration.params == {"analog": "all", "adc_bits": 8, "preset": "vteam", "variability": 0.0}
    assert len({c.cell_id for c in s.cells()}) == 40
    assert load_study(tmp_path / "s.toml").fingerprint() == s.fingerprint()


def test_zip_moves_parameters_together_and_tiles_are_normalised():
    s = Study.from_dict({"checkpoint": "x", "grid": {"states": [2, 16], "tile_shape": [64, "128x64"]},
                         "zip": [{"stuck_lrs": [0.0, 0.01, 0.05], "stuck_hrs": [0.0, 0.02, 0.05]}]})
    steps = s.steps()
    assert len(steps) == 2 * 2 * 3
    assert {(p["stuck_lrs"], p["stuck_hrs"]) for p in steps} == {(0.0, 0.0), (0.01, 0.02), (0.05, 0.05)}
    assert {tuple(p["tile_shape"]) for p in steps} == {(64, 64), (128, 64)}


@pytest.mark.parametrize("data, needle", [
    ({"grid": {"nope": [1]}}, "unknown parameter 'nope'"),
    ({"grid": {"seed": [1, 2]}}, "chip seed"),
    ({"grid": {"variability": []}}, "grid.variability: the list of values is empty"),
    ({"grid": {"variability": 0.1}}, "must be a list"),
    ({"grid": {"variability": [0.1, 1.5]}}, "variability = 1.5"),
    ({"grid": {"states": [1]}}, "states = 1"),
    ({"grid": {"preset": ["nope"]}}, "nope"),
    ({"grid": {"keys": ["ternary"]}}, "keys 'ternary'"),
    ({"grid": {"tile_shape": ["12by4"]}}, "tile_shape"),
    ({"zip": [{"stuck_lrs": [0.0, 0.1], "stuck_hrs": [0.0]}]}, "equally long"),
    ({"zip": [{"stuck_lrs": [0.6], "stuck_hrs": [0.6]}]}, "stuck"),
    ({"hardware": {"analog": "all"}, "grid": {"analog": ["keys"]}}, "'analog' is given in both"),
    ({"chips": 0}, "chips"),
    ({"episodes": {"count": 0}}, "episodes.count"),
    ({"episodes": {"ways": 5, "sots": 1}}, "unknown key 'sots'"),
    ({"typo": 1}, "unknown key 'typo'"),
    ({"checkpoint": []}, "checkpoint"),
])
def test_bad_study_files_name_the_key(data, needle):
    base = {"checkpoint": "20w5s-binary", "grid": {"variability": [0.0]}}
    with pytest.raises(ConfigError) as err:
        Study.from_dict({**base, **data})
    msg = str(err.value)
    assert needle in msg and "\n" not in msg


# -- statistics ------------------------------------------------------------------------------------
def test_paired_difference_is_narrower_than_independent_intervals():
    rng = np.random.default_rng(0)
    b = rng.uniform(0.6, 1.0, 200)
    a = np.clip(b - 0.01 + rng.normal(0, 0.005, 200), 0, 1)
    p = paired(a, b)
    assert p["difference_pp"] == pytest.approx(100 * (a - b).mean())
    assert p["difference_ci95_pp"] < 0.2 * p["a_ci95_pct"]
    with pytest.raises(ValueError):
        paired([1.0], [1.0, 0.5])


def test_two_way_interval_counts_chips_and_episodes():
    x = np.array([[1.0, 2.0, 3.0], [2.0, 3.0, 4.0]])  # chips differ by 1, episodes by 1
    mean, ci = two_way(x)
    assert mean == pytest.approx(2.5)
    assert ci == pytest.approx(1.96 * np.sqrt(0.5 / 2 + 1.0 / 3))
    assert two_way(x[:1])[1] == pytest.approx(1.96 * np.sqrt(1.0 / 3))  # one chip: episodes only


# -- running, resuming, executors ------------------------------------------------------------------
def test_run_records_every_cell_once_and_resumes(ckpt, tmp_path, omniglot_cache):
    from batmann.study.run import run_study
    from batmann.study.tables import cell_rows, config_rows, status

    study = Study.from_dict(_study(ckpt, grid={"preset": ["ideal", "vteam"], "variability": [0.0, 0.3]}))
    out = tmp_path / "out"
    s1 = run_study(study, out, workers=1, progress=False, log=lambda m: None)
    assert (s1.cells, s1.ran, s1.done_before) == (8, 8, 0)
    s2 = run_study(study, out, workers=1, progress=False, log=lambda m: None)
    assert s2.ran == 0 and s2.done_before == 8
    with StudyStore.open_existing(out) as store:
        assert status(store)["cells"] == 8 and status(store)["done"] == 8
        rows = cell_rows(store)
        confs = config_rows(store)
    assert len(rows) == 8 and len(confs) == 4
    assert len({r["digital_accuracy_pct"] for r in rows}) == 1  # one digital reference, same episodes
    for r in rows:
        assert set(r) >= {"analog", "preset", "variability", "checkpoint", "chip", "digital_accuracy_pct",
                          "crossbar_accuracy_pct", "difference_pp", "difference_ci95_pp", "top1_agreement"}
        if r["variability"] == 0.0:  # an exact chip: the same predictions as digital
            assert r["difference_pp"] == 0.0 and r["difference_ci95_pp"] == 0.0 and r["top1_agreement"] == 1.0
    noisy = [r for r in rows if r["variability"] == 0.3]
    assert len({(r["top1_agreement"], r["crossbar_accuracy_pct"]) for r in noisy}) > 1  # chips differ
    assert all(c["chips"] == 2 for c in confs)
    # cost columns: the chip's energy per query (the preset's conductances change it), the digital baseline's
    by_preset = {r["preset"]: r["energy_pj_per_query"] for r in rows if r["variability"] == 0.0}
    assert all(r["energy_pj_per_query"] > 0 and r["energy_pj_per_query_digital"] > 0 for r in rows)
    assert by_preset["vteam"] > by_preset["ideal"]  # 50-1000 ohm devices draw far more read current
    assert len({r["energy_pj_per_query_digital"] for r in rows}) == 1
    assert all(c["energy_pj_per_query"] > 0 for c in confs)


def test_changed_study_is_refused_unless_extended(ckpt, tmp_path, omniglot_cache):
    from batmann.study.run import run_study

    out = tmp_path / "out"
    run_study(Study.from_dict(_study(ckpt, chips=1)), out, workers=1, progress=False, log=lambda m: None)
    bigger = Study.from_dict(_study(ckpt, chips=1, grid={"variability": [0.0, 0.3, 0.5]}))
    with pytest.raises(ConfigError, match="holds another study.*--extend"):
        run_study(bigger, out, workers=1, progress=False, log=lambda m: None)
    s = run_study(bigger, out, workers=1, extend=True, progress=False, log=lambda m: None)
    assert s.ran == 1 and s.done_before == 2


def test_worker_processes_give_the_same_bits_as_one_process(ckpt, tmp_path, omniglot_cache):
    from batmann.study.run import run_study
    from batmann.study.tables import cell_rows

    study = Study.from_dict(_study(ckpt, grid={"analog": ["keys", "all"], "variability": [0.0, 0.3]},
                                   hardware={"preset": "vteam"}, chips=1, count=2))
    results = []
    for workers, out in ((1, tmp_path / "one"), (2, tmp_path / "two")):
        run_study(study, out, workers=workers, progress=False, log=lambda m: None)
        with StudyStore.open_existing(out) as store:
            results.append(_strip(cell_rows(store)))
    assert results[0] == results[1]
    assert any(r["analog"] == "all" and r["variability"] == 0.3 and r["top1_agreement"] < 1 for r in results[0])


def test_kill_9_loses_nothing_and_duplicates_nothing(ckpt, tmp_path, omniglot_cache):
    from batmann.study.tables import cell_rows

    study = _study(ckpt, grid={"variability": [round(0.02 * i, 2) for i in range(12)]}, chips=2, count=6)
    from crossbar.spec import to_toml

    body = {k: v for k, v in study.items() if k not in ("episodes", "hardware", "grid")}
    text = to_toml(body) + "\n\n" + to_toml({"episodes": study["episodes"], "hardware": study["hardware"],
                                              "grid": study["grid"]})
    f = tmp_path / "s.toml"
    f.write_text(text)
    out = tmp_path / "out"
    proc = subprocess.Popen([*BATMANN, "study", "run", str(f), "--out", str(out), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = out / "study.sqlite"
    deadline = time.time() + 120
    done = 0
    while time.time() < deadline and proc.poll() is None:
        if db.exists():
            try:
                with sqlite3.connect(db, timeout=5) as con:
                    done = con.execute("SELECT COUNT(*) FROM cells").fetchone()[0]
            except sqlite3.OperationalError:
                done = 0
            if done >= 3:
                break
        time.sleep(0.05)
    assert proc.poll() is None, "the study finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with sqlite3.connect(db) as con:
        killed_at = con.execute("SELECT COUNT(*) FROM cells").fetchone()[0]
    assert 3 <= killed_at < 24
    again = subprocess.run([*BATMANN, "study", "run", str(f), "--out", str(out), "--workers", "1", "--json"],
                           capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["done_before"] == killed_at and summary["ran"] == 24 - killed_at
    clean = tmp_path / "clean"
    subprocess.run([*BATMANN, "study", "run", str(f), "--out", str(clean), "--workers", "1"], check=True,
                   capture_output=True)
    with StudyStore.open_existing(out) as a, StudyStore.open_existing(clean) as b:
        assert _strip(cell_rows(a)) == _strip(cell_rows(b))
        assert len(cell_rows(a)) == 24


def _scheduler_address(sched_file, proc, timeout: float = 60.0) -> str:
    """The address the scheduler writes to ``sched_file``: the file appears before its JSON is
    written (empty or partial for a moment on a busy machine), so wait for a whole document."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "the dask scheduler exited"
        try:
            return json.loads(sched_file.read_text())["address"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            time.sleep(0.1)
    pytest.fail(f"no scheduler address in {sched_file} after {timeout:.0f} s")


def test_dask_on_loopback_with_a_real_scheduler_and_two_workers(ckpt, tmp_path, omniglot_cache):
    pytest.importorskip("dask.distributed")
    from batmann.study.run import run_study
    from batmann.study.tables import cell_rows

    sched_file = tmp_path / "scheduler.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                               "--port", "0", "--no-dashboard", "--scheduler-file", str(sched_file)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)]
    try:
        address = _scheduler_address(sched_file, procs[0])
        assert address.startswith("tcp://127.0.0.1:")
        for i in range(2):
            procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads",
                                           "1", "--nworkers", "1", "--no-dashboard", "--name", f"w{i}"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
        from dask.distributed import Client

        with Client(address, timeout=30) as c:
            c.wait_for_workers(2, timeout=60)
        study = Study.from_dict(_study(ckpt, grid={"variability": [0.0, 0.2, 0.4]}, chips=2, count=2))
        s = run_study(study, tmp_path / "dask", executor="dask", dask_address=address, progress=False,
                      log=lambda m: None)
        assert s.ran == 6
        run_study(study, tmp_path / "inline", workers=1, progress=False, log=lambda m: None)
        with StudyStore.open_existing(tmp_path / "dask") as a, StudyStore.open_existing(tmp_path / "inline") as b:
            rows = cell_rows(a)
            assert _strip(rows) == _strip(cell_rows(b))
            workers = {r[0] for r in a.db.execute("SELECT worker FROM cells")}
        assert len(workers) == 2  # both workers did cells
    finally:
        for p in procs[::-1]:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)


def test_dask_address_that_does_not_answer_is_one_line(ckpt, tmp_path):
    f = tmp_path / "s.toml"
    f.write_text(f'checkpoint = "{ckpt}"\n[grid]\nvariability = [0.0]\n')
    r = subprocess.run([*BATMANN, "study", "run", str(f), "--out", str(tmp_path / "o"), "--executor", "dask",
                        "--dask-address", "tcp://127.0.0.1:9"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "tcp://127.0.0.1:9" in lines[0] and "Traceback" not in r.stderr


# -- the command line: export, status, plot, bad input ---------------------------------------------
@pytest.fixture(scope="module")
def finished(ckpt, tmp_path_factory, omniglot_cache):
    from batmann.study.run import run_study

    out = tmp_path_factory.mktemp("study") / "out"
    study = Study.from_dict(_study(ckpt, grid={"preset": ["ideal", "vteam"], "variability": [0.0, 0.2, 0.4],
                                               "keys": ["bipolar", "real"]}, chips=2, count=2, name="cli"))
    run_study(study, out, workers=1, progress=False, log=lambda m: None)
    return out


def test_status_export_and_plot_commands(finished, tmp_path):
    import pandas as pd

    st = subprocess.run([*BATMANN, "study", "status", str(finished), "--json"], capture_output=True, text=True)
    assert st.returncode == 0 and json.loads(st.stdout)["cells"] == 24 and json.loads(st.stdout)["done"] == 24
    for fmt in ("csv", "parquet"):
        out = tmp_path / f"t.{fmt}"
        r = subprocess.run([*BATMANN, "study", "export", str(finished), "--format", fmt, "--out", str(out)],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        frame = pd.read_csv(out) if fmt == "csv" else pd.read_parquet(out)
        assert len(frame) == 24
        assert {"preset", "variability", "keys", "checkpoint", "chip", "digital_accuracy_pct", "crossbar_accuracy_pct",
                "difference_pp", "difference_ci95_pp", "top1_agreement", "energy_pj_per_query",
                "energy_pj_per_query_digital", "latency_ns_per_query", "adcs"} <= set(frame.columns)
    for extra, name in ((["--x", "variability", "--hue", "preset", "--col", "keys"], "lines.png"),
                        (["--x", "variability", "--y", "preset", "--col", "keys", "--metric", "difference"], "heat.svg"),
                        (["--x", "energy_pj_per_query", "--hue", "preset", "--col", "keys"], "tradeoff.png")):
        out = tmp_path / name
        r = subprocess.run([*BATMANN, "study", "plot", str(finished), *extra, "--out", str(out)],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert out.stat().st_size > 5000
    assert (tmp_path / "lines.png").read_bytes()[:4] == b"\x89PNG"
    assert b"<svg" in (tmp_path / "heat.svg").read_bytes()[:2000]


@pytest.mark.parametrize("argv, needle", [
    (["plot", "{dir}", "--x", "variability", "--out", "{tmp}/p.png"], "takes 2 values"),
    (["plot", "{dir}", "--x", "nope", "--hue", "preset", "--col", "keys", "--out", "{tmp}/p.png"], "'nope'"),
    (["plot", "{dir}", "--x", "variability", "--hue", "preset", "--col", "keys", "--out", "{tmp}/p.gif"], ".png or .svg"),
    (["export", "{tmp}/none", "--out", "{tmp}/t.csv"], "holds no study store"),
    (["status", "{tmp}/none"], "holds no study store"),
    (["export", "{dir}", "--out", "{tmp}/t.xlsx"], "export format"),
    (["plot", "{dir}", "--x", "energy_pj_per_query", "--y", "preset", "--out", "{tmp}/p.png"], "cost column"),
])
def test_bad_commands_are_one_line(finished, tmp_path, argv, needle):
    argv = [a.format(dir=finished, tmp=tmp_path) for a in argv]
    r = subprocess.run([*BATMANN, "study", *argv], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr


def test_bad_study_file_and_unwritable_folder(ckpt, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(f'checkpoint = "{ckpt}"\n[grid]\nvariability = [0.0, 2.0]\n')
    r = subprocess.run([*BATMANN, "study", "run", str(bad), "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2 and "variability = 2.0" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()  # nothing written for a refused study
    bad.write_text('checkpoint = "no-such-checkpoint"\n[grid]\nvariability = [0.0]\n')
    r = subprocess.run([*BATMANN, "study", "run", str(bad), "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2 and "no-such-checkpoint" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
    bad.write_text("checkpoint = [\n")
    r = subprocess.run([*BATMANN, "study", "run", str(bad), "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2 and "not valid TOML" in r.stderr
    good = tmp_path / "good.toml"
    good.write_text(f'checkpoint = "{ckpt}"\n[grid]\nvariability = [0.0]\n')
    (tmp_path / "file").write_text("not a folder")
    r = subprocess.run([*BATMANN, "study", "run", str(good), "--out", str(tmp_path / "file" / "out")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "cannot create the study folder" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        r = subprocess.run([*BATMANN, "study", "run", str(good), "--out", str(ro / "out")], capture_output=True, text=True)
        assert r.returncode == 2 and "ro" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    finally:
        ro.chmod(0o700)


# -- the feature store -----------------------------------------------------------------------------
def test_digital_features_are_stored_once_and_reused(ckpt, tmp_path, omniglot_cache, monkeypatch):
    import torch

    import batmann.feature_store as fs
    from batmann.study import work

    es = work.EpisodeSet.from_study(str(ckpt), fs.file_digest(ckpt), {"count": 3, "seed": 5})
    store = fs.FeatureStore(es.checkpoint_sha, fs.cache_digest(omniglot_cache), home=tmp_path)
    assert store.path.parent == tmp_path / "features"
    calls = []
    real = fs.compute_features

    def counting(model, cache, ids, device="cpu"):
        calls.append(len(list(ids)))
        return real(model, cache, ids, device)

    monkeypatch.setattr(work, "compute_features", counting)
    ctx = work.Context(es)
    ctx.store = store
    ctx.digital_system("bipolar")
    assert sum(calls) == len(ctx.image_ids()) > 0 and store.path.is_file()
    stored = store.load()
    assert sorted(stored) == ctx.image_ids()
    ctx2 = work.Context(es)
    ctx2.store = store
    ctx2.digital_system("bipolar")
    assert sum(calls) == len(ctx.image_ids())  # the second context computed nothing
    ids = fs.chunks(stored)[0]  # the same chunk again: the same bits
    again = real(ctx.ckpt.model, omniglot_cache, ids)
    assert torch.equal(again, torch.stack([stored[i] for i in ids]))


def test_dependent_parameters_are_checked_together():
    s = Study.from_dict({"checkpoint": "x", "grid": {"adc_bits": [4, 8], "adc_range": ["worst", "calibrated"]},
                         "zip": [{"stuck_lrs": [0.0, 0.9], "stuck_hrs": [0.9, 0.0]}]})
    assert len(s.cells()) == 8  # adc_range needs adc_bits, given by the grid; each zip step is valid as a whole
    with pytest.raises(ConfigError, match=r"zip\[0\] step 1 \(stuck_lrs = 0.9, stuck_hrs = 0.2\)"):
        Study.from_dict({"checkpoint": "x", "zip": [{"stuck_lrs": [0.0, 0.9], "stuck_hrs": [0.9, 0.2]}]})


def test_a_store_made_before_cost_columns_opens_and_reads_them_as_empty(tmp_path):
    import sqlite3

    from batmann.study.store import SCHEMA, STORE_NAME

    tmp_path.mkdir(exist_ok=True)
    old = sqlite3.connect(tmp_path / STORE_NAME)
    old.executescript(SCHEMA.replace(", cost TEXT);", ");"))
    old.execute("INSERT INTO cells VALUES ('c', 'k', 'r', 'ck', 0, 0, '{}', '{}', 1, 90, 1, 91, -1, 1, 0.9, NULL,"
                " '{}', 1.0, 'w', 0)")
    old.commit()
    old.close()
    with StudyStore.open(tmp_path) as store:
        (cell,) = store.cells(planned_only=False)
    assert cell["cost"] is None and cell["crossbar_accuracy_pct"] == 90
