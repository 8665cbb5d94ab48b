"""A hostile client against the real gateway (real broker, stand-in upstream): names it makes up, shapes it
sends, headers it stretches. Every request the gateway answers is logged exactly once, and no client text becomes
a label value."""

from __future__ import annotations

import json

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import Gateway

CHAT = "/v1/chat/completions"


def post(g, body=None, path=CHAT, **kw):
    if body is not None:
        kw["content"] = json.dumps(body) if not isinstance(body, bytes) else body
    return httpx.post(g.url + path, timeout=30, headers={"content-type": "application/json", **kw.pop("headers", {})}, **kw)


def version_labels(g) -> set[str]:
    text = httpx.get(g.url + "/metrics", timeout=10).text
    return {line.split('version="')[1].split('"')[0] for line in text.splitlines()
            if line.startswith("driftwatch_gateway_requests_total{")}


def test_made_up_model_names_are_404_logged_as_unknown_and_never_a_label(tansu, upstream, tmp_path):
    g = Gateway(tansu, tmp_path, upstream, metrics={"max_adapters": 2})
    try:
        made_up = [post(g, {"model": f"made-up-{i}", "messages": [{"role": "user", "content": "hi"}]})
                   for i in range(100)]
        assert {r.status_code for r in made_up} == {404}
        assert made_up[0].json()["error"]["code"] == "model_not_found"
        huge = [post(g, {"model": "m" * 1_000_000, "prompt": "hi"}, path="/v1/completions") for _ in range(20)]
        assert {r.status_code for r in huge} == {404}
        # production moves to a new registered version: counted under its own name, not 'other'
        g.flip(production={"v3": 1.0})
        assert post(g, {"model": "production", "messages": [{"role": "user", "content": "hi"}]}).status_code == 200
        assert post(g, {"model": "v2", "messages": [{"role": "user", "content": "hi"}]}).status_code == 200
        assert version_labels(g) == {"unknown", "v3", "v2"}
        assert len(httpx.get(g.url + "/metrics", timeout=10).content) < 100_000
        events = g.events(expect=122)
        assert len(events) == 122
        assert sum(e.adapter == "unknown" for e in events) == 120
        assert all(len(e.adapter) < 10 and "made-up" not in e.model for e in events)
        assert {e.adapter for e in events if e.status == "ok"} == {"v3", "v2"}
    finally:
        g.close()


def test_shapes_it_cannot_serve_are_400_before_the_upstream_and_each_logged_once(gateway):
    deep = b'{"model": "production", "messages": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    cases = {
        "messages as a string": ({"model": "production", "messages": "hi"}, 400),
        "a list of strings": ({"model": "production", "messages": ["hi", "there"]}, 400),
        "an int text part": ({"model": "production", "messages": [{"role": "user", "content": [
            {"type": "text", "text": 7}]}]}, 400),
        "a made-up role": ({"model": "production", "messages": [{"role": "root", "content": "hi"}]}, 400),
        "no model": ({"messages": [{"role": "user", "content": "hi"}]}, 400),
        "5,000 levels of nesting": (deep, 400),
        "not JSON": (b"{nope", 400),
        "too large": (b"x" * 2_000_000, 413),
        "stream not a boolean": ({"model": "production", "stream": "yes", "messages": [{"role": "user", "content": "hi"}]}, 400),
    }
    answered = {}
    for name, (body, status) in cases.items():
        r = post(gateway, body)
        assert r.status_code == status, (name, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error", name
        answered[r.headers["x-request-id"]] = name
    events = gateway.events(expect=len(cases))
    assert sorted(e.request_id for e in events) == sorted(answered)  # one each, none twice
    assert {e.status for e in events} == {"error"} and all(e.adapter == "unknown" for e in events)
    assert gateway.service.metrics.registry.get_sample_value("driftwatch_gateway_upstream_latency_seconds_count") \
        == len(cases)  # observed once per answer, and never after an upstream call: upstream_ms is 0
    assert all(e.metadata["upstream_ms"] == 0 for e in events)


def test_over_long_headers_and_lone_surrogates_are_served_fitted_and_logged(gateway):
    long = "r" * 5000
    served = post(gateway, headers={"x-request-id": long, "x-driftwatch-route": long, "x-driftwatch-tenant": long},
                  body={"model": "production", "messages": [{"role": "user", "content": "hi"}]})
    surrogate = post(gateway, body=b'{"model": "production", "prompt": "a\\ud800b"}', path="/v1/completions")
    parts = post(gateway, {"model": "production", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "x"}}]}]})
    assert [served.status_code, surrogate.status_code, parts.status_code] == [200, 200, 200]
    assert served.headers["x-request-id"] != long  # the gateway names requests; the client's id is metadata
    events = {e.request_id: e for e in gateway.events(expect=3)}
    first = events[served.headers["x-request-id"]]
    assert len(first.route) == 256 and first.tenant is None  # a client's tenant header is a claim, not a tenant
    assert first.metadata["fitted"] == ["client_request_id", "route", "tenant"]
    assert first.metadata["client_request_id"] == long[:256] == first.metadata["claimed_tenant"]
    second = events[surrogate.headers["x-request-id"]]
    assert second.prompt == "a?b" and second.metadata["fitted"] == ["prompt"]
    assert events[parts.headers["x-request-id"]].messages[0].content == "look"


# -- the property: one answer, exactly one event ------------------------------------------------------------------------
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=12)
parts = st.one_of(st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=30) | st.integers()}),
                  st.fixed_dictionaries({"type": st.sampled_from(["image_url", "input_audio"])}), json_values)
messages = st.lists(st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "tool", "developer", "root"]),
                           "content": st.one_of(st.text(max_size=40), st.none(), st.lists(parts, max_size=3))}),
    json_values), max_size=4) | json_values
chat_bodies = st.fixed_dictionaries(
    {"model": st.sampled_from(["production", "v1", "v2", "base", "nope", "", "p" * 300]) | json_values,
     "messages": messages},
    optional={"stream": st.booleans() | json_values, "max_tokens": st.integers(1, 4) | json_values,
              "stream_options": st.just({"include_usage": True}) | json_values})
completion_bodies = st.fixed_dictionaries(
    {"model": st.sampled_from(["production", "v3", "unknown"]) | json_values,
     "prompt": st.text(max_size=40) | st.lists(st.text(max_size=10), max_size=3) | st.lists(st.integers(0, 99), max_size=3)
     | json_values},
    optional={"stream": st.booleans()})
headers = st.dictionaries(st.sampled_from(["x-request-id", "x-driftwatch-route", "x-driftwatch-tenant"]),
                          st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=400), max_size=3)
raw = st.binary(max_size=64) | st.builds(lambda d: b"[" * d + b"]" * d, st.integers(900, 3000))


def test_every_answer_is_exactly_one_event_whatever_the_request(gateway):
    answers: list[str] = []
    with httpx.Client(timeout=30) as client:

        @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(st.one_of(st.tuples(st.just(CHAT), chat_bodies), st.tuples(st.just("/v1/completions"), completion_bodies),
                         st.tuples(st.sampled_from([CHAT, "/v1/completions"]), raw)), headers)
        def one_request(request, extra_headers):
            path, body = request
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            r = client.post(gateway.url + path, content=content, headers=extra_headers)
            assert r.status_code in (200, 400, 404, 413), r.text
            if body is not None and not isinstance(body, bytes) and body.get("stream") is True and r.status_code == 200:
                assert r.text.endswith("data: [DONE]\n\n")
            answers.append(r.headers["x-request-id"])

        one_request()
    events = gateway.events(expect=len(answers), kind="inference")
    assert len(answers) >= 200 and len(set(answers)) == len(answers)
    assert sorted(e.request_id for e in events) == sorted(answers)


def test_an_event_too_large_for_kafka_is_cut_to_fit_and_holds_up_nothing(gateway):
    # a chat's event holds its text twice (the prompt and the messages): 1 MB of it is 2 MB of event
    body = {"model": "production", "messages": [{"role": "user", "content": "é" * 520_000}]}
    big = post(gateway, json.dumps(body, ensure_ascii=False).encode())
    small = [post(gateway, {"model": "production", "prompt": f"hi {i}"}, path="/v1/completions") for i in range(20)]
    assert big.status_code == 200 and {r.status_code for r in small} == {200}
    events = {e.request_id: e for e in gateway.events(expect=21)}
    cut = events[big.headers["x-request-id"]]
    assert "size" in cut.metadata["fitted"] and len(cut.prompt) + len(cut.messages[0].content) < 520_000 * 2
    assert all(r.headers["x-request-id"] in events for r in small)
    receipt = big.headers["x-driftwatch-feedback-token"]
    huge = httpx.post(gateway.url + "/v1/feedback", json={"feedback_token": receipt, "correction": "é" * 600_000},
                      timeout=30)
    assert huge.status_code == 413  # refused to the client, never a record Kafka would refuse


def test_an_event_limit_below_the_events_own_fields_still_logs_and_never_hangs(tansu, upstream, tmp_path):
    g = Gateway(tansu, tmp_path, upstream, ingest={"max_record_bytes": 4500})  # 404 bytes left for text
    try:
        r = post(g, {"model": "production", "messages": [{"role": "user", "content": "x"}] * 400})
        assert r.status_code == 200
        (event,) = g.events(expect=1)
        assert event.request_id == r.headers["x-request-id"] and "size" in event.metadata["fitted"]
    finally:
        g.close()
