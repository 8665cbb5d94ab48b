"""A client for vLLM's OpenAI-compatible server: health, models, runtime LoRA load/unload, completions and chat.

vLLM's answers become driftwatch errors (errors.py): a name already loaded → AdapterExists (its 400), a missing
adapter or path → AdapterNotFound (404), an adapter it cannot take (rank above --max-lora-rank, another base
model) → AdapterRejected (500), no answer → VLLMUnavailable. Retried, and only these: a request that never left
(the connection was refused or not made in time), and reads (health, models) after any transport failure.
A load whose answer was lost is settled by asking vLLM's model list, never by sending it again blindly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx

from driftwatch.errors import AdapterExists, AdapterNotFound, AdapterRejected, ServingError, VLLMUnavailable


@dataclass(frozen=True)
class Generation:
    text: str
    tokens_in: int | None
    tokens_out: int | None
    latency_s: float
    finish_reason: str | None


class VLLMClient:
    def __init__(self, base_url: str, *, timeout_s: float = 60.0, connect_timeout_s: float = 2.0, retries: int = 3,
                 backoff_s: float = 0.2, api_key: str | None = None) -> None:
        """``api_key``: vLLM's ``--api-key`` (``gateway.upstream_api_key``), sent as a bearer token on every request."""
        self.base_url = base_url.rstrip("/")
        self.retries, self.backoff_s = retries, backoff_s
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers,
                                  timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> VLLMClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- transport ------------------------------------------------------------------------------------------------------
    def _send(self, method: str, path: str, *, read: bool, **kwargs) -> httpx.Response:
        """One request, retried when that is safe: always when it never left; for reads, after any transport error."""
        for attempt in range(self.retries + 1):
            try:
                return self._http.request(method, path, **kwargs)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                error: Exception = exc
            except httpx.TransportError as exc:
                if not read:
                    raise VLLMUnavailable(f"vLLM at {self.base_url}: {method} {path} got no answer ({exc!r})") from exc
                error = exc
            if attempt < self.retries:
                time.sleep(self.backoff_s * 2 ** attempt)
        raise VLLMUnavailable(f"vLLM at {self.base_url} not reachable ({method} {path}): {error!r}") from error

    @staticmethod
    def _message(resp: httpx.Response) -> str:
        try:
            doc = resp.json()
            error = doc.get("error")  # an object, or a bare string ({"error": "Unauthorized"}: the API key)
            return str((error.get("message") if isinstance(error, dict) else error) or doc.get("message") or doc)
        except (ValueError, AttributeError):
            return resp.text.strip()[:500]

    def _raise(self, resp: httpx.Response, what: str) -> None:
        message = f"{what}: vLLM answered {resp.status_code}: {self._message(resp)}"
        if resp.status_code == 401:
            raise ServingError(f"{message} (gateway.upstream_api_key must be vLLM's --api-key)", 401)
        if resp.status_code == 404:
            raise AdapterNotFound(message, resp.status_code)
        if resp.status_code == 400 and "already" in message.lower():
            raise AdapterExists(message, resp.status_code)
        if resp.status_code in (502, 503, 504):
            raise VLLMUnavailable(message, resp.status_code)
        raise ServingError(message, resp.status_code)

    # -- server ---------------------------------------------------------------------------------------------------------
    def health(self) -> bool:
        try:
            return self._http.get("/health").status_code == 200
        except httpx.TransportError:
            return False

    def models(self) -> list[dict[str, Any]]:
        resp = self._send("GET", "/v1/models", read=True)
        if resp.status_code != 200:
            self._raise(resp, "listing models")
        return resp.json().get("data", [])

    def adapters(self) -> dict[str, str]:
        """Loaded adapters: name → path (vLLM lists an adapter with its path as ``root``, the base as ``parent``)."""
        return {m["id"]: m.get("root") for m in self.models() if m.get("parent")}

    # -- runtime LoRA ---------------------------------------------------------------------------------------------------
    def load_adapter(self, name: str, path: str) -> None:
        what = f"loading adapter '{name}' from {path}"
        try:
            resp = self._send("POST", "/v1/load_lora_adapter", read=False, json={"lora_name": name, "lora_path": path})
        except VLLMUnavailable:
            if self._loaded_from(name) == path:  # the answer was lost, the load was not
                return
            raise
        if resp.status_code == 200:
            return
        if resp.status_code == 500:
            raise AdapterRejected(f"{what}: vLLM cannot load it ({self._message(resp)}); check its rank against "
                                  "--max-lora-rank and that it was trained on the served base model", 500)
        self._raise(resp, what)

    def unload_adapter(self, name: str) -> None:
        resp = self._send("POST", "/v1/unload_lora_adapter", read=False, json={"lora_name": name})
        if resp.status_code == 200:
            return
        if resp.status_code == 400 and "not" in self._message(resp).lower():  # vLLM's "... has not been loaded"
            raise AdapterNotFound(f"unloading adapter '{name}': {self._message(resp)}", 400)
        self._raise(resp, f"unloading adapter '{name}'")

    def _loaded_from(self, name: str) -> str | None:
        try:
            return self.adapters().get(name)
        except ServingError:
            return None

    # -- inference ------------------------------------------------------------------------------------------------------
    def complete(self, model: str, prompt: str, *, max_tokens: int = 64, temperature: float = 0.0,
                 **params: Any) -> Generation:
        return self._generate("/v1/completions", {"model": model, "prompt": prompt, "max_tokens": max_tokens,
                                                  "temperature": temperature, **params})

    def chat(self, model: str, messages: list[dict[str, str]], *, max_tokens: int = 64, temperature: float = 0.0,
             **params: Any) -> Generation:
        return self._generate("/v1/chat/completions", {"model": model, "messages": messages, "max_tokens": max_tokens,
                                                       "temperature": temperature, **params})

    def _generate(self, path: str, body: dict) -> Generation:
        t0 = time.perf_counter()
        resp = self._send("POST", path, read=False, json=body)
        latency = time.perf_counter() - t0
        if resp.status_code != 200:
            self._raise(resp, f"{path} with model '{body['model']}'")
        doc = resp.json()
        choice = (doc.get("choices") or [{}])[0]
        text = choice.get("text") if "text" in choice else (choice.get("message") or {}).get("content")
        usage = doc.get("usage") or {}
        return Generation(text or "", usage.get("prompt_tokens"), usage.get("completion_tokens"), latency,
                          choice.get("finish_reason"))
