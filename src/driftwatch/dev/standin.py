"""A stand-in for a vLLM server, for the chaos soak (bench/soak.py) and the routing tests: vLLM's runtime-LoRA API
(``/v1/load_lora_adapter``, ``/v1/unload_lora_adapter``, ``/v1/models``), ``/v1/completions`` and
``/v1/chat/completions`` answering from a function of the model, and ``/health``. It can be taken down (its port
closed) and brought back on the same port with no adapters, as a restarted vLLM comes back.

It keeps what an invariant needs: every generation request it got, by model, and the ones for a model it had not
loaded (vLLM answers those 404: a request routed to a server that lacks its version).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from typing import Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from driftwatch.http import HttpServer


def _prompt(body: dict) -> str:
    """A completion's prompt, or a chat's last user message."""
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        prompt = prompt[0] if prompt else ""
    if isinstance(prompt, str):
        return prompt
    users = [m.get("content") for m in body.get("messages") or () if isinstance(m, dict) and m.get("role") == "user"]
    return users[-1] if users and isinstance(users[-1], str) else ""


class StandIn:
    def __init__(self, base: str = "base", answer: Callable[[str, str], str] = lambda model, prompt: "ok",
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.base, self.answer, self.host, self.port = base, answer, host, port
        self.adapters: dict[str, str] = {}  # name -> path
        self.served: Counter[str] = Counter()
        # (when, model, through the gateway): a request for a model not loaded here (the gateway's carry x-request-id;
        # the daemon's own, an evaluation's or a warm-up's, do not)
        self.misses: list[tuple[float, str, bool]] = []
        self.slow_s = 0.0  # each generation waits this long first
        self._lock = threading.Lock()
        self._http: HttpServer | None = None

    # -- up and down ----------------------------------------------------------------------------------------------------
    def start(self) -> StandIn:
        self._http = HttpServer(self._app(), self.host, self.port).start()
        self.port = self._http.port
        return self

    def down(self) -> None:
        """The port closes: connections are refused, as with a vLLM that died."""
        if self._http is not None:
            self._http.stop()
            self._http = None

    def up(self) -> None:
        """Back on the same port, with no adapters loaded (a restarted vLLM)."""
        with self._lock:
            self.adapters = {}
        deadline = time.monotonic() + 10
        while True:
            try:
                self.start()
                return
            except OSError:  # the old socket not released yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    @property
    def is_up(self) -> bool:
        return self._http is not None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- the API --------------------------------------------------------------------------------------------------------
    def _app(self) -> Starlette:
        async def models(request: Request) -> Response:
            with self._lock:
                loaded = dict(self.adapters)
            data = [{"id": self.base, "object": "model", "root": self.base, "parent": None}]
            data += [{"id": name, "object": "model", "root": path, "parent": self.base} for name, path in loaded.items()]
            return JSONResponse({"object": "list", "data": data})

        async def load(request: Request) -> Response:
            body = json.loads(await request.body())
            name, path = body.get("lora_name"), body.get("lora_path")
            with self._lock:
                if name in self.adapters:
                    return JSONResponse({"message": f"The lora adapter '{name}' has already been loaded."}, 400)
                self.adapters[name] = path
            return Response(f"Success: LoRA adapter '{name}' added successfully.")

        async def unload(request: Request) -> Response:
            name = json.loads(await request.body()).get("lora_name")
            with self._lock:
                if self.adapters.pop(name, None) is None:
                    return JSONResponse({"message": f"The lora adapter '{name}' has not been loaded."}, 400)
            return Response(f"Success: LoRA adapter '{name}' removed successfully.")

        async def generate(request: Request) -> Response:
            import asyncio

            body = json.loads(await request.body())
            model = body.get("model")
            if self.slow_s:
                await asyncio.sleep(self.slow_s)
            with self._lock:
                known = model == self.base or model in self.adapters
                if not known:
                    self.misses.append((time.time(), model, "x-request-id" in request.headers))
                else:
                    self.served[model] += 1
            if not known:
                return JSONResponse({"object": "error", "message": f"The model `{model}` does not exist.",
                                     "type": "NotFoundError", "code": 404}, 404)
            text = self.answer(model, _prompt(body))
            prompt_tokens, completion_tokens = len(_prompt(body)) // 4, len(text) // 4  # as the simulator counts
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                     "total_tokens": prompt_tokens + completion_tokens}
            if request.url.path.endswith("chat/completions"):
                choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            else:
                choice = {"index": 0, "text": text, "finish_reason": "stop"}
            return JSONResponse({"id": "cmpl-standin", "object": "text_completion", "model": model,
                                 "choices": [choice], "usage": usage})

        async def health(request: Request) -> Response:
            return Response()

        return Starlette(routes=[
            Route("/v1/models", models), Route("/health", health),
            Route("/v1/load_lora_adapter", load, methods=["POST"]),
            Route("/v1/unload_lora_adapter", unload, methods=["POST"]),
            Route("/v1/completions", generate, methods=["POST"]),
            Route("/v1/chat/completions", generate, methods=["POST"]),
        ])
