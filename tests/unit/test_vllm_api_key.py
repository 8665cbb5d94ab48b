"""vLLM's API key (gateway.upstream_api_key, from a Secret through DRIFTWATCH__GATEWAY__UPSTREAM_API_KEY) reaches
vLLM as ``Authorization: Bearer <key>`` from both of driftwatch's clients: the gateway's Upstream and the daemon's
VLLMClient (adapter loads and unloads, model lists, evaluation). Each against a local HTTP server recording heads."""

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from driftwatch.config import load_settings
from driftwatch.errors import ServingError
from driftwatch.serving.upstream import Upstream
from driftwatch.serving.vllm import VLLMClient
from tests.unit.test_upstream import serve

KEY = "k3y-from-the-secret-0123456789abcdef"
OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


def settings(key: str | None):
    return load_settings(None, env={"DRIFTWATCH__GATEWAY__UPSTREAM_API_KEY": key} if key is not None else {})


def test_the_key_is_a_secret_setting_read_from_the_environment():
    s = settings(KEY)
    assert s.gateway.upstream_key() == KEY and KEY not in repr(s) and KEY not in json.dumps(s.redacted())
    assert settings(None).gateway.upstream_key() is None and settings("").gateway.upstream_key() is None


@pytest.mark.parametrize("key", [KEY, None])
def test_the_gateway_upstream_sends_the_key_and_only_its_own(key):
    async def main():
        requests = []
        server, port = await serve([OK, OK], requests)
        up = Upstream(f"http://127.0.0.1:{port}", 1, 5, api_key=settings(key).gateway.upstream_key())
        await (await up.request("POST", "/v1/chat/completions", b"{}", {"content-type": "application/json"})).read()
        # a caller's authorization header never replaces the key (nor goes out without it)
        await (await up.request("GET", "/v1/models", headers={"Authorization": "Bearer client-token"})).read()
        server.close()
        return [[line.lower() for line in r.split(b"\r\n\r\n")[0].split(b"\r\n")] for r in requests]

    for head in asyncio.run(main()):
        auth = [line for line in head if line.startswith(b"authorization:")]
        assert auth == ([f"authorization: bearer {KEY}".lower().encode()] if key else []), head


def test_a_key_that_would_break_the_request_head_is_refused():
    for bad in ("two\r\nlines", " padded ", ""):
        with pytest.raises(ValueError):
            Upstream("http://127.0.0.1:1", 1, 5, api_key=bad)


class Recording(BaseHTTPRequestHandler):
    """vLLM's answers to the daemon's calls, and vLLM's 401 when the bearer token is not the key."""

    heads: list = []
    key: str | None = None

    def _answer(self) -> None:
        Recording.heads.append((self.command, self.path, self.headers.get("Authorization")))
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        if self.key and self.path.startswith("/v1") and self.headers.get("Authorization") != f"Bearer {self.key}":
            body, status = {"error": "Unauthorized"}, 401
        elif self.path == "/v1/models":
            models = [{"id": "base"}, {"id": "v1", "root": "/data/runs/r/adapter", "parent": "base"}]
            body, status = {"data": models}, 200
        elif self.path == "/v1/chat/completions":
            body, status = {"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}], "usage": {}}, 200
        else:
            body, status = {}, 200
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def vllm():
    Recording.heads, Recording.key = [], KEY
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recording)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_the_daemon_client_sends_the_key_on_every_call(vllm):
    with VLLMClient(vllm, api_key=settings(KEY).gateway.upstream_key(), retries=0) as client:
        client.load_adapter("v1", "/data/runs/r/adapter")
        assert client.adapters() == {"v1": "/data/runs/r/adapter"}
        assert client.chat("v1", [{"role": "user", "content": "hello"}]).text == "hi"
        client.unload_adapter("v1")
        assert client.health()
    assert [p for _, p, _ in Recording.heads] == ["/v1/load_lora_adapter", "/v1/models", "/v1/chat/completions",
                                                  "/v1/unload_lora_adapter", "/health"]
    assert {auth for _, _, auth in Recording.heads} == {f"Bearer {KEY}"}


def test_without_the_key_vllm_refuses_and_the_error_names_the_setting(vllm):
    with VLLMClient(vllm, retries=0) as client:
        with pytest.raises(ServingError, match="upstream_api_key") as refused:
            client.load_adapter("v1", "/data/runs/r/adapter")
    assert refused.value.args[0].count("Unauthorized") == 1 and Recording.heads[0][2] is None
