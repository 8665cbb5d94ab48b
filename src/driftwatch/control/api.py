"""The daemon's HTTP app: /metrics, /healthz, /readyz (open), and behind the token /report and the control API —
what a human (or Alertmanager) may ask the running daemon to do:

    GET  /v1/status          rules, windows, aliases, rollout, retrain runs, decisions, requests, paused or not
    POST /v1/retrain         {"adapter", "reason", "routes"?}      -> 202 {"decision_id", "run_id"}
    POST /v1/rollback        {"reason"}                            -> 200 {"production"}
    POST /v1/pause|resume    {"reason"}                            -> 200 {"paused"}
    POST /v1/alertmanager    Alertmanager's webhook (version 4)    -> 200 what each alert became
    GET  /v1/openapi.json    this description, machine-readable (the token too, like every call)
    GET  /report             Evidently's report of an adapter's window (?adapter=NAME&format=html|json)

Every call but the description needs ``Authorization: Bearer <control.token>``, compared in constant time; with no
token configured the API refuses everything (503) rather than run open. The routes only parse, authenticate and
translate errors. What a call does is the :class:`Control` implementation's (control/reconciler.py): it writes a
request to the state store, wakes the control loop and answers with what the loop did (202 with the request's id
when the loop has not reached it within ``control.request_wait_s``). On a follower (several replicas) every call is
forwarded to the leader, which alone acts.
"""

from __future__ import annotations

import hmac
import json
import tempfile
from pathlib import Path
from typing import Any, Callable, Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from driftwatch.errors import ControlError, ReportError, RolloutError
from driftwatch.events import MAX_NAME_CHARS, fit_text

WHO_HEADER = "x-driftwatch-user"  # who is acting, for the event log (the CLI sends the login name)
FORWARDED_HEADER = "x-driftwatch-forwarded"  # set on a call a follower passed on to the leader


Probe = Callable[[], tuple[bool, dict]]
Reporter = Callable[[str, Path], tuple[Path, Path]]  # (adapter, scratch dir) -> (html, json) files


class Control(Protocol):
    def forward_to(self) -> str | None: ...
    def status(self) -> dict: ...
    def request_retrain(self, adapter: str, reason: str, who: str, routes: tuple[str, ...]) -> dict: ...
    def rollback(self, reason: str, who: str) -> str: ...
    def set_paused(self, paused: bool, reason: str, who: str) -> bool: ...
    def alertmanager(self, payload: dict) -> dict: ...


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _refused(exc: ControlError) -> JSONResponse:
    return JSONResponse(exc.body or {"error": str(exc)}, status_code=exc.status)


MAX_BODY_BYTES = 1_048_576  # a webhook call of a few thousand alerts fits; nothing a person sends comes close


async def _body(request: Request) -> dict:
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise ControlError(f"the body is over {MAX_BODY_BYTES} bytes", status=413)
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, RecursionError) as exc:
        raise ControlError(f"the body is not JSON: {exc}", status=400) from exc
    if not isinstance(body, dict):
        raise ControlError("the body must be a JSON object", status=400)
    return body


def _reason(body: dict) -> str:
    reason = body.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise ControlError("'reason' is required: say why, it goes to the event log", status=400)
    return reason.strip()


async def _forward(request: Request, leader: str) -> Response:
    """A follower passes the call on to the leader, token and all, and returns its answer as it is. Once only: a
    call that was forwarded already is refused (leadership moved while it travelled)."""
    import httpx

    if request.headers.get(FORWARDED_HEADER):
        return _error(503, "leadership is moving between replicas; try again in a few seconds")
    headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type", WHO_HEADER)}
    try:
        async with httpx.AsyncClient(timeout=60) as client:
            r = await client.request(request.method, leader.rstrip("/") + request.url.path, content=await request.body(),
                                     headers={**headers, FORWARDED_HEADER: "1"})
    except httpx.HTTPError as exc:
        return _error(503, f"the leader at {leader} did not answer ({exc}); try again in a few seconds")
    return Response(r.content, status_code=r.status_code, media_type=r.headers.get("content-type"),
                    headers={FORWARDED_HEADER: leader})


def _unauthorized(expected: bytes | None, request: Request) -> Response | None:
    """None when the request carries the control token; else the answer (503 with no token configured, 401)."""
    if expected is None:
        return _error(503, "the control API is off: no token configured (set control.token, e.g. "
                           "DRIFTWATCH__CONTROL__TOKEN from a Secret, or control.token_file)")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
        return JSONResponse({"error": "unauthorized: send Authorization: Bearer <control token>"},
                            status_code=401, headers={"WWW-Authenticate": 'Bearer realm="driftwatch"'})
    return None


def control_routes(control: Callable[[], Control | None], token: str | None,
                   report: Reporter | None = None) -> list[Route]:
    """Every authenticated route: the control API and /report. ``control`` returns the implementation (None while
    the daemon starts: 503)."""
    expected = token.encode() if token else None

    def guarded(handler: Callable[[Control, Request, dict], Any]) -> Callable:
        async def endpoint(request: Request) -> Response:
            if (refused := _unauthorized(expected, request)) is not None:
                return refused
            impl = control()
            if impl is None:
                return _error(503, "the daemon is starting")
            try:
                leader = await run_in_threadpool(impl.forward_to)
            except ControlError as exc:
                return _refused(exc)
            if leader is not None:
                return await _forward(request, leader)
            try:  # the calls block (the store, vLLM): they run off the event loop
                body = await _body(request) if request.method == "POST" else {}
                status, result = await run_in_threadpool(handler, impl, request, body)
            except ControlError as exc:
                return _refused(exc)
            except RolloutError as exc:
                return _error(409, str(exc))
            return JSONResponse(result, status_code=status)
        return endpoint

    def who(request: Request) -> str:
        """Who acts, for the event log: the header, bounded (it is stored); else 'control-api'."""
        return fit_text(request.headers.get(WHO_HEADER) or "", MAX_NAME_CHARS, set(), "who") or "control-api"


    def status(c: Control, request: Request, body: dict):
        return 200, c.status()

    def retrain(c: Control, request: Request, body: dict):
        adapter, routes = body.get("adapter"), body.get("routes", [])
        if not isinstance(adapter, str) or not adapter:
            raise ControlError("'adapter' is required: the adapter whose traffic the retrain answers", status=400)
        if not isinstance(routes, list) or not all(isinstance(r, str) for r in routes):
            raise ControlError("'routes' must be a list of route names", status=400)
        return 202, c.request_retrain(adapter, _reason(body), who(request), tuple(routes))

    def rollback(c: Control, request: Request, body: dict):
        return 200, {"production": c.rollback(_reason(body), who(request))}

    def pause(paused: bool):
        return lambda c, request, body: (200, {"paused": c.set_paused(paused, _reason(body), who(request))})

    def alertmanager(c: Control, request: Request, body: dict):
        return 200, c.alertmanager(body)

    def openapi(request: Request) -> Response:
        if (refused := _unauthorized(expected, request)) is not None:
            return refused
        return JSONResponse(OPENAPI)

    def drift_report(request: Request) -> Response:
        """Evidently's report for an adapter's current window: ?adapter=NAME[&format=html|json]."""
        if (refused := _unauthorized(expected, request)) is not None:
            return refused
        adapter, fmt = request.query_params.get("adapter"), request.query_params.get("format", "html")
        if not adapter or fmt not in ("html", "json") or report is None:
            return JSONResponse({"error": "use /report?adapter=NAME&format=html|json"}, status_code=400)
        with tempfile.TemporaryDirectory(prefix="driftwatch-report-") as scratch:
            try:
                html, js = report(adapter, Path(scratch))
            except LookupError as exc:
                return JSONResponse({"error": str(exc.args[0])}, status_code=404)
            except ReportError as exc:
                return JSONResponse({"error": str(exc)}, status_code=409)
            path, media = (html, "text/html") if fmt == "html" else (js, "application/json")
            return Response(path.read_bytes(), media_type=media)

    return [
        Route("/v1/status", guarded(status), methods=["GET"]),
        Route("/v1/retrain", guarded(retrain), methods=["POST"]),
        Route("/v1/rollback", guarded(rollback), methods=["POST"]),
        Route("/v1/pause", guarded(pause(True)), methods=["POST"]),
        Route("/v1/resume", guarded(pause(False)), methods=["POST"]),
        Route("/v1/alertmanager", guarded(alertmanager), methods=["POST"]),
        Route("/v1/openapi.json", openapi, methods=["GET"]),
        Route("/report", drift_report, methods=["GET"]),
    ]


def daemon_app(registry: CollectorRegistry, health: Probe, ready: Probe, control: list[Route] = ()) -> Starlette:
    """/metrics and the probes, open; ``control`` (control_routes) behind the token."""
    def metrics(request: Request) -> Response:
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(registry), media_type=content_type)

    def probe(check: Probe) -> Callable[[Request], Response]:
        def endpoint(request: Request) -> Response:
            ok, detail = check()
            return JSONResponse({"status": "ok" if ok else "unavailable", **detail}, status_code=200 if ok else 503)
        return endpoint

    return Starlette(routes=[
        Route("/metrics", metrics),
        Route("/healthz", probe(health)),
        Route("/readyz", probe(ready)),
        *control,
    ])


# -- the description ----------------------------------------------------------------------------------------------------
def _json(schema: dict) -> dict:
    return {"content": {"application/json": {"schema": schema}}}


_ERR = {"description": "error", **_json({"$ref": "#/components/schemas/Error"})}
_REASON = {"type": "object", "required": ["reason"], "properties": {"reason": {"type": "string", "minLength": 1}}}
_AUTH = {"401": {"description": "no or wrong token", **_json({"$ref": "#/components/schemas/Error"})},
         "503": {"description": "no token configured, or the daemon is starting", **_json({"$ref": "#/components/schemas/Error"})}}


def _op(summary: str, ok: str, response: dict, body: dict | None = None, **errors: str) -> dict:
    op = {"summary": summary, "security": [{"bearer": []}],
          "responses": {ok: {"description": "done", **_json(response)}, **_AUTH,
                        **{code[1:]: {**_ERR, "description": text} for code, text in errors.items()}}}
    if body is not None:
        op["requestBody"] = {"required": True, **_json(body)}
    return op


OPENAPI: dict = {
    "openapi": "3.1.0",
    "info": {"title": "driftwatch control API", "version": "1"},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {"Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}},
    },
    "paths": {
        "/v1/status": {"get": _op("Rules, windows, aliases, the rollout, retrain runs and the latest decisions", "200",
                                  {"type": "object", "required": ["paused", "aliases", "rules", "windows", "runs"]})},
        "/v1/retrain": {"post": _op(
            "Request a retrain now (manual: no cooldown or daily cap; refused while a rollout or retrain is in progress)",
            "202", {"type": "object", "required": ["decision_id", "run_id"],
                    "properties": {"decision_id": {"type": "integer"}, "run_id": {"type": "string"}}},
            {"type": "object", "required": ["adapter", "reason"],
             "properties": {"adapter": {"type": "string"}, "reason": {"type": "string", "minLength": 1},
                            "routes": {"type": "array", "items": {"type": "string"}}}},
            _400="bad body", _409="no retrain stage configured, or a retrain or rollout is in progress")},
        "/v1/rollback": {"post": _op("Production back to the adapter it replaced", "200",
                                     {"type": "object", "properties": {"production": {"type": "string"}}}, _REASON,
                                     _400="bad body", _409="nothing to roll back to")},
        "/v1/pause": {"post": _op("Pause automatic retraining (rules and alerts still decide: 'hold')", "200",
                                  {"type": "object", "properties": {"paused": {"type": "boolean"}}}, _REASON,
                                  _400="bad body")},
        "/v1/resume": {"post": _op("Resume automatic retraining", "200",
                                   {"type": "object", "properties": {"paused": {"type": "boolean"}}}, _REASON,
                                   _400="bad body")},
        "/v1/alertmanager": {"post": _op(
            "Alertmanager webhook: firing alerts named in control.retrain_alerts with an adapter label become retrain "
            "requests, once per occurrence (fingerprint + startsAt)", "200",
            {"type": "object", "properties": {
                "retrain": {"type": "array", "items": {"type": "object"}},
                "held": {"type": "array", "items": {"type": "object"}},
                "queued": {"type": "array", "items": {"type": "object"}},
                "duplicate": {"type": "integer"}, "ignored": {"type": "integer"},
                "unknown_adapter": {"type": "integer"}}},
            {"type": "object", "required": ["alerts"], "properties": {"alerts": {"type": "array", "items": {
                "type": "object", "required": ["status", "labels", "startsAt", "fingerprint"]}}}},
            _400="not a webhook payload, or an alert malformed (nothing recorded)",
            _413="over 1 MiB or 1,000 alerts", _429="over control.webhook_alerts_per_minute (nothing recorded)")},
        "/v1/openapi.json": {"get": {"summary": "This description", "security": [{"bearer": []}], "responses": {
            "200": {"description": "OpenAPI 3.1"}, "401": {"description": "no or wrong bearer token"}}}},
        "/report": {"get": {**_op("Evidently's report of an adapter's current window (?adapter=NAME&format=html|json)",
                                  "200", {"type": "object"}, _400="no adapter or format", _404="no window for the adapter",
                                  _409="the report extra is not installed"),
                            "parameters": [{"name": "adapter", "in": "query", "required": True, "schema": {"type": "string"}},
                                           {"name": "format", "in": "query", "schema": {"enum": ["html", "json"]}}]}},
    },
}
