"""The registry: datasets, adapter versions, evaluations, rollouts, the alias table the gateways route by, and an
append-only event log of who did what, when and why. Queries only (:class:`RegistryQueries`); the connection, the
transactions and the backends are the state store's (state/store.py), and both live in one database unless
``gateway.store_path`` gives the registry its own.

Lineage: adapter → run (``adapter.run_id``) → dataset (``run.dataset``, its manifest) → decision (``run.decision_id``,
its evidence). A rollout step changes the alias table, adapter states, the rollout row and the event log in one
transaction (:meth:`RegistryQueries.commit`), so a crash leaves either the step or nothing.
"""

from __future__ import annotations

import json
from dataclasses import astuple, dataclass, field
from typing import Any

from driftwatch.errors import RolloutError

SCHEMA = """
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
"""

ROLLOUT_ACTIVE = ("loading", "evaluating", "warming", "canary", "baking", "rebaselining")  # a rollout in one of these is in progress
_ROLLOUT_COLUMNS = ("id, candidate, previous, phase, started, phase_since, step, failed_checks, forced, who, why, "
                    "holder, held_until, detail")


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


class RegistryQueries:
    """The registry's statements, mixed into the store (which provides ``_run``, ``_execute`` and ``_transaction``)."""

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

    def _event(self, at: float, who: str, kind: str, version: str | None, why: str, detail: dict | None) -> None:
        self._execute("INSERT INTO event (at, who, kind, version, why, detail) VALUES (?, ?, ?, ?, ?, ?)",
                         (at, who or "driftwatch", kind, version, why, json.dumps(detail or {}, default=str)))

    # -- registry -----------------------------------------------------------------------------------------------------
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

    def names(self) -> frozenset[str]:
        """Every name the registry knows: registered versions, aliases and the versions they point to (what label caps
        reserve, what the gateway serves)."""
        aliases = self.alias_table()[1]
        versions = {r[0] for r in self._run("SELECT version FROM adapter").fetchall()}
        return frozenset(versions.union(aliases, *aliases.values()))

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

    def evaluation(self, evaluation_id: str) -> EvaluationRecord | None:
        r = self._run("SELECT id, at, candidate, incumbent, passed, report, failed FROM evaluation WHERE id = ?",
                      (evaluation_id,)).fetchone()
        return None if r is None else EvaluationRecord(r[0], r[1], r[2], r[3], bool(r[4]), r[5], json.loads(r[6]))

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

