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
