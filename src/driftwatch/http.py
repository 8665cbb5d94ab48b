"""An HTTP server in a background thread: a Starlette app served by uvicorn, so the ingest loop keeps the main
thread (and the signals). The daemon serves control/api.py's app on it (/metrics, probes, /report, the control API);
the demo serves gateways. Port 0 picks a free port; :attr:`HttpServer.port` is the one bound.
"""

from __future__ import annotations

import asyncio
import threading
import time

from starlette.applications import Starlette


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, waking once a second (to refresh the Date header and look at the exit flag) instead of
        ten times; :meth:`wake` ends the wait at once. Ten wake-ups a second were a third of an idle daemon's CPU
        on Tansu (bench/idle.py)."""

        _loop: asyncio.AbstractEventLoop | None = None
        _woken: asyncio.Event | None = None

        async def main_loop(self) -> None:
            self._loop, self._woken = asyncio.get_running_loop(), asyncio.Event()
            while not await self.on_tick(0):  # tick 0: the Date header is refreshed on every call
                try:
                    await asyncio.wait_for(self._woken.wait(), 1.0)
                except TimeoutError:
                    pass

        def wake(self) -> None:
            loop, woken = self._loop, self._woken
            if loop is not None and woken is not None:
                try:
                    loop.call_soon_threadsafe(woken.set)
                except RuntimeError:  # the loop has already closed
                    pass

    return Server


class HttpServer:
    def __init__(self, app: Starlette, host: str, port: int) -> None:
        import uvicorn

        self._server = _server_class()(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                                      access_log=False, lifespan="off"))
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
        self._server.wake()
        self._thread.join(timeout_s)
