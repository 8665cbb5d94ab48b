"""Who vouches for an example, and how much of a dataset one tenant may be."""

from driftwatch.events import FeedbackEvent, InferenceEvent, Message
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

    flood = [ex(i, "mallory") for i in range(100)] + [ex(100 + i, "acme") for i in range(10)] + [
        ex(200 + i, None) for i in range(40)]
    kept, dropped = cap_tenants(flood, replay=100, share=0.2)
    total = len(kept) + min(100, len(kept))  # replay_fraction 0.5: as many replayed lines as harvested
    by = lambda t: [e for e in kept if e.tenant == t]  # noqa: E731
    assert len(by("mallory")) <= 0.2 * total and len(by("acme")) == 10 and len(by(None)) == 40
    assert dropped == {"mallory": 100 - len(by("mallory"))} and len(by("mallory")) == int(0.2 * total)
    assert [e.request_id for e in by("mallory")] == [f"r{i}" for i in range(100 - len(by("mallory")), 100)]  # newest
    assert cap_tenants(flood[100:], replay=100, share=0.2) == (flood[100:], {})


def test_the_tenant_cap_counts_the_replay_curation_uses_not_the_whole_base_set():
    """Finding 6: the cap counted the whole base set as others, but curation keeps only as many replay lines as
    harvested ones: one tenant could be ~50 % of a set whose cap says 20 %."""
    def ex(i, tenant):
        return HarvestedExample(f"r{i}", "correction", float(i), "v1", None, "p", "t", tenant)

    flood = [ex(i, "mallory") for i in range(60)] + [ex(100 + i, None) for i in range(40)]
    kept, dropped = cap_tenants(flood, replay=5000, share=0.2, replay_fraction=0.5)
    mallory = sum(e.tenant == "mallory" for e in kept)
    final = len(kept) + min(5000, len(kept))  # what curation makes of it
    assert mallory <= 0.2 * final and dropped == {"mallory": 60 - mallory}


def test_a_request_cut_to_fit_the_event_contract_is_not_harvested_and_is_counted():
    """Issue 26: a prompt cut to fit (metadata.fitted) was harvested unmarked, so the adapter trained on an input the
    server never saw. A cut prompt or messages leave the example out; a cut response leaves out the positive rating
    whose target it is (a correction brings its own target)."""
    skipped = []
    cut = lambda *names: REQUEST.model_copy(update={"metadata": {"fitted": list(names)}})  # noqa: E731
    harvest = lambda event, request: example(Accepted("feedback", event, "v1", request), 1.0,  # noqa: E731
                                             skipped=skipped.append)
    assert harvest(fb(), cut("prompt")) is None and harvest(fb(), cut("messages")) is None
    assert harvest(fb(correction=None, thumbs="up"), cut("response")) is None
    assert harvest(fb(), cut("response")) is not None  # the correction is the target, whole
    assert harvest(fb(), cut("service")) is not None and harvest(fb(), REQUEST) is not None
    assert skipped == ["fitted", "fitted", "fitted"]


def test_an_example_keeps_the_request_as_served_and_leaves_out_a_tool_conversation():
    """Issue 26: the harvest joined the system prompt and every user turn into one text and dropped the assistant
    turns: the adapter trained on an input the server never saw."""
    import json

    chat = REQUEST.model_copy(update={"prompt": "Be brief.\nHi\nWhere is my parcel?", "messages": [  # as the gateway logs
        Message(role="system", content="Be brief."), Message(role="user", content="Hi"),
        Message(role="assistant", content="Hello."), Message(role="user", content="Where is my parcel?")]})
    ex = example(Accepted("feedback", fb(), "v1", chat), 1.0)
    assert json.loads(ex.served) == {"messages": [{"role": "system", "content": "Be brief."},
                                                  {"role": "user", "content": "Hi"},
                                                  {"role": "assistant", "content": "Hello."},
                                                  {"role": "user", "content": "Where is my parcel?"}]}
    assert json.loads(example(Accepted("feedback", fb(), "v1", REQUEST), 1.0).served) == {"prompt": "p"}
    skipped = []
    tool = chat.model_copy(update={"messages": [*chat.messages, Message(role="tool", content="{}")]})
    assert example(Accepted("feedback", fb(), "v1", tool), 1.0, skipped=skipped.append) is None
    assert skipped == ["unrenderable"]
