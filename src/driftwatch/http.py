"""An HTTP server in a background thread: a Starlette app served by uvicorn, so the ingest loop keeps the main
thread (and the signals). The daemon serves control/api.py's app on it (/metrics, probes, /report, the control API);
the demo serves gateways. Port 0 picks a free port; :attr:`HttpServer.port` is the one bound.
"""

from __future__ import annotations

import threading
import time

from starlette.applications import Starlette


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
