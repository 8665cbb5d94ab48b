"""The hostile client's rig: the real gateway (its service, sink and store) on a uvicorn thread, a real broker,
and a stand-in upstream that answers like vLLM (fast, so hundreds of attacks run in seconds)."""

from __future__ import annotations

import json
import time

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from driftwatch.config import Settings
from driftwatch.events import decode
from driftwatch.http import HttpServer
from driftwatch.serving import gateway as gw
from driftwatch.state.registry import AdapterRecord
from tests.integration.conftest import noida, read_topic, settings_dict, tansu, wait_for  # noqa: F401 - fixtures


def pytest_collection_modifyitems(items):
    for item in items:
        if "/security/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


def upstream_app() -> Starlette:
    """Answers /v1/completions and /v1/chat/completions as vLLM does: the model named, one word, usage."""
    async def complete(request: Request) -> Response:
        body = json.loads(await request.body())
        chat = request.url.path.endswith("chat/completions")
        usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
        if body.get("stream"):
            async def chunks():
                delta = {"delta": {"content": "ok"}} if chat else {"text": "ok"}
                yield f"data: {json.dumps({'choices': [{'index': 0, **delta}]})}\n\n".encode()
                yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode()
                yield b"data: [DONE]\n\n"
            return StreamingResponse(chunks(), media_type="text/event-stream")
        choice = {"index": 0, "message": {"role": "assistant", "content": "ok"}} if chat else {"index": 0, "text": "ok"}
        return JSONResponse({"id": "x", "model": body["model"], "choices": [choice], "usage": usage})

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": m, "object": "model"} for m in ("base", "v1", "v2", "v3")]})

    return Starlette(routes=[Route("/v1/completions", complete, methods=["POST"]),
                             Route("/v1/chat/completions", complete, methods=["POST"]),
                             Route("/v1/models", models)])


@pytest.fixture(scope="module")
def upstream():
    server = HttpServer(upstream_app(), "127.0.0.1", 0).start()
    yield server.url
    server.stop()


class Gateway:
    """The real gateway on a uvicorn thread, with its own topics, store, sink and metrics."""

    def __init__(self, broker, tmp_path, upstream: str, versions=("v1", "v2", "v3"), metrics=None, ingest=None,
                 **gateway):
        doc = settings_dict(broker, tmp_path, gateway={"upstreams": [upstream], "alias_poll_s": 0.05, **gateway},
                            **({"metrics": metrics} if metrics else {}), **({"ingest": ingest} if ingest else {}))
        self.settings = Settings.model_validate(doc)
        from driftwatch.ingest.kafka import ensure_topics

        ensure_topics(self.settings.kafka)
        self.service, self.sink = gw.build(self.settings, seed=1)
        self.store = self.service.store
        for version in versions:
            self.store.save_adapter(AdapterRecord(version, f"/adapters/{version}", None, None, "candidate", 1.0, 1.0))
        self.store.set_aliases({"production": {versions[0]: 1.0}}, time.time(), who="test")
        self.service.reload()
        self.http = HttpServer(self.service.app(), "127.0.0.1", 0).start()
        self.url = self.http.url

    def flip(self, **aliases):
        version = self.store.set_aliases(aliases, time.time(), who="test")
        wait_for(lambda: self.service.table.version == version, 5, "the gateway to pick up the alias table")

    def events(self, expect=None, kind="inference"):
        topic = getattr(self.settings.kafka.topics, kind)
        return [decode(kind, r.value, 10**8) for r in read_topic(self.settings.kafka.bootstrap_servers[0], topic, expect)]

    def close(self):
        self.http.stop()
        self.service.close()
        return self.sink.close()


@pytest.fixture
def gateway(tansu, upstream, tmp_path):
    g = Gateway(tansu, tmp_path, upstream)
    yield g
    g.close()
