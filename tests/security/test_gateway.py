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


# -- finding 10: an attacker against the real gateway ------------------------------------------------------------------
RECEIPT = "x-driftwatch-feedback-token"
CALLER_TOKEN = "crm-caller-token-0123456789"


def receipt_of(g) -> str:
    return post(g, {"model": "production", "messages": [{"role": "user", "content": "hi"}]}).headers[RECEIPT]


def test_a_correction_longer_than_a_training_target_is_413_and_never_published(gateway):
    """A correction becomes a candidate training example: one longer than retrain.gates.max_target_chars (8,000)
    could never be a target, and is refused before anything is published."""
    receipt = receipt_of(gateway)
    limit = gateway.settings.retrain.gates.max_target_chars
    too_long = httpx.post(gateway.url + "/v1/feedback", timeout=30,
                          json={"feedback_token": receipt, "thumbs": "down", "correction": "x" * (limit + 1)})
    assert too_long.status_code == 413 and too_long.json()["error"]["code"] == "correction_too_long"
    fits = httpx.post(gateway.url + "/v1/feedback", timeout=30,
                      json={"feedback_token": receipt, "thumbs": "down", "correction": "y" * limit})
    assert fits.status_code == 202
    published = gateway.events(kind="feedback")  # everything on the topic (until it is quiet for 3 s)
    assert [len(e.correction) for e in published] == [limit]


def test_corrections_are_bounded_an_hour_for_each_caller(tansu, upstream, tmp_path):
    """One receipt (or one caller) posting corrections without end: past the hourly bound they are 429 and never
    published; ratings are not corrections and still pass; another caller has its own bound."""
    g = Gateway(tansu, tmp_path, upstream, feedback_callers=f"crm:{CALLER_TOKEN},other:{CALLER_TOKEN[::-1]}")
    try:
        receipt = receipt_of(g)
        with httpx.Client(base_url=g.url, timeout=30) as client:
            def flood(body, headers=None) -> int:
                for n in range(5000):
                    r = client.post("/v1/feedback", json=body, headers=headers or {})
                    if r.status_code != 202:
                        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited", r.text
                        assert int(r.headers["retry-after"]) >= 1
                        return n
                raise AssertionError("5,000 corrections in a row were accepted")

            anonymous = flood({"feedback_token": receipt, "correction": "never."})
            rid = receipt_of(g)  # a fresh receipt changes nothing: anonymous end users share their bound
            assert client.post("/v1/feedback", json={"feedback_token": rid, "correction": "no."}).status_code == 429
            assert client.post("/v1/feedback", json={"feedback_token": rid, "thumbs": "down"}).status_code == 202
            crm = flood({"request_id": "r1", "correction": "better."}, {"authorization": f"Bearer {CALLER_TOKEN}"})
            other = client.post("/v1/feedback", json={"request_id": "r1", "correction": "better."},
                                headers={"authorization": f"Bearer {CALLER_TOKEN[::-1]}"})
            assert other.status_code == 202
        assert 10 <= anonymous <= 1000 and crm == anonymous
        published = g.events(expect=anonymous + crm + 2, kind="feedback")
        assert sum(e.correction is not None for e in published) == anonymous + crm + 1
    finally:
        g.close()


class RawUpstream:
    """A TCP server on a thread that plays a failing upstream: ``hang`` (accepts nothing, answers nothing) or
    ``broken`` (answers a head, half a body, and hangs up)."""

    def __init__(self, mode: str) -> None:
        import socket
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        if mode == "broken":
            threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"id\"")
            conn.close()

    def close(self) -> None:
        self.sock.close()


def test_upstream_failures_tell_the_client_nothing_of_the_upstream_and_the_log_everything(tansu, tmp_path, caplog):
    """503, 504 and 502 carried the upstream's URL, host, port and errno to any client; now a generic message and
    the request id, the details in the gateway's log."""
    import logging
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    hang, broken = RawUpstream("hang"), RawUpstream("broken")
    ports = [str(dead), str(hang.port), str(broken.port)]
    # one gateway whose only upstream is down (503: an unreachable upstream's request goes to another, when there is
    # one); one whose first upstream hangs (504) and whose second breaks off (502), taken in turn
    g = Gateway(tansu, tmp_path, "", upstreams=[f"http://127.0.0.1:{dead}"], timeout_s=0.5)
    g2 = Gateway(tansu, tmp_path / "2", "", upstreams=[f"http://127.0.0.1:{p}" for p in ports[1:]], timeout_s=0.5)
    caplog.set_level(logging.INFO, logger="driftwatch.serving.gateway")
    try:
        answers = [post(gateway, {"model": "production", "messages": [{"role": "user", "content": "hi"}]})
                   for gateway in (g, g2, g2)]
        models = httpx.get(g.url + "/v1/models", timeout=30)  # the dead one again
        assert [r.status_code for r in answers] + [models.status_code] == [503, 504, 502, 503]
        for r in answers + [models]:
            text = r.text.replace(r.headers["x-request-id"], "")
            assert not any(p in text for p in ports) and "127.0.0.1" not in text and "http" not in text, text
            assert "errno" not in text.lower() and "connect call" not in text.lower(), text
            assert r.headers["x-request-id"] in r.json()["error"]["message"]
        for r, port in zip(answers, ports):
            logged = [rec.getMessage() for rec in caplog.records if r.headers["x-request-id"] in rec.getMessage()]
            assert logged and port in logged[0], (port, logged)
        # an outage under load is not a line a request: the dead upstream's second failure, 10 s within its first,
        # waits to be counted in its next line
        assert sum(f":{dead} failed" in rec.getMessage() for rec in caplog.records) == 1
        events = g.events(expect=1) + g2.events(expect=2)
        assert sorted(e.error_type for e in events) == ["upstream_broken", "upstream_timeout", "upstream_unavailable"]
    finally:
        g.close()
        g2.close()
        hang.close()
        broken.close()


def test_a_60000_character_header_is_never_stored_in_full(gateway):
    """x-driftwatch-user was stored in full at 60,000 characters (the daemon's control API); every header value the
    gateway copies into an event is at most 256 characters, and the gateway serves no description without a token."""
    huge = "u" * 60_000
    headers = {"x-request-id": huge, "x-driftwatch-route": huge, "x-driftwatch-tenant": huge,
               "x-driftwatch-user": huge}
    served = post(gateway, {"model": "production", "messages": [{"role": "user", "content": "hi"}]}, headers=headers)
    refused = post(gateway, {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}, headers=headers)
    assert [served.status_code, refused.status_code] == [200, 404]
    rated = httpx.post(gateway.url + "/v1/feedback", timeout=30, headers=headers,
                       json={"feedback_token": served.headers[RECEIPT], "correction": "ok."})
    assert rated.status_code == 202
    for event in gateway.events(expect=2):
        values = [event.route, event.tenant, *map(str, event.metadata.values())]
        assert max(len(v or "") for v in values) <= 256 and huge[:257] not in event.model_dump_json()
    (fb,) = gateway.events(expect=1, kind="feedback")
    assert huge[:257] not in fb.model_dump_json()
    assert httpx.get(gateway.url + "/v1/openapi.json", timeout=30).status_code == 404
