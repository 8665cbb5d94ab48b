"""Per-adapter live signals from accepted events: requests by status, latency, tokens, feedback sentiment.

Feedback carries only a request_id; it is attributed to the adapter that served that request through a
bounded join window (the ingestor hands feedback on after its request; feedback whose request is older than the
window, or never came within ``ingest.feedback_hold_s``, counts as "unknown").
"""

from __future__ import annotations

from typing import Sequence

from driftwatch.events import Event, FeedbackEvent, InferenceEvent, Kind
from driftwatch.metrics import UNKNOWN, Metrics
from driftwatch.ingest.recent import DedupWindow


class AdapterSignals:
    def __init__(self, metrics: Metrics, join: DedupWindow) -> None:
        self.metrics = metrics
        self.join = join
        self._children: dict[tuple, object] = {}

    def _child(self, metric, *labels: str):  # labelled children cached: .labels() costs ~1 µs
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def __call__(self, events: Sequence[tuple[Kind, Event]]) -> None:
        m = self.metrics
        for kind, event in events:
            if kind == "inference":
                assert isinstance(event, InferenceEvent)
                adapter = m.adapter_cap(event.adapter)
                self.join.add(event.request_id, adapter)
                self._child(m.requests, adapter, event.status).inc()
                self._child(m.request_latency, adapter).observe(event.latency_ms / 1000.0)
                if event.tokens_in:
                    self._child(m.tokens, adapter, "in").inc(event.tokens_in)
                if event.tokens_out:
                    self._child(m.tokens, adapter, "out").inc(event.tokens_out)
            else:
                assert isinstance(event, FeedbackEvent)
                adapter = self.join.get(event.request_id, UNKNOWN)
                self._child(m.feedback, adapter, event.sentiment).inc()
