"""driftwatch's state store: what must survive a restart (rule states, decisions and their evidence, examples
harvested from feedback, feedback the ingest holds for its request, retrain runs, the control requests the loop acts on, alert occurrences, the replicas'
published windows and who leads), on the same connection as the registry's queries (state/registry.py).

A small interface on SQL that SQLite and PostgreSQL both speak (``?`` parameters, ``ON CONFLICT``, ``RETURNING``):
SQLite is the single-process default; PostgreSQL (``store.url``) is the backend several replicas share, with the
leader (control/leader.py) the only one that decides and acts. A database error comes out as
:class:`~driftwatch.errors.StoreError` (the driver's error translated here, once).
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from driftwatch.errors import StoreError
from driftwatch.state.registry import SCHEMA as REGISTRY_SCHEMA
from driftwatch.state.registry import RegistryQueries

SCHEMA = """
CREATE TABLE IF NOT EXISTS rule_state (
    rule TEXT NOT NULL, adapter TEXT NOT NULL, state TEXT NOT NULL, since REAL NOT NULL,
    value REAL, updated REAL NOT NULL, PRIMARY KEY (rule, adapter));
CREATE TABLE IF NOT EXISTS decision (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, adapter TEXT NOT NULL, action TEXT NOT NULL,
    rule TEXT, reasons TEXT NOT NULL, slot TEXT);
CREATE INDEX IF NOT EXISTS decision_at ON decision (at);
CREATE TABLE IF NOT EXISTS evidence (decision_id INTEGER PRIMARY KEY REFERENCES decision (id), path TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS example (
    request_id TEXT NOT NULL, source TEXT NOT NULL, at REAL NOT NULL, adapter TEXT, route TEXT,
    prompt TEXT NOT NULL, target TEXT NOT NULL, tenant TEXT, status TEXT, reviewed_by TEXT, reviewed_at REAL,
    served TEXT, PRIMARY KEY (request_id, source));
CREATE INDEX IF NOT EXISTS example_at ON example (at);
CREATE TABLE IF NOT EXISTS run (
    id TEXT PRIMARY KEY, decision_id INTEGER, adapter TEXT NOT NULL, status TEXT NOT NULL, reason TEXT,
    dataset TEXT, output TEXT, started REAL NOT NULL, finished REAL, detail TEXT);
CREATE TABLE IF NOT EXISTS alert_occurrence (
    fingerprint TEXT NOT NULL, starts_at TEXT NOT NULL, received REAL NOT NULL, PRIMARY KEY (fingerprint, starts_at));
CREATE TABLE IF NOT EXISTS replica_window (
    replica TEXT NOT NULL, adapter TEXT NOT NULL, doc BLOB NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (replica, adapter));
CREATE TABLE IF NOT EXISTS leader (
    name TEXT PRIMARY KEY, holder TEXT NOT NULL, url TEXT, since REAL NOT NULL, renewed REAL NOT NULL);
CREATE TABLE IF NOT EXISTS held_feedback (
    grp TEXT NOT NULL, dedup_key TEXT NOT NULL, topic TEXT NOT NULL, part INTEGER NOT NULL, off INTEGER NOT NULL,
    body BLOB NOT NULL, at REAL NOT NULL, PRIMARY KEY (grp, dedup_key));
CREATE TABLE IF NOT EXISTS request (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, kind TEXT NOT NULL, adapter TEXT, reason TEXT NOT NULL,
    who TEXT NOT NULL, detail TEXT, status TEXT NOT NULL, outcome TEXT, done REAL);
""" + REGISTRY_SCHEMA
MIGRATIONS = (("decision", "slot", "TEXT"), ("example", "tenant", "TEXT"), ("example", "status", "TEXT"),
              ("example", "reviewed_by", "TEXT"), ("example", "reviewed_at", "REAL"), ("example", "served", "TEXT"))  # columns added since the first release: (table, column, type)
REQUEST_KINDS = ("retrain", "rollback", "pause", "resume")


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
    slot: str | None = None  # the serving slot the adapter served when decided (its alias, else itself)


@dataclass(frozen=True)
class HarvestedExample:
    request_id: str
    source: str  # correction | positive
    at: float
    adapter: str | None
    route: str | None
    prompt: str
    target: str
    tenant: str | None = None  # as the gateway authenticated it (never a client's header alone)
    status: str = "trusted"  # trusted | candidate (awaits review) | approved | rejected; trusted and approved train
    served: str | None = None  # the request as served, JSON: {"messages": [...]} or {"prompt": ...}; None: text only


EXAMPLE_STATUSES = ("trusted", "candidate", "approved", "rejected")
_EXAMPLE_COLUMNS = ("request_id, source, at, adapter, route, prompt, target, tenant, COALESCE(status, 'trusted'), "
                    "served")


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
class RequestRecord:
    """What a person or Alertmanager asked the loop to do; the leader's next tick acts on it and writes the outcome."""

    id: int
    at: float
    kind: str  # retrain | rollback | pause | resume
    adapter: str | None
    reason: str
    who: str
    detail: dict  # retrain: {"rule": "manual" | "alert:<name>", "routes": [...]}
    status: str  # pending | done | refused
    outcome: dict
    done: float | None


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


class _Result:
    """A statement's rows and row count, read whole."""

    __slots__ = ("rows", "rowcount")

    def __init__(self, rows: list, rowcount: int) -> None:
        self.rows, self.rowcount = rows, rowcount

    def fetchone(self):
        return self.rows[0] if self.rows else None

    def fetchall(self) -> list:
        return self.rows


class SqlStore(RegistryQueries):
    """The store's queries, on one connection guarded by a lock. Subclasses connect and say how a statement runs
    and how a write transaction begins (serialised: one writer at a time, as SQLite's BEGIN IMMEDIATE)."""

    _db: Any

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def _execute(self, sql: str, args: tuple[Any, ...] | list[Any] = ()) -> Any:
        return self._db.execute(sql, args)

    def _executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        self._db.executemany(sql, rows)

    _errors: tuple[type[BaseException], ...] = (sqlite3.Error,)  # the driver's errors, translated to StoreError

    def _run(self, sql: str, args: tuple[Any, ...] = ()) -> _Result:
        """One statement under the lock, its rows read before the lock is let go: a cursor read later, outside it,
        kept a statement open on the shared connection, and another thread's COMMIT failed ("SQL statements in
        progress")."""
        with self._lock, self._translated():
            cur = self._execute(sql, args)
            return _Result(cur.fetchall() if cur.description is not None else [], cur.rowcount)

    @contextlib.contextmanager
    def _translated(self):
        try:
            yield
        except self._errors as exc:
            raise StoreError(f"{type(self).__name__}: {type(exc).__name__}: {exc}") from exc

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

    def record_decision(self, at: float, adapter: str, action: str, rule: str | None, reasons: list[str],
                        slot: str | None = None) -> int:
        cur = self._run("INSERT INTO decision (at, adapter, action, rule, reasons, slot) VALUES (?, ?, ?, ?, ?, ?) "
                        "RETURNING id", (at, adapter, action, rule, json.dumps(reasons), slot or adapter))
        return int(cur.fetchone()[0])

    def decisions(self, since: float = 0.0, action: str | None = None, limit: int = 1000) -> list[DecisionRecord]:
        sql = ("SELECT id, at, adapter, action, rule, reasons, path, slot FROM decision "
               "LEFT JOIN evidence ON evidence.decision_id = decision.id WHERE at >= ?")
        args: tuple[Any, ...] = (since,)
        if action:
            sql += " AND action = ?"
            args += (action,)
        rows = self._run(sql + " ORDER BY id DESC LIMIT ?", args + (limit,)).fetchall()
        return [DecisionRecord(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], r[7]) for r in rows]

    def decision(self, decision_id: int) -> DecisionRecord | None:
        r = self._run("SELECT id, at, adapter, action, rule, reasons, path, slot FROM decision LEFT JOIN evidence ON "
                      "evidence.decision_id = decision.id WHERE id = ?", (decision_id,)).fetchone()
        return None if r is None else DecisionRecord(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], r[7])

    def attach_evidence(self, decision_id: int, path: str) -> None:
        self._run("INSERT INTO evidence (decision_id, path) VALUES (?, ?) "
                  "ON CONFLICT (decision_id) DO UPDATE SET path = excluded.path", (decision_id, path))

    def add_examples(self, examples: list[HarvestedExample]) -> None:
        """Insert in one transaction (the ingest loop calls this once per batch); the first of a request and source
        stays (a redelivered batch writes nothing new), except that a trusted example replaces a candidate."""
        with self._transaction():
            self._executemany(
                "INSERT INTO example (request_id, source, at, adapter, route, prompt, target, tenant, status, served) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (request_id, source) DO UPDATE SET at = excluded.at, "
                "target = excluded.target, status = excluded.status "  # a trusted one replaces an unreviewed candidate
                "WHERE example.status = 'candidate' AND excluded.status = 'trusted'",
                [(e.request_id, e.source, e.at, e.adapter, e.route, e.prompt, e.target, e.tenant, e.status, e.served)
                 for e in examples])

    def examples(self, since: float = 0.0, status: tuple[str, ...] = ("trusted", "approved"),
                 limit: int | None = None) -> list[HarvestedExample]:
        """Examples since a time, by status: by default those a dataset may use (trusted, or approved in review)."""
        marks = ", ".join("?" * len(status))
        rows = self._run(f"SELECT {_EXAMPLE_COLUMNS} FROM example WHERE COALESCE(reviewed_at, at) >= ? AND "
                         "COALESCE(status, 'trusted') IN "
                         f"({marks}) ORDER BY at" + (f" LIMIT {int(limit)}" if limit else ""),
                         (since, *status)).fetchall()
        return [HarvestedExample(*r) for r in rows]

    def count_examples(self, since: float = 0.0, status: tuple[str, ...] = ("trusted", "approved")) -> int:
        """How many examples :meth:`examples` would return."""
        marks = ", ".join("?" * len(status))
        return int(self._run(f"SELECT COUNT(*) FROM example WHERE COALESCE(reviewed_at, at) >= ? AND "
                             f"COALESCE(status, 'trusted') IN ({marks})", (since, *status)).fetchone()[0])

    def review_example(self, request_id: str, source: str, status: str, who: str, at: float) -> bool:
        """A candidate approved or rejected (recorded with who and when); False when there is no such candidate."""
        if status not in ("approved", "rejected"):
            raise ValueError("a review approves or rejects")
        cur = self._run("UPDATE example SET status = ?, reviewed_by = ?, reviewed_at = ? WHERE request_id = ? AND "
                        "source = ? AND status = 'candidate'", (status, who, at, request_id, source))
        return cur.rowcount == 1

    def save_held_feedback(self, group: str, held: list[tuple[str, int, int, str, bytes]], released: list[str],
                           now: float) -> None:
        """Feedback the ingest holds for its request ((topic, partition, offset, key, encoded event)), saved before
        the offset that read it is committed; ``released`` (keys): joined or handed on. One transaction."""
        with self._transaction():
            if held:
                self._executemany("INSERT INTO held_feedback (grp, dedup_key, topic, part, off, body, at) "
                                  "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (grp, dedup_key) DO NOTHING",
                                  [(group, key, topic, part, off, body, now) for topic, part, off, key, body in held])
            if released:
                self._executemany("DELETE FROM held_feedback WHERE grp = ? AND dedup_key = ?",
                                  [(group, key) for key in released])

    def held_feedback(self, group: str, partitions: list[tuple[str, int]]) -> list[tuple[str, int, int, str, bytes]]:
        """(topic, partition, offset, key, encoded event) of the feedback held on these partitions, oldest first."""
        if not partitions:
            return []
        where = " OR ".join("(topic = ? AND part = ?)" for _ in partitions)
        rows = self._run(f"SELECT topic, part, off, dedup_key, body FROM held_feedback WHERE grp = ? AND ({where}) "
                         "ORDER BY at, off", (group, *[x for tp in partitions for x in tp])).fetchall()
        return [(topic, int(part), int(off), key, bytes(body)) for topic, part, off, key, body in rows]

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

    def run(self, run_id: str) -> RunRecord | None:
        r = self._run("SELECT id, decision_id, adapter, status, reason, dataset, output, started, finished, detail "
                      "FROM run WHERE id = ?", (run_id,)).fetchone()
        return None if r is None else RunRecord(*r[:9], json.loads(r[9] or "{}"))

    # -- control requests: written by the control API, acted on by the leader's next tick ----------------------------
    def add_request(self, at: float, kind: str, reason: str, who: str, adapter: str | None = None,
                    detail: dict | None = None) -> int:
        if kind not in REQUEST_KINDS:
            raise ValueError(f"request kind {kind!r} is not one of {', '.join(REQUEST_KINDS)}")
        cur = self._run("INSERT INTO request (at, kind, adapter, reason, who, detail, status) VALUES (?, ?, ?, ?, ?, ?, "
                        "'pending') RETURNING id", (at, kind, adapter, reason, who, json.dumps(detail or {})))
        return int(cur.fetchone()[0])

    def requests(self, pending: bool = False, limit: int = 100) -> list[RequestRecord]:
        """Pending ones oldest first (the order the loop acts in); else the latest, newest first."""
        sql = "SELECT id, at, kind, adapter, reason, who, detail, status, outcome, done FROM request"
        sql += " WHERE status = 'pending' ORDER BY id LIMIT ?" if pending else " ORDER BY id DESC LIMIT ?"
        return [RequestRecord(*r[:6], json.loads(r[6] or "{}"), r[7], json.loads(r[8] or "{}"), r[9])
                for r in self._run(sql, (limit,)).fetchall()]

    def request(self, request_id: int) -> RequestRecord | None:
        r = self._run("SELECT id, at, kind, adapter, reason, who, detail, status, outcome, done FROM request "
                      "WHERE id = ?", (request_id,)).fetchone()
        return None if r is None else RequestRecord(*r[:6], json.loads(r[6] or "{}"), r[7], json.loads(r[8] or "{}"), r[9])

    def finish_request(self, request_id: int, status: str, outcome: dict, at: float) -> None:
        self._run("UPDATE request SET status = ?, outcome = ?, done = ? WHERE id = ? AND status = 'pending'",
                  (status, json.dumps(outcome, default=str), at, request_id))

    def claim_occurrence(self, fingerprint: str, starts_at: str, now: float) -> bool:
        """True the first time an alert occurrence (Alertmanager's fingerprint + startsAt) is seen, False after."""
        cur = self._run("INSERT INTO alert_occurrence (fingerprint, starts_at, received) VALUES (?, ?, ?) "
                        "ON CONFLICT DO NOTHING", (fingerprint, starts_at, now))
        return cur.rowcount == 1

    def prune(self, before: float) -> dict[str, int]:
        """Delete what is older than ``before``: decisions no run refers to (and their evidence rows), alert
        occurrences, answered requests, examples never approved, held feedback saved before then (a member kicked
        from its group while its store was down can leave one behind).
        Returns how many rows of each went."""
        unreferenced = "at < ? AND id NOT IN (SELECT decision_id FROM run WHERE decision_id IS NOT NULL)"
        with self._transaction():
            self._execute(f"DELETE FROM evidence WHERE decision_id IN (SELECT id FROM decision WHERE {unreferenced})",
                          (before,))
            counts = {
                "decisions": self._execute(f"DELETE FROM decision WHERE {unreferenced}", (before,)).rowcount,
                "alert_occurrences": self._execute("DELETE FROM alert_occurrence WHERE received < ?", (before,)).rowcount,
                "requests": self._execute("DELETE FROM request WHERE status != 'pending' AND at < ?", (before,)).rowcount,
                "held_feedback": self._execute("DELETE FROM held_feedback WHERE at < ?", (before,)).rowcount,
                "unreviewed_or_rejected_examples": self._execute(
                    "DELETE FROM example WHERE status IN ('candidate', 'rejected') AND at < ?", (before,)).rowcount,
            }
        return counts

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

    @contextlib.contextmanager
    def _transaction(self):
        with self._lock, self._translated():
            self._begin()
            try:
                yield
                self._execute("COMMIT")
            except BaseException:
                self._execute("ROLLBACK")
                raise

    def _begin(self) -> None:
        raise NotImplementedError



class SqliteStore(SqlStore):
    def __init__(self, path: Path | str) -> None:
        super().__init__()
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=10000")  # several local processes on one file (replicas, the CLI)
        with self._translated():
            self._db.executescript(SCHEMA)
            for table, column, kind in MIGRATIONS:
                if column not in {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

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
            for table, column, kind in MIGRATIONS:
                pg_kind = dict((t.strip(), p.strip()) for t, p in _PG_TYPES).get(kind, kind)
                self._execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {pg_kind}")

    def _connect(self):
        try:
            import psycopg
        except ImportError as exc:
            raise ImportError("store.url is a PostgreSQL URL: pip install 'driftwatch[postgres]'") from exc
        self._errors = (psycopg.Error,)
        with self._translated():
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

