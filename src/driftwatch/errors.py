"""One exception tree for driftwatch: every error that crosses a module is in it.

Third-party errors are translated at the one edge that meets them, with ``raise ... from exc`` (kafka-python's in
``ingest/kafka.py``, pydantic's in ``config.py`` and ``events.py``, httpx's in ``serving/vllm.py``), as httpx maps
httpcore's, so a caller catches these and nothing else::

    DriftwatchError
     ├── ConfigError            bad settings: every problem with its field path and the fix
     ├── ContractError          an event the producer helper refuses to publish (breaks contract v1)
     ├── ReportError            an Evidently report cannot be made (extra missing, no row sample, empty window)
     ├── StoreError             the state store or registry cannot be read or written (SQLite, PostgreSQL)
     ├── IngestError
     │    ├── BrokerUnavailable  no Kafka broker answered, or the connection to it broke (retried with backoff)
     │    ├── TopicLayoutError   topics missing, or inference/feedback not co-partitioned
     │    ├── DeadLetterError    the dead-letter topic cannot be written; offsets stay uncommitted
     │    └── CommitError        an offset commit failed (e.g. the group rebalanced); records are redelivered
     ├── ServingError            vLLM said no, or could not be asked
     │    ├── VLLMUnavailable    not reachable, not healthy, or answered 5xx for a reason it did not name
     │    ├── AdapterExists      an adapter of that name is already loaded (vLLM's 400)
     │    ├── AdapterNotFound    no adapter of that name is loaded, or its path does not exist (404)
     │    ├── AdapterRejected    vLLM cannot load it: rank above --max-lora-rank, another base model (500)
     │    └── UpstreamError      the gateway got no usable answer (cannot connect, hung up, broken HTTP/1.1)
     ├── DataError               a data file that does not follow its format (file, line and field named)
     │    └── GateFailure        a training set refused by the data gates (``report``: every gate)
     ├── EvaluationError         an evaluation could not be run to its end (it never promotes)
     ├── RolloutError            a promotion or rollback that cannot start (unknown version, one in progress)
     └── ControlError            a control API call that cannot be done as asked (bad body 400, conflict 409)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


class DriftwatchError(Exception):
    """Base of every error driftwatch raises on purpose."""


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    path: str  # dotted field path, e.g. "kafka.consumer.session_timeout_ms"
    message: str  # what is wrong
    fix: str  # what would make it right

    def __str__(self) -> str:
        return f"{self.path}: {self.message} — fix: {self.fix}"


class ConfigError(DriftwatchError):
    def __init__(self, problems: list[ConfigProblem], source: str = "config"):
        self.problems = problems
        self.source = source
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s)\n{lines}")


class ContractError(DriftwatchError):
    """An event that does not satisfy the v1 event contract (raised on the producing side)."""


class ReportError(DriftwatchError):
    """An Evidently report cannot be made: the extra is not installed, or there are no rows to compare."""


class StoreError(DriftwatchError):
    """The state store or the registry cannot be read or written (locked, the server gone); nothing was changed."""


class IngestError(DriftwatchError):
    pass


class BrokerUnavailable(IngestError):
    pass


class TopicLayoutError(IngestError):
    pass


class DeadLetterError(IngestError):
    def __init__(self, message: str, pending: Sequence[object] = ()) -> None:
        super().__init__(message)
        self.pending = list(pending)  # the letters still to deliver, in order


class CommitError(IngestError):
    pass


class ServingError(DriftwatchError):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # vLLM's HTTP status, when it answered


class VLLMUnavailable(ServingError):
    pass


class AdapterExists(ServingError):
    pass


class AdapterNotFound(ServingError):
    pass


class AdapterRejected(ServingError):
    pass


class UpstreamError(ServingError):
    """No usable answer: the upstream cannot be reached, hung up, or broke HTTP/1.1."""


class DataError(DriftwatchError, ValueError):
    """A data file that does not follow its documented format (file, line and field named)."""


class GateFailure(DataError):
    """The data failed at least one gate: nothing is trained. ``report`` holds every gate (evaluate.gates.Gate)."""

    def __init__(self, report: Sequence) -> None:
        self.report = list(report)
        failed = [g for g in self.report if not g.passed]
        super().__init__("training data refused: " + "; ".join(f"{g.name} {g.value:.4g} (bound {g.op} {g.bound:g}) "
                                                               f"{g.detail}".rstrip() for g in failed))


class EvaluationError(DriftwatchError):
    pass


class RolloutError(DriftwatchError):
    pass


class ControlError(DriftwatchError):
    """A control API call that cannot be done as asked; ``status`` is the HTTP status it answers with."""

    def __init__(self, message: str, status: int = 409, body: dict | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body  # the answer's JSON, when it is more than {"error": message} (202: the request's id)
