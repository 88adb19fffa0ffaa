"""The results store of a study: one SQLite file, ``DIR/study.sqlite``.

Tables:

- ``meta``: the study (``study``: its JSON; ``fingerprint``), the checkpoints' content hashes and
  the history of ``run`` commands;
- ``plan``: every cell the study (and any ``--extend``) asked for, with its parameters;
- ``digital``: per checkpoint, key format and episode set, the digital system's per-episode
  accuracies (computed once, shared by every cell);
- ``cells``: one row per finished cell, with its summary and per-episode accuracies.

A cell's row is written in one transaction, so it is either fully recorded or absent: a run
interrupted at any point (Ctrl-C, ``kill -9``, a full disk) loses at most the cells in flight,
and the next run skips every recorded one. Only the process that runs the study writes; workers
send their results back to it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable

from batmann.errors import ConfigError

STORE_NAME = "study.sqlite"
FORMAT = "batmann-study/1"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS plan (
    cell_id TEXT PRIMARY KEY, config_id TEXT NOT NULL, checkpoint TEXT NOT NULL, chip INTEGER NOT NULL,
    chip_seed INTEGER NOT NULL, params TEXT NOT NULL, added REAL NOT NULL);
CREATE TABLE IF NOT EXISTS digital (
    ref_id TEXT PRIMARY KEY, checkpoint TEXT NOT NULL, keys TEXT NOT NULL, episodes TEXT NOT NULL,
    accuracy_pct REAL NOT NULL, ci95_pct REAL NOT NULL, per_episode TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cells (
    cell_id TEXT PRIMARY KEY, config_id TEXT NOT NULL, ref_id TEXT NOT NULL, checkpoint TEXT NOT NULL,
    chip INTEGER NOT NULL, chip_seed INTEGER NOT NULL, params TEXT NOT NULL, hardware TEXT NOT NULL,
    episodes INTEGER NOT NULL, crossbar_accuracy_pct REAL NOT NULL, crossbar_ci95_pct REAL NOT NULL,
    digital_accuracy_pct REAL NOT NULL, difference_pp REAL NOT NULL, difference_ci95_pp REAL NOT NULL,
    top1_agreement REAL NOT NULL, score_correlation REAL, per_episode TEXT NOT NULL,
    seconds REAL NOT NULL, worker TEXT NOT NULL, finished REAL NOT NULL, cost TEXT);
"""


class StudyStore:
    """A study's SQLite results store in folder ``root`` (created on :meth:`open`)."""

    def __init__(self, root: str | Path, readonly: bool = False):
        self.root = Path(root)
        self.path = self.root / STORE_NAME
        self.readonly = readonly
        self._db: sqlite3.Connection | None = None

    # -- opening ----------------------------------------------------------------------------------
    @classmethod
    def open(cls, root: str | Path) -> "StudyStore":
        """Open (creating the folder and the file if needed) for writing; one-line errors for a
        folder that cannot be written."""
        store = cls(root)
        try:
            store.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the study folder {store.root}: {exc.strerror or exc}") from None
        if not os.access(store.root, os.W_OK | os.X_OK):
            raise ConfigError(f"the study folder {store.root} is not writable")
        try:
            db = sqlite3.connect(store.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(SCHEMA)
            if "cost" not in {r[1] for r in db.execute("PRAGMA table_info(cells)")}:  # a store made before costs
                db.execute("ALTER TABLE cells ADD COLUMN cost TEXT")
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open the study store {store.path}: {exc}") from None
        store._db = db
        return store

    @classmethod
    def open_existing(cls, root: str | Path) -> "StudyStore":
        """Open a store for reading; a one-line error when ``root`` holds none."""
        store = cls(root, readonly=True)
        if not store.path.is_file():
            raise ConfigError(f"{store.root} holds no study store ({STORE_NAME}); run `batmann study run FILE --out {root}` first")
        try:
            db = sqlite3.connect(f"file:{store.path}?mode=ro", uri=True, timeout=30)
            db.execute("SELECT value FROM meta WHERE key = 'study'").fetchone()
        except sqlite3.Error as exc:
            raise ConfigError(f"{store.path} is not a readable study store: {exc}") from None
        store._db = db
        return store

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> "StudyStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the study store is closed")
        return self._db

    def _write(self, sql_rows: Iterable[tuple[str, tuple]]) -> None:
        """Execute the statements in one transaction (all or nothing)."""
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE")
            for sql, args in sql_rows:
                db.execute(sql, args)
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise ConfigError(f"cannot write to the study store {self.path}: {exc}") from None
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    # -- meta -------------------------------------------------------------------------------------
    def get_meta(self, key: str) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def set_meta(self, **items: Any) -> None:
        self._write([("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (k, json.dumps(v, sort_keys=True)))
                     for k, v in items.items()])

    # -- plan (written by batmann.study.run, with the study's meta, in one transaction) -----------
    def count_planned(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM plan").fetchone()[0])

    def count_done(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM cells WHERE cell_id IN (SELECT cell_id FROM plan)").fetchone()[0])

    def done_ids(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT cell_id FROM cells")}

    # -- digital reference ------------------------------------------------------------------------
    def get_digital(self, ref_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT checkpoint, keys, episodes, accuracy_pct, ci95_pct, per_episode FROM digital "
                              "WHERE ref_id = ?", (ref_id,)).fetchone()
        if row is None:
            return None
        return {"ref_id": ref_id, "checkpoint": row[0], "keys": row[1], "episodes": json.loads(row[2]),
                "accuracy_pct": row[3], "ci95_pct": row[4], "per_episode": json.loads(row[5])}

    def put_digital(self, ref: dict[str, Any]) -> None:
        self._write([("INSERT OR REPLACE INTO digital (ref_id, checkpoint, keys, episodes, accuracy_pct, ci95_pct, "
                      "per_episode) VALUES (?, ?, ?, ?, ?, ?, ?)",
                      (ref["ref_id"], ref["checkpoint"], ref["keys"], json.dumps(ref["episodes"], sort_keys=True),
                       ref["accuracy_pct"], ref["ci95_pct"], json.dumps(ref["per_episode"])))])

    # -- cells ------------------------------------------------------------------------------------
    def put_cell(self, row: dict[str, Any]) -> None:
        """Record one finished cell (one transaction; a cell already recorded is left as it is)."""
        cols = ("cell_id", "config_id", "ref_id", "checkpoint", "chip", "chip_seed", "params", "hardware", "episodes",
                "crossbar_accuracy_pct", "crossbar_ci95_pct", "digital_accuracy_pct", "difference_pp",
                "difference_ci95_pp", "top1_agreement", "score_correlation", "per_episode", "seconds", "worker",
                "finished", "cost")
        vals = []
        for c in cols:
            v = row.get(c, time.time() if c == "finished" else None)
            vals.append(json.dumps(v, sort_keys=True) if c in ("params", "hardware", "per_episode", "cost") else v)
        self._write([(f"INSERT OR IGNORE INTO cells ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                      tuple(vals))])

    def cells(self, planned_only: bool = True) -> list[dict[str, Any]]:
        """Every recorded cell as a dict (``params``, ``hardware``, ``per_episode`` and ``cost``
        decoded; ``cost`` is None for a cell recorded before costs were)."""
        cur = self.db.execute("SELECT * FROM cells" + (" WHERE cell_id IN (SELECT cell_id FROM plan)"
                                                       if planned_only else "") + " ORDER BY rowid")
        names = [d[0] for d in cur.description]
        out = []
        for r in cur.fetchall():
            d = dict(zip(names, r))
            for k in ("params", "hardware", "per_episode"):
                d[k] = json.loads(d[k])
            d["cost"] = json.loads(d["cost"]) if d.get("cost") else None
            out.append(d)
        return out
