"""The one HTTP server: /metrics, /healthz, /readyz, /report and the control API (/v1/..., control.py).

A Starlette app served by uvicorn in a background thread, so the ingest loop keeps the main thread (and the
signals). Port 0 picks a free port; :attr:`HttpServer.port` is the one bound.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from driftwatch.errors import ReportError

Probe = Callable[[], tuple[bool, dict]]
Reporter = Callable[[str, Path], tuple[Path, Path]]  # (adapter, scratch dir) -> (html, json) files


def build_app(registry: CollectorRegistry, health: Probe, ready: Probe, report: Reporter | None = None,
              control: list[Route] = ()) -> Starlette:
    def metrics(request: Request) -> Response:
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(registry), media_type=content_type)

    def probe(check: Probe) -> Callable[[Request], Response]:
        def endpoint(request: Request) -> Response:
            ok, detail = check()
            return JSONResponse({"status": "ok" if ok else "unavailable", **detail}, status_code=200 if ok else 503)
        return endpoint

    def drift_report(request: Request) -> Response:
        """Evidently's report for an adapter's current window: ?adapter=NAME[&format=html|json]."""
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

    return Starlette(routes=[
        Route("/metrics", metrics),
        Route("/healthz", probe(health)),
        Route("/readyz", probe(ready)),
        Route("/report", drift_report),
        *control,
    ])


class HttpServer:
    def __init__(self, app: Starlette, host: str, port: int) -> None:
        import uvicorn

        self._server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                                     lifespan="off"))
        self._thread = threading.Thread(target=self._server.run, name="driftwatch-http", daemon=True)
        self.host = host

    def start(self, timeout_s: float = 10.0) -> HttpServer:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise OSError(f"HTTP server did not start on {self.host} (port taken?)")
            time.sleep(0.005)
        return self

    @property
    def port(self) -> int:
        return self._server.servers[0].sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self, timeout_s: float = 5.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout_s)
