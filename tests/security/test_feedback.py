"""Feedback is a receipt, not a claim: a hostile client with no credentials cannot rate what it was not answered,
cannot outvote the rule's sample size by repeating itself, and cannot write training data by itself."""

from __future__ import annotations

import time

import httpx
from click.testing import CliRunner

from driftwatch.cli import main
from driftwatch.config import Settings
from driftwatch.events import decode
from driftwatch.serving.gateway import RECEIPT_HEADER, Receipts

from tests.integration.conftest import InProcessDaemon, read_topic, wait_for

from .conftest import Gateway

CALLER_TOKEN = "crm-caller-token-0123456789"


def chat(g, text="hi"):
    return httpx.post(g.url + "/v1/chat/completions", timeout=30,
                      json={"model": "production", "messages": [{"role": "user", "content": text}]})


def feedback(g, body, **headers):
    return httpx.post(g.url + "/v1/feedback", json=body, headers=headers, timeout=30)


def test_feedback_needs_the_answers_receipt_or_an_authenticated_caller(tansu, upstream, tmp_path):
    g = Gateway(tansu, tmp_path, upstream, feedback_secret="s" * 32, feedback_callers=f"crm:{CALLER_TOKEN}")
    try:
        answered = chat(g)
        rid, receipt = answered.headers["x-request-id"], answered.headers[RECEIPT_HEADER]
        other = chat(g).headers[RECEIPT_HEADER]
        assert feedback(g, {"request_id": rid, "thumbs": "down"}).status_code == 401  # a claim, no receipt
        forged = receipt[:-2] + ("AA" if receipt[-2:] != "AA" else "BB")
        assert feedback(g, {"feedback_token": forged, "thumbs": "down"}).status_code == 401
        foreign = Receipts(b"another-key", 60).issue(rid, "v1")
        assert feedback(g, {"feedback_token": foreign, "thumbs": "down"}).status_code == 401
        expired = Receipts(b"s" * 32, 60).issue(rid, "v1", now=time.time() - 120)
        assert feedback(g, {"feedback_token": expired, "thumbs": "down"}).status_code == 401
        assert feedback(g, {"feedback_token": other, "request_id": rid, "thumbs": "down"}).status_code == 403
        assert feedback(g, {"request_id": rid, "thumbs": "down"}, authorization="Bearer not-a-caller").status_code == 401
        assert feedback(g, {"feedback_token": 7, "thumbs": "up"}).status_code == 401
        surrogate = httpx.post(g.url + "/v1/feedback", content=b'{"feedback_token": "\\ud800.abc", "thumbs": "up"}',
                               timeout=30)
        assert surrogate.status_code == 401
        # a bearer that is not a feedback caller's (an authenticating proxy's, a client's OpenAI key) changes nothing
        assert feedback(g, {"feedback_token": receipt, "rating": 1}, authorization="Bearer sk-user").status_code == 202
        ok = feedback(g, {"feedback_token": receipt, "thumbs": "down", "correction": "better"})
        by_header = feedback(g, {"rating": 5}, **{RECEIPT_HEADER: receipt})
        by_caller = feedback(g, {"request_id": rid, "thumbs": "up"}, authorization=f"Bearer {CALLER_TOKEN}")
        assert [ok.status_code, by_header.status_code, by_caller.status_code] == [202, 202, 202]
        events = [decode("feedback", r.value, 10**7) for r in read_topic(tansu.bootstrap, g.settings.kafka.topics.feedback, 4)]
        assert [(e.request_id, e.origin, e.caller) for e in events] == [(rid, "receipt", None)] * 3 + [(rid, "caller", "crm")]
    finally:
        g.close()


def test_one_client_cannot_trip_the_feedback_rule_or_write_training_data(tansu, upstream, tmp_path, monkeypatch):
    """The finding: one request, then 60 thumbs-down on it, gave a retrain decision; a correction posted on one's own
    request became a training example word for word. Nor may 60 requests of one's own, each rated down (anyone can
    collect receipts): anonymous end users' feedback is counted in metrics, never in the windows rules read."""
    g = Gateway(tansu, tmp_path, upstream, feedback_secret="s" * 32)
    doc = g.settings.model_dump(mode="json")
    doc["monitor"] = {**doc["monitor"], "check_interval_s": 0.2}
    doc["retrain"] = {**doc["retrain"], "window_hours": 1}
    d = InProcessDaemon(Settings.model_validate(doc)).wait_ready()
    try:
        answered = chat(g, "what is the refund policy?")
        receipt = answered.headers[RECEIPT_HEADER]
        codes = {feedback(g, {"feedback_token": receipt, "thumbs": "down", "correction": "Refunds: never."}).status_code
                 for _ in range(60)}
        others = [chat(g, f"question {i}").headers[RECEIPT_HEADER] for i in range(60)]
        codes |= {feedback(g, {"feedback_token": r, "thumbs": "down"}).status_code for r in others}
        assert codes == {202}
        wait_for(lambda: d.accepted(g.settings.kafka.topics.feedback) == 61 and
                 d.value("driftwatch_duplicates_total") >= 59, 60, "the daemon to read all 120 ratings")
        checked = d.value("driftwatch_last_check_timestamp_seconds")
        wait_for(lambda: d.value("driftwatch_last_check_timestamp_seconds") > checked + 0.5, 30, "a check after them")
        store = d.daemon.control.store
        assert [x for x in store.decisions() if x.action == "retrain"] == []
        assert d.value("driftwatch_feedback_total", adapter="v1", sentiment="negative") == 61  # counted once each
        assert d.daemon.control.snapshot.adapters["v1"].feedback_count == 0  # and none of it in the window
        # the correction waits for a person: not in what a dataset may use
        wait_for(lambda: store.examples(status=("candidate",)), 30, "the correction to be harvested")
        (candidate,) = store.examples(status=("candidate",))
        assert candidate.target == "Refunds: never." and store.examples() == []
        config = tmp_path / "c.yaml"
        import yaml

        config.write_text(yaml.safe_dump(doc))
        listed = CliRunner().invoke(main, ["examples", "list", "-c", str(config)])
        example_id = f"{candidate.request_id}/{candidate.source}"
        assert listed.exit_code == 0 and example_id in listed.output and "1 candidate example(s)" in listed.output
        monkeypatch.setenv("USER", "reviewer-ana")
        assert CliRunner().invoke(main, ["examples", "approve", example_id, "-c", str(config)]).exit_code == 0
        assert [e.target for e in store.examples()] == ["Refunds: never."]
        again = CliRunner().invoke(main, ["examples", "reject", example_id, "-c", str(config)])
        assert again.exit_code == 1 and "no candidate" in again.output  # reviewed once
    finally:
        d.stop()
        g.close()
