"""The state store's contract, the same tests on SQLite (the default) and on a real PostgreSQL server (the backend
several replicas share): upserts, append-only alias tables, one rollout at a time, leases, alert occurrences,
published windows and the leader record; and on PostgreSQL, two connections racing for the same rollout slot."""

from __future__ import annotations

import threading
import uuid

import pytest

from driftwatch.errors import RolloutError
from driftwatch.state.registry import AdapterRecord, EvaluationRecord, RolloutRecord
from driftwatch.state.store import (HarvestedExample, PostgresStore, RuleState, RunRecord, SqliteStore, open_store,
                                    open_stores)


@pytest.fixture(params=["sqlite", "postgres"])
def location(request, tmp_path):
    if request.param == "sqlite":
        return tmp_path / "state.db"
    return request.getfixturevalue("postgres").database(f"t{uuid.uuid4().hex[:10]}")


def rollout(candidate, previous=None, phase="loading"):
    return RolloutRecord(0, candidate, previous, phase, 1.0, 1.0, 0, 0, False, "t", "why", None, 0.0, {"k": 1})


def test_the_contract(location):
    s = open_store(location)
    assert isinstance(s, PostgresStore if str(location).startswith("postgresql") else SqliteStore)
    s.save_rule_state(RuleState("r", "a", "firing", 5.0, 1.5), now=6.0)
    s.save_rule_state(RuleState("r", "a", "cleared", 7.0, None), now=8.0)
    assert s.rule_states() == {("r", "a"): RuleState("r", "a", "cleared", 7.0, None)}

    d1 = s.record_decision(1700000000.123456, "a", "retrain", "r", ["x", "y"])
    d2 = s.record_decision(1700000001.0, "b", "hold", "r", ["z"])
    assert d2 == d1 + 1
    s.attach_evidence(d1, "/e/1")
    s.attach_evidence(d1, "/e/1b")
    assert s.decision(d1).evidence == "/e/1b" and s.decision(d1).at == 1700000000.123456  # double precision
    assert [d.id for d in s.decisions(action="retrain")] == [d1] and len(s.decisions()) == 2

    s.add_examples([HarvestedExample("q1", "correction", 3.0, "a", "qa", "p", "t1")])
    s.add_examples([HarvestedExample("q1", "correction", 4.0, "a", "qa", "p", "t2"),
                    HarvestedExample("q2", "positive", 5.0, None, None, "p2", "t3")])
    assert [(e.request_id, e.target) for e in s.examples()] == [("q1", "t1"), ("q2", "t3")]  # the first stays
    # an end user's example waits for review; reviewed once, with who and when
    s.add_examples([HarvestedExample("q3", "correction", 6.0, "a", "qa", "p3", "t4", "acme", "candidate")])
    assert [e.request_id for e in s.examples()] == ["q1", "q2"]
    assert [(e.request_id, e.tenant) for e in s.examples(status=("candidate",))] == [("q3", "acme")]
    assert s.review_example("q3", "correction", "approved", "ana", 7.0)
    assert not s.review_example("q3", "correction", "rejected", "bob", 8.0)
    assert [e.request_id for e in s.examples()] == ["q1", "q2", "q3"]

    s.save_run(RunRecord("run1", d1, "a", "queued", "why", None, None, 10.0, None, {}))
    s.save_run(RunRecord("run1", d1, "a", "succeeded", "why", "ds1", "/out", 10.0, 20.0, {"steps": 8}))
    assert s.run("run1") == RunRecord("run1", d1, "a", "succeeded", "why", "ds1", "/out", 10.0, 20.0, {"steps": 8})
    s.save_dataset("ds1", "/d", 1.0, {"n": 1})
    s.save_dataset("ds1", "/other", 2.0, {"n": 2})  # a dataset version is immutable
    assert s.dataset("ds1") == ("/d", 1.0, {"n": 1})

    assert s.alias_table() == (0, {})
    assert s.set_aliases({"production": {"v1": 1}}, 1.0, "me", "first") == 1
    assert s.set_aliases({"canary": {"v1": 9, "v2": 1}}, 2.0) == 2
    assert s.alias_table() == (2, {"production": {"v1": 1.0}, "canary": {"v1": 9.0, "v2": 1.0}})

    s.save_adapter(AdapterRecord("v1", "/a/v1", "run1", None, "candidate", 1.0, 1.0))
    with pytest.raises(Exception):  # a version name is never reused
        s.save_adapter(AdapterRecord("v1", "/a/other", None, None, "candidate", 2.0, 2.0))
    s.save_evaluation(EvaluationRecord("e1", 3.0, "v1", "base", False, "/r", ["golden"]))
    s.save_evaluation(EvaluationRecord("e1", 4.0, "v1", "base", True, "/r2", []))
    assert s.evaluations("v1") == [EvaluationRecord("e1", 4.0, "v1", "base", True, "/r2", [])]

    rid = s.commit(5.0, "t", "rollout-started", "v1", "go", rollout=rollout("v1"), states={"v1": "loading"})
    assert rid > 0 and s.adapter("v1").state == "loading"
    with pytest.raises(RolloutError, match="in progress"):  # one at a time
        s.commit(5.0, "t", "rollout-started", "v2", "go", rollout=rollout("v2"))
    r = s.rollouts()[0]
    assert (r.id, r.phase, r.detail) == (rid, "loading", {"k": 1})
    s.commit(6.0, "t", "loaded", "v1", rollout=RolloutRecord(**{**r.__dict__, "phase": "baking"}), expect_phase="loading",
             aliases={"production": {"v1": 1.0}})
    with pytest.raises(RolloutError, match="no longer loading"):  # another process moved it
        s.commit(7.0, "t", "loaded", "v1", rollout=r, expect_phase="loading")
    assert s.rollouts()[0].phase == "baking" and s.alias_table()[1]["production"] == {"v1": 1.0}
    assert s.claim_rollout(rid, "p1", now=10.0, lease_s=5) and not s.claim_rollout(rid, "p2", now=12.0, lease_s=5)
    assert s.claim_rollout(rid, "p2", now=15.5, lease_s=5)  # p1's lease ran out
    assert [e.kind for e in s.events("v1")][:3] == ["loaded", "rollout-started", "registered"]

    assert s.claim_occurrence("fp", "2026-01-01T00:00:00Z", 1.0)
    assert not s.claim_occurrence("fp", "2026-01-01T00:00:00Z", 2.0)
    assert s.claim_occurrence("fp", "2026-01-01T01:00:00Z", 3.0)  # a re-fire is a new occurrence
    s.release_occurrence("fp", "2026-01-01T01:00:00Z")  # its handling failed: the next delivery is handled
    assert s.claim_occurrence("fp", "2026-01-01T01:00:00Z", 4.0)

    s.publish_windows("r1", {"a": b"\x00\x01", "b": b"zz"}, now=100.0)
    s.publish_windows("r2", {"a": b"r2"}, now=90.0)
    s.publish_windows("r1", {"a": b"new"}, now=101.0)  # replaces r1's earlier windows
    assert s.published_windows(since=95.0, exclude="me") == [("r1", "a", b"new")]
    assert s.published_windows(since=0.0, exclude="r1") == [("r2", "a", b"r2")]

    # feedback the ingest holds for its request, per group and partition; saved twice, held once
    s.save_held_feedback("g", [("fb", 0, 7, "k1", b"{}"), ("fb", 1, 3, "k2", b"\x00")], [], now=1.0)
    s.save_held_feedback("g", [("fb", 0, 7, "k1", b"{}"), ("fb", 0, 9, "k3", b"{3}")], ["k2"], now=2.0)
    s.save_held_feedback("other", [("fb", 0, 1, "k9", b"{9}")], [], now=3.0)
    assert s.held_feedback("g", [("fb", 0), ("fb", 1)]) == [("fb", 0, 7, "k1", b"{}"), ("fb", 0, 9, "k3", b"{3}")]
    assert s.held_feedback("g", []) == [] and s.prune(before=1.5)["held_feedback"] == 1
    assert s.held_feedback("g", [("fb", 0)]) == [("fb", 0, 9, "k3", b"{3}")]

    assert s.leader("driftwatch") is None
    s.set_leader("driftwatch", "pod-a", "http://a", 1.0)
    s.set_leader("driftwatch", "pod-a", "http://a", 2.0)
    assert s.leader("driftwatch") == ("pod-a", "http://a", 1.0, 2.0)
    s.set_leader("driftwatch", "pod-b", "http://b", 3.0)
    assert s.leader("driftwatch") == ("pod-b", "http://b", 3.0, 3.0)
    s.close()

    again, registry = open_stores(location, location)  # reopened: everything is there, one connection for both
    assert again is registry and again.run("run1").status == "succeeded" and again.alias_table()[0] == 3
    again.close()


def test_two_connections_race_for_one_rollout_slot_and_one_wins(postgres):
    url = postgres.database(f"t{uuid.uuid4().hex[:10]}")
    stores = [open_store(url) for _ in range(4)]
    won, lost = [], []
    barrier = threading.Barrier(len(stores))

    def start(i, s):
        barrier.wait()
        try:
            won.append(s.commit(1.0, f"p{i}", "rollout-started", f"v{i}", rollout=rollout(f"v{i}")))
        except RolloutError:
            lost.append(i)

    threads = [threading.Thread(target=start, args=(i, s)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(won) == 1 and len(lost) == 3
    assert len(stores[0].rollouts()) == 1
    for s in stores:
        s.close()


def test_a_lost_connection_is_opened_again(postgres):
    url = postgres.database(f"t{uuid.uuid4().hex[:10]}")
    s = open_store(url)
    s.record_decision(1.0, "a", "retrain", "r", [])
    other = open_store(url)
    other._execute("SELECT pg_terminate_backend(?)", (s._db.info.backend_pid,))
    with pytest.raises(Exception):
        s.decisions()  # the call in flight fails: nothing is retried behind the caller's back
    assert len(s.decisions()) == 1  # the next one reconnects
    s.close()
    other.close()


def test_examples_harvested_before_the_served_request_was_kept_stay_usable(location):
    """Issue 26: the example table gained `served` (the request as served). A store written before it opens with the
    column added, its examples read back with none (single-turn chats of their prompt text), new ones keep theirs."""
    old = ("CREATE TABLE example (request_id TEXT NOT NULL, source TEXT NOT NULL, at REAL NOT NULL, adapter TEXT, "
           "route TEXT, prompt TEXT NOT NULL, target TEXT NOT NULL, tenant TEXT, status TEXT, reviewed_by TEXT, "
           "reviewed_at REAL, PRIMARY KEY (request_id, source))")
    row = "INSERT INTO example VALUES ('q0', 'correction', 1.0, 'a', 'qa', 'old prompt', 'old target', NULL, " \
          "'trusted', NULL, NULL)"
    if str(location).startswith("postgresql"):
        import psycopg

        with psycopg.connect(str(location), autocommit=True) as db:
            db.execute(old.replace(" REAL", " DOUBLE PRECISION"))
            db.execute(row)
    else:
        import sqlite3

        db = sqlite3.connect(location)
        db.execute(old)
        db.execute(row)
        db.commit()
        db.close()
    s = open_store(location)
    s.add_examples([HarvestedExample("q1", "correction", 2.0, "a", "qa", "p", "t", None, "trusted",
                                     '{"messages": [{"role": "user", "content": "p"}]}')])
    assert [(e.request_id, e.served) for e in s.examples()] == [
        ("q0", None), ("q1", '{"messages": [{"role": "user", "content": "p"}]}')]
    s.close()
