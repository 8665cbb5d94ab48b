"""The gateway's upstream client: HTTP/1.1 over kept-alive asyncio connections, one pool per upstream.

It does only what talking to vLLM needs — requests with a body, answers framed by content-length, chunked or
the connection's end, read whole or streamed — and it is small enough to read. aiohttp's client, used before,
cost 0.35 ms of the gateway's added latency per request on its own; this one costs about 0.05 ms (bench/gateway.py).

A kept-alive connection the server has closed meanwhile is noticed when nothing comes back on it; the request is
then sent again once, on a new connection — the server never saw it (the rule urllib3 and aiohttp follow).
"""

from __future__ import annotations

import asyncio
import collections
from typing import AsyncIterator
from urllib.parse import urlsplit

from driftwatch.errors import UpstreamError


class _Stale(Exception):
    """A kept-alive connection closed by the server before it answered: resend on a new one."""


class Unreachable(UpstreamError):
    """The connection could not be made: the upstream never saw the request (another may take it)."""


class BrokenAnswer(UpstreamError):
    """The upstream answered, then broke off or sent a malformed body (a gateway answers 502, not 503)."""


class Response:
    """An upstream answer whose head has been read; read the body whole (``read``) or as it comes (``chunks``)."""

    def __init__(self, pool: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, status: int,
                 headers: dict[str, str], deadline: float) -> None:
        self._pool, self._reader, self._writer, self._deadline = pool, reader, writer, deadline
        self.status, self.headers = status, headers
        self._chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = headers.get("content-length")
        self._length = int(length) if length is not None and not self._chunked else None
        self._reusable = headers.get("connection", "").lower() != "close" and (self._chunked or self._length is not None)
        self._done = False
        self._body: bytes | None = None

    async def read(self) -> bytes:
        if self._body is not None:  # read with the head (Upstream.request's read=True)
            return self._body
        return b"".join([chunk async for chunk in self.chunks()])

    async def _read_whole(self) -> None:
        """The body framed by content-length, read now, under the caller's deadline; the connection released."""
        try:
            self._body = await self._reader.readexactly(self._length) if self._length else b""
            self._done = True
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError) as exc:
            raise BrokenAnswer(f"broken answer from {self._pool.base_url}: {exc!r}") from None
        finally:
            self.release()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body's pieces as they arrive. Raises TimeoutError past the request's deadline, UpstreamError on a
        broken answer; the connection is released either way."""
        reader = self._reader
        if self._body is not None:
            yield self._body
            return
        try:
            async with asyncio.timeout_at(self._deadline):
                if self._length is not None:
                    if self._length:
                        yield await reader.readexactly(self._length)
                elif self._chunked:
                    while True:
                        size_line = await reader.readuntil(b"\r\n")
                        size = int(size_line.split(b";", 1)[0], 16)
                        if size == 0:
                            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, then the blank line
                                pass
                            break
                        data = await reader.readexactly(size + 2)
                        yield data[:-2]
                else:  # no framing: the body runs to the connection's end
                    while data := await reader.read(65536):
                        yield data
            self._done = True
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError) as exc:
            raise UpstreamError(f"broken answer from {self._pool.base_url}: {exc!r}") from None
        finally:
            self.release()

    def release(self) -> None:
        """Give the connection back for reuse when the answer was read to its end, else close it."""
        if self._writer is None:
            return
        if self._done and self._reusable:
            self._pool._idle.append((self._reader, self._writer))
        else:
            self._writer.close()
        self._writer = None


class Upstream:
    """Kept-alive connections to one upstream (``http://host:port``); at most ``max_idle`` kept between requests.
    With ``api_key`` (vLLM's ``--api-key``) every request carries ``authorization: Bearer <key>``, and only that one."""

    def __init__(self, base_url: str, connect_timeout_s: float, timeout_s: float, max_idle: int = 256,
                 api_key: str | None = None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream {base_url!r}: expected http://host:port")
        if api_key is not None and (not api_key or not api_key.isprintable() or api_key != api_key.strip()):
            raise ValueError("upstream API key: expected printable characters without surrounding whitespace")
        self._auth = [f"authorization: Bearer {api_key}".encode()] if api_key else []
        self.base_url = base_url.rstrip("/")
        self.host, self.port, self.prefix = parts.hostname, parts.port or 80, parts.path.rstrip("/")
        self.connect_timeout_s, self.timeout_s = connect_timeout_s, timeout_s
        self._idle: collections.deque[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = collections.deque(
            maxlen=max_idle)
        self._host_header = f"{self.host}:{self.port}".encode()

    async def request(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
                      read: bool = False) -> Response:
        """Send one request and read the answer's head. Raises TimeoutError (connect or answer too slow) or
        UpstreamError (unreachable, hung up, malformed). With ``read``, an answer framed by content-length is read
        whole too, under the same deadline (one timer a request, not two: ``Response.read`` then returns it at
        once); a body that breaks off raises BrokenAnswer."""
        head = [f"{method} {self.prefix}{path} HTTP/1.1".encode(), b"host: " + self._host_header,
                b"content-length: " + str(len(body)).encode(), *self._auth]
        head += [f"{k}: {v}".encode() for k, v in (headers or {}).items() if k.lower() != "authorization"]
        message = b"\r\n".join(head) + b"\r\n\r\n" + body
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        while self._idle:
            reader, writer = self._idle.pop()
            if reader.at_eof() or writer.is_closing():
                writer.close()
                continue
            try:
                return await self._exchange(reader, writer, message, deadline, reused=True, read=read)
            except _Stale:
                continue
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                reader, writer = await asyncio.open_connection(self.host, self.port)
        except OSError as exc:
            raise Unreachable(f"cannot connect to {self.base_url}: {exc}") from None
        return await self._exchange(reader, writer, message, deadline, reused=False, read=read)

    async def _exchange(self, reader, writer, message: bytes, deadline: float, reused: bool,
                        read: bool = False) -> Response:
        try:
            writer.write(message)
            async with asyncio.timeout_at(deadline):
                head = await reader.readuntil(b"\r\n\r\n")
                response = self._response(head, reader, writer, deadline)
                if read and response._length is not None:
                    await response._read_whole()  # its own errors are BrokenAnswer: the server saw the request
            return response
        except asyncio.IncompleteReadError as exc:
            writer.close()
            if reused and not exc.partial:
                raise _Stale from None
            raise UpstreamError(f"{self.base_url} closed the connection without answering") from None
        except (ConnectionError, asyncio.LimitOverrunError) as exc:
            writer.close()
            if reused and isinstance(exc, ConnectionError):
                raise _Stale from None
            raise UpstreamError(f"{self.base_url}: {exc!r}") from None
        except TimeoutError:
            writer.close()
            raise

    def _response(self, head: bytes, reader, writer, deadline: float) -> Response:
        status_line, *lines = head[:-4].split(b"\r\n")
        try:
            status = int(status_line.split(b" ", 2)[1])
        except (IndexError, ValueError):
            writer.close()
            raise UpstreamError(f"{self.base_url} answered with a malformed head: {status_line[:80]!r}") from None
        headers = {}
        for line in lines:
            name, _, value = line.partition(b":")
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        if status in (204, 304) or 100 <= status < 200:
            headers["content-length"] = "0"
        return Response(self, reader, writer, status, headers, deadline)

    def close(self) -> None:
        while self._idle:
            try:
                self._idle.pop()[1].close()
            except RuntimeError:  # its event loop has already ended: the socket went with it
                pass
