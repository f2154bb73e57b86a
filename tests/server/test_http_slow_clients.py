"""An HTTP request's head is bounded in bytes and its reading in time.

A client that sends endless headers, or trickles a request, or connects and
sends nothing, must neither grow the server's memory nor hold a connection
(one of ``max_connections``) for ever.
"""

from __future__ import annotations

import time

import anyio
import httpx
from anyio.abc import SocketStream

from oada_jobs.testing import EmbeddedServer, embedded_server

AUTH = {"authorization": "Bearer god"}


def port_of(server: EmbeddedServer) -> int:
    return int(server.url.rsplit(":", 1)[1])


async def read_until_closed(stream: SocketStream, limit: float) -> bytes:
    """Everything the server sends until it closes the connection (within *limit* s)."""
    received = b""
    with anyio.fail_after(limit):
        while True:
            try:
                received += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
                return received


async def test_a_request_trickling_its_body_gets_408_and_is_not_applied() -> None:
    async with embedded_server(request_read_timeout=0.5) as server:
        stream = await anyio.connect_tcp("127.0.0.1", port_of(server))
        async with stream:
            await stream.send(
                b"PUT /bookmarks/slow HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer god\r\n"
                b"Content-Type: application/json\r\nContent-Length: 9\r\n\r\n{"
            )
            started = time.monotonic()
            with anyio.move_on_after(0.2):
                await stream.send(b'"')  # still far from whole
            answer = await read_until_closed(stream, 5)
            assert time.monotonic() - started < 4
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH) as c:
            assert (await c.get("/bookmarks/slow")).status_code == 404


async def test_headers_that_never_end_get_408_and_idle_connections_are_closed() -> None:
    async with embedded_server(request_read_timeout=0.5) as server:
        port = port_of(server)
        idle = await anyio.connect_tcp("127.0.0.1", port)
        trickling = await anyio.connect_tcp("127.0.0.1", port)
        async with idle, trickling:
            await trickling.send(b"GET /bookmarks HTTP/1.1\r\nHost: x\r\n")
            assert (await read_until_closed(trickling, 5)).startswith(b"HTTP/1.1 408 ")
            await read_until_closed(idle, 5)
        # A request sent at an ordinary pace, and a kept-alive connection, are fine.
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH) as c:
            for _ in range(3):
                assert (await c.get("/bookmarks")).status_code == 200
                await anyio.sleep(0.3)


async def test_a_head_over_max_header_bytes_gets_431_before_it_is_all_sent() -> None:
    async with embedded_server(max_header_bytes=16 * 1024) as server:
        stream = await anyio.connect_tcp("127.0.0.1", port_of(server))
        async with stream:
            # Over the limit, and not ended: answered at once.
            await stream.send(b"GET /bookmarks HTTP/1.1\r\nHost: x\r\nx-a: " + b"a" * 20_000)
            assert (await read_until_closed(stream, 5)).startswith(b"HTTP/1.1 431 ")
        stream = await anyio.connect_tcp("127.0.0.1", port_of(server))
        async with stream:
            await stream.send(b"GET /bookmarks HTTP/1.1\r\nHost: x\r\n")
            sent = 0
            try:
                with anyio.fail_after(5):
                    for _ in range(256):  # up to 16 MiB, never needed
                        await stream.send(b"x-filler: " + b"a" * 64 * 1024 + b"\r\n")
                        sent += 1
            except (anyio.BrokenResourceError, ConnectionResetError, OSError):
                pass
            answer = await read_until_closed(stream, 5)
        # Cut off long before: the answer is lost when the connection is reset
        # under data the server did not read.
        assert sent < 256
        assert answer == b"" or answer.startswith(b"HTTP/1.1 431 "), answer
        # Many headers within the limit are fine.
        headers = {f"x-h{i}": "v" * 50 for i in range(100)}
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH) as c:
            assert (await c.get("/bookmarks", headers=headers)).status_code == 200


async def test_pipelined_requests_are_answered_and_a_trickling_one_still_times_out() -> None:
    async with embedded_server(request_read_timeout=0.5) as server:
        stream = await anyio.connect_tcp("127.0.0.1", port_of(server))
        get = b"GET /bookmarks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer god\r\n\r\n"
        put_head = (
            b"PUT /bookmarks/piped HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer god\r\n"
            b"Content-Type: application/json\r\nContent-Length: 8\r\n\r\n"
        )
        async with stream:
            await stream.send(get + put_head + b'{"a":1}\n' + get + put_head + b"{")
            answer = await read_until_closed(stream, 5)
        assert answer.count(b"HTTP/1.1 200 ") == 2, answer
        assert answer.count(b"HTTP/1.1 201 ") == 1, answer
        assert answer.endswith(b"was not received within 0.5 s"), answer
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH) as c:
            assert (await c.get("/bookmarks/piped")).json() == {"a": 1}


async def test_bodies_are_not_taken_for_headers() -> None:
    # A body read with its head (or with the next request's head) is not head.
    async with embedded_server(max_header_bytes=16 * 1024) as server:
        blob = "x" * 128 * 1024
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH) as c:
            for n in range(3):
                assert (await c.put("/bookmarks/b", json={"n": n, "blob": blob})).status_code == 201
        stream = await anyio.connect_tcp("127.0.0.1", port_of(server))
        body = b'{"blob":"' + blob.encode() + b'"}'
        put = (
            b"PUT /bookmarks/b HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer god\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        async with stream:
            await stream.send(put + body + b"GET /bookmarks/b/n HTTP/1.1\r\nHost: x\r\n")
            await anyio.sleep(0.2)
            await stream.send(b"Authorization: Bearer god\r\nConnection: close\r\n\r\n")
            answer = await read_until_closed(stream, 5)
        assert answer.count(b"HTTP/1.1 201 ") == 1, answer[:300]
        assert answer.count(b"HTTP/1.1 200 ") == 1, answer[:300]
