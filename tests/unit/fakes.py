"""Fakes for fast unit tests of the ingest step. Integration tests use real brokers instead."""

from dataclasses import dataclass, field

from driftwatch.errors import CommitError, DeadLetterError


@dataclass
class Rec:
    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None
    headers: list = field(default_factory=list)
    timestamp: int = 1795514400000


class FakeSource:
    def __init__(self, batches):
        self.batches = list(batches)
        self.commits = []
        self.fail_commit = False
        self.joined = True
        self.assigned = frozenset()

    def poll(self):
        return self.batches.pop(0) if self.batches else []

    def commit(self, offsets):
        if self.fail_commit:
            raise CommitError("IllegalGenerationError: group rebalanced")
        self.commits.append(dict(offsets))

    def lag(self):
        return {("inf", 0): 3}

    def close(self):
        pass


class FakeSink:
    def __init__(self):
        self.delivered = []
        self.down = False

    def deliver(self, letters):
        if self.down:
            raise DeadLetterError("broker down", letters)
        self.delivered.extend(letters)

    def close(self):
        pass


class ManualJobs:
    """control.jobs' interface; a job runs only when the test says (``run``), so a test orders every step."""

    def __init__(self):
        import threading

        self._event = threading.Event
        self.pending = {}  # key -> (job, cancel event)
        self.cancelled = []

    def submit(self, key, job):
        if key in self.pending:
            return False
        self.pending[key] = (job, self._event())
        return True

    def running(self, key):
        return key in self.pending

    def cancel(self, key):
        if key in self.pending:
            self.pending[key][1].set()
            self.cancelled.append(key)

    def run(self, key):
        job, cancel = self.pending.pop(key)
        return job(cancel)

    def shutdown(self, cancel=True):
        self.pending.clear()


def accepted(pairs, label=str):
    """(kind, event) pairs as the ingestor hands them on: each an Accepted with its adapter label, feedback joined to
    its request (``unknown`` when the request is not among the pairs before it)."""
    from driftwatch.ingest.pipeline import Accepted

    served, out = {}, []
    for kind, event in pairs:
        if kind == "inference":
            served[event.request_id] = (label(event.adapter), event)
            out.append(Accepted(kind, event, served[event.request_id][0]))
        else:
            adapter, request = served.get(event.request_id, ("unknown", None))
            out.append(Accepted(kind, event, adapter, request))
    return out
