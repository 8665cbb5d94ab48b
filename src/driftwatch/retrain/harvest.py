"""Training examples born from feedback: a correction (the answer a user says was right) or a positive rating of
the response. Recent requests wait in a bounded window for their feedback (the ingestor hands feedback on after
its request); matches go to the state store."""

from __future__ import annotations

import time
from typing import Callable, Sequence

from driftwatch.events import Event, FeedbackEvent, InferenceEvent, Kind
from driftwatch.metrics import Metrics
from driftwatch.monitor.features import prompt_text
from driftwatch.ingest.recent import DedupWindow
from driftwatch.state.store import HarvestedExample, StateStore


class Harvester:
    def __init__(self, store: StateStore, max_pending: int, max_age_s: float, metrics: Metrics | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.store, self.metrics, self.clock = store, metrics, clock
        self.pending = DedupWindow(max_pending, max_age_s)  # request_id -> (prompt, response, route, adapter)

    def __call__(self, events: Sequence[tuple[Kind, Event]]) -> None:
        found: list[HarvestedExample] = []
        for kind, event in events:
            if kind == "inference":
                assert isinstance(event, InferenceEvent)
                if event.status == "ok" and event.response:
                    request = (prompt_text(event), event.response, event.route, event.adapter)
                    self.pending.add(event.request_id, request)
                continue
            assert isinstance(event, FeedbackEvent)
            request = self.pending.get(event.request_id)
            if request is not None:
                self._match(event, request, found)
        if found:
            self.store.add_examples(found)
            if self.metrics is not None:
                for e in found:
                    self.metrics.training_examples.labels(source=e.source).inc()

    def _match(self, feedback: FeedbackEvent, request: tuple, found: list[HarvestedExample]) -> None:
        prompt, response, route, adapter = request
        if feedback.correction and feedback.correction.strip():
            source, target = "correction", feedback.correction
        elif feedback.sentiment == "positive":
            source, target = "positive", response
        else:
            return
        found.append(HarvestedExample(feedback.request_id, source, self.clock(), adapter, route, prompt, target))
