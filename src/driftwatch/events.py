"""The wire contract, version 1: what applications publish and driftwatch reads.

Records are UTF-8 JSON objects, keyed by ``request_id`` on both the inference and the feedback topic (so that,
with equal partition counts, a feedback record lands on the same partition as its inference record).
Unknown fields are ignored; an unknown major ``schema_version`` is rejected. docs/events.md has examples.

:func:`decode` never raises on bad input: it returns an event, or a :class:`Rejected` with a reason code from
:class:`Reason` and a human-readable detail. Those reason codes are the ``reason`` label of the dead-letter
metric and header, so they form a small fixed set.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, ValidationError, model_validator

SCHEMA_VERSION = 1

MAX_ID_CHARS = 256
MAX_NAME_CHARS = 256
MAX_TEXT_CHARS = 1_000_000
MAX_MESSAGES = 1_000
MAX_METADATA_KEYS = 64

_MIN_EPOCH_MS = 946_684_800_000  # 2000-01-01
_MAX_EPOCH_MS = 4_102_444_800_000  # 2100-01-01


def fit_text(value: str, limit: int, fitted: set[str], name: str) -> str:
    """A string as the contract takes it: at most ``limit`` characters, valid UTF-8 (a lone surrogate becomes '?');
    ``name`` joins ``fitted`` when it had to change (the producer records that in ``metadata.fitted``)."""
    if len(value) > limit:
        value = value[:limit]
        fitted.add(name)
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            value = value.encode("utf-8", "replace").decode("utf-8")
            fitted.add(name)
    return value


def _epoch_ms(value: Any) -> int:
    """Accept epoch milliseconds (number) or an RFC 3339 string; return epoch milliseconds."""
    if isinstance(value, bool):
        raise ValueError("a timestamp is epoch milliseconds or an RFC 3339 string, not a boolean")
    if isinstance(value, (int, float)):
        ms = int(value)
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("not an RFC 3339 timestamp (e.g. 2026-11-24T10:00:00.123Z)") from None
        if parsed.tzinfo is None:
            raise ValueError("an RFC 3339 timestamp needs a UTC offset or 'Z'")
        ms = int(parsed.timestamp() * 1000)
    else:
        raise ValueError("a timestamp is epoch milliseconds or an RFC 3339 string")
    if not _MIN_EPOCH_MS <= ms < _MAX_EPOCH_MS:
        raise ValueError("timestamp out of range (years 2000-2099, in epoch milliseconds)")
    return ms


EpochMs = Annotated[int, BeforeValidator(_epoch_ms)]
Id = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME_CHARS)]
Text = Annotated[str, StringConstraints(max_length=MAX_TEXT_CHARS)]


class _Contract(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)  # no "12" -> 12, no true -> 1


class Message(_Contract):
    role: Literal["system", "user", "assistant", "tool"]
    content: Text


class InferenceEvent(_Contract):
    """One served request, as the gateway (or any application) saw it."""

    schema_version: Literal[1]
    request_id: Id
    timestamp: EpochMs
    model: Name  # base model
    adapter: Name  # the adapter version that actually served the request
    alias: Name | None = None  # what the client asked for, e.g. "production"
    prompt: Text | None = None
    messages: Annotated[list[Message], Field(max_length=MAX_MESSAGES)] | None = None
    response: Text | None = None
    latency_ms: float = Field(ge=0, le=86_400_000, allow_inf_nan=False)
    tokens_in: int | None = Field(None, ge=0)
    tokens_out: int | None = Field(None, ge=0)
    status: Literal["ok", "error", "timeout"]
    error_type: Name | None = None
    route: Name | None = None  # task / route, e.g. "summarize"
    tenant: Name | None = None
    metadata: Annotated[dict[str, Any], Field(max_length=MAX_METADATA_KEYS)] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _needs_input(self) -> InferenceEvent:
        if self.prompt is None and not self.messages:
            raise ValueError("one of 'prompt' or 'messages' is required")
        return self

    @property
    def dedup_key(self) -> str:
        return self.request_id


class FeedbackEvent(_Contract):
    """A user's verdict on one response, referring to it by request_id."""

    schema_version: Literal[1]
    feedback_id: Id
    request_id: Id
    timestamp: EpochMs
    rating: int | None = Field(None, ge=1, le=5)  # 1-5 stars
    thumbs: Literal["up", "down"] | None = None
    correction: Text | None = None  # the response the user says would have been right
    label: Name | None = None  # optional category, e.g. "hallucination"
    # who vouched for it, set by the gateway: "receipt" (an end user holding the answer's feedback receipt) or "caller"
    # (an authenticated server-side caller, named in ``caller``); absent: written to the topic directly (trusted by ACL)
    origin: Literal["receipt", "caller"] | None = None
    caller: Name | None = None

    @model_validator(mode="after")
    def _needs_verdict(self) -> FeedbackEvent:
        if self.rating is None and self.thumbs is None and self.correction is None:
            raise ValueError("one of 'rating', 'thumbs' or 'correction' is required")
        return self

    @property
    def dedup_key(self) -> str:
        """One rating per request counts (the first), and one correction: a later one is a duplicate. An end user's
        (a receipt's) and a vouched one (a caller's, the topic's) are apart: a user cannot pre-empt the vouched one."""
        kind = "rating" if self.rating is not None or self.thumbs else "correction"
        return f"{self.request_id}\x00{kind}\x00{'receipt' if self.origin == 'receipt' else 'vouched'}"

    @property
    def sentiment(self) -> Literal["positive", "negative", "neutral"]:
        if self.thumbs == "down" or (self.rating is not None and self.rating <= 2):
            return "negative"
        if self.thumbs == "up" or (self.rating is not None and self.rating >= 4):
            return "positive"
        if self.correction is not None and self.rating is None:
            return "negative"  # a correction alone says the response was wrong
        return "neutral"


Event = Union[InferenceEvent, FeedbackEvent]
Kind = Literal["inference", "feedback"]
MODELS: dict[str, type[InferenceEvent] | type[FeedbackEvent]] = {"inference": InferenceEvent, "feedback": FeedbackEvent}


class Reason(str, enum.Enum):
    """Why a record was not accepted. The value is the metric label and the dead-letter header."""

    EMPTY = "empty"  # null or zero-length value
    OVERSIZE = "oversize"  # above ingest.max_record_bytes
    BAD_UTF8 = "bad_utf8"
    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"  # valid JSON, but not an object
    UNSUPPORTED_SCHEMA_VERSION = "unsupported_schema_version"
    MISSING_FIELD = "missing_field"
    INVALID_FIELD = "invalid_field"  # wrong type, out of range, too long, ...


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: Reason
    detail: str


def decode(kind: Kind, raw: bytes | None, max_bytes: int) -> Event | Rejected:
    """Decode one record of the given kind. Never raises on bad input."""
    if not raw:
        return Rejected(Reason.EMPTY, "record value is empty or null")
    if len(raw) > max_bytes:
        return Rejected(Reason.OVERSIZE, f"record is {len(raw)} bytes, limit is {max_bytes}")
    try:
        text = raw.decode("utf-8")  # the JSON parser would replace bad bytes silently: check first (fast for ASCII)
    except UnicodeDecodeError as err:
        return Rejected(Reason.BAD_UTF8, f"invalid UTF-8 at byte {err.start}")
    try:
        return MODELS[kind].model_validate_json(text)
    except ValidationError as exc:
        return _classify(exc)


def _classify(exc: ValidationError) -> Rejected:
    errors = exc.errors(include_url=False)
    first = errors[0]
    if first["type"] == "json_invalid":
        return Rejected(Reason.NOT_JSON, f"not JSON: {first['msg']}")
    if first["type"] in ("model_type", "model_attributes_type") and not first["loc"]:
        return Rejected(Reason.NOT_OBJECT, "JSON value is not an object")
    for err in errors:
        if err["loc"][:1] == ("schema_version",) and err["type"] == "literal_error" and type(err["input"]) is int:
            return Rejected(Reason.UNSUPPORTED_SCHEMA_VERSION,
                            f"schema_version {err['input']} is not supported (this driftwatch reads {SCHEMA_VERSION})")
    reason = Reason.MISSING_FIELD if any(e["type"] == "missing" for e in errors) else Reason.INVALID_FIELD
    shown = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(event)'}: {e['msg']}" for e in errors[:3])
    more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
    return Rejected(reason, shown + more)


def encode(event: Event) -> bytes:
    """The record value for an event: compact UTF-8 JSON, empty optional fields left out."""
    return event.model_dump_json(exclude_none=True).encode("utf-8")


def now_ms() -> int:
    return int(datetime.now(timezone.utc).timestamp() * 1000)
