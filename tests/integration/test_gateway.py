"""The gateway against real vLLM (CPU build, the session's tiny Llama with two adapters) and a real broker."""

import json
import threading
import time

import httpx
import pytest

from driftwatch.serving import gateway as gw
from driftwatch.config import Settings
from driftwatch.events import decode
from driftwatch.http import HttpServer
from driftwatch.dev.localbroker import free_port
from driftwatch.state.registry import AdapterRecord

from .conftest import read_topic, settings_dict, wait_for

PROMPT = [{"role": "user", "content": "Say something 3"}]


class Gateway:
    """The real gateway service on a uvicorn thread, with its own store, sink and metrics."""

    def __init__(self, broker, tmp_path, upstream: str, **gateway):
        doc = settings_dict(broker, tmp_path, gateway={"upstreams": [upstream], "alias_poll_s": 0.05, **gateway})
        self.settings = Settings.model_validate(doc)
        from driftwatch.ingest.kafka import ensure_topics

        ensure_topics(self.settings.kafka)
        self.service, self.sink = gw.build(self.settings, seed=1)
        self.http = HttpServer(self.service.app(), "127.0.0.1", 0).start()
        self.url = self.http.url
        self.store = self.service.store
        for version in ("v-a", "v-b"):  # the gateway serves what the registry knows
            self.store.save_adapter(AdapterRecord(version, f"/adapters/{version}", None, None, "candidate", 1.0, 1.0))
        self.service.reload()

    def flip(self, **aliases):
        version = self.store.set_aliases(aliases, time.time(), who="test")
        wait_for(lambda: self.service.table.version == version, 5, "the gateway to pick up the alias table")
        return version

    def value(self, name, **labels):
        return self.service.metrics.registry.get_sample_value(name, labels) or 0.0

    def events(self, expect=None):
        return [decode("inference", r.value, 10**7) for r in read_topic(self.settings.kafka.bootstrap_servers[0],
                                                                        self.settings.kafka.topics.inference, expect)]

    def close(self):
        self.http.stop()
        self.service.close()
        return self.sink.close()


def chat(url, model, stream=False, **extra):
    return httpx.post(f"{url}/v1/chat/completions", json={"model": model, "messages": PROMPT, "max_tokens": 6,
                                                          "temperature": 0, "stream": stream, **extra}, timeout=60)


@pytest.fixture
def gateway(tansu, vllm, tmp_path):
    g = Gateway(tansu, tmp_path, vllm[0].url)
    yield g
    g.close()


def test_alias_routes_to_its_version_and_every_request_is_logged_once(gateway, vllm):
    direct = {m: chat(vllm[0].url, m).json()["choices"][0]["message"]["content"] for m in ("v-a", "v-b")}
    assert direct["v-a"] != direct["v-b"]
    table = gateway.flip(production={"v-a": 1})
    r = chat(gateway.url, "production", headers=None)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == direct["v-a"]
    concrete = chat(gateway.url, "v-b")
    assert concrete.json()["choices"][0]["message"]["content"] == direct["v-b"]
    events = {e.request_id: e for e in gateway.events(expect=2)}
    first = events[r.headers["x-request-id"]]
    assert (first.adapter, first.alias, first.status, first.model) == ("v-a", "production", "ok", "base")
    assert first.response == direct["v-a"] and first.tokens_out == r.json()["usage"]["completion_tokens"]
    assert first.tokens_in == r.json()["usage"]["prompt_tokens"] and first.messages[0].content == "Say something 3"
    assert first.metadata["alias_table_version"] == table and first.latency_ms > 0
    assert (events[concrete.headers["x-request-id"]].adapter, events[concrete.headers["x-request-id"]].alias) == ("v-b", None)
    assert gateway.value("driftwatch_gateway_requests_total", alias="production", version="v-a", status="ok") == 1


def test_an_alias_flip_under_load_routes_each_request_by_one_table_and_fails_none(gateway, vllm):
    expected = {m: chat(vllm[0].url, m).json()["choices"][0]["message"]["content"] for m in ("v-a", "v-b")}
    before = gateway.flip(production={"v-a": 1})
    results, stop = [], threading.Event()

    def client():
        with httpx.Client(timeout=60) as c:
            while not stop.is_set():
                r = c.post(f"{gateway.url}/v1/chat/completions",
                           json={"model": "production", "messages": PROMPT, "max_tokens": 6, "temperature": 0})
                results.append((r.status_code, r.headers.get("x-request-id"), r.json()))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: len(results) >= 20, 60, "traffic before the flip")
    after = gateway.flip(production={"v-b": 1})
    n_flip = len(results)
    wait_for(lambda: len(results) >= n_flip + 20, 60, "traffic after the flip")
    stop.set()
    for t in threads:
        t.join()
    assert all(status == 200 for status, _, _ in results), [r for r in results if r[0] != 200][:3]
    events = {e.request_id: e for e in gateway.events(expect=len(results))}
    assert len(events) == len(results)  # each request exactly once on the topic
    served = {}
    for _, rid, body in results:
        e = events[rid]
        version = {before: "v-a", after: "v-b"}[e.metadata["alias_table_version"]]
        assert e.adapter == version and body["choices"][0]["message"]["content"] == expected[version]
        served[version] = served.get(version, 0) + 1
    assert served["v-a"] >= 20 and served["v-b"] >= 20


def test_weights_split_traffic_within_statistical_bounds(gateway):
    gateway.flip(canary={"v-a": 0.7, "v-b": 0.3})
    n = 200
    with httpx.Client(timeout=60) as c:
        codes = [c.post(f"{gateway.url}/v1/completions",
                        json={"model": "canary", "prompt": "hi", "max_tokens": 1}).status_code for _ in range(n)]
    assert codes == [200] * n
    share = gateway.value("driftwatch_gateway_requests_total", alias="canary", version="v-a", status="ok") / n
    assert 0.7 - 3.3 * (0.21 / n) ** 0.5 < share < 0.7 + 3.3 * (0.21 / n) ** 0.5  # 99.9 % binomial band


def test_streaming_passes_events_through_and_is_logged(gateway, vllm):
    gateway.flip(production={"v-b": 1})
    whole = chat(gateway.url, "production").json()["choices"][0]["message"]["content"]
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", timeout=60,
                      json={"model": "production", "messages": PROMPT, "max_tokens": 6, "temperature": 0,
                            "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        rid = r.headers["x-request-id"]
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert all(c["choices"] for c in chunks)  # the usage-only chunk the gateway asked for is not passed on
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == whole
    event = next(e for e in gateway.events(expect=2) if e.request_id == rid)
    assert event.response == whole and event.tokens_out and event.metadata["stream"] is True


def test_errors_are_openai_shaped_and_logged(gateway, tansu, tmp_path):
    missing = chat(gateway.url, "no-such-adapter")
    assert missing.status_code == 404 and "error" in missing.json()
    big = httpx.post(f"{gateway.url}/v1/completions", content=b"x" * 2_000_000, timeout=10)
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    bad = httpx.post(f"{gateway.url}/v1/completions", content=b"{nope", timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    down = Gateway(tansu, tmp_path, f"http://127.0.0.1:{free_port()}")  # vLLM not there (killed)
    try:
        r = chat(down.url, "v-a")
        assert r.status_code == 503 and r.json()["error"]["code"] == "upstream_unavailable"
        (event,) = down.events(expect=1)
        assert (event.status, event.error_type, event.adapter) == ("error", "upstream_unavailable", "v-a")
    finally:
        down.close()
    event = next(e for e in gateway.events(expect=1) if e.request_id == missing.headers["x-request-id"])
    assert (event.status, event.error_type, event.adapter) == ("error", "model_not_found", "unknown")


def test_feedback_endpoint(gateway):
    gateway.flip(production={"v-a": 1})
    answer = chat(gateway.url, "production")
    rid, receipt = answer.headers["x-request-id"], answer.headers["x-driftwatch-feedback-token"]
    ok = httpx.post(f"{gateway.url}/v1/feedback", json={"feedback_token": receipt, "thumbs": "down",
                                                        "correction": "alpha."})
    assert ok.status_code == 202
    refused = httpx.post(f"{gateway.url}/v1/feedback", json={"feedback_token": receipt})
    assert refused.status_code == 400 and "rating" in refused.json()["error"]["message"]
    (fb,) = read_topic(gateway.settings.kafka.bootstrap_servers[0], gateway.settings.kafka.topics.feedback, 1)
    event = decode("feedback", fb.value, 10**7)
    assert (event.request_id, event.thumbs, event.correction) == (rid, "down", "alpha.")
    assert fb.key == rid.encode()


def test_kafka_down_leaves_clients_unaffected_and_events_arrive_after(noida, vllm, tmp_path):
    g = Gateway(noida, tmp_path, vllm[0].url)
    try:
        g.flip(production={"v-a": 1})
        assert chat(g.url, "production").status_code == 200
        wait_for(lambda: g.sink.pending == 0, 20, "the first event delivered")
        noida.stop()
        t0 = time.monotonic()
        codes = [chat(g.url, "production").status_code for _ in range(10)]
        assert codes == [200] * 10 and time.monotonic() - t0 < 20  # served while Kafka is down
        assert g.sink.pending >= 1 and g.value("driftwatch_gateway_events_dropped_total", topic=g.settings.kafka.topics.inference) == 0
        noida.start()
        wait_for(lambda: g.sink.pending == 0, 60, "buffered events delivered after Kafka returned")
        assert len({e.request_id for e in g.events(expect=11)}) == 11
    finally:
        g.close()
