import hashlib
import json

import pytest

from driftwatch.errors import DeadLetterError
from driftwatch.ingest.pipeline import Ingestor, OffsetJournal
from driftwatch.metrics import Metrics
from driftwatch.ingest.recent import DedupWindow

from .fakes import FakeSink, FakeSource, Rec
from .test_events import FEEDBACK, GOOD


def ev(rid, **kw):
    return json.dumps({**GOOD, "request_id": rid, **kw}).encode()


def make(batches, journal=None, max_bytes=10_000, dl_max=1_000_000, head=16, **kw):
    source, sink, metrics = FakeSource(batches), FakeSink(), Metrics()
    seen = []
    ing = Ingestor(source, sink, metrics, kinds={"inf": "inference", "fb": "feedback"}, max_record_bytes=max_bytes,
                   dedup=DedupWindow(1000, 3600), journal=journal, downstream=seen.extend, group_id="g",
                   dead_letter_head_bytes=head, dead_letter_max_bytes=dl_max, **kw)
    return ing, source, sink, metrics, seen


def sample(metrics, name, **labels):
    return metrics.registry.get_sample_value(name, labels) or 0.0


def step(ing):
    batch = ing.poll()
    ing.finish(batch)
    return batch


def test_every_record_gets_exactly_one_outcome_and_offsets_commit_after_processing():
    batch = [Rec("inf", 0, 10, ev("a")), Rec("inf", 0, 11, b"{oops"), Rec("inf", 1, 5, ev("a")),
             Rec("fb", 0, 3, json.dumps({**FEEDBACK, "request_id": "a"}).encode()), Rec("inf", 1, 6, None)]
    ing, source, sink, m, seen = make([batch])
    step(ing)
    assert [kind for kind, *_ in seen] == ["inference", "feedback"]
    assert sample(m, "driftwatch_ingest_records_total", topic="inf", outcome="accepted") == 1
    assert sample(m, "driftwatch_ingest_records_total", topic="inf", outcome="rejected") == 2
    assert sample(m, "driftwatch_ingest_records_total", topic="inf", outcome="duplicate") == 1
    assert sample(m, "driftwatch_ingest_records_total", topic="fb", outcome="accepted") == 1
    assert sample(m, "driftwatch_duplicates_total", topic="inf", kind="key") == 1
    assert sample(m, "driftwatch_dead_letters_total", reason="not_json") == 1
    assert sample(m, "driftwatch_dead_letters_total", reason="empty") == 1
    assert source.commits == [{("inf", 0): 12, ("inf", 1): 7, ("fb", 0): 4}]
    assert sample(m, "driftwatch_consumer_lag_records", topic="inf", partition="0") == 3


def test_dead_letter_keeps_original_bytes_and_names_reason_and_source():
    ing, _, sink, *_ = make([[Rec("inf", 2, 41, b"[1]", key=b"k1", headers=[("trace", b"t")])]])
    step(ing)
    (letter,) = sink.delivered
    h = dict(letter.headers)
    assert letter.value == b"[1]" and letter.key == b"k1"
    assert h["trace"] == b"t"
    assert h["driftwatch.reason"] == b"not_object"
    assert (h["driftwatch.source.topic"], h["driftwatch.source.partition"], h["driftwatch.source.offset"]) == (b"inf", b"2", b"41")
    assert h["driftwatch.group"] == b"g" and h["driftwatch.detail"]


def test_dead_letter_above_producer_limit_keeps_head_size_and_hash():
    big = b"x" * 5000
    ing, _, sink, *_ = make([[Rec("inf", 0, 0, big)]], max_bytes=1000, dl_max=2000, head=16)
    step(ing)
    (letter,) = sink.delivered
    h = dict(letter.headers)
    assert letter.value == big[:16]
    assert h["driftwatch.reason"] == b"oversize" and h["driftwatch.truncated"] == b"true"
    assert h["driftwatch.original_bytes"] == b"5000"
    assert h["driftwatch.original_sha256"] == hashlib.sha256(big).hexdigest().encode()


def test_nothing_is_committed_while_dead_letters_are_not_acknowledged():
    ing, source, sink, m, _ = make([[Rec("inf", 0, 0, ev("a")), Rec("inf", 0, 1, b"nope")]])
    sink.down = True
    batch = ing.poll()
    with pytest.raises(DeadLetterError) as info:
        ing.finish(batch)
    assert source.commits == [] and len(info.value.pending) == 1
    sink.down = False
    batch.dead_letters = info.value.pending
    ing.finish(batch)
    assert source.commits == [{("inf", 0): 2}] and len(sink.delivered) == 1
    assert sample(m, "driftwatch_dead_letters_total", reason="not_json") == 1


def test_failed_commit_is_counted_and_redelivery_is_a_duplicate_not_a_new_event():
    same = [Rec("inf", 0, 0, ev("a")), Rec("inf", 0, 1, b"bad")]
    ing, source, sink, m, seen = make([same, same])
    source.fail_commit = True
    step(ing)
    assert sample(m, "driftwatch_offset_commits_total", outcome="failed") == 1
    source.fail_commit = False
    step(ing)  # the broker hands the same records again
    assert len(seen) == 1 and len(sink.delivered) == 1
    assert sample(m, "driftwatch_duplicates_total", topic="inf", kind="redelivery") == 2
    assert sample(m, "driftwatch_ingest_records_total", topic="inf", outcome="accepted") == 1


def test_journal_turns_post_crash_redelivery_into_duplicates(tmp_path):
    path = tmp_path / "offsets.json"
    batch = [Rec("inf", 0, 100, ev("a")), Rec("inf", 0, 101, ev("b"))]
    ing, source, *_ = make([batch], journal=OffsetJournal(path))
    processed = ing.poll()
    ing.journal.record(processed.ranges)  # processed and journaled ... then kill -9 before the commit
    # restart: empty memory, same state dir; the broker redelivers from the last commit (100)
    ing2, source2, sink2, m2, seen2 = make([batch + [Rec("inf", 0, 102, ev("c"))]], journal=OffsetJournal(path))
    step(ing2)
    assert [e.request_id for _, e, *_ in seen2] == ["c"]
    assert sample(m2, "driftwatch_duplicates_total", topic="inf", kind="redelivery") == 2
    assert source2.commits == [{("inf", 0): 103}]


def test_journal_entry_is_dropped_when_the_partition_resumes_elsewhere(tmp_path):
    path = tmp_path / "offsets.json"
    OffsetJournal(path).record({("inf", 0): (100, 102)})
    # another replica moved the partition on to 500: the old range says nothing about these records
    ing, _, _, m, seen = make([[Rec("inf", 0, 500, ev("x"))], [Rec("inf", 0, 101, ev("y"))]], journal=OffsetJournal(path))
    step(ing)
    step(ing)
    assert [e.request_id for _, e, *_ in seen] == ["x", "y"]
    assert sample(m, "driftwatch_duplicates_total", topic="inf", kind="redelivery") == 0


def test_feedback_is_attributed_to_the_adapter_that_served_the_request():
    """The one join: the ingestor labels each inference event once (capped) and gives feedback its request's label
    (and the request, for the harvest); signals count by that label."""
    from driftwatch.metrics import LabelCap
    from driftwatch.monitor.signals import AdapterSignals

    fb = lambda rid, fid: json.dumps({**FEEDBACK, "request_id": rid, "feedback_id": fid}).encode()  # noqa: E731
    ing, _, _, m, seen = make([[Rec("inf", 0, 0, ev("r-1", adapter="v7", tokens_in=9, tokens_out=3)),
                                Rec("inf", 0, 1, ev("r-2", adapter="v8")), Rec("fb", 0, 0, fb("r-1", "f-1")),
                                Rec("fb", 0, 1, fb("r-2", "f-2")), Rec("fb", 0, 2, fb("never-seen", "f-3"))]],
                              feedback_hold_s=0, label=LabelCap(1))
    step(ing)
    assert [(kind, e.request_id, adapter) for kind, e, adapter, _ in seen] == [
        ("inference", "r-1", "v7"), ("inference", "r-2", "other"), ("feedback", "r-1", "v7"),
        ("feedback", "r-2", "other"), ("feedback", "never-seen", "unknown")]
    AdapterSignals(m)(seen)
    assert sample(m, "driftwatch_requests_total", adapter="v7", status="ok") == 1
    assert sample(m, "driftwatch_request_latency_seconds_sum", adapter="v7") == pytest.approx(0.8125)
    assert sample(m, "driftwatch_tokens_total", adapter="v7", direction="out") == 3
    assert sample(m, "driftwatch_feedback_total", adapter="v7", sentiment="negative") == 1
    assert sample(m, "driftwatch_feedback_total", adapter="other", sentiment="negative") == 1
    assert sample(m, "driftwatch_feedback_total", adapter="unknown", sentiment="negative") == 1


def test_the_join_keeps_the_event_of_the_last_requests_only():
    """Harvesting needs the request's text; the join keeps it for the last ``max_kept`` requests, the label for all."""
    from driftwatch.retrain.harvest import example

    fb = lambda rid: json.dumps({**FEEDBACK, "request_id": rid, "feedback_id": f"f-{rid}", "thumbs": "up",
                                      "correction": None}).encode()  # noqa: E731
    saved = []
    ing, _, _, _, seen = make([[Rec("inf", 0, i, ev(f"r-{i}")) for i in range(3)] + [
        Rec("fb", 0, i, fb(f"r-{i}")) for i in range(3)]], harvest=example, save_examples=saved.extend, max_kept=2)
    step(ing)
    assert [it.request is not None for it in seen if it.kind == "feedback"] == [False, True, True]
    assert [(e.request_id, e.source) for e in saved] == [("r-1", "positive"), ("r-2", "positive")]


def test_a_polls_feedback_is_handed_on_after_its_inference_events():
    """kafka-python returns a poll partition by partition, the feedback topic's possibly first: the feedback for a
    request whose inference event is in the same poll must still find the adapter that served it."""
    fb = json.dumps({**FEEDBACK, "request_id": "r-9"}).encode()
    ing, _, _, _, seen = make([[Rec("fb", 0, 1, fb), Rec("inf", 0, 7, ev("r-8")), Rec("inf", 1, 4, ev("r-9"))]])
    step(ing)
    assert [(kind, e.request_id) for kind, e, *_ in seen] == [("inference", "r-8"), ("inference", "r-9"),
                                                          ("feedback", "r-9")]


def test_feedback_read_before_its_request_waits_for_it_then_is_handed_on_alone():
    """One topic can lag the other by whole polls: feedback read first waits (feedback_hold_s) for its request's
    inference event and follows it; feedback whose request never comes is handed on when its time is up."""
    clock = [0.0]

    def fb(rid, fid):
        return json.dumps({**FEEDBACK, "request_id": rid, "feedback_id": fid}).encode()

    ing, source, _, m, seen = make([[Rec("fb", 0, 1, fb("r-9", "f-1")), Rec("fb", 0, 2, fb("r-7", "f-2"))],
                                    [Rec("inf", 0, 7, ev("r-8")), Rec("inf", 0, 8, ev("r-9"))], [], []],
                                   feedback_hold_s=10, clock=lambda: clock[0])
    step(ing)
    assert seen == [] and sample(m, "driftwatch_feedback_held") == 2
    assert source.commits == [{("fb", 0): 3}]  # held and committed (with a store, saved first: see below)
    step(ing)
    assert [(kind, e.request_id) for kind, e, *_ in seen] == [("inference", "r-8"), ("inference", "r-9"),
                                                          ("feedback", "r-9")]
    assert sample(m, "driftwatch_feedback_held") == 1
    clock[0] = 9.9
    assert ing.poll() is None and len(seen) == 3
    clock[0] = 10.0
    assert ing.poll() is None and [(kind, e.request_id) for kind, e, *_ in seen[3:]] == [("feedback", "r-7")]
    assert sample(m, "driftwatch_feedback_held") == 0


def test_held_feedback_is_bounded():
    batch = [Rec("fb", 0, i, json.dumps({**FEEDBACK, "request_id": f"r-{i}", "feedback_id": f"f-{i}"}).encode())
             for i in range(5)]
    ing, _, _, m, seen = make([batch], max_held=3)
    step(ing)
    assert [e.request_id for _, e, *_ in seen] == ["r-0", "r-1"] and sample(m, "driftwatch_feedback_held") == 3


def test_a_kill_between_processing_and_the_journal_counts_the_batch_once(tmp_path):
    """Finding 8: the counters moved in process(), the journal was written in finish(); a daemon killed in between
    exported the batch, and the next process counted it again as new (100,500 accepted for 100,000 sent)."""
    path = tmp_path / "offsets.json"
    batch = [Rec("inf", 0, 100, ev("a")), Rec("inf", 0, 101, ev("b")), Rec("inf", 0, 102, b"bad")]
    ing, _, _, m, _ = make([batch], journal=OffsetJournal(path))
    ing.poll()  # processed ... then kill -9 before finish(): nothing journalled, nothing committed
    ing2, _, sink2, m2, _ = make([batch], journal=OffsetJournal(path))
    step(ing2)
    accepted = lambda metrics: sample(metrics, "driftwatch_ingest_records_total", topic="inf", outcome="accepted")  # noqa: E731
    assert accepted(m) + accepted(m2) == 2
    assert sample(m, "driftwatch_dead_letters_total", reason="not_json") == 0 and len(sink2.delivered) == 1
    # killed after the journal but before the commit: the redelivery is counted as duplicates, never as new
    ing3, _, _, m3, _ = make([batch], journal=OffsetJournal(path))
    step(ing3)
    assert accepted(m3) == 0 and sample(m3, "driftwatch_duplicates_total", topic="inf", kind="redelivery") == 3


def held_rig(store, batches, assigned, clock=lambda: 0.0):
    """An ingestor that harvests into ``store`` and keeps held feedback there, on a source assigned ``assigned``."""
    from driftwatch.retrain.harvest import example

    ing, source, _, m, seen = make(batches, harvest=example, save_examples=store.add_examples, max_kept=100,
                                   held_feedback=store, feedback_hold_s=10, clock=clock)
    source.assigned = frozenset(assigned)
    return ing, source, m, seen


def test_feedback_held_for_its_request_survives_a_crash_and_is_harvested_when_the_request_comes(tmp_path):
    """Finding 5: feedback held while it waits for its request had its offset committed with its batch, and lived in
    memory only: a daemon killed meanwhile lost that correction from harvesting (its record is never read again)."""
    from driftwatch.state.store import SqliteStore

    store = SqliteStore(tmp_path / "state.db")
    fb = json.dumps({**FEEDBACK, "request_id": "r-9", "feedback_id": "f-9"}).encode()  # a correction
    ing, source, m, _ = held_rig(store, [[Rec("fb", 0, 4, fb)]], {("fb", 0), ("inf", 0)})
    step(ing)
    assert source.commits == [{("fb", 0): 5}] and sample(m, "driftwatch_feedback_held") == 1
    # kill -9: the request's inference event was not read yet (not committed: the next process reads it)
    ing2, _, m2, seen2 = held_rig(store, [[Rec("inf", 0, 7, ev("r-9"))]], {("fb", 0), ("inf", 0)})
    step(ing2)
    assert [(kind, e.request_id, req is not None) for kind, e, _, req in seen2] == [
        ("inference", "r-9", False), ("feedback", "r-9", True)]
    assert [(e.request_id, e.source) for e in store.examples(status=("trusted", "candidate"))] == [
        ("r-9", "correction")]
    assert sample(m2, "driftwatch_feedback_held") == 0 and store.held_feedback("g", [("fb", 0)]) == []
    # a third process holds nothing: the joined feedback was deleted with the batch that joined it
    ing3, _, m3, seen3 = held_rig(store, [[]], {("fb", 0), ("inf", 0)})
    ing3.poll()
    assert sample(m3, "driftwatch_feedback_held") == 0 and seen3 == []


def test_held_feedback_moves_with_its_partition_and_is_handed_on_once():
    """A rebalance moves a feedback partition: the member that loses it forgets what it held from it (no hand-on:
    the new owner loads it from the store); feedback whose request never comes is handed on once, then deleted."""
    import tempfile
    from pathlib import Path

    from driftwatch.state.store import SqliteStore

    store = SqliteStore(Path(tempfile.mkdtemp()) / "state.db")
    clock = [0.0]
    fb = lambda rid, p, o: Rec("fb", p, o, json.dumps({**FEEDBACK, "request_id": rid, "feedback_id": rid}).encode())  # noqa: E731
    a, a_source, a_m, a_seen = held_rig(store, [[fb("r-1", 0, 1), fb("r-2", 1, 1)], [], []],
                                        {("fb", 0), ("fb", 1)}, clock=lambda: clock[0])
    step(a)
    assert sample(a_m, "driftwatch_feedback_held") == 2
    a_source.assigned = frozenset({("fb", 0)})  # fb-1 went to b
    b, b_source, b_m, b_seen = held_rig(store, [[], []], {("fb", 1)}, clock=lambda: clock[0])
    assert a.poll() is None and b.poll() is None
    assert sample(a_m, "driftwatch_feedback_held") == 1 and sample(b_m, "driftwatch_feedback_held") == 1
    clock[0] = 10.0  # neither request came: each is handed on once, by its partition's owner
    a.poll(), b.poll()
    assert [e.request_id for _, e, *_ in a_seen] == ["r-1"] and [e.request_id for _, e, *_ in b_seen] == ["r-2"]
    assert store.held_feedback("g", [("fb", 0), ("fb", 1)]) == []  # deleted once handed on
    assert a.poll() is None and b.poll() is None and len(a_seen) == len(b_seen) == 1


def test_held_feedback_read_again_after_it_was_loaded_is_a_redelivery_not_a_second_hand_on(tmp_path):
    """The previous owner saved the held correction, then died before its commit: the next one loads it and reads
    its record again. Handed on once, with its request; the record counts as a redelivery."""
    from driftwatch.state.store import SqliteStore

    store = SqliteStore(tmp_path / "state.db")
    fb = Rec("fb", 0, 4, json.dumps({**FEEDBACK, "request_id": "r-9", "feedback_id": "f-9"}).encode())
    ing, *_ = held_rig(store, [[fb]], {("fb", 0), ("inf", 0)})
    batch = ing.poll()
    ing._save_held()  # saved ... and killed before the journal and the commit
    assert batch.offsets == {("fb", 0): 5}
    ing2, _, m2, seen2 = held_rig(store, [[Rec("inf", 0, 7, ev("r-9")), fb]], {("fb", 0), ("inf", 0)})
    step(ing2)
    assert [(kind, e.request_id) for kind, e, *_ in seen2] == [("inference", "r-9"), ("feedback", "r-9")]
    assert sample(m2, "driftwatch_duplicates_total", topic="fb", kind="redelivery") == 1


def test_a_store_that_cannot_load_during_a_rebalance_still_forgets_the_lost_partition():
    """Loading what a gained partition holds failed, and the member kept handing on what it held from the partition
    it lost: the new owner handed it on too. The loss is applied first; the load alone is retried."""
    import tempfile
    from pathlib import Path

    from driftwatch.errors import StoreError
    from driftwatch.state.store import SqliteStore

    class Flaky(SqliteStore):
        fail = 0

        def held_feedback(self, group, partitions):
            if self.fail:
                self.fail -= 1
                raise StoreError("PostgresStore: OperationalError: the server closed the connection")
            return super().held_feedback(group, partitions)

    store = Flaky(Path(tempfile.mkdtemp()) / "state.db")
    fb = lambda rid, p: Rec("fb", p, 1, json.dumps({**FEEDBACK, "request_id": rid, "feedback_id": rid}).encode())  # noqa: E731
    a, a_source, a_m, _ = held_rig(store, [[fb("r-0", 0)], [], []], {("fb", 0), ("fb", 1)})
    step(a)
    b, *_ = held_rig(store, [[fb("r-2", 2)]], {("fb", 2)})
    step(b)
    store.fail = 1
    a_source.assigned = frozenset({("fb", 1), ("fb", 2)})  # lost fb-0, gained fb-2, in one rebalance
    assert a.poll() is None and sample(a_m, "driftwatch_feedback_held") == 0  # fb-0 forgotten, fb-2 not loaded yet
    assert a.poll() is None and sample(a_m, "driftwatch_feedback_held") == 1  # loaded on the next poll
