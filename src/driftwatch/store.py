"""driftwatch's state store: what must survive a restart (rule states, decisions and their evidence, examples
harvested from feedback, retrain runs).

A small interface with SQLite as the single-process default. A shared backend (PostgreSQL, for several
replicas behind a leader) implements the same methods; the rollout registry will add its tables here.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

SCHEMA = """
CREATE TABLE IF NOT EXISTS rule_state (
    rule TEXT NOT NULL, adapter TEXT NOT NULL, state TEXT NOT NULL, since REAL NOT NULL,
    value REAL, updated REAL NOT NULL, PRIMARY KEY (rule, adapter));
CREATE TABLE IF NOT EXISTS decision (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, adapter TEXT NOT NULL, action TEXT NOT NULL,
    rule TEXT, reasons TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS decision_at ON decision (at);
CREATE TABLE IF NOT EXISTS evidence (decision_id INTEGER PRIMARY KEY REFERENCES decision (id), path TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS example (
    request_id TEXT NOT NULL, source TEXT NOT NULL, at REAL NOT NULL, adapter TEXT, route TEXT,
    prompt TEXT NOT NULL, target TEXT NOT NULL, PRIMARY KEY (request_id, source));
CREATE INDEX IF NOT EXISTS example_at ON example (at);
CREATE TABLE IF NOT EXISTS run (
    id TEXT PRIMARY KEY, decision_id INTEGER, adapter TEXT NOT NULL, status TEXT NOT NULL, reason TEXT,
    dataset TEXT, output TEXT, started REAL NOT NULL, finished REAL, detail TEXT);
CREATE TABLE IF NOT EXISTS alias_table (
    version INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, doc TEXT NOT NULL, who TEXT, why TEXT);
"""


@dataclass(frozen=True)
class RuleState:
    rule: str
    adapter: str
    state: str  # inactive | pending | firing
    since: float  # wall time the state began
    value: float | None


@dataclass(frozen=True)
class DecisionRecord:
    id: int
    at: float
    adapter: str
    action: str  # retrain | hold | resolved
    rule: str | None
    reasons: list[str]
    evidence: str | None = None  # path of the evidence record (retrain decisions)


@dataclass(frozen=True)
class HarvestedExample:
    request_id: str
    source: str  # correction | positive
    at: float
    adapter: str | None
    route: str | None
    prompt: str
    target: str


@dataclass(frozen=True)
class RunRecord:
    id: str
    decision_id: int | None
    adapter: str
    status: str  # building | training | succeeded | failed | timed_out | cancelled | refused
    reason: str | None
    dataset: str | None  # dataset directory
    output: str | None  # run directory (adapter/ and manifest.json when succeeded)
    started: float
    finished: float | None
    detail: dict


class StateStore(Protocol):
    def rule_states(self) -> dict[tuple[str, str], RuleState]: ...
    def save_rule_state(self, state: RuleState, now: float) -> None: ...
    def record_decision(self, at: float, adapter: str, action: str, rule: str | None, reasons: list[str]) -> int: ...
    def decisions(self, since: float = 0.0, action: str | None = None, limit: int = 1000) -> list[DecisionRecord]: ...
    def attach_evidence(self, decision_id: int, path: str) -> None: ...
    def add_examples(self, examples: list[HarvestedExample]) -> None: ...
    def examples(self, since: float = 0.0) -> list[HarvestedExample]: ...
    def save_run(self, run: RunRecord) -> None: ...
    def alias_table(self) -> tuple[int, dict[str, dict[str, float]]]: ...
    def alias_table_version(self) -> int: ...
    def set_aliases(self, changes: dict[str, dict[str, float] | None], at: float, who: str = "", why: str = "") -> int: ...
    def runs(self, limit: int = 100) -> list[RunRecord]: ...
    def close(self) -> None: ...


class SqliteStore:
    def __init__(self, path: Path | str) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def _run(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, args)

    def rule_states(self) -> dict[tuple[str, str], RuleState]:
        rows = self._run("SELECT rule, adapter, state, since, value FROM rule_state").fetchall()
        return {(r[0], r[1]): RuleState(*r) for r in rows}

    def save_rule_state(self, state: RuleState, now: float) -> None:
        self._run(
            "INSERT INTO rule_state (rule, adapter, state, since, value, updated) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (rule, adapter) DO UPDATE SET state=excluded.state, since=excluded.since, "
            "value=excluded.value, updated=excluded.updated",
            (state.rule, state.adapter, state.state, state.since, state.value, now),
        )

    def record_decision(self, at: float, adapter: str, action: str, rule: str | None, reasons: list[str]) -> int:
        cur = self._run("INSERT INTO decision (at, adapter, action, rule, reasons) VALUES (?, ?, ?, ?, ?)",
                        (at, adapter, action, rule, json.dumps(reasons)))
        return int(cur.lastrowid)

    def decisions(self, since: float = 0.0, action: str | None = None, limit: int = 1000) -> list[DecisionRecord]:
        sql = ("SELECT id, at, adapter, action, rule, reasons, path FROM decision "
               "LEFT JOIN evidence ON evidence.decision_id = decision.id WHERE at >= ?")
        args: tuple[Any, ...] = (since,)
        if action:
            sql += " AND action = ?"
            args += (action,)
        rows = self._run(sql + " ORDER BY id DESC LIMIT ?", args + (limit,)).fetchall()
        return [DecisionRecord(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6]) for r in rows]

    def attach_evidence(self, decision_id: int, path: str) -> None:
        self._run("INSERT OR REPLACE INTO evidence (decision_id, path) VALUES (?, ?)", (decision_id, path))

    def add_examples(self, examples: list[HarvestedExample]) -> None:
        """Insert in one transaction (the ingest loop calls this once per batch); the same request and source once."""
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR REPLACE INTO example (request_id, source, at, adapter, route, prompt, target) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(e.request_id, e.source, e.at, e.adapter, e.route, e.prompt, e.target) for e in examples])
            self._db.execute("COMMIT")

    def examples(self, since: float = 0.0) -> list[HarvestedExample]:
        rows = self._run("SELECT request_id, source, at, adapter, route, prompt, target FROM example WHERE at >= ? "
                         "ORDER BY at", (since,)).fetchall()
        return [HarvestedExample(*r) for r in rows]

    def save_run(self, run: RunRecord) -> None:
        self._run("INSERT OR REPLACE INTO run (id, decision_id, adapter, status, reason, dataset, output, started, "
                  "finished, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                  (run.id, run.decision_id, run.adapter, run.status, run.reason, run.dataset, run.output, run.started,
                   run.finished, json.dumps(run.detail)))

    def runs(self, limit: int = 100) -> list[RunRecord]:
        rows = self._run("SELECT id, decision_id, adapter, status, reason, dataset, output, started, finished, detail "
                         "FROM run ORDER BY started DESC LIMIT ?", (limit,)).fetchall()
        return [RunRecord(*r[:9], json.loads(r[9] or "{}")) for r in rows]

    # -- aliases: each change writes a whole new table version (append-only), so a reader sees one version or the next
    def alias_table(self) -> tuple[int, dict[str, dict[str, float]]]:
        """(version, {alias: {adapter_version: weight}}) — version 0 and {} before the first change."""
        row = self._run("SELECT version, doc FROM alias_table ORDER BY version DESC LIMIT 1").fetchone()
        return (0, {}) if row is None else (row[0], json.loads(row[1]))

    def alias_table_version(self) -> int:
        row = self._run("SELECT max(version) FROM alias_table").fetchone()
        return row[0] or 0

    def set_aliases(self, changes: dict[str, dict[str, float] | None], at: float, who: str = "", why: str = "") -> int:
        """Apply changes (alias -> weights, or None to delete) on top of the current table; return the new version."""
        for alias, weights in changes.items():
            if weights is not None and (not weights or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0):
                raise ValueError(f"alias '{alias}': weights must be non-negative with a positive sum, got {weights}")
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT doc FROM alias_table ORDER BY version DESC LIMIT 1").fetchone()
                table = json.loads(row[0]) if row else {}
                for alias, weights in changes.items():
                    if weights is None:
                        table.pop(alias, None)
                    else:
                        table[alias] = {v: float(w) for v, w in weights.items()}
                cur = self._db.execute("INSERT INTO alias_table (at, doc, who, why) VALUES (?, ?, ?, ?)",
                                       (at, json.dumps(table, sort_keys=True), who, why))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return int(cur.lastrowid)

    def close(self) -> None:
        with self._lock:
            self._db.close()
