"""The serving edge: an OpenAI-compatible gateway in front of vLLM, where inference logs are born.

* **Aliases.** A client names an alias (``production``) or a concrete adapter version. The alias table — each
  alias to one version or weighted versions — lives in the state store as append-only versions; the gateway
  re-reads it every ``gateway.alias_poll_s`` and swaps its reference atomically, so every request is routed by
  exactly one table version (logged with the event).
* **Logging.** Every request — upstream errors, timeouts and unknown models included — becomes an InferenceEvent
  on Kafka, keyed by request_id, with the adapter version that served it and vLLM's token usage. Events go into a
  bounded buffer drained by a sender thread: Kafka being down never blocks or fails a client request; what does
  not fit the buffer is counted, never silently lost.
* **Feedback.** ``POST /v1/feedback`` → FeedbackEvent; clients get the request id in the ``x-request-id`` header.
* **Errors** are OpenAI-style JSON: 400 bad request, 404 unknown model, 413 too large, 502 bad upstream answer,
  503 no upstream reachable, 504 upstream timeout.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import random
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, NamedTuple

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from driftwatch.config import Gateway, Kafka
from driftwatch.events import SCHEMA_VERSION, FeedbackEvent, InferenceEvent, encode, now_ms
from driftwatch.metrics import GatewayMetrics
from driftwatch.state.store import SqlStore
from driftwatch.serving.upstream import Response as UpstreamResponse
from driftwatch.errors import UpstreamError
from driftwatch.serving.upstream import Upstream

log = logging.getLogger(__name__)

ROUTE_HEADER, TENANT_HEADER, REQUEST_ID_HEADER = "x-driftwatch-route", "x-driftwatch-tenant", "x-request-id"


# -- alias table --------------------------------------------------------------------------------------------------------
class AliasTable(NamedTuple):
    version: int
    aliases: dict[str, tuple[list[str], list[float]]]  # alias -> (versions, cumulative weights)

    @classmethod
    def from_doc(cls, version: int, doc: dict[str, dict[str, float]]) -> AliasTable:
        aliases = {}
        for alias, weights in doc.items():
            versions = [v for v, w in weights.items() if w > 0]
            aliases[alias] = (versions, list(itertools.accumulate(weights[v] for v in versions)))
        return cls(version, aliases)

    def resolve(self, model: str, rng: random.Random) -> tuple[str | None, str]:
        """(alias or None, adapter version). A name that is not an alias is taken as a concrete version."""
        entry = self.aliases.get(model)
        if entry is None:
            return None, model
        versions, cumulative = entry
        if len(versions) == 1:
            return model, versions[0]
        return model, rng.choices(versions, cum_weights=cumulative)[0]


# -- event delivery -----------------------------------------------------------------------------------------------------
class EventSink:
    """A bounded buffer of (topic, key, value) drained to Kafka by one thread; ``offer`` never blocks."""

    def __init__(self, kafka: Kafka, max_events: int, metrics: GatewayMetrics,
                 producer_factory: Callable[[], Any] | None = None, retry_s: float = 1.0, linger_s: float = 0.005) -> None:
        self.kafka, self.max_events, self.metrics, self.retry_s, self.linger_s = kafka, max_events, metrics, retry_s, linger_s
        self._factory = producer_factory or self._producer
        self._items: collections.deque[tuple[str, bytes, bytes]] = collections.deque()
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="driftwatch-gateway-events", daemon=True)
        p = kafka.producer
        # every send resolves, acknowledged or failed, within this; a flush that waited less would re-send records
        # that were still on their way, and each would reach Kafka twice
        self.delivery_timeout_ms = max(p.delivery_timeout_ms, kafka.request_timeout_ms + p.linger_ms + 1000)

    def _producer(self):
        from driftwatch.ingest.kafka import producer

        p = self.kafka.producer
        # idempotence off: kafka-python's idempotent producer lost sends across a broker restart here (measured)
        return producer(self.kafka, acks=p.acks if p.acks == "all" else int(p.acks),
                             linger_ms=p.linger_ms, max_request_size=p.max_request_size,
                             enable_idempotence=False, retries=5, max_block_ms=5000,
                             delivery_timeout_ms=self.delivery_timeout_ms)

    def start(self) -> EventSink:
        self._thread.start()
        return self

    def offer(self, topic: str, key: bytes, value: bytes) -> bool:
        with self._cond:
            if len(self._items) >= self.max_events:
                self.metrics.events_dropped.labels(topic=topic).inc()
                return False
            self._items.append((topic, key, value))
            self.metrics.events_buffered.set(len(self._items))
            self._cond.notify()
        return True

    @property
    def pending(self) -> int:
        return len(self._items)

    def _run(self) -> None:
        producer = None
        while True:
            with self._cond:
                while not self._items and not self._stop:
                    self._cond.wait()
                if not self._items and self._stop:
                    break
            time.sleep(self.linger_s)  # let a burst gather: one wake-up, one batch (and the GIL left to requests)
            with self._cond:
                batch = list(itertools.islice(self._items, 0, 1000))
            futures = []
            try:
                producer = producer or self._factory()
                for topic, key, value in batch:
                    futures.append(producer.send(topic, value=value, key=key))
                producer.flush(timeout=self.delivery_timeout_ms / 1000 + 5)
            except Exception as exc:  # noqa: BLE001 - Kafka down or refusing: keep the events, retry later
                log.warning("cannot deliver %d event(s) to Kafka yet (%s: %s); retrying in %.0fs",
                            len(batch), type(exc).__name__, exc, self.retry_s)
            delivered = 0
            for f in futures:  # in order: stop at the first not acknowledged, keep it and what follows
                if not (f.is_done and f.succeeded()):
                    break
                delivered += 1
            with self._cond:
                for _ in range(delivered):
                    topic, _, _ = self._items.popleft()
                    self.metrics.events_delivered.labels(topic=topic).inc()
                self.metrics.events_buffered.set(len(self._items))
                if delivered < len(batch) and not self._stop:
                    for topic, _, _ in batch[delivered:]:  # unconfirmed, so sent again: Kafka may hold them twice
                        self.metrics.events_resent.labels(topic=topic).inc()
                    self._cond.wait(self.retry_s)
                elif delivered < len(batch) and self._stop:
                    break
        if producer is not None:
            producer.close(timeout=5)

    def close(self, timeout_s: float = 10.0) -> int:
        """Deliver what can be delivered within the timeout; return how many events are left undelivered."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout_s)
        return len(self._items)


# -- the service --------------------------------------------------------------------------------------------------------
def openai_error(status: int, message: str, type_: str, code: str | None = None, param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": code}}, status_code=status)


@dataclass
class Outcome:
    status: str  # ok | error | timeout
    http_status: int
    error_type: str | None = None
    response: str | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    upstream_s: float = 0.0


def _prompt(kind: str, body: dict) -> tuple[str | None, list[dict] | None]:
    if kind == "completions":
        prompt = body.get("prompt")
        return ("\n".join(map(str, prompt)) if isinstance(prompt, list) else str(prompt or "")), None
    messages = []
    for m in body.get("messages") or []:
        content = m.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        if m.get("role") in ("system", "user", "assistant", "tool"):
            messages.append({"role": m["role"], "content": str(content or "")})
    return None, messages


def _answer(kind: str, doc: dict) -> str | None:
    choices = doc.get("choices") or []
    if not choices:
        return None
    first = choices[0]
    return first.get("text") if kind == "completions" else (first.get("message") or {}).get("content")


class GatewayService:
    def __init__(self, cfg: Gateway, store: SqlStore, sink: EventSink, topics, metrics: GatewayMetrics,
                 seed: int | None = None) -> None:
        self.cfg, self.store, self.sink, self.topics, self.metrics = cfg, store, sink, topics, metrics
        self.rng = random.Random(seed)
        self.table = AliasTable.from_doc(*store.alias_table())
        self.upstreams = [Upstream(u, cfg.connect_timeout_s, cfg.timeout_s) for u in cfg.upstreams]
        self._upstreams = itertools.cycle(self.upstreams)  # round robin
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll_aliases, name="driftwatch-gateway-aliases", daemon=True)
        self.metrics.alias_table_version.set(self.table.version)

    def start(self) -> GatewayService:
        self._poller.start()
        return self

    def _poll_aliases(self) -> None:
        while not self._stop.wait(self.cfg.alias_poll_s):
            try:
                if self.store.alias_table_version() != self.table.version:
                    self.reload()
            except Exception:  # noqa: BLE001 - keep routing by the table in hand; log and retry
                log.exception("cannot re-read the alias table")

    def reload(self) -> int:
        table = AliasTable.from_doc(*self.store.alias_table())
        if table.version != self.table.version:
            self.table = table  # one reference swap: a request holds the old or the new table, never a mix
            self.metrics.alias_table_version.set(table.version)
            log.info("alias table version %d: %s", table.version,
                     {a: dict(zip(v, c)) for a, (v, c) in table.aliases.items()})
        return table.version

    def close(self) -> None:
        self._stop.set()
        for upstream in self.upstreams:
            upstream.close()

    # -- endpoints ----------------------------------------------------------------------------------------------------
    def app(self) -> Starlette:
        from prometheus_client.exposition import choose_encoder

        def metrics(request: Request) -> Response:
            encoder, content_type = choose_encoder(request.headers.get("accept", ""))
            return Response(encoder(self.metrics.registry), media_type=content_type)

        async def healthz(request: Request) -> Response:
            return JSONResponse({"status": "ok", "alias_table_version": self.table.version,
                                 "events_buffered": self.sink.pending})

        async def completions(request: Request) -> Response:
            return await self.proxy(request, "completions")

        async def chat(request: Request) -> Response:
            return await self.proxy(request, "chat/completions")

        return Starlette(routes=[
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/feedback", self.feedback, methods=["POST"]),
            Route("/metrics", metrics),
            Route("/healthz", healthz),
        ])

    async def _body(self, request: Request) -> dict | Response:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.cfg.max_request_bytes:
            return openai_error(413, f"request body over {self.cfg.max_request_bytes} bytes", "invalid_request_error",
                                "request_too_large")
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > self.cfg.max_request_bytes:
                return openai_error(413, f"request body over {self.cfg.max_request_bytes} bytes",
                                    "invalid_request_error", "request_too_large")
        try:
            body = json.loads(raw)
        except ValueError as exc:
            return openai_error(400, f"request body is not JSON: {exc}", "invalid_request_error")
        if not isinstance(body, dict):
            return openai_error(400, "request body must be a JSON object", "invalid_request_error")
        return body

    async def models(self, request: Request) -> Response:
        """vLLM's models (base and loaded adapters) plus the aliases, each with the version it points to."""
        try:
            resp = await next(self._upstreams).request("GET", "/v1/models")
            data = json.loads(await resp.read()).get("data", [])
        except (UpstreamError, TimeoutError, ValueError, AttributeError) as exc:
            return openai_error(503, f"no upstream answered: {exc}", "service_unavailable", "upstream_unavailable")
        table = self.table
        for alias, (versions, _) in sorted(table.aliases.items()):
            data.append({"id": alias, "object": "model", "owned_by": "driftwatch", "root": versions[0],
                         "parent": self.cfg.base_model, "driftwatch_versions": versions})
        return JSONResponse({"object": "list", "data": data})

    async def feedback(self, request: Request) -> Response:
        body = await self._body(request)
        if isinstance(body, Response):
            return body
        doc = {"schema_version": SCHEMA_VERSION, "feedback_id": body.get("feedback_id") or uuid.uuid4().hex,
               "timestamp": now_ms(), **{k: body[k] for k in ("request_id", "rating", "thumbs", "correction", "label")
                                        if k in body}}
        try:
            event = FeedbackEvent.model_validate(doc)
        except ValueError as exc:
            return openai_error(400, f"invalid feedback: {exc}", "invalid_request_error")
        self.sink.offer(self.topics.feedback, event.request_id.encode(), encode(event))
        return JSONResponse({"feedback_id": event.feedback_id, "request_id": event.request_id}, status_code=202)

    async def proxy(self, request: Request, path: str) -> Response:
        t0 = time.perf_counter()
        request_id = request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        body = await self._body(request)
        if isinstance(body, Response):
            return body
        kind = "completions" if path == "completions" else "chat"
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return openai_error(400, "'model' is required: an alias (e.g. production) or an adapter version",
                                "invalid_request_error", param="model")
        table = self.table  # this request is routed by this one table version
        alias, version = table.resolve(model, self.rng)
        body["model"] = version
        stream = bool(body.get("stream"))
        client_wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        if stream:
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        headers = {"x-request-id": request_id}
        ctx = (request, request_id, kind, body, alias, version, table.version, t0)
        upstream = next(self._upstreams)
        up_t0 = time.perf_counter()
        resp = None
        try:
            resp = await upstream.request("POST", f"/v1/{path}", json.dumps(body).encode(),
                                          {"content-type": "application/json", **headers})
            if not (stream and resp.status == 200):
                content = await resp.read()
        except TimeoutError:
            return self._fail(ctx, Outcome("timeout", 504, "upstream_timeout", upstream_s=time.perf_counter() - up_t0),
                              f"upstream {upstream.base_url} did not answer within {self.cfg.timeout_s:g}s", "timeout")
        except UpstreamError as exc:
            if resp is None:
                return self._fail(ctx, Outcome("error", 503, "upstream_unavailable",
                                               upstream_s=time.perf_counter() - up_t0),
                                  f"no upstream reachable: {exc}", "service_unavailable")
            return self._fail(ctx, Outcome("error", 502, "upstream_broken", upstream_s=time.perf_counter() - up_t0),
                              str(exc), "bad_gateway")
        if stream and resp.status == 200:
            return StreamingResponse(self._relay(resp, ctx, up_t0, client_wants_usage), media_type="text/event-stream",
                                     headers=headers)
        upstream_s = time.perf_counter() - up_t0
        try:
            doc = json.loads(content)
        except ValueError:
            return self._fail(ctx, Outcome("error", 502, f"upstream_{resp.status}", upstream_s=upstream_s),
                              f"upstream answered {resp.status} with a body that is not JSON", "bad_gateway")
        if resp.status != 200:
            status = 404 if resp.status == 404 else resp.status if resp.status < 500 else 502
            error_type = "model_not_found" if resp.status == 404 else f"upstream_{resp.status}"
            self._log(ctx, Outcome("error", status, error_type, upstream_s=upstream_s))
            return JSONResponse(doc, status_code=status, headers=headers)
        usage = doc.get("usage") or {}
        outcome = Outcome("ok", 200, None, _answer(kind, doc), usage.get("prompt_tokens"), usage.get("completion_tokens"),
                          upstream_s)
        # the event is built after the answer has gone out: the client does not wait for the log
        return Response(content, media_type="application/json", headers=headers,
                        background=BackgroundTask(self._log_after, ctx, outcome, time.perf_counter()))

    async def _relay(self, resp: UpstreamResponse, ctx, up_t0: float,
                     client_wants_usage: bool) -> AsyncIterator[bytes]:
        """Pass server-sent events through as they come; collect the text and the usage for the log."""
        parts: list[str] = []
        usage: dict = {}
        outcome = Outcome("ok", 200)
        buffer = b""
        try:
            async for chunk in resp.chunks():
                buffer += chunk
                while b"\n\n" in buffer:
                    event, buffer = buffer.split(b"\n\n", 1)
                    data = event[6:] if event.startswith(b"data: ") else None
                    if data and data != b"[DONE]":
                        try:
                            doc = json.loads(data)
                        except ValueError:
                            doc = {}
                        if doc.get("usage"):
                            usage = doc["usage"]
                        for choice in doc.get("choices") or []:
                            if choice.get("index", 0) == 0:
                                parts.append(choice.get("text") or (choice.get("delta") or {}).get("content") or "")
                        if not doc.get("choices") and doc.get("usage") and not client_wants_usage:
                            continue  # the usage chunk the gateway asked for on its own account
                    yield event + b"\n\n"
            if buffer:
                yield buffer
        except TimeoutError:
            outcome = Outcome("timeout", 504, "upstream_timeout")
        except UpstreamError:
            outcome = Outcome("error", 502, "upstream_stream_broken")
        finally:
            resp.release()
            outcome.response = "".join(parts)
            outcome.tokens_in, outcome.tokens_out = usage.get("prompt_tokens"), usage.get("completion_tokens")
            outcome.upstream_s = time.perf_counter() - up_t0
            self._log(ctx, outcome, streamed=True)

    def _fail(self, ctx, outcome: Outcome, message: str, type_: str) -> Response:
        self._log(ctx, outcome)
        response = openai_error(outcome.http_status, message, type_, outcome.error_type)
        response.headers[REQUEST_ID_HEADER] = ctx[1]
        return response

    async def _log_after(self, ctx, outcome: Outcome, t_end: float) -> None:
        # a coroutine: Starlette runs a plain function given as a background task in a thread pool, which cost
        # 0.35 ms of added latency per request (measured)
        self._log(ctx, outcome, t_end=t_end)

    def _log(self, ctx, outcome: Outcome, streamed: bool = False, t_end: float | None = None) -> None:
        request, request_id, kind, body, alias, version, table_version, t0 = ctx
        total_s = (t_end or time.perf_counter()) - t0
        prompt, messages = _prompt(kind, body)
        doc: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION, "request_id": request_id, "timestamp": now_ms(),
            "model": self.cfg.base_model, "adapter": version, "alias": alias,
            "prompt": prompt if prompt is not None else "\n".join(m["content"] for m in messages
                                                                   if m["role"] in ("system", "user")),
            "messages": messages or None, "response": outcome.response, "latency_ms": round(total_s * 1000, 3),
            "tokens_in": outcome.tokens_in, "tokens_out": outcome.tokens_out, "status": outcome.status,
            "error_type": outcome.error_type, "route": request.headers.get(ROUTE_HEADER),
            "tenant": request.headers.get(TENANT_HEADER),
            "metadata": {"alias_table_version": table_version, "endpoint": kind, "stream": streamed,
                         "upstream_ms": round(outcome.upstream_s * 1000, 3)},
        }
        try:
            event = InferenceEvent.model_validate({k: v for k, v in doc.items() if v is not None})
            self.sink.offer(self.topics.inference, request_id.encode(), encode(event))
        except ValueError:
            log.exception("request %s: the inference event does not fit the contract; not logged", request_id)
        m = self.metrics
        m.requests.labels(alias=alias or "-", version=m.version_cap(version), status=outcome.status).inc()
        if not streamed:
            m.added_latency.observe(max(0.0, total_s - outcome.upstream_s))
        m.upstream_latency.observe(outcome.upstream_s)


def build(settings, *, seed: int | None = None, producer_factory=None) -> tuple[GatewayService, EventSink]:
    """Wire the gateway from settings (its composition: store, metrics, event sink, service)."""
    from driftwatch.state.store import open_store

    metrics = GatewayMetrics(max_adapters=settings.metrics.max_adapters)
    sink = EventSink(settings.kafka, settings.gateway.buffer_max_events, metrics, producer_factory).start()
    service = GatewayService(settings.gateway, open_store(settings.registry_path), sink, settings.kafka.topics, metrics,
                             seed=seed).start()
    return service, sink


def serve(settings) -> int:
    """Run the gateway until SIGTERM/SIGINT (uvicorn's handlers); deliver buffered events on the way out."""
    import uvicorn

    service, sink = build(settings)
    g = settings.gateway
    server = uvicorn.Server(uvicorn.Config(service.app(), host=g.host, port=g.port, log_level="warning",
                                           access_log=False, lifespan="off"))
    log.info("gateway on http://%s:%d -> %s; alias table version %d", g.host, g.port, ", ".join(g.upstreams),
             service.table.version)
    server.run()
    service.close()
    left = sink.close(timeout_s=settings.daemon.shutdown_grace_s)
    if left:
        log.error("%d event(s) could not be delivered to Kafka before exiting", left)
    return 1 if left else 0
