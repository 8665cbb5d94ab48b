"""Per-adapter live signals from accepted events: requests by status, latency, tokens, feedback sentiment.

Each event comes with the adapter label it counts under, chosen once by the ingestor's join (feedback: the label
of the request it rates; "unknown" when that request is not in the join, or never came within
``ingest.feedback_hold_s``). On the ingest thread.
"""

from __future__ import annotations

from typing import Sequence

from driftwatch.metrics import Metrics


class AdapterSignals:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._children: dict[tuple, object] = {}

    def _child(self, metric, *labels: str):  # labelled children cached: .labels() costs ~1 µs
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def __call__(self, items: Sequence) -> None:
        """``items``: the ingestor's ``Accepted`` values (kind, event, adapter label, request)."""
        m = self.metrics
        for kind, event, adapter, _ in items:
            if kind == "inference":
                self._child(m.requests, adapter, event.status).inc()
                self._child(m.request_latency, adapter).observe(event.latency_ms / 1000.0)
                if event.tokens_in:
                    self._child(m.tokens, adapter, "in").inc(event.tokens_in)
                if event.tokens_out:
                    self._child(m.tokens, adapter, "out").inc(event.tokens_out)
            else:
                self._child(m.feedback, adapter, event.sentiment).inc()
