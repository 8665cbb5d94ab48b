import json

import pytest

from driftwatch.events import (MAX_ID_CHARS, FeedbackEvent, InferenceEvent, Reason, Rejected, decode, encode)

GOOD = {
    "schema_version": 1, "request_id": "r-1", "timestamp": 1795514400000, "model": "base", "adapter": "support-v3",
    "alias": "production", "prompt": "What is the capital of France?", "response": "Paris.", "latency_ms": 812.5,
    "tokens_in": 9, "tokens_out": 3, "status": "ok", "route": "qa", "tenant": "acme", "metadata": {"region": "eu"},
}
FEEDBACK = {"schema_version": 1, "feedback_id": "f-1", "request_id": "r-1", "timestamp": "2026-11-24T10:00:00Z",
            "thumbs": "down", "correction": "Paris is the capital of France.", "label": "incomplete"}


def raw(obj) -> bytes:
    return json.dumps(obj).encode()


def test_good_inference_event_decodes_with_all_fields():
    ev = decode("inference", raw(GOOD), 10_000)
    assert isinstance(ev, InferenceEvent)
    assert (ev.adapter, ev.alias, ev.status, ev.tokens_out, ev.metadata) == ("support-v3", "production", "ok", 3, {"region": "eu"})


def test_timestamp_accepts_epoch_ms_and_rfc3339():
    a = decode("inference", raw({**GOOD, "timestamp": "2026-11-24T10:00:00.250+00:00"}), 10_000)
    b = decode("inference", raw({**GOOD, "timestamp": 1795514400250}), 10_000)
    assert a.timestamp == b.timestamp == 1795514400250
    naive = decode("inference", raw({**GOOD, "timestamp": "2026-11-24T10:00:00"}), 10_000)
    assert isinstance(naive, Rejected) and "UTC offset" in naive.detail


def test_chat_messages_instead_of_prompt_and_one_is_required():
    chat = {k: v for k, v in GOOD.items() if k != "prompt"}
    ev = decode("inference", raw({**chat, "messages": [{"role": "user", "content": "hi"}]}), 10_000)
    assert isinstance(ev, InferenceEvent) and ev.messages[0].content == "hi"
    neither = decode("inference", raw(chat), 10_000)
    assert isinstance(neither, Rejected) and "'prompt' or 'messages'" in neither.detail


def test_unknown_fields_are_ignored_but_unknown_major_version_is_rejected():
    assert isinstance(decode("inference", raw({**GOOD, "new_in_v1_5": [1, 2]}), 10_000), InferenceEvent)
    rej = decode("inference", raw({**GOOD, "schema_version": 2}), 10_000)
    assert rej.reason is Reason.UNSUPPORTED_SCHEMA_VERSION and "2" in rej.detail


@pytest.mark.parametrize("value, reason", [
    (None, Reason.EMPTY),
    (b"", Reason.EMPTY),
    (b"x" * 2000, Reason.OVERSIZE),
    (raw(GOOD).replace(b"Paris.", b"Par\xc3\x28s."), Reason.BAD_UTF8),
    (b"status=ok latency=3", Reason.NOT_JSON),
    (b"[1, 2]", Reason.NOT_OBJECT),
    (b'"a string"', Reason.NOT_OBJECT),
    (raw({k: v for k, v in GOOD.items() if k != "adapter"}), Reason.MISSING_FIELD),
    (raw({k: v for k, v in GOOD.items() if k != "schema_version"}), Reason.MISSING_FIELD),
    (raw({**GOOD, "latency_ms": "fast"}), Reason.INVALID_FIELD),
    (raw({**GOOD, "latency_ms": -1}), Reason.INVALID_FIELD),
    (raw({**GOOD, "status": "maybe"}), Reason.INVALID_FIELD),
    (raw({**GOOD, "schema_version": "1"}), Reason.INVALID_FIELD),
    (raw({**GOOD, "request_id": "x" * (MAX_ID_CHARS + 1)}), Reason.INVALID_FIELD),
    (raw({**GOOD, "timestamp": 12}), Reason.INVALID_FIELD),
    (raw({**GOOD, "tokens_in": True}), Reason.INVALID_FIELD),
])
def test_each_bad_record_gets_its_reason(value, reason):
    result = decode("inference", value, 1500)
    assert isinstance(result, Rejected), result
    assert result.reason is reason, result.detail
    assert result.detail


def test_feedback_decodes_and_needs_a_verdict():
    fb = decode("feedback", raw(FEEDBACK), 10_000)
    assert isinstance(fb, FeedbackEvent) and fb.sentiment == "negative" and fb.dedup_key == "r-1\x00rating\x00vouched"
    bare = {k: v for k, v in FEEDBACK.items() if k not in ("thumbs", "correction")}
    assert decode("feedback", raw(bare), 10_000).reason is Reason.INVALID_FIELD
    assert decode("feedback", raw({**bare, "rating": 6}), 10_000).reason is Reason.INVALID_FIELD


@pytest.mark.parametrize("fields, sentiment", [
    ({"thumbs": "up"}, "positive"), ({"thumbs": "down"}, "negative"), ({"rating": 5}, "positive"),
    ({"rating": 3}, "neutral"), ({"rating": 1}, "negative"), ({"correction": "better"}, "negative"),
    ({"thumbs": "up", "correction": "tiny fix"}, "positive"),
])
def test_feedback_sentiment(fields, sentiment):
    base = {"schema_version": 1, "feedback_id": "f", "request_id": "r", "timestamp": 1795514400000}
    assert FeedbackEvent.model_validate({**base, **fields}).sentiment == sentiment


def test_encode_round_trips_and_omits_empty_fields():
    ev = decode("inference", raw(GOOD), 10_000)
    wire = encode(ev)
    assert b"error_type" not in wire
    assert decode("inference", wire, 10_000) == ev


def test_a_nan_latency_is_dead_lettered_as_not_a_finite_number():
    """It said 'Input should be less than or equal to 86400000' for NaN."""
    raw = (b'{"schema_version":1,"request_id":"a","timestamp":1795514400000,"model":"m","adapter":"a","prompt":"p",'
           b'"latency_ms":NaN,"status":"ok"}')
    rejected = decode("inference", raw, 10_000)
    assert rejected.detail == "latency_ms: Input should be a finite number"
