"""OpenTelemetry spans as inference events (ingest/otel.py): records encoded by the OpenTelemetry SDK's own OTLP
encoder, in both encodings the Collector's Kafka exporter writes; the mapping, what is skipped and counted, hostile
records, and the ingest step around them."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time

import pytest

pytest.importorskip("opentelemetry.exporter.otlp.proto.common", reason="the otel extra (make test installs it)")

from google.protobuf.json_format import MessageToJson  # noqa: E402
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans  # noqa: E402
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue  # noqa: E402
from opentelemetry.sdk.resources import Resource  # noqa: E402
from opentelemetry.sdk.trace import Event, ReadableSpan  # noqa: E402
from opentelemetry.sdk.util.instrumentation import InstrumentationScope  # noqa: E402
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags  # noqa: E402
from opentelemetry.trace.status import Status, StatusCode  # noqa: E402

from driftwatch.config import load_settings  # noqa: E402
from driftwatch.errors import ConfigError  # noqa: E402
from driftwatch.events import MAX_MESSAGES, MAX_TEXT_CHARS, InferenceEvent, Rejected  # noqa: E402
from driftwatch.ingest.otel import Decoded, SpanDecoder  # noqa: E402
from driftwatch.ingest.pipeline import Ingestor, windowed  # noqa: E402
from driftwatch.ingest.recent import DedupWindow  # noqa: E402
from driftwatch.metrics import Metrics  # noqa: E402
from driftwatch.retrain import harvest  # noqa: E402
from driftwatch.state.names import ModelNames  # noqa: E402

from .fakes import FakeSink, FakeSource, Rec  # noqa: E402
from .test_events import GOOD  # noqa: E402

T0 = 1_795_514_400_000_000_000  # 2026-11-24T10:00:00Z in ns
TRACE = 0x5B8EFFF798038103D269B633813FC60C
FORMATS = ("otlp_proto", "otlp_json")


# -- spans, as an instrumented application's SDK would hand them to its exporter -----------------------------------------
def span(n: int, attrs: dict, *, events=(), error: bool = False, name: str = "chat v1", trace: int = TRACE,
         start: int = T0, ms: float = 250.0, service: str = "support-bot") -> ReadableSpan:
    return ReadableSpan(
        name=name, context=SpanContext(trace, 0x1000 + n, is_remote=False, trace_flags=TraceFlags(1)),
        attributes=attrs, events=[Event(ev, a, start + 1) for ev, a in events],
        status=Status(StatusCode.ERROR, "failed") if error else Status(StatusCode.UNSET),
        start_time=start, end_time=start + int(ms * 1e6), kind=SpanKind.CLIENT,
        resource=Resource({"service.name": service}), instrumentation_scope=InstrumentationScope("test"))


def chat(n: int, model: str = "v1", prompt: str = "Where is my order 1234?", answer: str | None = "It shipped.",
         **kw) -> ReadableSpan:
    """A chat span as the current GenAI conventions write it (content in gen_ai.input/output.messages)."""
    attrs = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": model,
             "gen_ai.response.model": model, "gen_ai.usage.input_tokens": 14, "gen_ai.usage.output_tokens": 9,
             "gen_ai.input.messages": json.dumps([{"role": "user", "parts": [{"type": "text", "content": prompt}]}])}
    if answer is not None:
        attrs["gen_ai.output.messages"] = json.dumps(
            [{"role": "assistant", "parts": [{"type": "text", "content": answer}], "finish_reason": "stop"}])
    return span(n, attrs, **kw)


def vllm(n: int, model: str = "v1", **kw) -> ReadableSpan:
    """vLLM's own request span: no operation name, no content; usage and the model that answered."""
    return span(n, {"gen_ai.response.model": model, "gen_ai.request.id": f"cmpl-{n}", "gen_ai.usage.prompt_tokens": 21,
                    "gen_ai.usage.completion_tokens": 5, "gen_ai.latency.e2e": 0.25}, name="llm_request", **kw)


def http(n: int) -> ReadableSpan:
    return span(n, {"http.request.method": "POST", "url.path": "/v1/chat/completions"}, name="POST")


def encode(spans, fmt: str) -> bytes:
    """A record as the Collector's Kafka exporter writes it: ExportTraceServiceRequest, protobuf or (protobuf's)
    JSON."""
    request = encode_spans(spans)
    return request.SerializeToString() if fmt == "otlp_proto" else MessageToJson(request).encode()


class Registry:
    """The registry's names: v1 and v2 registered, production → v1, canary → v1 90 % / v2 10 %."""

    def __init__(self):
        self.reads = 0
        self.down = False
        self.table = {"production": {"v1": 1.0}, "canary": {"v1": 0.9, "v2": 0.1}}

    def names(self):
        return frozenset({"v1", "v2"}).union(self.table, *self.table.values())

    def alias_table(self):
        self.reads += 1
        if self.down:
            raise RuntimeError("store unavailable")
        return len(self.table), self.table


def decoder(fmt="otlp_proto", max_bytes=1_048_576, registry=None, trusted=True) -> SpanDecoder:
    return SpanDecoder(fmt, ModelNames(registry or Registry()).resolve, base_model="base", max_bytes=max_bytes,
                       trusted=trusted)


def decode(spans, fmt="otlp_proto", **kw) -> Decoded:
    out = decoder(fmt, **kw)(encode(spans, fmt))
    assert isinstance(out, Decoded), out
    return out


# -- the mapping ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_genai_chat_span_is_one_inference_event(fmt):
    (event,), skipped = (lambda d: (d.events, d.skipped))(decode([chat(1, "production")], fmt))
    assert skipped == {}
    assert isinstance(event, InferenceEvent)
    assert event.request_id == f"otel-{TRACE:032x}-{0x1001:016x}"
    assert event.timestamp == T0 // 1_000_000 and event.latency_ms == 250.0
    assert (event.alias, event.adapter, event.model) == ("production", "v1", "base")
    assert [(m.role, m.content) for m in event.messages] == [("user", "Where is my order 1234?")]
    assert event.response == "It shipped."
    assert (event.tokens_in, event.tokens_out, event.status) == (14, 9, "ok")
    assert event.metadata == {"source": "otlp", "content": "full", "trusted": True, "trace_id": f"{TRACE:032x}",
                              "span_id": f"{0x1001:016x}", "span": "chat v1", "service": "support-bot",
                              "operation": "chat"}


def test_both_encodings_give_the_same_events():
    spans = [chat(1), vllm(2), chat(3, error=True, answer=None), http(4)]
    proto, js = decode(spans, "otlp_proto"), decode(spans, "otlp_json")
    assert proto.events == js.events and proto.skipped == js.skipped == {"not_genai": 1}
    assert len(proto.events) == 3


def test_json_as_the_collector_writes_it_hex_ids_and_integer_enums():
    """OTLP/JSON (what the Collector's otlp_json writes) has hex ids and integer enums, not protobuf's base64."""
    doc = json.loads(MessageToJson(encode_spans([chat(1, error=True)])))
    s = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    s["traceId"], s["spanId"] = f"{TRACE:032x}", f"{0x1001:016x}"
    s["kind"], s["status"] = 3, {"code": 2, "message": "failed"}
    (event,) = decoder("otlp_json")(json.dumps(doc).encode()).events
    assert event.request_id == f"otel-{TRACE:032x}-{0x1001:016x}" and event.status == "error"
    assert event == decode([chat(1, error=True)], "otlp_proto").events[0]


def test_status_error_type_and_timeouts():
    events = decode([chat(1, error=True, answer=None),
                     span(2, {"gen_ai.operation.name": "chat", "gen_ai.request.model": "v1",
                              "error.type": "openai.APITimeoutError"}, error=True),
                     span(3, {"gen_ai.operation.name": "chat", "gen_ai.request.model": "v1", "error.type": "500"})]).events
    assert [(e.status, e.error_type) for e in events] == [("error", None), ("timeout", "openai.APITimeoutError"),
                                                          ("error", "500")]
    assert events[0].metadata["content"] == "full"  # a failed call with its prompt is a whole event, as the gateway's


def test_content_from_every_convention():
    openllmetry = span(1, {"gen_ai.system": "openai", "llm.request.type": "chat", "gen_ai.request.model": "v1",
                           "gen_ai.prompt.0.role": "system", "gen_ai.prompt.0.content": "Be brief.",
                           "gen_ai.prompt.1.role": "user", "gen_ai.prompt.1.content": "Hi",
                           "gen_ai.completion.0.role": "assistant", "gen_ai.completion.0.content": "Hello.",
                           "gen_ai.usage.prompt_tokens": 5, "gen_ai.usage.completion_tokens": 2})
    events_style = span(2, {"gen_ai.operation.name": "text_completion", "gen_ai.request.model": "v1"},
                        events=[("gen_ai.content.prompt", {"gen_ai.prompt": "Once upon a"}),
                                ("gen_ai.content.completion", {"gen_ai.completion": "time"})])
    old_json = span(3, {"gen_ai.system": "openai", "gen_ai.request.model": "v1"},
                    events=[("gen_ai.content.prompt", {"gen_ai.prompt": json.dumps([{"role": "user", "content": "Q"}])}),
                            ("gen_ai.content.completion",
                             {"gen_ai.completion": json.dumps([{"role": "assistant", "content": "A"}])})])
    system = span(4, {"gen_ai.operation.name": "chat", "gen_ai.request.model": "v1",
                      "gen_ai.system_instructions": json.dumps([{"type": "text", "content": "You help."}]),
                      "gen_ai.input.messages": json.dumps([{"role": "user", "parts": [
                          {"type": "text", "content": "Look "}, {"type": "image", "uri": "x"},
                          {"type": "text", "content": "here"}]}]),
                      "gen_ai.output.messages": json.dumps([{"role": "assistant", "parts": [
                          {"type": "tool_call", "name": "lookup"}]}])})
    openinference = span(5, {"openinference.span.kind": "LLM", "llm.model_name": "v1",
                             "llm.input_messages.0.message.role": "user",
                             "llm.input_messages.0.message.content": "Ping",
                             "llm.output_messages.0.message.role": "assistant",
                             "llm.output_messages.0.message.content": "Pong",
                             "llm.token_count.prompt": 3, "llm.token_count.completion": 1})
    a, b, c, d, e = decode([openllmetry, events_style, old_json, system, openinference]).events
    assert [(m.role, m.content) for m in a.messages] == [("system", "Be brief."), ("user", "Hi")]
    assert (a.response, a.tokens_in, a.tokens_out, a.adapter) == ("Hello.", 5, 2, "v1")
    assert (b.prompt, b.messages, b.response) == ("Once upon a", None, "time")
    assert ([(m.role, m.content) for m in c.messages], c.response) == ([("user", "Q")], "A")
    assert [(m.role, m.content) for m in d.messages] == [("system", "You help."), ("user", "Look here")]
    assert d.response == ""  # a tool call answers no text: an empty response, as it is
    assert ([(m.role, m.content) for m in e.messages], e.response, e.tokens_in, e.adapter) == \
        ([("user", "Ping")], "Pong", 3, "v1")
    assert all(x.metadata["content"] == "full" for x in (a, b, c, d, e))


def test_structured_message_attributes():
    """gen_ai.input.messages may be a structured (array / key-value list) attribute rather than a JSON string;
    the SDK's Python API cannot set one, so the request is built directly."""
    def kv(key, value):
        return KeyValue(key=key, value=value)

    def text(s):
        return AnyValue(string_value=s)

    def kvlist(**items):
        out = AnyValue()
        out.kvlist_value.values.extend(kv(k, v) for k, v in items.items())
        return out

    def array(*values):
        out = AnyValue()
        out.array_value.values.extend(values)
        return out

    request = encode_spans([span(1, {"gen_ai.operation.name": "chat", "gen_ai.request.model": "v2"})])
    s = request.resource_spans[0].scope_spans[0].spans[0]
    s.attributes.extend([
        kv("gen_ai.input.messages", array(kvlist(role=text("user"), parts=array(kvlist(type=text("text"),
                                                                                       content=text("Hi there")))))),
        kv("gen_ai.output.messages", array(kvlist(role=text("assistant"), parts=array(
            kvlist(type=text("text"), content=text("Hello"))))))])
    (event,) = decoder()(request.SerializeToString()).events
    assert ([(m.role, m.content) for m in event.messages], event.response, event.adapter) == \
        ([("user", "Hi there")], "Hello", "v2")


def test_spans_without_content_feed_signals_only():
    only_prompt = chat(2, answer=None)  # answered ok, but the answer is not in the span
    only_answer = span(3, {"gen_ai.operation.name": "chat", "gen_ai.request.model": "v1",
                           "gen_ai.output.messages": json.dumps([{"role": "assistant", "content": "x"}])})
    events = decode([vllm(1), only_prompt, only_answer]).events
    for e in events:
        assert e.metadata["content"] == "none"
        assert (e.prompt, e.messages, e.response) == ("", None, None)  # nothing a feature could be made of
    assert (events[0].tokens_in, events[0].tokens_out, events[0].adapter) == (21, 5, "v1")


def test_other_spans_are_skipped_and_counted_by_reason():
    zero = span(9, {"gen_ai.operation.name": "chat", "gen_ai.request.model": "v1"})
    spans = [http(1), span(2, {"db.system": "postgresql"}),
             span(3, {"gen_ai.operation.name": "embeddings", "gen_ai.request.model": "v1"}),
             span(4, {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "lookup"}),
             span(5, {"gen_ai.agent.name": "planner"}),  # GenAI, but no model call
             span(6, {"llm.request.type": "embedding", "gen_ai.request.model": "v1"}),
             span(7, {"openinference.span.kind": "CHAIN"}),
             span(8, {"gen_ai.operation.name": "chat", "gen_ai.request.model": "v1"}, start=631_152_000 * 10**9),  # 1990
             span(10, {"gen_ai.operation.name": "chat", "gen_ai.request.model": "v1"}, ms=2 * 86_400_000),  # 2 days
             zero, chat(11)]
    request = encode_spans(spans)
    request.resource_spans[0].scope_spans[0].spans[9].trace_id = bytes(16)  # an invalid (all-zero) trace id
    out = decoder()(request.SerializeToString())
    assert out.skipped == {"not_genai": 2, "operation": 5, "invalid": 3}
    assert [e.request_id[-4:] for e in out.events] == ["100b"]


# -- hostile records -------------------------------------------------------------------------------------------------------
def nested(depth: int) -> dict:
    value: dict = {"stringValue": "x"}
    for _ in range(depth):
        value = {"arrayValue": {"values": [value]}}
    return value


@pytest.mark.parametrize("fmt,raw,reason", [
    ("otlp_proto", None, "empty"), ("otlp_proto", b"", "empty"),
    ("otlp_proto", b"\xff\xfe garbage \x00\x01", "invalid_field"),
    ("otlp_proto", b"hello world", "invalid_field"),  # parses as unknown fields: no spans
    ("otlp_proto", json.dumps({"schema_version": 1}).encode(), "invalid_field"),  # a driftwatch event on the wrong topic
    ("otlp_proto", b"\x0a\x05\x12\x03\x0a\x01", "invalid_field"),  # truncated
    ("otlp_json", b"\xff\xfe", "bad_utf8"), ("otlp_json", b"{oops", "not_json"), ("otlp_json", b"[1, 2]", "not_object"),
    ("otlp_json", b"{}", "invalid_field"), ("otlp_json", b'{"resourceSpans": "x"}', "invalid_field"),
    ("otlp_json", b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": 7}]}]}]}', "invalid_field"),
    ("otlp_json", b"[" * 100_000 + b"]" * 100_000, "not_json"),
    ("otlp_json", json.dumps({"resourceSpans": [{"resource": {"attributes": [{"key": "k", "value": nested(150)}]}}]})
     .encode(), "invalid_field"),  # deeper than protobuf reads
])
def test_records_that_are_no_trace_export_are_rejected_with_the_pipeline_reasons(fmt, raw, reason):
    out = decoder(fmt, max_bytes=10_000_000)(raw)
    assert isinstance(out, Rejected) and out.reason.value == reason, out


def test_oversize_records_are_rejected_before_parsing():
    raw = encode([chat(1, prompt="x" * 5000)], "otlp_proto")
    out = decoder(max_bytes=1000)(raw)
    assert isinstance(out, Rejected) and out.reason.value == "oversize"


@pytest.mark.parametrize("fmt", FORMATS)
def test_mutated_records_never_raise(fmt):
    rng = random.Random(7)
    raw = bytearray(encode([chat(1), vllm(2), http(3)], fmt))
    d = decoder(fmt)
    for _ in range(300):
        mutated = bytearray(raw)
        for _ in range(rng.randint(1, 8)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        out = d(bytes(mutated))
        assert isinstance(out, (Decoded, Rejected))


def test_huge_attributes_are_fitted_to_the_contract():
    big = "x" * (MAX_TEXT_CHARS + 10)
    many = [{"role": "user", "content": f"m{i}"} for i in range(MAX_MESSAGES + 4)] + [{"role": "user", "content": "a\ud800"}]
    spans = [chat(1, prompt=big, answer=big),
             span(2, {"gen_ai.operation.name": "chat", "gen_ai.request.model": "v1",
                      "gen_ai.input.messages": json.dumps(many), "gen_ai.output.messages": "plain answer",
                      "error.type": "E" * 5000}, name="n" * 10_000)]
    first, second = decode(spans, max_bytes=10_000_000).events
    assert len(first.messages[0].content) == len(first.response) == MAX_TEXT_CHARS
    assert first.metadata["fitted"] == ["messages", "response"]
    assert len(second.messages) == MAX_MESSAGES and second.messages[-1].content == "a?"  # a lone surrogate repaired
    assert second.response == "plain answer"
    assert len(second.error_type) == 256 and len(second.metadata["span"]) == 256
    assert second.metadata["fitted"] == ["error_type", "messages", "span"]


def test_many_attributes_and_absurd_values():
    attrs = {f"custom.{i}": i for i in range(20_000)}
    attrs.update({"gen_ai.operation.name": "chat", "gen_ai.request.model": "v1", "gen_ai.usage.input_tokens": -5,
                  "gen_ai.usage.output_tokens": 10**15, "gen_ai.usage.prompt_tokens": "12",
                  "gen_ai.input.messages": "[" * 5000 + "]" * 5000, "gen_ai.output.messages": 42})
    (event,) = decode([span(1, attrs)], max_bytes=10_000_000).events
    assert (event.tokens_in, event.tokens_out) == (None, None)
    assert event.messages is None and event.prompt == "" and event.metadata["content"] == "none"


@pytest.mark.parametrize("fmt", FORMATS)
def test_model_names_resolve_against_the_registry_only(fmt):
    weird = ["gpt-4o", "unknown", "other", "v1\x00", " v1", "V1", "v1" * 300, "ünïcødé", "production/../v2",
             "{{adapter}}", "\u202ev1"]
    spans = [span(i, {"gen_ai.operation.name": "chat", "gen_ai.request.model": name}) for i, name in enumerate(weird)]
    spans += [span(50, {"gen_ai.operation.name": "chat", "gen_ai.request.model": "canary"}),  # weighted: which one?
              span(51, {"gen_ai.operation.name": "chat", "gen_ai.request.model": "canary",
                        "gen_ai.response.model": "v2"}),  # the server said
              span(52, {"gen_ai.operation.name": "chat", "gen_ai.request.model": "v2",
                        "gen_ai.response.model": "nonsense"})]
    events = decode(spans, fmt).events
    assert {e.adapter for e in events[:len(weird)]} == {"unknown"} and {e.alias for e in events[:len(weird)]} == {None}
    assert [(e.alias, e.adapter) for e in events[len(weird):]] == [("canary", "unknown"), ("canary", "v2"), (None, "v2")]


def test_names_are_read_again_and_kept_when_the_registry_fails():
    now = [0.0]
    reg = Registry()
    names = ModelNames(reg, extra=frozenset({"base"}), refresh_s=5, clock=lambda: now[0])
    assert names.resolve("base", None) == (None, "base") and names.resolve("v3", None) == (None, "unknown")
    reg.table = {**reg.table, "staging": {"v3": 1.0}}
    now[0] = 1.0
    names.refresh_if_due()
    assert names.resolve("staging", None) == (None, "unknown")  # not read again yet
    now[0] = 6.0
    assert names.resolve("staging", None) == (None, "unknown")  # resolving does no I/O
    names.refresh_if_due()
    assert names.resolve("staging", None) == ("staging", "v3")
    reg.down = True
    now[0] = 12.0
    names.refresh_if_due()
    assert names.resolve("staging", None) == ("staging", "v3")  # the names in hand
    assert reg.reads == 3


# -- the ingest step ----------------------------------------------------------------------------------------------------------
def ingestor(batches, **kw):
    source, sink, metrics = FakeSource(batches), FakeSink(), Metrics()
    seen = []
    ing = Ingestor(source, sink, metrics, kinds={"inf": "inference", "fb": "feedback"}, max_record_bytes=1_048_576,
                   dedup=DedupWindow(1000, 3600), downstream=seen.extend, group_id="g",
                   spans={"otlp": decoder("otlp_proto"), "otlpj": decoder("otlp_json")}, **kw)
    return ing, source, sink, metrics, seen


def value(metrics, name, **labels):
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_an_otlp_record_is_many_events_deduplicated_by_trace_and_span_ids():
    record = encode([chat(1), vllm(2), http(3), span(4, {"gen_ai.operation.name": "embeddings"})], "otlp_proto")
    record_json = encode([chat(5), chat(6, model="gpt-4o")], "otlp_json")
    batch = [Rec("otlp", 0, 10, record), Rec("otlpj", 0, 3, record_json), Rec("otlp", 0, 11, record),  # sent twice
             Rec("otlp", 1, 0, encode([http(7)], "otlp_proto")), Rec("otlp", 1, 1, b"\x00garbage"),
             Rec("otlpj", 0, 4, b"{not json")]
    ing, source, sink, m, seen = ingestor([batch, [Rec("otlp", 0, 10, record)]])  # then read again (a rebalance)
    ing.finish(ing.poll())
    assert [e.event.request_id[-4:] for e in seen] == ["1001", "1002", "1005", "1006"]
    assert [e.adapter for e in seen] == ["v1", "v1", "v1", "unknown"]
    assert [e.request for e in seen] == [None] * 4
    out = {o: value(m, "driftwatch_ingest_records_total", topic="otlp", outcome=o)
           for o in ("accepted", "duplicate", "skipped", "rejected")}
    assert out == {"accepted": 1, "duplicate": 1, "skipped": 1, "rejected": 1}
    assert value(m, "driftwatch_ingest_records_total", topic="otlpj", outcome="accepted") == 1
    assert value(m, "driftwatch_ingest_records_total", topic="otlpj", outcome="rejected") == 1
    assert value(m, "driftwatch_duplicates_total", topic="otlp", kind="key") == 2  # two spans, their ids seen
    spans = {o: value(m, "driftwatch_otel_spans_total", outcome=o)
             for o in ("event", "metrics_only", "duplicate", "skipped")}
    assert spans == {"event": 3, "metrics_only": 1, "duplicate": 2, "skipped": 5}
    assert value(m, "driftwatch_otel_spans_skipped_total", reason="not_genai") == 3
    assert value(m, "driftwatch_otel_spans_skipped_total", reason="operation") == 2
    assert sorted(d.reason for d in sink.delivered) == ["invalid_field", "not_json"]
    assert {dict(d.headers)["driftwatch.source.topic"] for d in sink.delivered} == {b"otlp", b"otlpj"}
    assert source.commits == [{("otlp", 0): 12, ("otlpj", 0): 5, ("otlp", 1): 2}]

    ing.finish(ing.poll())  # the first record again, at its own offset: a redelivery, nothing accepted twice
    assert len(seen) == 4
    assert value(m, "driftwatch_duplicates_total", topic="otlp", kind="redelivery") == 2
    assert value(m, "driftwatch_ingest_records_total", topic="otlp", outcome="duplicate") == 2


def test_spans_never_make_training_data_and_contentless_ones_never_reach_a_window():
    feedback = json.dumps({"schema_version": 1, "feedback_id": "f1", "request_id": f"otel-{TRACE:032x}-{0x1001:016x}",
                           "timestamp": 1795514400000, "thumbs": "up",
                           "correction": "It shipped yesterday."}).encode()
    logged = json.dumps({**GOOD, "request_id": "r-9"}).encode()  # the gateway's event, for contrast
    batch = [Rec("otlp", 0, 0, encode([chat(1), vllm(2)], "otlp_proto")), Rec("fb", 0, 0, feedback),
             Rec("inf", 0, 0, logged), Rec("fb", 0, 1, feedback.replace(b"otel-", b"x").replace(
                 f"x{TRACE:032x}-{0x1001:016x}".encode(), b"r-9"))]
    ing, _, _, m, seen = ingestor([batch], harvest=harvest.example, save_examples=lambda xs: None, max_kept=100)
    b = ing.poll()
    assert [(a.kind, a.adapter) for a in seen] == [("inference", "v1"), ("inference", "v1"), ("inference", "support-v3"),
                                                   ("feedback", "v1"), ("feedback", "support-v3")]
    # the join never kept a span's event: feedback on it makes no example (the gateway's request does)
    assert [x.request_id for x in b.examples] == ["r-9"]
    kept = windowed(seen)
    assert [a.event.metadata.get("content", "logged") if a.kind == "inference" else a.kind for a in kept] == \
        ["full", "logged", "feedback", "feedback"]


def test_spans_of_a_source_not_marked_trusted_count_in_the_signals_and_never_reach_a_window():
    # anyone who reaches an open Collector writes to its topic: such spans must not decide a retrain or roll back
    source, sink, metrics = FakeSource([[Rec("otlp", 0, 0, encode([chat(1), chat(2), vllm(3)], "otlp_proto"))]]), \
        FakeSink(), Metrics()
    seen = []
    ing = Ingestor(source, sink, metrics, kinds={"inf": "inference", "fb": "feedback"}, max_record_bytes=1_048_576,
                   dedup=DedupWindow(1000, 3600), downstream=seen.extend, group_id="g",
                   spans={"otlp": decoder("otlp_proto", trusted=False)})
    ing.poll()
    assert len(seen) == 3 and windowed(seen) == []
    assert value(metrics, "driftwatch_otel_spans_total", outcome="event") == 2


def test_a_flood_of_spans_never_evicts_the_gateways_requests_from_the_dedup_table():
    # the table holds 5 keys; 40 spans pass through it, then feedback on the gateway's request still finds it, and
    # the gateway's record read again is still a duplicate
    logged = json.dumps({**GOOD, "request_id": "r-1"}).encode()
    fb = json.dumps({"schema_version": 1, "feedback_id": "f1", "request_id": "r-1", "timestamp": 1795514400000,
                     "thumbs": "down"}).encode()
    batches = [[Rec("inf", 0, 0, logged)], [Rec("otlp", 0, i, encode([chat(10 * i + k) for k in range(10)],
                                                                       "otlp_proto")) for i in range(4)],
               [Rec("fb", 0, 0, fb), Rec("inf", 1, 0, logged)]]
    source, sink, metrics, seen = FakeSource(batches), FakeSink(), Metrics(), []
    ing = Ingestor(source, sink, metrics, kinds={"inf": "inference", "fb": "feedback"}, max_record_bytes=1_048_576,
                   dedup=DedupWindow(5, 3600), downstream=seen.extend, group_id="g",
                   spans={"otlp": decoder("otlp_proto")})
    for _ in batches:
        ing.finish(ing.poll())  # the counters move once a batch is journalled
    assert [(a.kind, a.adapter) for a in seen if a.kind == "feedback"] == [("feedback", "support-v3")]
    assert value(metrics, "driftwatch_duplicates_total", topic="inf", kind="key") == 1
    assert value(metrics, "driftwatch_otel_spans_total", outcome="event") == 40


def test_windowed_passes_batches_without_contentless_span_events_as_they_are():
    ing, _, _, _, seen = ingestor([[Rec("otlp", 0, 0, encode([chat(1), chat(2)], "otlp_proto"))]])
    ing.poll()
    assert len(seen) == 2 and windowed(seen) is seen


# -- settings and imports ---------------------------------------------------------------------------------------------------
def test_sources_setting(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("ingest:\n  sources:\n    - {topic: otlp_spans}\n    - {topic: otlp_json_spans, format: otlp_json}\n")
    assert [(s.topic, s.format) for s in load_settings(f).ingest.sources] == \
        [("otlp_spans", "otlp_proto"), ("otlp_json_spans", "otlp_json")]
    env = load_settings(env={"DRIFTWATCH__INGEST__SOURCES": "a:otlp_json, b"}).ingest.sources
    assert [(s.topic, s.format) for s in env] == [("a", "otlp_json"), ("b", "otlp_proto")]
    with pytest.raises(ConfigError) as err:
        load_settings(env={"DRIFTWATCH__INGEST__SOURCES": "driftwatch.inference.v1,x,x"})
    assert [p.path for p in err.value.problems] == ["ingest.sources.0.topic", "ingest.sources.2.topic"]
    with pytest.raises(ConfigError) as err:
        load_settings(env={"DRIFTWATCH__INGEST__SOURCES": "x:zipkin_json"})
    assert err.value.problems[0].path == "ingest.sources.0.format"


def test_the_daemon_loads_no_protobuf_without_an_otlp_source():
    code = ("import sys, driftwatch.cli, driftwatch.app, driftwatch.ingest.pipeline, driftwatch.ingest.otel, "
            "driftwatch.state.names; print(sorted({m.split('.')[0] + '.' + m.split('.')[1] for m in sys.modules "
            "if m.startswith(('google.protobuf', 'opentelemetry.'))}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_decoding_is_quick_enough():
    """A batch the Collector might send (500 GenAI spans with content): well under the poll's budget."""
    raw = encode([chat(i, prompt=f"question {i} " * 20) for i in range(500)], "otlp_proto")
    d = decoder()
    t0 = time.perf_counter()
    assert len(d(raw).events) == 500
    assert time.perf_counter() - t0 < 2.0



def test_the_ingestor_reads_the_names_again_between_polls():
    now = [0.0]
    reg = Registry()
    names = ModelNames(reg, refresh_s=5, clock=lambda: now[0])
    d = SpanDecoder("otlp_proto", names.resolve, refresh=names.refresh_if_due)
    staged = [Rec("otlp", 0, i, encode([chat(i, "staging")], "otlp_proto")) for i in range(2)]
    source, seen = FakeSource([staged[:1], staged[1:]]), []
    ing = Ingestor(source, FakeSink(), Metrics(), kinds={}, max_record_bytes=1_048_576, dedup=DedupWindow(100, 3600),
                   downstream=seen.extend, spans={"otlp": d})
    reg.table = {**reg.table, "staging": {"v3": 1.0}}  # registered after the daemon started
    now[0] = 1.0
    ing.poll()
    now[0] = 6.0
    ing.poll()
    assert [(a.event.alias, a.adapter) for a in seen] == [(None, "unknown"), ("staging", "v3")]
