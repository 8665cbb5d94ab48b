"""Who vouches for an example, and how much of a dataset one tenant may be."""

from driftwatch.events import FeedbackEvent, InferenceEvent
from driftwatch.ingest.pipeline import Accepted
from driftwatch.retrain.harvest import cap_tenants, example
from driftwatch.state.store import HarvestedExample

REQUEST = InferenceEvent.model_validate({"schema_version": 1, "request_id": "r1", "timestamp": 1795514400000, "model": "m",
                                         "adapter": "v1", "prompt": "p", "response": "a", "latency_ms": 1.0,
                                         "status": "ok", "tenant": "acme"})


def fb(**kw):
    return FeedbackEvent.model_validate({"schema_version": 1, "feedback_id": "f", "request_id": "r1",
                                         "timestamp": 1795514400000, "correction": "better", **kw})


def test_an_end_users_example_is_a_candidate_a_trusted_callers_or_the_topics_is_not():
    status = lambda event: example(Accepted("feedback", event, "v1", REQUEST), 1.0, frozenset({"crm"})).status  # noqa: E731
    assert status(fb()) == "trusted"  # written to the topic directly: its ACLs guard it
    assert status(fb(origin="receipt")) == "candidate"
    assert status(fb(origin="caller", caller="crm")) == "trusted"
    assert status(fb(origin="caller", caller="someone-else")) == "candidate"
    assert example(Accepted("feedback", fb(), "v1", REQUEST), 1.0).tenant == "acme"


def test_one_tenant_is_at_most_its_share_of_the_dataset():
    def ex(i, tenant):
        return HarvestedExample(f"r{i}", "correction", float(i), "v1", None, "p", "t", tenant)

    flood = [ex(i, "mallory") for i in range(100)] + [ex(100 + i, "acme") for i in range(10)] + [ex(200, None)]
    kept, dropped = cap_tenants(flood, others=100, share=0.2)
    total = len(kept) + 100
    by = lambda t: [e for e in kept if e.tenant == t]  # noqa: E731
    assert len(by("mallory")) <= 0.2 * total and len(by("acme")) == 10 and len(by(None)) == 1
    assert dropped == {"mallory": 100 - len(by("mallory"))} and len(by("mallory")) == int(0.2 * total)
    assert [e.request_id for e in by("mallory")] == [f"r{i}" for i in range(100 - len(by("mallory")), 100)]  # newest
    assert cap_tenants(flood[100:], others=100, share=0.2) == (flood[100:], {})
