"""A seeded traffic simulator: realistic inference logs and delayed feedback, plus bad records on request.

Lengths are log-normal per route, latency grows with output tokens and depends on the route, a fraction of
requests fail or time out, and feedback arrives after a delay and refers to real request_ids. Every bad-record
class the ingest dead-letters can be injected (``bad={"not_json": 3, ...}``), and so can exact duplicates.
The same seed gives the same stream.
"""

from __future__ import annotations

import heapq
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator, Mapping

from driftwatch.events import SCHEMA_VERSION, Reason

ROUTES: dict[str, dict] = {
    # prompt chars (log-normal mu, sigma), response chars, base latency ms, ms per output token
    "qa": {"prompt": (5.3, 0.6), "response": (5.0, 0.7), "base_ms": 120, "per_token_ms": 9},
    "summarize": {"prompt": (7.3, 0.5), "response": (5.6, 0.4), "base_ms": 250, "per_token_ms": 10},
    "code": {"prompt": (6.0, 0.7), "response": (6.3, 0.6), "base_ms": 180, "per_token_ms": 11},
    "chat": {"prompt": (4.6, 0.8), "response": (5.2, 0.8), "base_ms": 100, "per_token_ms": 9},
    "extract": {"prompt": (6.6, 0.5), "response": (4.2, 0.5), "base_ms": 150, "per_token_ms": 8},
}
WORDS = {
    "qa": "what when where why how capital river country year population invented discovered largest first".split(),
    "summarize": "meeting report quarter revenue team decided action items customer summary points growth".split(),
    "code": "function python return list dict error loop class import test variable parse async".split(),
    "chat": "hello thanks please could you help me today great sure idea maybe tell".split(),
    "extract": "name date amount invoice address email total order id field value table".split(),
}
_NEW_TOPIC = ("patient dose symptoms diagnosis insurance claim prescription clinic allergy treatment referral "
              "appointment").split()  # a domain the reference never saw, for the semantic shift
_SYLLABLES = "ka lo mi ren sa tu vo der po li na te".split()
POOL = [a + b for a in _SYLLABLES for b in _SYLLABLES] + [a + b + c for a in _SYLLABLES[:6] for b in _SYLLABLES
                                                         for c in _SYLLABLES[6:]]  # 576 neutral words
_SPANISH = ("el la de que y en los es por para una cómo qué dónde cuál pregunta respuesta ciudad informe "
            "reunión equipo cliente función código lista").split()
BAD_KINDS = tuple(r.value for r in Reason) + ("duplicate",)


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


@dataclass
class SimConfig:
    seed: int = 7
    routes: Mapping[str, float] = field(default_factory=lambda: {"qa": 0.4, "summarize": 0.2, "code": 0.2, "chat": 0.1, "extract": 0.1})
    adapters: Mapping[str, float] = field(default_factory=lambda: {"support-v1": 1.0})
    model: str = "base"
    alias: str | None = "production"
    error_rate: float = 0.01
    timeout_rate: float = 0.005
    feedback_rate: float = 0.2
    feedback_delay_s: float = 2.0  # mean of an exponential delay
    negative_rate: float = 0.15
    correction_rate: float = 0.3  # share of negative feedback that carries a correction
    # route -> the answer users correct to: "<prefix> <the prompt's first words>" (a pattern a model can learn, and a
    # golden set can check); routes not named get a free-text correction
    answers: Mapping[str, str] = field(default_factory=dict)
    bad: Mapping[str, int] = field(default_factory=dict)  # reason -> how many to inject, spread over the stream
    oversize_bytes: int = 1_100_000
    # shifts (all off by default; the default stream does not change when they are off)
    length_scale: float = 1.0  # multiplies prompt lengths
    spanish_rate: float = 0.0  # share of requests written in Spanish
    refusal_rate: float = 0.0  # share of ok responses that are refusals
    collapse_rate: float = 0.0  # share of ok responses replaced by one canned answer (modal collapse)
    topic_rate: float = 0.0  # share of prompts about a new domain, same routes and lengths (semantic drift only)

    def __post_init__(self) -> None:
        unknown = set(self.routes) - set(ROUTES)
        if unknown:
            raise ValueError(f"unknown route(s) {sorted(unknown)}: use {sorted(ROUTES)}")
        unknown = set(self.bad) - set(BAD_KINDS)
        if unknown:
            raise ValueError(f"unknown bad record kind(s) {sorted(unknown)}: use {list(BAD_KINDS)}")


@dataclass(slots=True)
class Outgoing:
    topic: str  # "inference" | "feedback" (a role, mapped to a topic name by the runner)
    key: bytes | None
    value: bytes | None
    label: str  # "inference", "feedback", or the bad kind


class Simulator:
    def __init__(self, config: SimConfig | None = None) -> None:
        self.cfg = config or SimConfig()
        self.rng = random.Random(self.cfg.seed)
        self._route_names = list(self.cfg.routes)
        self._route_weights = list(self.cfg.routes.values())
        self._adapters = list(self.cfg.adapters)
        self._adapter_weights = list(self.cfg.adapters.values())
        self._pending: list[tuple[float, int, str]] = []  # (due, seq, request_id): feedback to send
        self._corrections: dict[int, str] = {}  # seq -> the answer its users would correct to (cfg.answers)
        self._seq = 0
        self._last_inference: Outgoing | None = None
        self._before_last: Outgoing | None = None
        self._bad_left: list[str] = []
        self._now_ms = 0

    # -- good records -------------------------------------------------------------------------------------------------
    def _text(self, route: str, chars: float, spanish: bool = False, new_topic: bool = False) -> str:
        """Words of the route (or Spanish, or the new domain) mixed with a neutral pool, for realistic diversity."""
        n = max(1, int(chars / 6))
        words = _SPANISH if spanish else _NEW_TOPIC if new_topic else WORDS[route]
        topical = self.rng.choices(words, k=(n + 1) // 2)
        return " ".join(w for pair in zip(topical, self.rng.choices(POOL, k=n)) for w in pair)[: max(1, int(chars))]

    def _event(self, now_ms: int) -> dict:
        rng, cfg = self.rng, self.cfg
        self._seq += 1
        route = rng.choices(self._route_names, self._route_weights)[0]
        spec = ROUTES[route]
        spanish = cfg.spanish_rate > 0 and rng.random() < cfg.spanish_rate
        new_topic = cfg.topic_rate > 0 and rng.random() < cfg.topic_rate
        prompt = self._text(route, rng.lognormvariate(*spec["prompt"]) * cfg.length_scale, spanish, new_topic)
        roll = rng.random()
        status = "timeout" if roll < cfg.timeout_rate else "error" if roll < cfg.timeout_rate + cfg.error_rate else "ok"
        response = self._text(route, rng.lognormvariate(*spec["response"]), spanish) if status == "ok" else None
        if response is not None and cfg.refusal_rate > 0 and rng.random() < cfg.refusal_rate:
            response = "I'm sorry, but I can't help with that request."
        elif response is not None and cfg.collapse_rate > 0 and rng.random() < cfg.collapse_rate:
            response = "Thank you for your question. I am happy to help you with that today."
        tokens_out = len(response) // 4 if response else 0
        latency = 30_000.0 if status == "timeout" else \
            (spec["base_ms"] + spec["per_token_ms"] * tokens_out) * rng.lognormvariate(0, 0.25)
        event = {
            "schema_version": SCHEMA_VERSION, "request_id": f"req-{cfg.seed}-{self._seq:09d}", "timestamp": now_ms,
            "model": cfg.model, "adapter": rng.choices(self._adapters, self._adapter_weights)[0], "prompt": prompt,
            "latency_ms": round(latency, 2), "tokens_in": len(prompt) // 4, "tokens_out": tokens_out, "status": status,
            "route": route, "tenant": f"tenant-{rng.randrange(20)}",
        }
        if cfg.alias:
            event["alias"] = cfg.alias
        if response is not None:
            event["response"] = response
        else:
            event["error_type"] = "upstream_timeout" if status == "timeout" else rng.choice(["upstream_5xx", "invalid_request"])
        return event

    def inference(self, now_ms: int) -> Outgoing:
        event = self._event(now_ms)
        if event["status"] == "ok" and self.rng.random() < self.cfg.feedback_rate:
            due = now_ms / 1000 + self.rng.expovariate(1 / self.cfg.feedback_delay_s)
            heapq.heappush(self._pending, (due, self._seq, event["request_id"]))
            if event["route"] in self.cfg.answers:
                self._corrections[self._seq] = f"{self.cfg.answers[event['route']]} {' '.join(event['prompt'].split()[:3])}"
        self._before_last, self._last_inference = self._last_inference, Outgoing(
            "inference", event["request_id"].encode(), _dumps(event), "inference")
        return self._last_inference

    def withdraw(self, out: Outgoing) -> None:
        """The caller did not send ``out``, the inference record just made (it stopped there): no duplicate repeats
        it and no feedback comes for it, so every record is what its label says."""
        if out is self._last_inference:
            self._last_inference = self._before_last
            self._pending = [p for p in self._pending if p[2].encode() != out.key]
            heapq.heapify(self._pending)

    def _feedback(self, request_id: str, seq: int, now_ms: int) -> Outgoing:
        rng = self.rng
        event: dict = {"schema_version": SCHEMA_VERSION, "feedback_id": f"fb-{self.cfg.seed}-{seq:09d}",
                       "request_id": request_id, "timestamp": now_ms}
        answer = self._corrections.pop(seq, None)
        if rng.random() < self.cfg.negative_rate:
            event["thumbs"] = "down"
            if rng.random() < self.cfg.correction_rate:
                event["correction"] = answer or "a better answer would be " + self._text("chat", 60)
                event["label"] = rng.choice(["wrong", "incomplete", "hallucination"])
        elif rng.random() < 0.5:
            event["thumbs"] = "up"
        else:
            event["rating"] = rng.choice([3, 4, 5, 5])
        return Outgoing("feedback", request_id.encode(), _dumps(event), "feedback")

    def due_feedback(self, now_s: float, everything: bool = False) -> Iterator[Outgoing]:
        while self._pending and (everything or self._pending[0][0] <= now_s):
            due, seq, request_id = heapq.heappop(self._pending)
            yield self._feedback(request_id, seq, int(due * 1000))

    # -- bad records --------------------------------------------------------------------------------------------------
    def bad(self, kind: str, now_ms: int) -> Outgoing:
        if kind == "duplicate":  # the previous inference record, sent again as it was
            if self._last_inference is None:  # nothing to repeat yet: this record is a first, and counted as one
                return self.inference(now_ms)
            last = self._last_inference
            return Outgoing("inference", last.key, last.value, "duplicate")
        good = self._event(now_ms)  # a valid event to break
        key = good["request_id"].encode()
        value: bytes | None
        if kind == "empty":
            value = None
        elif kind == "oversize":
            good["prompt"] = "x" * self.cfg.oversize_bytes
            value = _dumps(good)
        elif kind == "bad_utf8":
            value = _dumps(good).replace(b'"prompt":"', b'"prompt":"\xff\xfe', 1)
        elif kind == "not_json":
            value = b"request_id=" + key + b" status=ok"
        elif kind == "not_object":
            value = _dumps([good])
        elif kind == "unsupported_schema_version":
            good["schema_version"] = 2
            value = _dumps(good)
        elif kind == "missing_field":
            del good["adapter"]
            value = _dumps(good)
        else:  # invalid_field
            good["latency_ms"] = "fast"
            value = _dumps(good)
        return Outgoing("inference", key, value, kind)

    # -- the stream ---------------------------------------------------------------------------------------------------
    def stream(self, count: int, start_ms: int | None = None, step_ms: float = 10.0) -> Iterator[Outgoing]:
        """``count`` inference records, the bad ones spread evenly among them, feedback as it falls due.

        What is left when the caller stops early (bad records not yet injected, feedback not yet due) comes from
        :meth:`tail`.
        """
        start_ms = int(time.time() * 1000) if start_ms is None else start_ms
        self._bad_left = [k for k, n in sorted(self.cfg.bad.items()) for _ in range(n)]
        self.rng.shuffle(self._bad_left)
        every = max(1, count // (len(self._bad_left) + 1))
        for i in range(count):
            now = self._now_ms = start_ms + int(i * step_ms)
            yield self.inference(now)
            if self._bad_left and (i + 1) % every == 0:
                yield self.bad(self._bad_left.pop(), now)
            yield from self.due_feedback(now / 1000)

    def tail(self) -> Iterator[Outgoing]:
        while self._bad_left:
            yield self.bad(self._bad_left.pop(), self._now_ms)
        yield from self.due_feedback(0, everything=True)


def run(producer, topics: Mapping[str, str], sim: Simulator, *, rate: float, duration_s: float | None = None,
        count: int | None = None, stop=None) -> Counter:
    """Send the simulator's stream through an EventProducer at ``rate`` inference records per second.

    Stops after ``count`` inference records or ``duration_s`` seconds (whichever is given/first), then sends every
    pending feedback and the bad records not yet injected. Returns what was sent, by label.
    """
    sent: Counter = Counter()
    if count is None:
        count = int(rate * duration_s) if duration_s is not None else 1_000
    t0 = time.monotonic()
    deadline = t0 + duration_s if duration_s is not None else float("inf")
    n = 0
    for out in sim.stream(count, start_ms=int(time.time() * 1000), step_ms=1000 / rate):
        if out.label == "inference":
            n += 1
            due = t0 + n / rate
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if time.monotonic() > deadline or (stop is not None and stop.is_set()):
                sim.withdraw(out)
                break
        producer.send_raw(topics[out.topic], out.value, key=out.key)
        sent[out.label] += 1
    # the tail: feedback still pending and bad records not yet injected
    for out in sim.tail():
        producer.send_raw(topics[out.topic], out.value, key=out.key)
        sent[out.label] += 1
    producer.flush()
    return sent
