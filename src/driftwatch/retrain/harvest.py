"""Training examples born from feedback: a correction (the answer a user says was right) or a positive rating of
the response. Pure: the ingestor calls :func:`example` on each accepted event of a batch (feedback carries the
request it rates, from the ingestor's join) and saves what it returns before it commits the batch's offsets."""

from __future__ import annotations

import json
import time
from typing import Callable

from driftwatch.events import FeedbackEvent, InferenceEvent
from driftwatch.monitor.features import prompt_text
from driftwatch.state.store import HarvestedExample


def example(item, now: float | None = None, trusted_callers: frozenset[str] = frozenset(),
            skipped: Callable[[str], None] = lambda reason: None) -> HarvestedExample | None:
    """The example an accepted event (``ingest.pipeline.Accepted``) makes, if any: feedback on a request the join
    still keeps, that answered ok, with a correction (the target) or a positive rating (the response is the target).
    It is trusted when the feedback was written to the topic directly (the topic's ACLs guard it) or by a trusted
    caller; an end user's (a receipt's) is a candidate until a person approves it (`driftwatch examples`). A request
    whose prompt (or, for a positive rating, its response) was cut to fit the event contract (``metadata.fitted``)
    makes none, and ``skipped("fitted")`` counts it: the adapter would learn an input the server never saw; so does a
    conversation with a tool turn (``skipped("unrenderable")``). The example keeps the request as served
    (:func:`served`)."""
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
    cut = set(request.metadata.get("fitted") or ()) if isinstance(request.metadata, dict) else set()
    if cut & {"prompt", "messages"} or (source == "positive" and "response" in cut):
        skipped("fitted")  # cut to fit the event contract: not the input the server saw, or not the answer it gave
        return None
    if any(m.role not in RENDERED for m in request.messages or ()):
        skipped("unrenderable")  # a tool turn: no single chat template renders it the same everywhere
        return None
    trusted = feedback.origin is None or (feedback.origin == "caller" and feedback.caller in trusted_callers)
    return HarvestedExample(feedback.request_id, source, time.time() if now is None else now, item.adapter,
                            request.route, prompt_text(request), target, request.tenant,
                            "trusted" if trusted else "candidate", served(request))


RENDERED = ("system", "user", "assistant")  # the roles a harvested conversation may hold


def served(request: InferenceEvent) -> str:
    """The request as the server saw it, JSON: a chat's messages with their roles (system, user, earlier assistant
    turns), or a completion's prompt. A chat is known by its messages: the gateway logs its system and user text as
    ``prompt`` too. Training renders it as the server did (retrain/trainer.py)."""
    if request.messages:
        return json.dumps({"messages": [{"role": m.role, "content": m.content} for m in request.messages]},
                          ensure_ascii=False)
    return json.dumps({"prompt": request.prompt or ""}, ensure_ascii=False)


def cap_tenants(examples: list[HarvestedExample], replay: int, share: float,
                replay_fraction: float = 0.5) -> tuple[list[HarvestedExample], dict]:
    """At most ``share`` of a dataset from any one tenant. The dataset is what is kept of ``examples`` plus the replay
    lines curation will add to them (``replay_fraction`` of the set, at most the ``replay`` available): not the whole
    base set, which curation never uses whole. Each tenant keeps its newest up to the cap; returns (kept, {tenant:
    dropped})."""
    by_tenant: dict[str, list[HarvestedExample]] = {}
    for e in examples:
        if e.tenant is not None:
            by_tenant.setdefault(e.tenant, []).append(e)
    untenanted = sum(e.tenant is None for e in examples)
    ratio = replay_fraction / (1 - replay_fraction)

    def size(harvest: int) -> int:
        return harvest + min(replay, round(harvest * ratio))

    harvest = untenanted + sum(map(len, by_tenant.values()))
    while True:  # the cap is a share of what is kept: shrink until it holds (it only decreases, so it ends)
        cap = int(share * size(harvest))
        kept = untenanted + sum(min(len(v), cap) for v in by_tenant.values())
        if kept == harvest:
            break
        harvest = kept
    dropped = {t: len(v) - cap for t, v in by_tenant.items() if len(v) > cap}
    if not dropped:
        return examples, {}
    newest: set[int] = set()
    for v in by_tenant.values():
        newest.update(id(e) for e in sorted(v, key=lambda e: e.at)[max(0, len(v) - cap):] if cap)
    return [e for e in examples if e.tenant is None or id(e) in newest], dropped
