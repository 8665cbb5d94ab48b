"""OpenTelemetry traces as inference events: the records the OpenTelemetry Collector's Kafka exporter writes
(an OTLP ``ExportTraceServiceRequest`` each, encoding ``otlp_proto`` or ``otlp_json``), read from the topics named
in ``ingest.sources``. docs/ingest-otel.md has the Collector's configuration and the whole mapping.

A :class:`SpanDecoder` turns one record into a :class:`Decoded` (the inference events and the count of spans
skipped, by reason) or, when the record is no trace export at all, a :class:`~driftwatch.events.Rejected` that the
ingestor dead-letters like any other garbage. Never raises on bad input.

* **One GenAI inference span, one event.** A span with ``gen_ai.*`` attributes (or an OpenInference ``LLM`` span)
  whose operation is a model call (``chat``, ``text_completion``, ``generate_content``; a span that names no
  operation but a model, as vLLM's own spans) becomes one InferenceEvent: request id ``otel-<trace id>-<span id>``
  (stable, so a record read twice is deduplicated), start time, duration, token usage, status (an error status or
  ``error.type``; a timeout when ``error.type`` says so), and the prompt and completion where the span carries
  them. Every other span is skipped and counted: ``not_genai``, ``operation`` (embeddings, tools, agents),
  ``invalid`` (no usable ids or times, or a field the contract refuses).
* **Names** resolve against the registry (an injected ``resolve``, :class:`driftwatch.state.names.ModelNames`):
  a span cannot create an adapter label; an unknown model counts under ``unknown``.
* **Content** comes from the newer ``gen_ai.input.messages`` / ``gen_ai.output.messages`` (with
  ``gen_ai.system_instructions``), OpenLLMetry's ``gen_ai.prompt.<i>.*`` / ``gen_ai.completion.<i>.*``, the span
  events ``gen_ai.content.prompt`` / ``gen_ai.content.completion``, or OpenInference's ``llm.input_messages`` /
  ``llm.output_messages``. A span without the prompt (or, answered ok, without the completion) makes an event with
  ``metadata.content: none`` and no text: it counts in requests, latency, tokens and errors, never in a window
  (:func:`driftwatch.ingest.pipeline.windowed`). Text is fitted to the contract's limits (named in
  ``metadata.fitted``).

protobuf and opentelemetry-proto (the ``otel`` extra) are imported when a decoder is made, so a daemon without an
OTLP source never loads them.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from driftwatch.errors import ConfigError, ConfigProblem
from driftwatch.events import (MAX_MESSAGES, MAX_NAME_CHARS, MAX_TEXT_CHARS, SCHEMA_VERSION, InferenceEvent, Reason,
                               Rejected, fit_text)

FORMATS = ("otlp_proto", "otlp_json")
SKIP_REASONS = ("not_genai", "operation", "invalid")
INFERENCE_OPERATIONS = frozenset({"chat", "text_completion", "generate_content"})
# OpenLLMetry's llm.request.type, from before gen_ai.operation.name
_LEGACY_OPERATIONS = {"chat": "chat", "completion": "text_completion", "embedding": "embeddings"}
_ROLES = {"system": "system", "developer": "system", "user": "user", "human": "user", "assistant": "assistant",
          "model": "assistant", "ai": "assistant", "tool": "tool", "function": "tool", "ipython": "tool"}
_INDEXED = re.compile(r"(gen_ai\.prompt|gen_ai\.completion|llm\.input_messages|llm\.output_messages)"
                      r"\.(\d{1,4})\.(?:message\.)?(role|content)")
_INDEXED_PREFIXES = ("gen_ai.prompt.", "gen_ai.completion.", "llm.input_messages.", "llm.output_messages.")
MAX_TOKENS = 10**9  # a usage count above this is not one (counted as absent, not added to the token counters)
MAX_DEPTH = 12  # nesting of structured attribute values and message JSON read
INSTALL = "pip install 'driftwatch[otel]'"

Resolve = Callable[[str | None, str | None], tuple[str | None, str]]


@dataclass(slots=True)
class Decoded:
    """What one OTLP record made: its GenAI spans' events, and the spans skipped by reason."""

    events: list[InferenceEvent] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)


def load_proto() -> tuple[Any, Any]:
    """(ExportTraceServiceRequest, google.protobuf.json_format), loaded on first use."""
    try:
        from google.protobuf import json_format
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    except ImportError as exc:
        raise ConfigError([ConfigProblem("ingest.sources", f"reading OTLP needs protobuf and opentelemetry-proto ({exc})",
                                         f"{INSTALL}, or remove ingest.sources")]) from None
    return ExportTraceServiceRequest, json_format


class SpanDecoder:
    """One OTLP source's records → :class:`Decoded` | :class:`Rejected`, without I/O. ``refresh`` is the I/O the
    names need (ModelNames.refresh_if_due): the ingestor calls :meth:`refresh` between polls."""

    def __init__(self, fmt: str, resolve: Resolve, *, refresh: Callable[[], None] = lambda: None,
                 base_model: str = "base", max_bytes: int = 1_048_576, trusted: bool = False) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown OTLP format {fmt!r}: use one of {FORMATS}")
        self.format, self.resolve, self.base_model, self.max_bytes = fmt, resolve, base_model, max_bytes
        self.trusted = trusted  # ingest.sources[].trusted: its spans with content may move windows
        self.refresh = refresh
        self._request, self._json = load_proto()

    def __call__(self, raw: bytes | None) -> Decoded | Rejected:
        if not raw:
            return Rejected(Reason.EMPTY, "record value is empty or null")
        if len(raw) > self.max_bytes:
            return Rejected(Reason.OVERSIZE, f"record is {len(raw)} bytes, limit is {self.max_bytes}")
        request = self._parse(raw)
        if isinstance(request, Rejected):
            return request
        out = Decoded()
        spans = 0
        for rs in request.resource_spans:
            service = _service(rs.resource.attributes)
            for ss in rs.scope_spans:
                for span in ss.spans:
                    spans += 1
                    result = self.span(span, service)
                    if isinstance(result, str):
                        out.skipped[result] = out.skipped.get(result, 0) + 1
                    else:
                        out.events.append(result)
        if not spans:
            return Rejected(Reason.INVALID_FIELD, f"no spans: not an OTLP trace export ({self.format})")
        return out

    def _parse(self, raw: bytes) -> Any:
        request = self._request()
        if self.format == "otlp_proto":
            try:
                request.ParseFromString(raw)
            except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError (or upb's own): any bytes may come
                return Rejected(Reason.INVALID_FIELD, f"not an OTLP ExportTraceServiceRequest (protobuf): {exc}")
            return request
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            return Rejected(Reason.BAD_UTF8, f"invalid UTF-8 at byte {err.start}")
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError) as exc:
            return Rejected(Reason.NOT_JSON, f"not JSON: {exc}"[:300])
        if not isinstance(doc, dict):
            return Rejected(Reason.NOT_OBJECT, "JSON value is not an object")
        _hex_ids(doc)
        try:
            self._json.ParseDict(doc, request, ignore_unknown_fields=True)
        except Exception as exc:  # noqa: BLE001 - json_format's ParseError, or RecursionError on deep nesting
            return Rejected(Reason.INVALID_FIELD, f"not an OTLP ExportTraceServiceRequest (JSON): {exc}"[:1000])
        return request

    # -- one span -----------------------------------------------------------------------------------------------------
    def span(self, span: Any, service: str | None = None) -> InferenceEvent | str:
        """The event a span makes, or why it makes none (a reason of SKIP_REASONS)."""
        attrs = {kv.key: kv.value for kv in span.attributes}
        oi_kind = _str(attrs.get("openinference.span.kind"))
        if oi_kind is None and not any(key.startswith("gen_ai.") for key in attrs):
            return "not_genai"
        requested = _str(attrs.get("gen_ai.request.model")) or _str(attrs.get("llm.model_name"))
        served = _str(attrs.get("gen_ai.response.model"))
        operation = _operation(attrs, oi_kind)
        if operation not in INFERENCE_OPERATIONS and not (operation is None and (requested or served)):
            return "operation"
        trace_id, span_id = bytes(span.trace_id), bytes(span.span_id)
        start, end = span.start_time_unix_nano, span.end_time_unix_nano
        if len(trace_id) != 16 or len(span_id) != 8 or not any(trace_id) or not any(span_id) or not 0 < start <= end:
            return "invalid"
        error_type = _str(attrs.get("error.type"))
        status = "ok"
        if span.status.code == 2 or error_type:  # STATUS_CODE_ERROR; error.type is set when the call failed
            status = "timeout" if error_type and "timeout" in error_type.lower() else "error"
        fitted: set[str] = set()
        if error_type:
            error_type = _fit(error_type, MAX_NAME_CHARS, fitted, "error_type")
        prompt, messages, response = _content(attrs, span.events, operation, fitted)
        full = bool(prompt or messages) and (response is not None or status != "ok")
        alias, adapter = self.resolve(requested, served)
        metadata: dict[str, Any] = {"source": "otlp", "content": "full" if full else "none", "trusted": self.trusted,
                                    "trace_id": trace_id.hex(), "span_id": span_id.hex(),
                                    "span": _fit(span.name, MAX_NAME_CHARS, fitted, "span")}
        if service:
            metadata["service"] = _fit(service, MAX_NAME_CHARS, fitted, "service")
        if operation:
            metadata["operation"] = _fit(operation, 64, fitted, "operation")
        if not full:  # nothing a window could use: counts, latency, tokens and errors only, no text at all
            prompt, messages, response = "", None, None
            fitted.difference_update(("prompt", "messages", "response"))
        if fitted:
            metadata["fitted"] = sorted(fitted)
        doc = {
            "schema_version": SCHEMA_VERSION, "request_id": f"otel-{trace_id.hex()}-{span_id.hex()}",
            "timestamp": start // 1_000_000, "model": self.base_model, "adapter": adapter, "alias": alias,
            "prompt": prompt, "messages": messages, "response": response, "latency_ms": (end - start) / 1e6,
            "tokens_in": _count(attrs, "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.token_count.prompt"),
            "tokens_out": _count(attrs, "gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens",
                                 "llm.token_count.completion"),
            "status": status, "error_type": error_type,
            "metadata": metadata,
        }
        try:
            return InferenceEvent.model_validate({k: v for k, v in doc.items() if v is not None})
        except ValueError:  # pydantic's ValidationError: a time out of range, a latency over a day, ...
            return "invalid"


# -- attribute values ---------------------------------------------------------------------------------------------------
def _str(value: Any) -> str | None:
    """A string attribute's value (an AnyValue), else None; the empty string is None."""
    if value is None or value.WhichOneof("value") != "string_value":
        return None
    return value.string_value or None


def _count(attrs: dict, *keys: str) -> int | None:
    """The first of ``keys`` that holds a token count: a whole number from 0 to MAX_TOKENS."""
    for key in keys:
        value = attrs.get(key)
        if value is None:
            continue
        kind = value.WhichOneof("value")
        n = value.int_value if kind == "int_value" else value.double_value if kind == "double_value" else None
        if n is not None and n == n and 0 <= n <= MAX_TOKENS and n == int(n):
            return int(n)
    return None


def _py(value: Any, depth: int = 0) -> Any:
    """An AnyValue as plain Python (arrays as lists, key-value lists as dicts), cut at MAX_DEPTH levels."""
    kind = value.WhichOneof("value")
    if kind in (None, "bytes_value") or depth > MAX_DEPTH:
        return None
    if kind == "array_value":
        return [_py(v, depth + 1) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _py(kv.value, depth + 1) for kv in value.kvlist_value.values}
    return getattr(value, kind)


def _service(attributes: Iterable[Any]) -> str | None:
    for kv in attributes:
        if kv.key == "service.name":
            return _str(kv.value)
    return None


def _operation(attrs: dict, oi_kind: str | None) -> str | None:
    """The GenAI operation a span names: gen_ai.operation.name, OpenLLMetry's llm.request.type, or an
    OpenInference span kind other than LLM; None when it names none (vLLM's spans, OpenInference LLM spans)."""
    operation = _str(attrs.get("gen_ai.operation.name"))
    if operation is None and (legacy := _str(attrs.get("llm.request.type"))) is not None:
        operation = _LEGACY_OPERATIONS.get(legacy, legacy)
    if operation is None and oi_kind is not None and oi_kind != "LLM":
        operation = oi_kind.lower()
    return operation


def _hex_ids(doc: dict) -> None:
    """OTLP/JSON writes trace and span ids as hex (the Collector does); protobuf's JSON reader takes base64. Ids that
    are hex of the right length are rewritten in place; anything else is left to the reader."""
    for rs in _items(doc, "resourceSpans", "resource_spans"):
        for ss in _items(rs, "scopeSpans", "scope_spans"):
            for span in _items(ss, "spans"):
                _hex_to_b64(span, (("traceId", "trace_id", 16), ("spanId", "span_id", 8),
                                   ("parentSpanId", "parent_span_id", 8)))
                for link in _items(span, "links"):
                    _hex_to_b64(link, (("traceId", "trace_id", 16), ("spanId", "span_id", 8)))


def _items(parent: Any, *keys: str) -> list:
    if not isinstance(parent, dict):
        return []
    for key in keys:
        value = parent.get(key)
        if isinstance(value, list):
            return value
    return []


def _hex_to_b64(obj: Any, fields: tuple[tuple[str, str, int], ...]) -> None:
    if not isinstance(obj, dict):
        return
    for camel, snake, size in fields:
        for key in (camel, snake):
            value = obj.get(key)
            if isinstance(value, str) and len(value) == 2 * size:
                try:
                    obj[key] = base64.b64encode(bytes.fromhex(value)).decode()
                except ValueError:
                    pass  # not hex: base64 of another length, or garbage for the reader to refuse


# -- content ------------------------------------------------------------------------------------------------------------
Turns = list[tuple[str | None, str]]  # (role, text) of each message, in order


def _content(attrs: dict, events: Iterable[Any], operation: str | None,
             fitted: set[str]) -> tuple[str | None, list[dict] | None, str | None]:
    """(prompt, messages, response) as the span carries them, fitted to the contract; (None, None, None) for none."""
    indexed = _indexed(attrs) if any(k.startswith(_INDEXED_PREFIXES) for k in attrs) else {}
    inputs = _turns(attrs.get("gen_ai.input.messages")) or indexed.get("gen_ai.prompt")
    outputs = _turns(attrs.get("gen_ai.output.messages")) or indexed.get("gen_ai.completion")
    if not inputs or outputs is None:
        for event in events:  # the older semantic conventions: the content as span events
            if event.name in ("gen_ai.content.prompt", "gen_ai.content.completion"):
                ev_attrs = {kv.key: kv.value for kv in event.attributes}
                if event.name == "gen_ai.content.prompt" and not inputs:
                    inputs = _turns(ev_attrs.get("gen_ai.prompt"))
                elif event.name == "gen_ai.content.completion" and outputs is None:
                    outputs = _turns(ev_attrs.get("gen_ai.completion"))
    inputs = inputs or indexed.get("llm.input_messages")
    outputs = outputs if outputs is not None else indexed.get("llm.output_messages")
    if inputs and (system := _turns(attrs.get("gen_ai.system_instructions"), role="system")):
        inputs = [("system", "".join(text for _, text in system)), *inputs]
    prompt = messages = response = None
    if inputs:
        if all(role is None for role, _ in inputs) or (operation == "text_completion" and len(inputs) == 1):
            prompt = _fit("\n".join(text for _, text in inputs), MAX_TEXT_CHARS, fitted, "prompt")
        else:
            if len(inputs) > MAX_MESSAGES:
                inputs = inputs[-MAX_MESSAGES:]
                fitted.add("messages")
            messages = [{"role": _ROLES.get((role or "user").lower(), "user"),
                         "content": _fit(text, MAX_TEXT_CHARS, fitted, "messages")} for role, text in inputs]
    if outputs:  # the first choice
        response = _fit(outputs[0][1], MAX_TEXT_CHARS, fitted, "response")
    return prompt, messages, response


def _turns(value: Any, role: str | None = None) -> Turns | None:
    """Messages from an attribute value: a JSON string or a structured array of ``{role, parts: [{type, content}]}``
    (or ``{role, content}``), a list of parts, or plain text (no role)."""
    if value is None:
        return None
    if not isinstance(value, (str, list, dict)):  # an AnyValue
        kind = value.WhichOneof("value")
        value = value.string_value if kind == "string_value" else _py(value) if kind in ("array_value", "kvlist_value") \
            else None
        if value is None:
            return None
    text = None
    if isinstance(value, str):
        text = value
        try:
            value = json.loads(text) if text.lstrip()[:1] in ("[", "{") else text
        except (ValueError, RecursionError):
            value = text
        if not isinstance(value, (list, dict)):
            return [(role, text)]
    if isinstance(value, dict):
        value = [value]
    out: Turns = []
    for item in value:
        if isinstance(item, dict) and ("parts" in item or "content" in item or "role" in item):
            part = _text_of(item.get("parts") if "parts" in item else item.get("content"))
            out.append((_role(item.get("role")) or role, part or ""))
        else:  # a part (system instructions) or a bare string
            part = _text_of([item])
            if part is not None:
                out.append((role, part))
    if not out and text is not None:  # JSON, but not messages: the text itself
        return [(role, text)]
    return out or None


def _role(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _text_of(content: Any) -> str | None:
    """The text of a message's content: a string, or the text parts of a list of parts (``{type: text, content}``,
    OpenAI's ``{type: text, text}``); other parts (images, tool calls) have none."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return None
    texts = []
    for part in content:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict) and part.get("type", "text") == "text":
            text = part.get("content", part.get("text"))
            if isinstance(text, str):
                texts.append(text)
    return "".join(texts) if texts else None


def _indexed(attrs: dict) -> dict[str, Turns]:
    """OpenLLMetry's ``gen_ai.prompt.<i>.role`` / ``.content`` (and completion), OpenInference's
    ``llm.input_messages.<i>.message.role`` / ``.content`` (and output), as turns in index order."""
    found: dict[str, dict[int, dict[str, str]]] = {}
    for key, value in attrs.items():
        if not key.startswith(_INDEXED_PREFIXES) or (m := _INDEXED.fullmatch(key)) is None:
            continue
        text = _str(value)
        if text is not None:
            found.setdefault(m[1], {}).setdefault(int(m[2]), {})[m[3]] = text
    out: dict[str, Turns] = {}
    for prefix, items in found.items():
        turns = [(item.get("role"), _content_text(item.get("content", ""))) for _, item in sorted(items.items())]
        out[prefix] = turns
    return out


def _content_text(text: str) -> str:
    """An indexed content attribute: text, or a JSON list of content parts (OpenLLMetry writes multimodal content
    so)."""
    if text.startswith("[{"):
        try:
            parts = json.loads(text)
        except (ValueError, RecursionError):
            return text
        joined = _text_of(parts) if isinstance(parts, list) else None
        return text if joined is None else joined
    return text


def _fit(value: Any, limit: int, fitted: set[str], name: str) -> str:
    """Any attribute value as the contract takes a string (events.fit_text)."""
    return fit_text(value if isinstance(value, str) else str(value), limit, fitted, name)
