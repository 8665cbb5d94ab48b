"""OpenTelemetry traces from a topic, as the Collector's Kafka exporter writes them (both encodings), read by the
real daemon from a real broker: GenAI spans become inference events in the signals and the windows, everything else
is skipped and counted, garbage is dead-lettered, a record written twice counts once, and spans make no training
data."""

from __future__ import annotations

import json
import time
import uuid

import pytest

pytest.importorskip("opentelemetry.exporter.otlp.proto.common", reason="the otel extra (make test installs it)")

from driftwatch.client import EventProducer  # noqa: E402
from driftwatch.state.registry import AdapterRecord  # noqa: E402
from driftwatch.state.store import SqliteStore  # noqa: E402

from ..unit.test_otel import TRACE, chat, encode, http, span, vllm  # noqa: E402
from .conftest import InProcessDaemon, make_settings, read_topic, wait_for  # noqa: E402


def test_spans_from_the_collector_topics_feed_the_daemon(tansu, tmp_path):
    sfx = uuid.uuid4().hex[:8]
    proto_topic, json_topic = f"otlp-spans-{sfx}", f"otlp-json-{sfx}"
    settings = make_settings(tansu, tmp_path, ingest={"sources": [{"topic": proto_topic, "trusted": True},
                                                                  {"topic": json_topic, "format": "otlp_json"}]})
    seed = SqliteStore(settings.registry_path)  # the registry knows v1 (production) and v2
    seed.save_adapter(AdapterRecord("v1", "/adapters/v1", None, None, "production", 1.0, 1.0))
    seed.save_adapter(AdapterRecord("v2", "/adapters/v2", None, None, "candidate", 1.0, 1.0))
    seed.set_aliases({"production": {"v1": 1.0}}, at=time.time(), who="test", why="seed")
    seed.close()
    d = InProcessDaemon(settings).wait_ready()
    t = settings.kafka.topics

    # one application's batch through the Collector: chats on production (answered by v1), one failed with its
    # prompt, vLLM's own content-less spans for v2, HTTP spans around them, an embeddings call, names nobody registered
    batch_a = [chat(i, "production") for i in range(6)] + [chat(6, "v1", answer=None, error=True)]
    batch_a += [vllm(7, "v2"), vllm(8, "v2"), http(9), http(10), http(11), span(12, {"gen_ai.operation.name": "embeddings",
                                                                                      "gen_ai.request.model": "v1"})]
    batch_a += [chat(13, "gpt-4o"), chat(14, "v1\x00")]
    batch_b = [chat(20 + i, "v2", trace=TRACE + 1) for i in range(4)] + [chat(24, "v2", answer=None, trace=TRACE + 1)]
    batch_b += [http(25)]
    request_id = f"otel-{TRACE:032x}-{0x1000:016x}"  # the first chat's, as the daemon names it
    with EventProducer(kafka=settings.kafka) as producer:
        producer.send_raw(proto_topic, encode(batch_a, "otlp_proto"))
        producer.send_raw(json_topic, encode(batch_b, "otlp_json"))
        producer.send_raw(proto_topic, b"\x00\xff not an OTLP export")
        producer.send_raw(json_topic, b"{oops")
        producer.send_raw(proto_topic, encode(batch_a, "otlp_proto"))  # the Collector retried: the same spans again
        producer.feedback({"feedback_id": "fb-1", "request_id": request_id, "thumbs": "up",
                           "correction": "Order 1234 shipped on Monday."})
        producer.flush()

    def counted(topic, **outcomes):
        return all(d.value("driftwatch_ingest_records_total", topic=topic, outcome=o) == n for o, n in outcomes.items())

    wait_for(lambda: counted(proto_topic, accepted=1, duplicate=1, rejected=1) and counted(json_topic, accepted=1,
             rejected=1) and counted(t.feedback, accepted=1), 60, "every record to be counted")

    requests = {(a, s): d.value("driftwatch_requests_total", adapter=a, status=s)
                for a in ("v1", "v2", "unknown", "production", "gpt-4o") for s in ("ok", "error")}
    assert {k: v for k, v in requests.items() if v} == {("v1", "ok"): 6, ("v1", "error"): 1, ("v2", "ok"): 7,
                                                        ("unknown", "ok"): 2}
    assert d.value("driftwatch_request_latency_seconds_count", adapter="v1") == 7
    assert d.value("driftwatch_request_latency_seconds_sum", adapter="v2") == pytest.approx(7 * 0.25)
    assert d.value("driftwatch_tokens_total", adapter="v2", direction="in") == 2 * 21 + 5 * 14  # vLLM's and the chats'
    assert d.value("driftwatch_tokens_total", adapter="v2", direction="out") == 2 * 5 + 5 * 9
    spans = {o: d.value("driftwatch_otel_spans_total", outcome=o) for o in ("event", "metrics_only", "duplicate", "skipped")}
    assert spans == {"event": 6 + 1 + 2 + 4, "metrics_only": 2 + 1, "duplicate": 11, "skipped": 4 + 4 + 1}
    assert d.value("driftwatch_otel_spans_skipped_total", reason="not_genai") == 3 + 3 + 1
    assert d.value("driftwatch_otel_spans_skipped_total", reason="operation") == 2
    assert d.value("driftwatch_duplicates_total", topic=proto_topic, kind="key") == 11
    assert d.value("driftwatch_dead_letters_total", reason="invalid_field") == 1
    assert d.value("driftwatch_dead_letters_total", reason="not_json") == 1
    # the feedback on a span counts under its adapter, and makes no training example
    assert d.value("driftwatch_feedback_total", adapter="v1", sentiment="positive") == 1
    assert d.value("driftwatch_training_examples_total") == 0

    # windows: spans with content from a trusted source only (v2's content-less spans and the JSON topic's, which
    # is not marked trusted, count in the signals above and never in a window)
    views = d.daemon.monitor.fresh().views
    assert {a: (w.events, w.errors) for a, (w, _) in views.items()} == {"v1": (7, 1)}
    assert d.stop() == 0

    letters = read_topic(tansu.bootstrap, t.dead_letter, expect=2)
    assert sorted((dict(x.headers)["driftwatch.source.topic"].decode(), dict(x.headers)["driftwatch.reason"].decode(),
                   x.value) for x in letters) == [(json_topic, "not_json", b"{oops"),
                                                  (proto_topic, "invalid_field", b"\x00\xff not an OTLP export")]
    store = SqliteStore(settings.state_store_path)
    try:
        assert store.examples(status=("trusted", "approved", "candidate")) == []
    finally:
        store.close()


def test_the_collector_json_record_with_hex_ids(tansu, tmp_path):
    """otlp_json as the Collector writes it (hex ids, integer enums): the same request ids as the SDK's encoding."""
    sfx = uuid.uuid4().hex[:8]
    topic = f"otlp-json-{sfx}"
    settings = make_settings(tansu, tmp_path, ingest={"sources": [{"topic": topic, "format": "otlp_json"}]},
                             gateway={"serve_base_model": True, "base_model": "llama-3-8b"})
    d = InProcessDaemon(settings).wait_ready()
    doc = json.loads(encode([chat(1, "llama-3-8b"), chat(2, "llama-3-8b", error=True)], "otlp_json"))
    for i, s in enumerate(doc["resourceSpans"][0]["scopeSpans"][0]["spans"]):
        s["traceId"], s["spanId"], s["kind"] = f"{TRACE:032x}", f"{0x1001 + i:016x}", 3
        s["status"] = {"code": 2} if i else {}
    # one key: one partition, so the two-span record is read first (unkeyed, they may land on two partitions and be
    # read in either order; the one-span record first makes the two-span one half new, counted as accepted)
    with EventProducer(kafka=settings.kafka) as producer:
        producer.send_raw(topic, json.dumps(doc).encode(), key=b"trace")
        producer.send_raw(topic, encode([chat(1, "llama-3-8b")], "otlp_json"), key=b"trace")  # the SDK's, of the first
        producer.flush()
    wait_for(lambda: d.value("driftwatch_ingest_records_total", topic=topic, outcome="duplicate") == 1, 60,
             "both records to be counted")
    assert d.value("driftwatch_requests_total", adapter="llama-3-8b", status="ok") == 1  # the base, as the gateway serves it
    assert d.value("driftwatch_requests_total", adapter="llama-3-8b", status="error") == 1
    assert d.value("driftwatch_duplicates_total", topic=topic, kind="key") == 1
    assert d.stop() == 0
