"""The gateway's upstream client against a raw asyncio HTTP/1.1 server that answers as scripted."""

import asyncio

import pytest

from driftwatch.errors import UpstreamError
from driftwatch.serving.upstream import Upstream


async def serve(answers: list[bytes | None], requests: list[bytes]):
    """A server answering each request on a connection with the next scripted bytes (None: hang up unanswered).
    Returns (server, port)."""
    async def handle(reader, writer):
        try:
            while answers:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                requests.append(head + await reader.readexactly(length))
                answer = answers.pop(0)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if b"connection: close" in answer:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def run(coro):
    return asyncio.run(coro)


def test_framings_and_keep_alive():
    async def main():
        requests = []
        server, port = await serve([
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 7\r\n\r\n{\"a\":1}",
            b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\nx-t: 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nto the end",
        ], requests)
        up = Upstream(f"http://127.0.0.1:{port}", 1, 5)
        r1 = await up.request("POST", "/v1/completions", b'{"x":1}', {"content-type": "application/json"})
        assert (r1.status, r1.headers["content-type"], await r1.read()) == (200, "application/json", b'{"a":1}')
        r2 = await up.request("GET", "/v1/models")
        assert r2.status == 404 and [c async for c in r2.chunks()] == [b"abc", b"defg"]
        assert len(up._idle) == 1  # both answers came on one kept-alive connection
        r3 = await up.request("GET", "/x")
        assert await r3.read() == b"to the end" and not up._idle  # framed by the connection's end: not reused
        assert requests[0].startswith(b"POST /v1/completions HTTP/1.1\r\n") and requests[0].endswith(b'{"x":1}')
        assert b"content-length: 0" in requests[1]
        server.close()
    run(main())


def test_a_kept_alive_connection_closed_by_the_server_is_resent_once_on_a_new_one():
    async def main():
        requests = []
        ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
        server, port = await serve([ok, None, ok], requests)  # the 2nd request's connection hangs up unanswered
        up = Upstream(f"http://127.0.0.1:{port}", 1, 5)
        assert await (await up.request("POST", "/a", b"1")).read() == b"ok"
        assert await (await up.request("POST", "/a", b"2")).read() == b"ok"
        assert [r[-1:] for r in requests] == [b"1", b"2", b"2"]  # sent again once, after the silent hang-up
        server.close()
    run(main())


def test_unreachable_silent_broken_and_slow_upstreams():
    async def main():
        server, port = await serve([], [])
        server.close()
        await server.wait_closed()
        with pytest.raises(UpstreamError, match="cannot connect"):
            await Upstream(f"http://127.0.0.1:{port}", 1, 5).request("GET", "/")

        server, port = await serve([None], [])
        with pytest.raises(UpstreamError, match="without answering"):  # a new connection: not resent
            await Upstream(f"http://127.0.0.1:{port}", 1, 5).request("GET", "/")
        server.close()

        server, port = await serve([b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\nconnection: close\r\n\r\nshort"], [])
        r = await Upstream(f"http://127.0.0.1:{port}", 1, 5).request("GET", "/")
        with pytest.raises(UpstreamError, match="broken answer"):
            await r.read()
        server.close()

        server, port = await serve([b"garbage\r\n\r\n"], [])
        with pytest.raises(UpstreamError, match="malformed"):
            await Upstream(f"http://127.0.0.1:{port}", 1, 5).request("GET", "/")
        server.close()

        async def never(reader, writer):
            await asyncio.sleep(10)
        slow = await asyncio.start_server(never, "127.0.0.1", 0)
        up = Upstream(f"http://127.0.0.1:{slow.sockets[0].getsockname()[1]}", 1, 0.2)
        with pytest.raises(TimeoutError):
            await up.request("GET", "/")
        slow.close()
    run(main())


def test_only_plain_http_upstreams():
    with pytest.raises(ValueError, match="http://host:port"):
        Upstream("https://vllm:8000", 1, 5)
