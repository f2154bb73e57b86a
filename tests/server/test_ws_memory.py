"""What a WebSocket costs the server ends with it: a socket closed for being
too slow (or any other) leaves no session, watch or buffer behind."""

from __future__ import annotations

import base64
import gc
import json
import logging
import os
import weakref
from typing import Any

import anyio
import httpx
import pytest
from anyio.abc import SocketStream
from anyio.streams.tls import TLSStream
from websockets.client import ClientProtocol
from websockets.protocol import State
from websockets.uri import parse_uri
from ws_helpers import handshake, ws_connect

from oada_jobs.server.ws import SendBudget, WebSocketSession
from oada_jobs.testing import EmbeddedServer, embedded_server

AUTH = {"authorization": "Bearer god", "content-type": "application/json"}
BLOB = "x" * 128 * 1024
BUDGET = 512 * 1024


def record_sessions(monkeypatch: pytest.MonkeyPatch) -> list[weakref.ref[Any]]:
    """Weak references to every session (and its direct socket) started from now on."""
    refs: list[weakref.ref[Any]] = []
    original = WebSocketSession.__init__

    def init(self: WebSocketSession, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        refs.append(weakref.ref(self))
        direct = self._direct  # the protocol object must go too
        if direct is not None:
            refs.append(weakref.ref(direct))

    monkeypatch.setattr(WebSocketSession, "__init__", init)
    return refs


async def all_gone(refs: list[weakref.ref[Any]]) -> bool:
    with anyio.move_on_after(10):
        while True:
            gc.collect()
            if all(ref() is None for ref in refs):
                return True
            await anyio.sleep(0.05)
    return False


async def tls_handshake(server: EmbeddedServer) -> SocketStream | TLSStream:
    """A raw WebSocket upgrade over TLS (the peer then reads nothing)."""
    stream = await anyio.connect_tcp(
        "127.0.0.1", server.port, ssl_context=server.ssl_context(), tls_standard_compatible=False
    )
    key = base64.b64encode(os.urandom(16)).decode()
    await stream.send(
        (
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += await stream.receive()
    assert head.startswith(b"HTTP/1.1 101"), head
    return stream


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
async def test_a_socket_closed_as_too_slow_leaves_nothing_behind(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tls: bool
) -> None:
    caplog.set_level(logging.WARNING, logger="oada_jobs.server.ws")
    refs = record_sessions(monkeypatch)
    async with (
        embedded_server(ws_send_buffer_bytes=BUDGET, tls=tls) as server,
        httpx.AsyncClient(
            base_url=server.url, headers=AUTH, verify=server.ssl_context() if tls else True
        ) as http,
    ):
        assert (await http.put("/resources/m", json={"n": 0})).status_code == 201
        # Under TLS what waits is in the TLS layer's buffers: counted as well.
        stream = await tls_handshake(server) if tls else (await handshake(server.port))[0]
        async with stream:
            peer = ClientProtocol(parse_uri(server.ws_url), state=State.OPEN)
            watch = {"requestId": "w", "method": "watch", "path": "/resources/m", "headers": AUTH}
            peer.send_text(json.dumps(watch).encode())
            await stream.send(b"".join(peer.data_to_send()))
            n = 0
            while "bytes waiting to be sent" not in caplog.text:
                n += 1
                assert n < 400, "the server never closed the socket"
                response = await http.put("/resources/m", json={"n": n, "blob": BLOB})
                assert response.status_code == 201
            assert len(refs) == 2
        # The peer has gone without reading a byte.
        assert await all_gone(refs), "a session or its socket is still referenced"
        # Later changes find no listener of the closed socket to call.
        assert (await http.put("/resources/m", json={"n": -1})).status_code == 201


async def test_sockets_closed_by_their_peers_leave_nothing_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    refs = record_sessions(monkeypatch)
    async with embedded_server() as server:
        for n in range(3):
            async with ws_connect(server) as ws:
                await ws.request("put", f"/resources/p{n}", data={"n": n})
                reply = await ws.request("watch", f"/resources/p{n}")
                assert reply["status"] == 200
        assert len(refs) == 6
        assert await all_gone(refs), "a session or its socket is still referenced"


class FakeSender:
    def __init__(self, waiting: int = 0) -> None:
        self.waiting = waiting
        self.shed_with: str | None = None

    def waiting_bytes(self) -> int:
        return self.waiting

    def shed(self, waiting: int, reason: str) -> None:
        self.shed_with = reason


def test_the_shared_budget_closes_the_sockets_furthest_behind_first() -> None:
    budget = SendBudget(1000)
    a, b, c = FakeSender(300), FakeSender(500), FakeSender()
    for sender in (a, b, c):
        budget.join(sender)
    budget.report(a, 300)
    budget.report(b, 500)
    assert budget.total == 800
    # a has drained since it last said so: measured again before anything is closed.
    a.waiting = 0
    c.waiting = 400
    budget.report(c, 400)
    assert (a.shed_with, b.shed_with, c.shed_with) == (None, None, None)
    assert budget.total == 900
    c.waiting = 700
    budget.report(c, 700)
    # 1200 bytes: c, furthest behind, goes; a and b stay.
    assert c.shed_with is not None
    assert "furthest behind" in c.shed_with
    assert (a.shed_with, b.shed_with) == (None, None)
    assert (budget.total, budget.senders) == (500, 2)
    budget.report(c, 5000)  # a closed socket no longer counts
    assert budget.total == 500
    budget.leave(a)
    budget.leave(b)
    budget.leave(c)
    assert (budget.total, budget.senders) == (0, 0)


async def test_never_reading_sockets_are_held_to_the_servers_total(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="oada_jobs.server.ws")
    refs = record_sessions(monkeypatch)
    # Each socket alone may hold 8 MiB; all of them together only BUDGET.
    async with (
        embedded_server(
            ws_send_buffer_bytes=8 * 1024 * 1024, ws_send_buffer_total_bytes=BUDGET
        ) as server,
        httpx.AsyncClient(base_url=server.url, headers=AUTH) as http,
    ):
        assert (await http.put("/resources/t", json={"n": 0})).status_code == 201
        streams = [await handshake(server.port) for _ in range(3)]
        for stream, _ in streams:
            peer = ClientProtocol(parse_uri(server.ws_url), state=State.OPEN)
            watch = {"requestId": "w", "method": "watch", "path": "/resources/t", "headers": AUTH}
            peer.send_text(json.dumps(watch).encode())
            await stream.send(b"".join(peer.data_to_send()))
        n = 0
        while caplog.text.count("ws_send_buffer_total_bytes") < 3:
            n += 1
            assert n < 400, "the server never held its sockets to the total"
            response = await http.put("/resources/t", json={"n": n, "blob": BLOB})
            assert response.status_code == 201
        assert "ws_send_buffer_bytes is" not in caplog.text
        for stream, _ in streams:
            await stream.aclose()
        assert await all_gone(refs), "a session or its socket is still referenced"
