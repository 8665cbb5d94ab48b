"""driftwatch's state store: what must survive a restart (rule states, decisions and their evidence, examples
harvested from feedback, retrain runs) and the registry (datasets, adapter versions, evaluations, rollouts, the
alias table, and an append-only event log of who did what, when and why).

A small interface on SQL that SQLite and PostgreSQL both speak (``?`` parameters, ``ON CONFLICT``, ``RETURNING``):
SQLite is the single-process default; PostgreSQL (``store.url``) is the backend several replicas share, with the
leader (leader.py) the only one that decides and acts. Replicas also publish their monitor windows here
(:meth:`SqlStore.publish_window`), so the leader's verdict covers every partition.

Lineage: adapter → run (``adapter.run_id``) → dataset (``run.dataset``, its manifest) → decision (``run.decision_id``,
its evidence). A rollout step changes the alias table, adapter states, the rollout row and the event log in one
transaction (:meth:`SqlStore.commit`), so a crash leaves either the step or nothing.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import threading
from dataclasses import astuple, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from driftwatch.errors import RolloutError

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
CREATE TABLE IF NOT EXISTS dataset (
    version TEXT PRIMARY KEY, path TEXT NOT NULL, created REAL NOT NULL, counts TEXT);
CREATE TABLE IF NOT EXISTS adapter (
    version TEXT PRIMARY KEY, path TEXT NOT NULL, run_id TEXT, parent TEXT, state TEXT NOT NULL,
    created REAL NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS evaluation (
    id TEXT PRIMARY KEY, at REAL NOT NULL, candidate TEXT NOT NULL, incumbent TEXT NOT NULL, passed INTEGER NOT NULL,
    report TEXT, failed TEXT);
CREATE TABLE IF NOT EXISTS rollout (
    id INTEGER PRIMARY KEY AUTOINCREMENT, candidate TEXT NOT NULL, previous TEXT, phase TEXT NOT NULL,
    started REAL NOT NULL, phase_since REAL NOT NULL, step INTEGER NOT NULL DEFAULT 0,
    failed_checks INTEGER NOT NULL DEFAULT 0, forced INTEGER NOT NULL DEFAULT 0, who TEXT, why TEXT,
    holder TEXT, held_until REAL NOT NULL DEFAULT 0, detail TEXT);
CREATE TABLE IF NOT EXISTS event (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, who TEXT NOT NULL, kind TEXT NOT NULL, version TEXT,
    why TEXT, detail TEXT);
CREATE INDEX IF NOT EXISTS event_version ON event (version);
CREATE TABLE IF NOT EXISTS alert_occurrence (
    fingerprint TEXT NOT NULL, starts_at TEXT NOT NULL, received REAL NOT NULL, PRIMARY KEY (fingerprint, starts_at));
CREATE TABLE IF NOT EXISTS replica_window (
    replica TEXT NOT NULL, adapter TEXT NOT NULL, doc BLOB NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (replica, adapter));
CREATE TABLE IF NOT EXISTS leader (
    name TEXT PRIMARY KEY, holder TEXT NOT NULL, url TEXT, since REAL NOT NULL, renewed REAL NOT NULL);
"""


ROLLOUT_ACTIVE = ("loading", "evaluating", "warming", "canary", "baking")  # a rollout in one of these is in progress
_ROLLOUT_COLUMNS = ("id, candidate, previous, phase, started, phase_since, step, failed_checks, forced, who, why, "
                    "holder, held_until, detail")


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
    status: str  # queued | building | training | succeeded | failed | timed_out | cancelled | refused
    reason: str | None
    dataset: str | None  # dataset directory
    output: str | None  # run directory (adapter/ and manifest.json when succeeded)
    started: float
    finished: float | None
    detail: dict


@dataclass(frozen=True)
class AdapterRecord:
    version: str  # the name it is served under on vLLM: unique, never reused
    path: str
    run_id: str | None
    parent: str | None  # the version it was retrained from
    state: str  # candidate | rejected | production | previous | retired | rolled_back
    created: float
    updated: float


@dataclass(frozen=True)
class EvaluationRecord:
    id: str
    at: float
    candidate: str
    incumbent: str
    passed: bool
    report: str | None  # path of the JSON report
    failed: list[str]  # the checks that did not pass


@dataclass(frozen=True)
class RolloutRecord:
    id: int
    candidate: str
    previous: str | None
    phase: str  # see rollout.PHASES
    started: float
    phase_since: float
    step: int = 0
    failed_checks: int = 0
    forced: bool = False
    who: str = ""
    why: str = ""
    holder: str | None = None
    held_until: float = 0.0
    detail: dict = field(default_factory=dict)


@dataclass(frozen=True)
class EventRecord:
    id: int
    at: float
    who: str
    kind: str
    version: str | None
    why: str
    detail: dict


class StateStore(Protocol):
    def rule_states(self) -> dict[tuple[str, str], RuleState]: ...
    def save_rule_state(self, state: RuleState, now: float) -> None: ...
    def record_decision(self, at: float, adapter: str, action: str, rule: str | None, reasons: list[str]) -> int: ...
    def decisions(self, since: float = 0.0, action: str | None = None, limit: int = 1000) -> list[DecisionRecord]: ...
    def decision(self, decision_id: int) -> DecisionRecord | None: ...
    def attach_evidence(self, decision_id: int, path: str) -> None: ...
    def add_examples(self, examples: list[HarvestedExample]) -> None: ...
    def examples(self, since: float = 0.0) -> list[HarvestedExample]: ...
    def save_run(self, run: RunRecord) -> None: ...
    def alias_table(self) -> tuple[int, dict[str, dict[str, float]]]: ...
    def alias_table_version(self) -> int: ...
    def set_aliases(self, changes: dict[str, dict[str, float] | None], at: float, who: str = "", why: str = "") -> int: ...
    def runs(self, limit: int = 100) -> list[RunRecord]: ...
    def run(self, run_id: str) -> RunRecord | None: ...
    def save_dataset(self, version: str, path: str, created: float, counts: dict) -> None: ...
    def dataset(self, version: str) -> tuple[str, float, dict] | None: ...
    def save_adapter(self, record: AdapterRecord) -> None: ...
    def adapters(self) -> list[AdapterRecord]: ...
    def adapter(self, version: str) -> AdapterRecord | None: ...
    def save_evaluation(self, record: EvaluationRecord) -> None: ...
    def evaluations(self, candidate: str | None = None) -> list[EvaluationRecord]: ...
    def rollouts(self, limit: int = 20) -> list[RolloutRecord]: ...
    def claim_rollout(self, rollout_id: int, holder: str, now: float, lease_s: float) -> bool: ...
    def events(self, version: str | None = None, limit: int = 1000, kind: str | None = None) -> list[EventRecord]: ...
    def commit(self, at: float, who: str, kind: str, version: str | None, why: str = "", *,
               aliases: dict[str, dict[str, float] | None] | None = None, states: dict[str, str] | None = None,
               rollout: RolloutRecord | None = None, expect_phase: str | None = None, detail: dict | None = None) -> int: ...
    def claim_occurrence(self, fingerprint: str, starts_at: str, now: float) -> bool: ...
    def release_occurrence(self, fingerprint: str, starts_at: str) -> None: ...
    def close(self) -> None: ...


def is_url(location: Path | str) -> bool:
    return str(location).startswith(("postgresql://", "postgres://"))


def open_store(location: Path | str) -> SqlStore:
    """A PostgreSQL URL (the store several replicas share) or a SQLite file (one process)."""
    return PostgresStore(str(location)) if is_url(location) else SqliteStore(location)


def open_stores(state_location: Path | str, registry_location: Path | str) -> tuple[SqlStore, SqlStore]:
    """The state store and the registry: one database, unless the registry has a location of its own."""
    state = open_store(state_location)
    same = str(state_location) == str(registry_location) or (
        not is_url(state_location) and not is_url(registry_location) and Path(state_location) == Path(registry_location))
    return state, state if same else open_store(registry_location)


class SqlStore:
    """The store's queries, on one connection guarded by a lock. Subclasses connect and say how a statement runs
    and how a write transaction begins (serialised: one writer at a time, as SQLite's BEGIN IMMEDIATE)."""

    _db: Any

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def _execute(self, sql: str, args: tuple[Any, ...] | list[Any] = ()) -> Any:
        return self._db.execute(sql, args)

    def _executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        self._db.executemany(sql, rows)

    def _run(self, sql: str, args: tuple[Any, ...] = ()) -> Any:
        with self._lock:
            return self._execute(sql, args)

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
        cur = self._run("INSERT INTO decision (at, adapter, action, rule, reasons) VALUES (?, ?, ?, ?, ?) RETURNING id",
                        (at, adapter, action, rule, json.dumps(reasons)))
        return int(cur.fetchone()[0])

    def decisions(self, since: float = 0.0, action: str | None = None, limit: int = 1000) -> list[DecisionRecord]:
        sql = ("SELECT id, at, adapter, action, rule, reasons, path FROM decision "
               "LEFT JOIN evidence ON evidence.decision_id = decision.id WHERE at >= ?")
        args: tuple[Any, ...] = (since,)
        if action:
            sql += " AND action = ?"
            args += (action,)
        rows = self._run(sql + " ORDER BY id DESC LIMIT ?", args + (limit,)).fetchall()
        return [DecisionRecord(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6]) for r in rows]

    def decision(self, decision_id: int) -> DecisionRecord | None:
        r = self._run("SELECT id, at, adapter, action, rule, reasons, path FROM decision LEFT JOIN evidence ON "
                      "evidence.decision_id = decision.id WHERE id = ?", (decision_id,)).fetchone()
        return None if r is None else DecisionRecord(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6])

    def attach_evidence(self, decision_id: int, path: str) -> None:
        self._run("INSERT INTO evidence (decision_id, path) VALUES (?, ?) "
                  "ON CONFLICT (decision_id) DO UPDATE SET path = excluded.path", (decision_id, path))

    def add_examples(self, examples: list[HarvestedExample]) -> None:
        """Insert in one transaction (the ingest loop calls this once per batch); the same request and source once."""
        with self._transaction():
            self._executemany(
                "INSERT INTO example (request_id, source, at, adapter, route, prompt, target) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (request_id, source) DO UPDATE SET at = excluded.at, "
                "adapter = excluded.adapter, route = excluded.route, prompt = excluded.prompt, target = excluded.target",
                [(e.request_id, e.source, e.at, e.adapter, e.route, e.prompt, e.target) for e in examples])

    def examples(self, since: float = 0.0) -> list[HarvestedExample]:
        rows = self._run("SELECT request_id, source, at, adapter, route, prompt, target FROM example WHERE at >= ? "
                         "ORDER BY at", (since,)).fetchall()
        return [HarvestedExample(*r) for r in rows]

    def save_run(self, run: RunRecord) -> None:
        self._run("INSERT INTO run (id, decision_id, adapter, status, reason, dataset, output, started, finished, "
                  "detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                  "decision_id = excluded.decision_id, adapter = excluded.adapter, status = excluded.status, "
                  "reason = excluded.reason, dataset = excluded.dataset, output = excluded.output, "
                  "started = excluded.started, finished = excluded.finished, detail = excluded.detail",
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
        with self._transaction():
            version = self._apply_aliases(changes, at, who, why)
            self._event(at, who, "alias", None, why, {"aliases": changes, "alias_table_version": version})
        return version

    def _apply_aliases(self, changes: dict[str, dict[str, float] | None], at: float, who: str, why: str) -> int:
        for alias, weights in changes.items():
            if weights is not None and (not weights or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0):
                raise ValueError(f"alias '{alias}': weights must be non-negative with a positive sum, got {weights}")
        row = self._execute("SELECT doc FROM alias_table ORDER BY version DESC LIMIT 1").fetchone()
        table = json.loads(row[0]) if row else {}
        for alias, weights in changes.items():
            if weights is None:
                table.pop(alias, None)
            else:
                table[alias] = {v: float(w) for v, w in weights.items()}
        cur = self._execute("INSERT INTO alias_table (at, doc, who, why) VALUES (?, ?, ?, ?) RETURNING version",
                            (at, json.dumps(table, sort_keys=True), who, why))
        return int(cur.fetchone()[0])

    @contextlib.contextmanager
    def _transaction(self):
        with self._lock:
            self._begin()
            try:
                yield
                self._execute("COMMIT")
            except BaseException:
                self._execute("ROLLBACK")
                raise

    def _begin(self) -> None:
        raise NotImplementedError

    def _event(self, at: float, who: str, kind: str, version: str | None, why: str, detail: dict | None) -> None:
        self._execute("INSERT INTO event (at, who, kind, version, why, detail) VALUES (?, ?, ?, ?, ?, ?)",
                         (at, who or "driftwatch", kind, version, why, json.dumps(detail or {}, default=str)))

    # -- registry -----------------------------------------------------------------------------------------------------
    def run(self, run_id: str) -> RunRecord | None:
        r = self._run("SELECT id, decision_id, adapter, status, reason, dataset, output, started, finished, detail "
                      "FROM run WHERE id = ?", (run_id,)).fetchone()
        return None if r is None else RunRecord(*r[:9], json.loads(r[9] or "{}"))

    def save_dataset(self, version: str, path: str, created: float, counts: dict) -> None:
        self._run("INSERT INTO dataset (version, path, created, counts) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                  (version, path, created, json.dumps(counts)))

    def dataset(self, version: str) -> tuple[str, float, dict] | None:
        r = self._run("SELECT path, created, counts FROM dataset WHERE version = ?", (version,)).fetchone()
        return None if r is None else (r[0], r[1], json.loads(r[2] or "{}"))

    def save_adapter(self, record: AdapterRecord) -> None:
        """Register a version (a new one only: a version name is never reused, see rollout.py)."""
        with self._transaction():
            self._execute("INSERT INTO adapter (version, path, run_id, parent, state, created, updated) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?)", astuple(record))
            self._event(record.created, "driftwatch", "registered", record.version, "",
                        {"path": record.path, "run_id": record.run_id, "parent": record.parent})

    def adapters(self) -> list[AdapterRecord]:
        rows = self._run("SELECT version, path, run_id, parent, state, created, updated FROM adapter "
                         "ORDER BY created DESC").fetchall()
        return [AdapterRecord(*r) for r in rows]

    def adapter(self, version: str) -> AdapterRecord | None:
        r = self._run("SELECT version, path, run_id, parent, state, created, updated FROM adapter WHERE version = ?",
                      (version,)).fetchone()
        return None if r is None else AdapterRecord(*r)

    def save_evaluation(self, record: EvaluationRecord) -> None:
        self._run("INSERT INTO evaluation (id, at, candidate, incumbent, passed, report, failed) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET at = excluded.at, "
                  "candidate = excluded.candidate, incumbent = excluded.incumbent, passed = excluded.passed, "
                  "report = excluded.report, failed = excluded.failed", (record.id, record.at, record.candidate, record.incumbent,
                                                   int(record.passed), record.report, json.dumps(record.failed)))

    def evaluations(self, candidate: str | None = None) -> list[EvaluationRecord]:
        sql = "SELECT id, at, candidate, incumbent, passed, report, failed FROM evaluation"
        rows = self._run(sql + (" WHERE candidate = ?" if candidate else "") + " ORDER BY at DESC",
                         (candidate,) if candidate else ()).fetchall()
        return [EvaluationRecord(r[0], r[1], r[2], r[3], bool(r[4]), r[5], json.loads(r[6])) for r in rows]

    def rollouts(self, limit: int = 20) -> list[RolloutRecord]:
        rows = self._run(f"SELECT {_ROLLOUT_COLUMNS} FROM rollout ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [RolloutRecord(*r[:8], bool(r[8]), *r[9:13], detail=json.loads(r[13] or "{}")) for r in rows]

    def claim_rollout(self, rollout_id: int, holder: str, now: float, lease_s: float) -> bool:
        """Take (or renew) the right to act on a rollout until now + lease_s; False while another holds it."""
        cur = self._run("UPDATE rollout SET holder = ?, held_until = ? WHERE id = ? AND "
                        "(holder IS NULL OR holder = ? OR held_until < ?)", (holder, now + lease_s, rollout_id, holder, now))
        return cur.rowcount == 1

    def events(self, version: str | None = None, limit: int = 1000, kind: str | None = None) -> list[EventRecord]:
        """Newest first; of one version and/or one kind."""
        where = [(c, v) for c, v in (("version = ?", version), ("kind = ?", kind)) if v]
        sql = "SELECT id, at, who, kind, version, why, detail FROM event" + (
            " WHERE " + " AND ".join(c for c, _ in where) if where else "")
        rows = self._run(sql + " ORDER BY id DESC LIMIT ?", tuple(v for _, v in where) + (limit,)).fetchall()
        return [EventRecord(*r[:6], json.loads(r[6] or "{}")) for r in rows]

    def commit(self, at: float, who: str, kind: str, version: str | None, why: str = "", *,
               aliases: dict[str, dict[str, float] | None] | None = None, states: dict[str, str] | None = None,
               rollout: RolloutRecord | None = None, expect_phase: str | None = None, detail: dict | None = None) -> int:
        """One step, all or nothing: alias changes, adapter states, the rollout row (inserted when its id is 0; else
        updated only while it is still in ``expect_phase``: another process may have moved it) and the event.
        Returns the rollout's id (0 without one)."""
        rollout_id = 0
        with self._transaction():
            if aliases:
                self._apply_aliases(aliases, at, who, why)
            for v, state in (states or {}).items():
                self._execute("UPDATE adapter SET state = ?, updated = ? WHERE version = ?", (state, at, v))
            if rollout is not None:
                # the lease (holder, held_until) is claim_rollout's alone
                values = (rollout.candidate, rollout.previous, rollout.phase, rollout.started, rollout.phase_since,
                          rollout.step, rollout.failed_checks, int(rollout.forced), rollout.who, rollout.why,
                          json.dumps(rollout.detail, default=str))
                columns = "candidate, previous, phase, started, phase_since, step, failed_checks, forced, who, why, detail"
                if rollout.id:
                    cur = self._execute(f"UPDATE rollout SET ({columns}) = ({', '.join('?' * len(values))}) "
                                           "WHERE id = ? AND phase = coalesce(?, phase)",
                                           values + (rollout.id, expect_phase))
                    if cur.rowcount != 1:
                        raise RolloutError(f"rollout {rollout.id} is no longer {expect_phase}: another process moved it")
                    rollout_id = rollout.id
                else:
                    busy = self._execute("SELECT id, candidate, phase FROM rollout WHERE phase IN "
                                            f"({', '.join('?' * len(ROLLOUT_ACTIVE))})", ROLLOUT_ACTIVE).fetchone()
                    if busy is not None:  # one rollout at a time, checked in the transaction that starts one
                        raise RolloutError(f"rollout {busy[0]} of '{busy[1]}' is in progress ({busy[2]}); wait for it "
                                           "or roll it back")
                    rollout_id = int(self._execute(f"INSERT INTO rollout ({columns}) VALUES "
                                                   f"({', '.join('?' * len(values))}) RETURNING id", values).fetchone()[0])
            self._event(at, who, kind, version, why, {**(detail or {}), **({"rollout": rollout_id} if rollout_id else {}),
                                                     **({"aliases": aliases} if aliases else {}),
                                                     **({"states": states} if states else {})})
        return rollout_id

    def claim_occurrence(self, fingerprint: str, starts_at: str, now: float) -> bool:
        """True the first time an alert occurrence (Alertmanager's fingerprint + startsAt) is seen, False after."""
        cur = self._run("INSERT INTO alert_occurrence (fingerprint, starts_at, received) VALUES (?, ?, ?) "
                        "ON CONFLICT DO NOTHING", (fingerprint, starts_at, now))
        return cur.rowcount == 1

    def release_occurrence(self, fingerprint: str, starts_at: str) -> None:
        """Forget an occurrence whose handling failed, so that its next delivery is handled."""
        self._run("DELETE FROM alert_occurrence WHERE fingerprint = ? AND starts_at = ?", (fingerprint, starts_at))

    # -- replicas: the followers' monitor windows, and who leads ----------------------------------------------------
    def publish_windows(self, replica: str, docs: dict[str, bytes], now: float) -> None:
        """This replica's windows (adapter -> serialised window), in place of what it published before."""
        with self._transaction():
            self._execute("DELETE FROM replica_window WHERE replica = ?", (replica,))
            if docs:
                self._executemany("INSERT INTO replica_window (replica, adapter, doc, updated) VALUES (?, ?, ?, ?)",
                                  [(replica, adapter, doc, now) for adapter, doc in docs.items()])

    def published_windows(self, since: float, exclude: str = "") -> list[tuple[str, str, bytes]]:
        """(replica, adapter, doc) of every other replica's windows published at or after ``since``."""
        rows = self._run("SELECT replica, adapter, doc FROM replica_window WHERE updated >= ? AND replica <> ? "
                         "ORDER BY replica, adapter", (since, exclude)).fetchall()
        return [(r[0], r[1], bytes(r[2])) for r in rows]

    def set_leader(self, name: str, holder: str, url: str | None, now: float) -> None:
        """Record (or renew) who leads and where its control API answers; ``since`` changes with the holder only."""
        self._run("INSERT INTO leader (name, holder, url, since, renewed) VALUES (?, ?, ?, ?, ?) "
                  "ON CONFLICT (name) DO UPDATE SET url = excluded.url, renewed = excluded.renewed, "
                  "since = CASE WHEN leader.holder = excluded.holder THEN leader.since ELSE excluded.since END, "
                  "holder = excluded.holder", (name, holder, url, now, now))

    def leader(self, name: str) -> tuple[str, str | None, float, float] | None:
        """(holder, url, since, renewed) as the leader last recorded it."""
        r = self._run("SELECT holder, url, since, renewed FROM leader WHERE name = ?", (name,)).fetchone()
        return None if r is None else (r[0], r[1], r[2], r[3])

    def close(self) -> None:
        with self._lock:
            self._db.close()


class SqliteStore(SqlStore):
    def __init__(self, path: Path | str) -> None:
        super().__init__()
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=10000")  # several local processes on one file (replicas, the CLI)
        self._db.executescript(SCHEMA)

    def _begin(self) -> None:
        self._execute("BEGIN IMMEDIATE")


_PG_TYPES = (("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
             (" REAL", " DOUBLE PRECISION"), (" INTEGER", " BIGINT"), (" BLOB", " BYTEA"))
_WRITE_LOCK = 0x64726966  # the advisory lock that serialises PostgresStore's write transactions


class PostgresStore(SqlStore):
    """The same tables and queries on PostgreSQL (psycopg 3, the ``postgres`` extra). The password comes from the
    URL, PGPASSWORD or ~/.pgpass (libpq's own rules). A connection lost between calls is opened again once."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self._db = self._connect()
        schema = SCHEMA
        for sqlite_type, pg_type in _PG_TYPES:
            schema = schema.replace(sqlite_type, pg_type)
        with self._transaction():  # two replicas starting together create the tables once
            for statement in filter(str.strip, schema.split(";")):
                self._execute(statement)

    def _connect(self):
        try:
            import psycopg
        except ImportError as exc:
            raise ImportError("store.url is a PostgreSQL URL: pip install 'driftwatch[postgres]'") from exc
        return psycopg.connect(self.url, autocommit=True, connect_timeout=10)

    def _execute(self, sql: str, args: tuple[Any, ...] | list[Any] = ()) -> Any:
        if self._db.closed or self._db.broken:  # the server went away: the call that saw it failed; this one reconnects
            self._db = self._connect()
        return self._db.execute(_pg_params(sql), args)

    def _executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        self._db.cursor().executemany(_pg_params(sql), rows)

    def _begin(self) -> None:
        self._execute("BEGIN")
        self._execute("SELECT pg_advisory_xact_lock(?)", (_WRITE_LOCK,))


def _pg_params(sql: str) -> str:
    return re.sub(r"\?", "%s", sql.replace("%", "%%"))
