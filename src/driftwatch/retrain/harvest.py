"""Training examples born from feedback: a correction (the answer a user says was right) or a positive rating of
the response. Pure: the ingestor calls :func:`example` on each accepted event of a batch (feedback carries the
request it rates, from the ingestor's join) and saves what it returns before it commits the batch's offsets."""

from __future__ import annotations

import time

from driftwatch.events import FeedbackEvent, InferenceEvent
from driftwatch.monitor.features import prompt_text
from driftwatch.state.store import HarvestedExample


def example(item, now: float | None = None) -> HarvestedExample | None:
    """The example an accepted event (``ingest.pipeline.Accepted``) makes, if any: feedback on a request the join
    still keeps, that answered ok, with a correction (the target) or a positive rating (the response is the target)."""
    feedback, request = item.event, item.request
    if item.kind != "feedback" or not isinstance(request, InferenceEvent) or request.status != "ok":
        return None
    assert isinstance(feedback, FeedbackEvent)
    if feedback.correction and feedback.correction.strip():
        source, target = "correction", feedback.correction
    elif feedback.sentiment == "positive" and request.response:
        source, target = "positive", request.response
    else:
        return None
    return HarvestedExample(feedback.request_id, source, time.time() if now is None else now, item.adapter,
                            request.route, prompt_text(request), target)
