"""The serving edge: an OpenAI-compatible gateway in front of vLLM, where inference logs are born.

* **Aliases.** A client names an alias (``production``) or a concrete adapter version. The alias table — each
  alias to one version or weighted versions — lives in the state store as append-only versions; the gateway
  re-reads it every ``gateway.alias_poll_s`` and swaps its reference atomically, so every request is routed by
  exactly one table version (logged with the event).
* **Names.** The gateway serves aliases and versions the registry knows (and the base model when
  ``gateway.serve_base_model``); any other name is 404 and logged as adapter ``unknown``, never the client's text.
* **Logging.** Every inference request it answers — refused (400, 404, 413), failed, timed out or served — becomes
  exactly one InferenceEvent on Kafka, keyed by the request id the gateway assigns (a client's ``x-request-id`` is kept
  as ``metadata.client_request_id``), with the adapter version that served it and vLLM's token usage. Text over the
  contract's limits is cut and named in ``metadata.fitted``, never dropped. Events go into a
  bounded buffer drained by a sender thread: Kafka being down never blocks or fails a client request; what does
  not fit the buffer is counted, never silently lost. On SIGTERM the sender retries every
  ``EventSink.DRAIN_RETRY_S`` until the grace is spent (and reconnects within a second), so a broker back within
  the grace gets every buffered event.
* **Feedback is a receipt, not a claim.** Each served answer carries a receipt (``x-driftwatch-feedback-token``:
  the request id, the version that served it, an expiry, HMAC-signed with ``gateway.feedback_secret``).
  ``POST /v1/feedback`` takes a valid receipt and rates that request only (``origin: receipt``), or comes from an
  authenticated server-side caller (``gateway.feedback_callers``; ``origin: caller``); nothing else. The tenant is
  the client's header only behind an authenticating proxy (``gateway.trust_tenant_header``). A correction (a
  candidate training example) is at most ``retrain.gates.max_target_chars`` characters (413), and at most
  ``CORRECTIONS_PER_HOUR`` an hour come from one caller, one proxied tenant or all anonymous end users together (429).
* **Errors** are OpenAI-style JSON: 400 bad request, 404 unknown model, 413 too large, 429 too many corrections,
  502 bad upstream answer, 503 no upstream reachable, 504 upstream timeout. An upstream failure tells the client
  the request id only; which upstream and why (address, errno) goes to the log.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import hmac
import itertools
import json
import logging
import os
import random
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, NamedTuple

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from driftwatch.config import Gateway, Kafka
from driftwatch.events import (MAX_MESSAGES, MAX_NAME_CHARS, MAX_TEXT_CHARS, SCHEMA_VERSION, FeedbackEvent, InferenceEvent,
                               encode, fit_text, now_ms)
from driftwatch.metrics import UNKNOWN, GatewayMetrics
from driftwatch.state.store import SqlStore
from driftwatch.serving.upstream import Response as UpstreamResponse
from driftwatch.errors import UpstreamError
from driftwatch.serving.upstream import BrokenAnswer, Unreachable, Upstream

log = logging.getLogger(__name__)

ROUTE_HEADER, TENANT_HEADER, REQUEST_ID_HEADER = "x-driftwatch-route", "x-driftwatch-tenant", "x-request-id"
RECEIPT_HEADER = "x-driftwatch-feedback-token"
# corrections (candidate training examples) one caller, one tenant, or all anonymous end users together may post an
# hour; beyond, 429 and nothing published
CORRECTIONS_PER_HOUR = 600


# -- feedback receipts --------------------------------------------------------------------------------------------------
_compact_json = json.JSONEncoder(separators=(",", ":")).encode  # json.dumps(separators=...) builds an encoder a call

class Receipts:
    """A receipt binds the request id, the version that served it and an expiry, signed with HMAC-SHA256: feedback
    that carries one rates the answer it came with, and nothing else. ``base64url(json) . base64url(mac[:16])``."""

    def __init__(self, secret: bytes, ttl_s: float) -> None:
        self.secret, self.ttl_s = secret, ttl_s

    def _mac(self, payload: bytes) -> bytes:
        # hmac.new, not hmac.digest: the one-shot lets go of the GIL, and under load the event loop then waited
        # there for the event sink's threads (9 % of the gateway's samples at its maximum rate)
        return base64.urlsafe_b64encode(hmac.new(self.secret, payload, hashlib.sha256).digest()[:16]).rstrip(b"=")

    def issue(self, request_id: str, version: str, now: float | None = None) -> str:
        expires = int((time.time() if now is None else now) + self.ttl_s)
        payload = base64.urlsafe_b64encode(_compact_json([request_id, version, expires]).encode())
        payload = payload.rstrip(b"=")
        return (payload + b"." + self._mac(payload)).decode()

    def verify(self, token: object, now: float | None = None) -> tuple[str, str] | None:
        """(request id, version) of a valid, unexpired receipt; None for anything else."""
        if not isinstance(token, str) or len(token) > 2048 or not token.isascii() or token.count(".") != 1:
            return None
        payload, mac = token.encode().split(b".")
        if not hmac.compare_digest(mac, self._mac(payload)):
            return None
        try:
            request_id, version, expires = json.loads(base64.urlsafe_b64decode(payload + b"=" * (-len(payload) % 4)))
        except (ValueError, TypeError):
            return None
        return (request_id, version) if (time.time() if now is None else now) < expires else None


class RequestIds:
    """Random ids in uuid4's form (32 hex digits, version 4), 256 from one os.urandom call. uuid.uuid4() makes a
    getrandom call for each id, which lets go of the GIL: at the gateway's maximum rate the event loop then waited
    there for the event sink's threads (10 % of its samples). Not thread-safe: the event loop's alone."""

    def __init__(self, batch: int = 256) -> None:
        self._batch, self._raw, self._at = batch, b"", 0

    def __call__(self) -> str:
        at = self._at
        if at >= len(self._raw):
            self._raw, at = os.urandom(16 * self._batch), 0
        self._at = at + 16
        b = bytearray(self._raw[at:at + 16])
        b[6], b[8] = (b[6] & 0x0F) | 0x40, (b[8] & 0x3F) | 0x80
        return b.hex()


class HourlyQuota:
    """At most ``per_hour`` takes an hour for each key: a token bucket of that size, refilled evenly. At most
    ``max_keys`` keys are held (the one used longest ago is forgotten first). Not thread-safe: the event loop's alone."""

    def __init__(self, per_hour: int, max_keys: int = 10_000) -> None:
        self.per_hour, self.max_keys = per_hour, max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when), the most recently used last

    def take(self, key: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        tokens, at = self._buckets.pop(key, (float(self.per_hour), now))
        tokens = min(float(self.per_hour), tokens + (now - at) * self.per_hour / 3600)
        if len(self._buckets) >= self.max_keys:
            del self._buckets[next(iter(self._buckets))]
        taken = tokens >= 1
        self._buckets[key] = (tokens - 1 if taken else tokens, now)
        return taken


def loaded_models(base_url: str, api_key: str | None, timeout_s: float) -> frozenset[str] | None:
    """The model names an upstream serves (vLLM's /v1/models: the base model and every loaded LoRA), or None when it
    cannot tell (down, slow, not vLLM)."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=timeout_s)
    try:
        conn.request("GET", parts.path.rstrip("/") + "/v1/models",
                     headers={"authorization": f"Bearer {api_key}"} if api_key else {})
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            return None
        return frozenset(m["id"] for m in json.loads(body)["data"] if isinstance(m.get("id"), str))
    except (OSError, http.client.HTTPException, ValueError, KeyError, TypeError, AttributeError):
        return None
    finally:
        conn.close()


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

    DRAIN_RETRY_S = 0.2  # while draining (SIGTERM), a failed round is retried this soon: the grace is short
    RECONNECT_BACKOFF_MAX_MS = 1000  # kafka-python's default grows to 30 s: a broker back within the grace missed it

    def __init__(self, kafka: Kafka, max_events: int, metrics: GatewayMetrics,
                 producer_factory: Callable[[], Any] | None = None, retry_s: float = 1.0, linger_s: float = 0.02,
                 max_bytes: int = 256 * 2**20) -> None:
        self.kafka, self.max_events, self.metrics, self.retry_s, self.linger_s = kafka, max_events, metrics, retry_s, linger_s
        self.max_bytes, self._bytes = max_bytes, 0
        self._factory = producer_factory or self._producer
        self._items: collections.deque[tuple[str, bytes, bytes]] = collections.deque()
        self._cond = threading.Condition()
        self._stop = False
        self._drain_until = 0.0  # time.monotonic() at which the drain gives up (set by close)
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
                             delivery_timeout_ms=self.delivery_timeout_ms, reconnect_backoff_ms=50,
                             reconnect_backoff_max_ms=self.RECONNECT_BACKOFF_MAX_MS)

    def start(self) -> EventSink:
        self._thread.start()
        return self

    def offer(self, topic: str, key: bytes, value: bytes) -> bool:
        with self._cond:
            if len(self._items) >= self.max_events or self._bytes + len(value) > self.max_bytes:
                self.metrics.events_dropped.labels(topic=topic, reason="buffer_full").inc()
                return False
            self._items.append((topic, key, value))
            self._bytes += len(value)
            self.metrics.events_buffered.set(len(self._items))
            self._cond.notify()
        return True

    @property
    def pending(self) -> int:
        return len(self._items)

    def _run(self) -> None:
        from driftwatch.ingest.kafka import PERMANENT_SEND_ERRORS as refused

        producer = None
        while True:
            with self._cond:
                while not self._items and not self._stop:
                    self._cond.wait()
                if not self._items and self._stop:
                    break
            # let a burst gather: one wake-up, one batch (and the GIL left to requests). 20 ms, not 5: at 3,000
            # requests/s a send-and-flush round carries ~60 events, not ~15, and kafka-python's cost per event
            # falls from ~80 to ~60 us (bench/peers.py's profile); the log is 15 ms later, no answer is
            time.sleep(self.linger_s)
            with self._cond:
                batch = list(itertools.islice(self._items, 0, 1000))
            futures: list = []
            try:
                producer = producer or self._factory()
                for topic, key, value in batch:
                    try:
                        futures.append(producer.send(topic, value=value, key=key))
                    except refused as exc:  # this record can never be sent (too large): it must not hold up the rest
                        log.error("Kafka refuses an event for %s for good (%s: %s): dropped", topic,
                                  type(exc).__name__, exc)
                        futures.append(None)
                producer.flush(timeout=self.delivery_timeout_ms / 1000 + 5)
            except Exception as exc:  # noqa: BLE001 - Kafka down or refusing: keep the events, retry later
                log.warning("cannot deliver %d event(s) to Kafka yet (%s: %s); retrying in %.0fs",
                            len(batch), type(exc).__name__, exc, self.retry_s)
            kept = []  # not acknowledged yet: sent again next round (Kafka may then hold them twice)
            delivered: collections.Counter[str] = collections.Counter()  # counted once a round, not once an event
            for i, item in enumerate(batch):
                f = futures[i] if i < len(futures) else False
                if f is None or (f and f.is_done and f.failed() and not getattr(f.exception, "retriable", False)):
                    if f is not None:  # refused by the broker for good (too large for the topic, not authorised)
                        log.error("Kafka refuses an event for %s for good (%s): dropped", item[0], f.exception)
                    self.metrics.events_dropped.labels(topic=item[0], reason="refused").inc()
                elif f and f.is_done and f.succeeded():
                    delivered[item[0]] += 1
                else:
                    kept.append(item)
            for topic, n in delivered.items():
                self.metrics.events_delivered.labels(topic=topic).inc(n)
            with self._cond:
                for _ in batch:  # this thread alone takes from the left; offer() appends on the right
                    self._bytes -= len(self._items.popleft()[2])
                self._items.extendleft(reversed(kept))
                self._bytes += sum(len(item[2]) for item in kept)
                self.metrics.events_buffered.set(len(self._items))
                if kept:
                    left_s = self._drain_until - time.monotonic()
                    if self._stop and left_s <= 0:
                        break
                    for topic, _, _ in kept:
                        self.metrics.events_resent.labels(topic=topic).inc()
                    # draining (SIGTERM): retried soon, until the grace is spent
                    self._cond.wait(min(self.DRAIN_RETRY_S, left_s) if self._stop else self.retry_s)
        if producer is not None:
            producer.close(timeout=5)

    def close(self, timeout_s: float = 10.0) -> int:
        """Deliver what can be delivered within the timeout; count (reason ``shutdown``) and return how many events
        are left undelivered."""
        with self._cond:
            self._stop, self._drain_until = True, time.monotonic() + timeout_s
            self._cond.notify_all()
        self._thread.join(timeout_s)
        with self._cond:
            left = list(self._items)
        for topic, _, _ in left:
            self.metrics.events_dropped.labels(topic=topic, reason="shutdown").inc()
        return len(left)


# -- the service --------------------------------------------------------------------------------------------------------
def openai_error(status: int, message: str, type_: str, code: str | None = None, param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": code}}, status_code=status)


class Refused(Exception):
    """A request the gateway answers itself, before the upstream: 400, 404 or 413 (logged like any other)."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    def response(self) -> JSONResponse:
        type_ = "not_found_error" if self.status == 404 else "invalid_request_error"
        return openai_error(self.status, self.message, type_, self.code, self.param)


@dataclass
class Outcome:
    status: str  # ok | error | timeout
    http_status: int
    error_type: str | None = None
    response: str | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    upstream_s: float = 0.0


@dataclass
class Call:
    """One inference request through the gateway, from its first byte: logged exactly once, whatever is answered."""

    kind: str  # completions | chat
    t0: float
    request_id: str
    route: str | None
    tenant: str | None
    fitted: set[str]  # fields truncated or repaired to fit the event contract (metadata.fitted)
    client_request_id: str | None = None
    claimed_tenant: str | None = None  # x-driftwatch-tenant when the gateway does not trust it (metadata only)
    body: dict | None = None  # a body the gateway can serve; None when it refused it
    alias: str | None = None
    version: str = UNKNOWN
    table_version: int = 0
    logged: bool = False


ROLES = frozenset(("system", "developer", "user", "assistant", "tool"))


def _refusal(kind: str, body: dict) -> Refused | None:
    """The request shapes the gateway serves (the OpenAI API's): anything else is 400 before the upstream is called."""
    def bad(message: str, param: str) -> Refused:
        return Refused(400, message, "invalid_request", param)

    if not isinstance(body.get("model"), str) or not body["model"]:
        return bad("'model' is required: an alias (e.g. production) or a registered adapter version", "model")
    if "stream" in body and not isinstance(body["stream"], bool):
        return bad("'stream' is a boolean", "stream")
    if "stream_options" in body and not isinstance(body["stream_options"], dict):
        return bad("'stream_options' is an object", "stream_options")
    if kind == "completions":
        prompt = body.get("prompt")
        if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and (
                all(isinstance(p, str) for p in prompt) or all(type(p) is int for p in prompt)
                or all(isinstance(p, list) and all(type(t) is int for t in p) for p in prompt))):
            return None
        return bad("'prompt' is a string, a list of strings or token ids", "prompt")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return bad("'messages' is a non-empty list of message objects", "messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            return bad(f"messages[{i}] is an object with a role in {sorted(ROLES)}", f"messages[{i}]")
        content = m.get("content")
        if content is None or isinstance(content, str):
            continue
        if not isinstance(content, list) or not all(
                isinstance(part, dict) and isinstance(part.get("type"), str)
                and (part["type"] != "text" or isinstance(part.get("text"), str)) for part in content):
            return bad(f"messages[{i}].content is a string or a list of content parts ({{'type': 'text', 'text': "
                       "'...'}})", f"messages[{i}].content")
    return None


def _header(request: Request, name: str, fitted: set[str], field: str) -> str | None:
    value = request.headers.get(name)
    return fit_text(value, MAX_NAME_CHARS, fitted, field) if value else None


def _prompt(kind: str, body: dict | None) -> tuple[str, list[dict] | None]:
    """(prompt text, chat messages) of a served body, as logged: the system and user text is the prompt."""
    if body is None:
        return "", None
    if kind == "completions":
        prompt = body.get("prompt")
        return ("\n".join(map(str, prompt)) if isinstance(prompt, list) else str(prompt)), None
    messages = []
    for m in body["messages"]:
        content = m.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(part["text"] for part in content if part["type"] == "text")
        messages.append({"role": "system" if m["role"] == "developer" else m["role"], "content": content or ""})
    return "\n".join(m["content"] for m in messages if m["role"] in ("system", "user")), messages


def _answer(kind: str, doc: dict) -> str | None:
    choices = doc.get("choices") if isinstance(doc, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    first = choices[0]
    text = first.get("text") if kind == "completions" else (first.get("message") or {}).get("content")
    return text if isinstance(text, str) else None


def _shrunk(event: InferenceEvent) -> tuple[InferenceEvent, bytes, bool]:
    """The event with its longest text (prompt, response or a message) cut to half, named in metadata.fitted; False
    when there was nothing left to cut."""
    texts = [("prompt", len(event.prompt or "")), ("response", len(event.response or ""))]
    texts += [(i, len(m.content)) for i, m in enumerate(event.messages or [])]
    field, length = max(texts, key=lambda t: t[1])
    if length == 0:
        return event, encode(event), False
    update: dict[str, Any] = {"metadata": {**event.metadata, "fitted": sorted({*event.metadata.get("fitted", ()),
                                                                               "messages" if isinstance(field, int)
                                                                               else field, "size"})}}
    if isinstance(field, int):
        messages = list(event.messages or [])
        messages[field] = messages[field].model_copy(update={"content": messages[field].content[:length // 2]})
        update["messages"] = messages
    else:
        update[field] = getattr(event, field)[:length // 2]
    event = event.model_copy(update=update)
    return event, encode(event), True


def _count(value) -> int | None:
    return value if type(value) is int and value >= 0 else None


class GatewayService:
    def __init__(self, cfg: Gateway, store: SqlStore, sink: EventSink, topics, metrics: GatewayMetrics,
                 seed: int | None = None, max_event_bytes: int = 1_048_576 - 4096, max_correction_chars: int = 8000,
                 corrections_per_hour: int = CORRECTIONS_PER_HOUR) -> None:
        self.cfg, self.store, self.sink, self.topics, self.metrics = cfg, store, sink, topics, metrics
        self.max_event_bytes = max_event_bytes  # what Kafka takes and the daemon reads, less the record's overhead
        self.max_correction_chars = max_correction_chars  # a training target's limit (retrain.gates.max_target_chars)
        self.corrections = HourlyQuota(corrections_per_hour)
        self._failures: dict[str, tuple[float, int]] = {}  # upstream → (last logged, failures since)
        self.rng = random.Random(seed)
        self._ids = RequestIds()
        secret = cfg.feedback_secret.get_secret_value().encode() if cfg.feedback_secret else None
        if not secret:
            log.warning("gateway.feedback_secret is not set: feedback receipts are signed with a key of this process "
                        "only (they fail after a restart and on other replicas)")
        self.receipts = Receipts(secret or os.urandom(32), cfg.feedback_token_ttl_s)
        self.callers = cfg.callers()  # token -> caller name
        self.table = AliasTable.from_doc(*store.alias_table())
        self.known: frozenset[str] = frozenset()
        self._learn_names()
        self.upstreams = [Upstream(u, cfg.connect_timeout_s, cfg.timeout_s, api_key=cfg.upstream_key())
                          for u in cfg.upstreams]
        self._upstreams = itertools.cycle(self.upstreams)  # round robin (/v1/models)
        # what each upstream has loaded (its /v1/models), replaced whole; None: not heard from yet, or unreachable
        self.serving: dict[str, frozenset[str] | None] = {u.base_url: None for u in self.upstreams}
        self._turn = 0
        self._serving_lock, self._asked, self._stored = threading.Lock(), 0, 0
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll_aliases, name="driftwatch-gateway-aliases", daemon=True)
        self._watcher = threading.Thread(target=self._poll_upstreams, name="driftwatch-gateway-upstreams", daemon=True)
        self.metrics.alias_table_version.set(self.table.version)

    def start(self) -> GatewayService:
        self._poller.start()
        self._watcher.start()
        return self

    def _learn_names(self) -> None:
        """The names the gateway serves: the registry's versions and aliases (and the base model if configured).
        They are reserved in the version label, so a version the registry knows is never folded into 'other'."""
        names = self.store.names() | ({self.cfg.base_model} if self.cfg.serve_base_model else frozenset())
        if names != self.known:
            self.known = names
            self.metrics.version_cap.reserve(names)

    def _poll_aliases(self) -> None:
        """Each poll reads the table's version alone (one indexed row); the table and the names only when it changed,
        and the names every few seconds besides (a version registered since is served by its name)."""
        names_every = 4 * self.cfg.alias_poll_s
        names_at = time.monotonic() + names_every
        while not self._stop.wait(self.cfg.alias_poll_s):
            try:
                if self.store.alias_table_version() != self.table.version:
                    self.reload()
                    names_at = time.monotonic() + names_every
                elif time.monotonic() >= names_at:
                    self._learn_names()
                    names_at = time.monotonic() + names_every
            except Exception:  # noqa: BLE001 - keep routing by the table in hand; log and retry
                log.exception("cannot re-read the alias table")

    def _poll_upstreams(self) -> None:
        """Every ``alias_poll_s``, what each upstream has loaded. On its own thread: an upstream slow to answer
        never delays an alias flip."""
        while True:
            self.learn_serving()
            if self._stop.wait(self.cfg.alias_poll_s):
                return

    def learn_serving(self) -> dict[str, frozenset[str] | None]:
        """Ask every upstream; the watcher thread and the alias poller both do, so a poll never replaces the view of
        one that started after it."""
        with self._serving_lock:
            self._asked += 1
            ticket = self._asked
        key = self.cfg.upstream_key()
        serving = {u.base_url: loaded_models(u.base_url, key, self.cfg.connect_timeout_s) for u in self.upstreams}
        with self._serving_lock:
            if ticket < self._stored:
                return self.serving
            self._stored = ticket
            if serving != self.serving:
                log.info("upstreams serve: %s", {u: sorted(v) if v is not None else "unreachable"
                                                 for u, v in serving.items()})
                self.serving = serving  # one reference swap
        return serving

    def _pick(self, version: str, skip: tuple[Upstream, ...] = ()) -> Upstream | None:
        """Round robin over the upstreams that have ``version`` loaded; an upstream not heard from is tried only when
        no other has it (a server that came back takes traffic for a version once it is loaded there). None: every
        upstream that answered lacks it. ``skip``: upstreams this request could not connect to."""
        serving = self.serving
        upstreams = [u for u in self.upstreams if u not in skip]
        pool = [u for u in upstreams if version in (serving.get(u.base_url) or ())] or [
            u for u in upstreams if serving.get(u.base_url) is None]
        if not pool:
            return None
        self._turn += 1
        return pool[(self._turn - 1) % len(pool)]

    def reload(self) -> int:
        table = AliasTable.from_doc(*self.store.alias_table())
        if table.version != self.table.version:
            seen = set().union(*(names for names in self.serving.values() if names))
            if any(v not in seen for versions, _ in table.aliases.values() for v in versions):
                self.learn_serving()  # a version new to the routing was loaded before the flip: ask where, first
        self._learn_names()
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
    def app(self) -> ASGIApp:
        """The gateway's ASGI app. POST /v1/completions and /v1/chat/completions go straight to :meth:`proxy`:
        Starlette's middleware, router and endpoint wrapper cost ~85 us a request, a quarter of the gateway's CPU
        (bench/peers.py). Every other route, and any other method on those two, is Starlette's, as before."""
        app = self._starlette()
        inference = {"/v1/completions": "completions", "/v1/chat/completions": "chat/completions"}

        async def gateway(scope: Scope, receive: Receive, send: Send) -> None:
            path = inference.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
            if path is None:
                await app(scope, receive, send)
                return
            response = await self.proxy(Request(scope, receive), path)
            await response(scope, receive, send)

        return gateway

    def _starlette(self) -> Starlette:
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

    async def _body(self, request: Request) -> dict:
        """The JSON object a request carries; Refused (413, 400) when it is too large, not JSON or nested too deep."""
        too_large = Refused(413, f"request body over {self.cfg.max_request_bytes} bytes", "request_too_large")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.cfg.max_request_bytes:
            raise too_large
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > self.cfg.max_request_bytes:
                raise too_large
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise Refused(400, f"request body is not JSON: {exc}", "invalid_json") from None
        except RecursionError:
            raise Refused(400, "request body is nested too deeply", "invalid_json") from None
        if not isinstance(body, dict):
            raise Refused(400, "request body must be a JSON object", "invalid_json")
        return body

    async def models(self, request: Request) -> Response:
        """vLLM's models (base and loaded adapters) plus the aliases, each with the version it points to."""
        upstream = next(self._upstreams)
        try:
            resp = await upstream.request("GET", "/v1/models")
            data = json.loads(await resp.read()).get("data", [])
        except (UpstreamError, TimeoutError, ValueError, AttributeError) as exc:
            request_id = self._ids()
            self._upstream_failed(upstream, f"request {request_id}: /v1/models: {type(exc).__name__}: {exc}")
            response = openai_error(503, f"no upstream answered (request {request_id})", "service_unavailable",
                                    "upstream_unavailable")
            response.headers[REQUEST_ID_HEADER] = request_id
            return response
        known = self.known
        data = [m for m in data if isinstance(m, dict) and m.get("id") in known]
        table = self.table
        for alias, (versions, _) in sorted(table.aliases.items()):
            data.append({"id": alias, "object": "model", "owned_by": "driftwatch", "root": versions[0],
                         "parent": self.cfg.base_model, "driftwatch_versions": versions})
        return JSONResponse({"object": "list", "data": data})

    def _caller(self, request: Request) -> str | None:
        """The name of an authenticated server-side feedback caller (gateway.feedback_callers), else None."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        given = token.strip().encode()
        for known, name in self.callers.items():  # a handful: each compared in constant time
            if hmac.compare_digest(given, known.encode()):
                return name
        return None

    def _upstream_failed(self, upstream, line: str, every_s: float = 10.0) -> None:
        """An upstream failure's details (address, errno) for the log: at most one line per upstream every
        ``every_s``, with how many more there were (an outage under load is not thousands of lines)."""
        now = time.monotonic()
        last, quiet = self._failures.get(upstream.base_url, (float("-inf"), 0))
        if now - last < every_s:
            self._failures[upstream.base_url] = (last, quiet + 1)
            return
        self._failures[upstream.base_url] = (now, 0)
        log.warning("upstream %s failed: %s%s", upstream.base_url, line,
                    f" (and {quiet} more failures in the last {now - last:.0f}s)" if quiet else "")

    def _submitter(self, request: Request, caller: str | None) -> str:
        """Whose corrections these are, for their hourly bound: the caller, else the tenant an authenticating proxy
        set, else every anonymous end user together (anyone can collect receipts by asking)."""
        if caller is not None:
            return f"caller:{caller}"
        tenant = _header(request, TENANT_HEADER, set(), "tenant") if self.cfg.trust_tenant_header else None
        return f"tenant:{tenant}" if tenant else "anonymous"

    async def feedback(self, request: Request) -> Response:
        """Feedback is a receipt, not a claim: it carries the answer's receipt (body ``feedback_token`` or the
        x-driftwatch-feedback-token header) and rates that request only, or comes from an authenticated caller."""
        try:
            body = await self._body(request)
        except Refused as refused:
            return refused.response()
        caller = self._caller(request)  # a bearer that is not a known caller (a proxy's, a client's): the receipt rules
        if caller is not None:
            origin, request_id = "caller", body.get("request_id")
        else:
            claim = self.receipts.verify(body.get("feedback_token") or request.headers.get(RECEIPT_HEADER))
            if claim is None:
                return openai_error(401, "feedback needs the receipt that came with the answer (the "
                                         f"{RECEIPT_HEADER} response header), valid and unexpired",
                                    "authentication_error", "invalid_feedback_token")
            origin, request_id = "receipt", claim[0]
            if body.get("request_id", request_id) != request_id:
                return openai_error(403, "this receipt is for another request", "permission_error", "wrong_request")
        correction = body.get("correction")
        if isinstance(correction, str) and len(correction) > self.max_correction_chars:
            return openai_error(413, f"'correction' is over {self.max_correction_chars} characters, the limit of a "
                                     "training target", "invalid_request_error", "correction_too_long", "correction")
        doc = {"schema_version": SCHEMA_VERSION, "feedback_id": uuid.uuid4().hex, "timestamp": now_ms(),
               "request_id": request_id, "origin": origin, "caller": caller,
               **{k: body[k] for k in ("rating", "thumbs", "correction", "label") if k in body}}
        try:
            event = FeedbackEvent.model_validate({k: v for k, v in doc.items() if v is not None})
        except ValueError as exc:
            return openai_error(400, f"invalid feedback: {exc}", "invalid_request_error")
        value = encode(event)
        if len(value) > self.max_event_bytes:
            return openai_error(413, f"feedback over {self.max_event_bytes} bytes", "invalid_request_error",
                                "request_too_large")
        if event.correction is not None and not self.corrections.take(self._submitter(request, caller)):
            per_hour = self.corrections.per_hour
            response = openai_error(429, f"over {per_hour} corrections an hour; try again later", "rate_limit_error",
                                    "rate_limited")
            response.headers["retry-after"] = str(int(3600 / per_hour) + 1)
            return response
        self.sink.offer(self.topics.feedback, event.request_id.encode(), value)
        return JSONResponse({"feedback_id": event.feedback_id, "request_id": event.request_id}, status_code=202)

    async def proxy(self, request: Request, path: str) -> Response:
        """One inference request. Whatever it is answered — served, refused, failed — it is logged exactly once."""
        fitted: set[str] = set()
        tenant = _header(request, TENANT_HEADER, fitted, "tenant")
        call = Call("completions" if path == "completions" else "chat", time.perf_counter(), self._ids(),
                    _header(request, ROUTE_HEADER, fitted, "route"), tenant if self.cfg.trust_tenant_header else None,
                    fitted, _header(request, REQUEST_ID_HEADER, fitted, "client_request_id"),
                    claimed_tenant=None if self.cfg.trust_tenant_header else tenant)
        try:
            return await self._serve(request, call, path)
        except Refused as refused:
            return self._fail(call, Outcome("error", refused.status, refused.code), refused.response())
        except ClientDisconnect:  # gone while sending its body: logged as such, no traceback (a client can do it at will)
            return self._fail(call, Outcome("error", 499, "client_disconnected"), Response(status_code=499))
        except Exception:  # noqa: BLE001 - a bug answers 500, and is logged like any other answer
            log.exception("request %s: internal error", call.request_id)
            return self._fail(call, Outcome("error", 500, "internal_error"),
                              openai_error(500, "internal error", "server_error", "internal_error"))

    async def _serve(self, request: Request, call: Call, path: str) -> Response:
        body = await self._body(request)
        refused = _refusal(call.kind, body)
        if refused is not None:
            raise refused
        call.body = body
        table = self.table  # this request is routed by this one table version
        call.table_version = table.version
        model = body["model"]
        if model in table.aliases:
            call.alias, call.version = table.resolve(model, self.rng)
        elif model in self.known:
            call.version = model
        else:  # never the client's text in a label or an event: 'unknown'
            raise Refused(404, "unknown model: name an alias (e.g. production) or a registered adapter version",
                          "model_not_found", "model")
        body["model"] = call.version
        stream = body.get("stream") is True
        client_wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        if stream:
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        headers = {REQUEST_ID_HEADER: call.request_id}
        up_t0 = time.perf_counter()
        resp = None
        tried: tuple[Upstream, ...] = ()
        # the client learns that the upstream failed and the request's id; which upstream and why (its address,
        # the errno) is the gateway's log's alone
        try:
            upstream = self._pick(call.version)
            if upstream is None:
                return self._fail(call, Outcome("error", 503, "version_not_loaded"), openai_error(
                    503, f"no upstream has this version loaded yet (request {call.request_id})",
                    "service_unavailable", "version_not_loaded"))
            while True:  # an upstream that cannot be connected to never saw the request: the next one takes it
                try:
                    resp = await upstream.request("POST", f"/v1/{path}", json.dumps(body).encode(),
                                                  {"content-type": "application/json", **headers}, read=not stream)
                    break
                except Unreachable:
                    tried += (upstream,)
                    following = self._pick(call.version, tried)
                    if following is None:
                        raise
                    self._upstream_failed(upstream, f"request {call.request_id}: unreachable; sent to another")
                    upstream = following
            if not (stream and resp.status == 200):
                content = await resp.read()
        except TimeoutError:
            self._upstream_failed(upstream, f"request {call.request_id}: no answer within {self.cfg.timeout_s:g}s")
            return self._fail(call, Outcome("timeout", 504, "upstream_timeout", upstream_s=time.perf_counter() - up_t0),
                              openai_error(504, f"the upstream did not answer in time (request {call.request_id})",
                                           "timeout", "upstream_timeout"))
        except UpstreamError as exc:
            reached = resp is not None or isinstance(exc, BrokenAnswer)  # it answered, then broke off
            code, status = ("upstream_broken", 502) if reached else ("upstream_unavailable", 503)
            self._upstream_failed(upstream, f"request {call.request_id}: {exc} ({code})")
            message = "the upstream's answer broke off" if reached else "no upstream reachable"
            return self._fail(call, Outcome("error", status, code, upstream_s=time.perf_counter() - up_t0),
                              openai_error(status, f"{message} (request {call.request_id})",
                                           "bad_gateway" if reached else "service_unavailable", code))
        if resp.status == 200:
            headers[RECEIPT_HEADER] = self.receipts.issue(call.request_id, call.version)
        if stream and resp.status == 200:
            return StreamingResponse(self._relay(resp, call, up_t0, client_wants_usage), media_type="text/event-stream",
                                     headers=headers)
        upstream_s = time.perf_counter() - up_t0
        try:
            doc = json.loads(content)
        except (ValueError, RecursionError):
            return self._fail(call, Outcome("error", 502, f"upstream_{resp.status}", upstream_s=upstream_s),
                              openai_error(502, f"upstream answered {resp.status} with a body that is not JSON",
                                           "bad_gateway", f"upstream_{resp.status}"))
        if resp.status != 200:
            # vLLM refusing the gateway's key (401/403) is the gateway's fault, not the client's: 502
            status = 404 if resp.status == 404 else resp.status if resp.status < 500 and resp.status not in (401, 403) else 502
            error_type = "model_not_found" if resp.status == 404 else f"upstream_{resp.status}"
            self._log(call, Outcome("error", status, error_type, upstream_s=upstream_s))
            return Response(content, status_code=status, media_type="application/json", headers=headers)
        usage = (doc.get("usage") if isinstance(doc, dict) else None) or {}
        outcome = Outcome("ok", 200, None, _answer(call.kind, doc), _count(usage.get("prompt_tokens")),
                          _count(usage.get("completion_tokens")), upstream_s)
        # the event is built after the answer has gone out: the client does not wait for the log
        return Response(content, media_type="application/json", headers=headers,
                        background=BackgroundTask(self._log_after, call, outcome, time.perf_counter()))

    async def _relay(self, resp: UpstreamResponse, call: Call, up_t0: float,
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
                        except (ValueError, RecursionError):
                            doc = {}
                        doc = doc if isinstance(doc, dict) else {}
                        if isinstance(doc.get("usage"), dict):
                            usage = doc["usage"]
                        for choice in doc.get("choices") or []:
                            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                                piece = choice.get("text") or (choice.get("delta") or {}).get("content") or ""
                                parts.append(piece if isinstance(piece, str) else "")
                        if not doc.get("choices") and doc.get("usage") and not client_wants_usage:
                            continue  # the usage chunk the gateway asked for on its own account
                    yield event + b"\n\n"
            if buffer:
                yield buffer
        except TimeoutError:
            outcome = Outcome("timeout", 504, "upstream_timeout")
        except UpstreamError:
            outcome = Outcome("error", 502, "upstream_stream_broken")
        except (asyncio.CancelledError, GeneratorExit):  # the client went away: a partial answer, not a served one
            outcome = Outcome("error", 499, "client_disconnected")
            raise
        finally:
            resp.release()
            outcome.response = "".join(parts)
            outcome.tokens_in, outcome.tokens_out = _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
            outcome.upstream_s = time.perf_counter() - up_t0
            self._log(call, outcome, streamed=True)

    def _fail(self, call: Call, outcome: Outcome, response: Response) -> Response:
        self._log(call, outcome)
        response.headers[REQUEST_ID_HEADER] = call.request_id
        return response

    async def _log_after(self, call: Call, outcome: Outcome, t_end: float) -> None:
        # a coroutine: Starlette runs a plain function given as a background task in a thread pool, which cost
        # 0.35 ms of added latency per request (measured)
        self._log(call, outcome, t_end=t_end)

    def _log(self, call: Call, outcome: Outcome, streamed: bool = False, t_end: float | None = None) -> None:
        """The request's one inference event. Over-long or invalid text is fitted to the contract and named in
        ``metadata.fitted``, never dropped."""
        if call.logged:
            return
        call.logged = True
        total_s = (t_end or time.perf_counter()) - call.t0
        fitted = call.fitted
        prompt, messages = _prompt(call.kind, call.body)
        if messages is not None:
            if len(messages) > MAX_MESSAGES:
                messages, fitted = messages[-MAX_MESSAGES:], fitted | {"messages"}
            for m in messages:
                m["content"] = fit_text(m["content"], MAX_TEXT_CHARS, fitted, "messages")
        metadata: dict[str, Any] = {"alias_table_version": call.table_version, "endpoint": call.kind,
                                    "stream": streamed, "upstream_ms": round(outcome.upstream_s * 1000, 3),
                                    "http_status": outcome.http_status}
        if call.client_request_id:
            metadata["client_request_id"] = call.client_request_id
        if call.claimed_tenant:
            metadata["claimed_tenant"] = call.claimed_tenant
        doc: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION, "request_id": call.request_id,
            "timestamp": int(time.time() * 1000),  # events.now_ms() goes through datetime: 2 % of the gateway's CPU
            "model": self.cfg.base_model, "adapter": call.version, "alias": call.alias,
            "prompt": fit_text(prompt, MAX_TEXT_CHARS, fitted, "prompt"), "messages": messages or None,
            "response": None if outcome.response is None else fit_text(outcome.response, MAX_TEXT_CHARS, fitted, "response"),
            "latency_ms": round(total_s * 1000, 3), "tokens_in": outcome.tokens_in, "tokens_out": outcome.tokens_out,
            "status": outcome.status, "error_type": outcome.error_type, "route": call.route, "tenant": call.tenant,
            "metadata": metadata,
        }
        if fitted:
            metadata["fitted"] = sorted(fitted)
        try:
            event = InferenceEvent.model_validate({k: v for k, v in doc.items() if v is not None})
        except ValueError:  # a bug: still one event, with what surely fits
            log.exception("request %s: the inference event does not fit the contract; logged without its text",
                          call.request_id)
            event = InferenceEvent.model_validate({**{k: doc[k] for k in ("schema_version", "request_id", "timestamp",
                                                                          "model", "adapter", "latency_ms", "status")},
                                                   "prompt": "", "error_type": outcome.error_type or "unloggable",
                                                   "metadata": {**metadata, "fitted": ["unloggable"]}})
        value = encode(event)
        while len(value) > self.max_event_bytes:  # Kafka (and the daemon) would refuse it: cut the longest text
            event, value, cut = _shrunk(event)
            if not cut:  # nothing left to cut (a limit below the event's own fields): the event with no text at all
                event = event.model_copy(update={"prompt": "", "messages": None, "response": None, "metadata": {
                    **{k: event.metadata[k] for k in ("endpoint", "http_status") if k in event.metadata},
                    "fitted": ["size"]}})
                value = encode(event)
                break
        self.sink.offer(self.topics.inference, call.request_id.encode(), value)
        m = self.metrics
        m.requests.labels(alias=call.alias or "-", version=m.version_cap(call.version), status=outcome.status).inc()
        if not streamed:
            m.added_latency.observe(max(0.0, total_s - outcome.upstream_s))
        m.upstream_latency.observe(outcome.upstream_s)


def build(settings, *, seed: int | None = None, producer_factory=None) -> tuple[GatewayService, EventSink]:
    """Wire the gateway from settings (its composition: store, metrics, event sink, service)."""
    from driftwatch.state.store import open_store

    metrics = GatewayMetrics(max_adapters=settings.metrics.max_adapters)
    sink = EventSink(settings.kafka, settings.gateway.buffer_max_events, metrics, producer_factory,
                     max_bytes=settings.gateway.buffer_max_bytes).start()
    limit = min(settings.kafka.producer.max_request_size, settings.ingest.max_record_bytes) - 4096
    service = GatewayService(settings.gateway, open_store(settings.registry_path), sink, settings.kafka.topics, metrics,
                             seed=seed, max_event_bytes=limit,
                             max_correction_chars=settings.retrain.gates.max_target_chars).start()
    return service, sink


def serve(settings) -> int:
    """Run the gateway until SIGTERM/SIGINT; then deliver what is buffered within daemon.shutdown_grace_s, and log
    and count what could not be (exit 1)."""
    import signal

    import uvicorn

    service, sink = build(settings)
    g = settings.gateway
    server = uvicorn.Server(uvicorn.Config(service.app(), host=g.host, port=g.port, log_level="warning",
                                           access_log=False, lifespan="off",
                                           timeout_graceful_shutdown=settings.daemon.shutdown_grace_s))
    log.info("gateway on http://%s:%d -> %s; alias table version %d", g.host, g.port, ", ".join(g.upstreams),
             service.table.version)
    # uvicorn raises the signal it caught again once it has shut down: with the default handler that killed the
    # process (143) before the drain below; handled here, the drain runs
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run()
    service.close()
    pending = sink.pending
    left = sink.close(timeout_s=settings.daemon.shutdown_grace_s)
    if left:
        log.error("gateway stopped: %d event(s) could not be delivered to Kafka within %gs and are lost (counted in "
                  "driftwatch_gateway_events_dropped_total{reason=\"shutdown\"})", left, settings.daemon.shutdown_grace_s)
    else:
        log.info("gateway stopped: the %d buffered event(s) were delivered", pending)
    return 1 if left else 0
