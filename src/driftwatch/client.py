"""Producer helper for applications: publish InferenceEvents and FeedbackEvents in contract v1.

    from driftwatch.client import EventProducer

    with EventProducer(["kafka:9092"]) as events:
        events.inference({"request_id": rid, "model": "base", "adapter": "support-v7", "prompt": p,
                          "response": r, "latency_ms": 812.0, "status": "ok"})
        events.feedback({"feedback_id": fid, "request_id": rid, "thumbs": "down"})

Events are validated before they are sent (a bad one raises ContractError, it never reaches the topic),
serialised compactly and keyed by request_id on both topics. ``schema_version`` and ``timestamp`` are filled
in when missing. Sending is asynchronous; ``flush()`` waits for the broker.

**At least once.** The producer keeps every record until the broker acknowledged it. A send that failed (a broker
restart, a leader change) is sent again — by the next ``send`` or by ``flush()`` — up to ``resend_attempts`` times;
``flush()`` (and leaving the ``with`` block) returns only when every record sent so far is acknowledged, and raises
DeliveryError naming how many are not. A record can reach the topic twice (an acknowledgement lost on the way
back): the daemon drops the copy by its key (request_id). kafka-python's idempotent producer is off: across a
broker restart it failed sends with OutOfOrderSequenceNumberError and lost them (measured on noida-db).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Mapping, Sequence

from pydantic import ValidationError

from driftwatch.config import Kafka, Settings, Topics
from driftwatch.errors import ContractError, IngestError


class DeliveryError(IngestError):
    """Records the broker did not acknowledge after every re-send: ``count`` of them."""

    def __init__(self, message: str, count: int) -> None:
        super().__init__(message)
        self.count = count
from driftwatch.events import SCHEMA_VERSION, Event, FeedbackEvent, InferenceEvent, encode, now_ms


class EventProducer:
    def __init__(
        self,
        bootstrap_servers: str | Sequence[str] | None = None,
        *,
        topics: Topics | None = None,
        kafka: Kafka | None = None,
        resend_attempts: int = 5,
        **producer_config: Any,
    ) -> None:
        from driftwatch.ingest.kafka import producer

        if kafka is None:
            servers = [bootstrap_servers] if isinstance(bootstrap_servers, str) else list(bootstrap_servers or ["127.0.0.1:9092"])
            kafka = Kafka(bootstrap_servers=servers)
        self.topics = topics or kafka.topics
        self._kafka = kafka
        self.resend_attempts = resend_attempts
        self.resent = 0  # records sent again after a failed send
        self._unacked: list[list] = []  # [future, topic, value, key, headers, attempts], in send order
        self._since_settled = 0
        self._producer = producer(kafka, **{"acks": "all", "linger_ms": 5, "batch_size": 65_536,
                                            "enable_idempotence": False,
                                            "delivery_timeout_ms": kafka.request_timeout_ms + 6_000,
                                            **producer_config})

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
            future = self._producer.send(topic, value=value, key=key, headers=headers)
        self._unacked.append([future, topic, value, key, headers, 0])
        self._since_settled += 1
        if self._since_settled >= 1024:  # every 1,024 sends, not every send: a slow broker must not make it quadratic
            self._settle()
        return future

    def _settle(self) -> None:
        """Forget what the broker acknowledged; send again what failed; DeliveryError for what failed its last
        attempt."""
        self._since_settled = 0
        keep, lost, error = [], 0, None
        for entry in self._unacked:
            future = entry[0]
            if not future.is_done:
                keep.append(entry)
            elif future.failed():
                if entry[5] >= self.resend_attempts:
                    lost, error = lost + 1, future.exception
                    continue
                entry[5] += 1
                with self._translated(f"sending to {entry[1]} again"):
                    entry[0] = self._producer.send(entry[1], value=entry[2], key=entry[3], headers=entry[4])
                self.resent += 1
                keep.append(entry)
        self._unacked = keep
        if lost:
            raise DeliveryError(f"{lost} record(s) not acknowledged after {self.resend_attempts} re-send(s): "
                                f"{type(error).__name__}: {error}", lost)

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait until every record sent so far is acknowledged, sending again what failed; DeliveryError (or
        BrokerUnavailable at the timeout) when some are not."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            with self._translated("flushing"):
                self._producer.flush(timeout=left)
            self._settle()
            if not self._unacked:
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise DeliveryError(f"{len(self._unacked)} record(s) not acknowledged within {timeout_s:g}s",
                                    len(self._unacked))
            time.sleep(0.2)  # let the client refresh its metadata (a leader moved, a broker came back)

    @contextlib.contextmanager
    def _translated(self, doing: str):
        from driftwatch.ingest.kafka import KafkaError, translate

        try:
            yield
        except KafkaError as exc:
            raise translate(exc, self._kafka, doing) from exc

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush (raising for what is not delivered), then close the client."""
        try:
            self.flush(timeout_s)
        finally:
            self._producer.close(timeout=timeout_s)

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(timeout_s=120.0)

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
