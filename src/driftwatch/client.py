"""Producer helper for applications: publish InferenceEvents and FeedbackEvents in contract v1.

    from driftwatch.client import EventProducer

    with EventProducer(["kafka:9092"]) as events:
        events.inference({"request_id": rid, "model": "base", "adapter": "support-v7", "prompt": p,
                          "response": r, "latency_ms": 812.0, "status": "ok"})
        events.feedback({"feedback_id": fid, "request_id": rid, "thumbs": "down"})

Events are validated before they are sent (a bad one raises ContractError, it never reaches the topic),
serialised compactly and keyed by request_id on both topics. ``schema_version`` and ``timestamp`` are filled
in when missing. Sending is asynchronous; ``flush()`` waits for the broker.
"""

from __future__ import annotations

import contextlib
from typing import Any, Mapping, Sequence

from pydantic import ValidationError

from driftwatch.config import Kafka, Settings, Topics
from driftwatch.errors import ContractError
from driftwatch.events import SCHEMA_VERSION, Event, FeedbackEvent, InferenceEvent, encode, now_ms


class EventProducer:
    def __init__(
        self,
        bootstrap_servers: str | Sequence[str] | None = None,
        *,
        topics: Topics | None = None,
        kafka: Kafka | None = None,
        **producer_config: Any,
    ) -> None:
        from driftwatch.ingest.kafka import producer

        if kafka is None:
            servers = [bootstrap_servers] if isinstance(bootstrap_servers, str) else list(bootstrap_servers or ["127.0.0.1:9092"])
            kafka = Kafka(bootstrap_servers=servers)
        self.topics = topics or kafka.topics
        self._kafka = kafka
        self._producer = producer(kafka, **{"acks": "all", "linger_ms": 5, "batch_size": 65_536, **producer_config})

    @classmethod
    def from_settings(cls, settings: Settings, **producer_config: Any) -> EventProducer:
        return cls(kafka=settings.kafka, **producer_config)

    def inference(self, event: InferenceEvent | Mapping[str, Any]):
        ev = self._validated(InferenceEvent, event)
        return self.send_raw(self.topics.inference, encode(ev), key=ev.request_id.encode())

    def feedback(self, event: FeedbackEvent | Mapping[str, Any]):
        ev = self._validated(FeedbackEvent, event)
        return self.send_raw(self.topics.feedback, encode(ev), key=ev.request_id.encode())

    def send_raw(self, topic: str, value: bytes | None, key: bytes | None = None, headers: list | None = None):
        """Send bytes as they are (no validation): for tools and tests that need records outside the contract."""
        with self._translated(f"sending to {topic}"):
            return self._producer.send(topic, value=value, key=key, headers=headers)

    def flush(self, timeout_s: float | None = None) -> None:
        with self._translated("flushing"):
            self._producer.flush(timeout=timeout_s)

    @contextlib.contextmanager
    def _translated(self, doing: str):
        from driftwatch.ingest.kafka import KafkaError, translate

        try:
            yield
        except KafkaError as exc:
            raise translate(exc, self._kafka, doing) from exc

    def close(self, timeout_s: float = 10.0) -> None:
        self._producer.close(timeout=timeout_s)

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()
        self.close()

    @staticmethod
    def _validated(model: type[Event], event: Event | Mapping[str, Any]) -> Event:
        if isinstance(event, model):
            return event
        if not isinstance(event, Mapping):
            raise ContractError(f"expected a {model.__name__} or a mapping, got {type(event).__name__}")
        data = {"schema_version": SCHEMA_VERSION, "timestamp": now_ms(), **event}
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(event)'}: {e['msg']}" for e in exc.errors())
            raise ContractError(f"not a valid {model.__name__}: {problems}") from None
