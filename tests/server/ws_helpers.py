"""A thin WebSocket test client speaking raw OADA frames."""

from __future__ import annotations

import base64
import itertools
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from anyio.abc import SocketStream
from websockets.asyncio.client import ClientConnection, connect

from oada_jobs.testing import EmbeddedServer

_ids = itertools.count(1)


class WS:
    """Sends OADA requests and reads every message in arrival order."""

    def __init__(self, conn: ClientConnection, token: str) -> None:
        self.conn = conn
        self.token = token

    async def send(
        self,
        method: str,
        path: str,
        *,
        data: Any = None,
        headers: dict[str, str] | None = None,
        request_id: str | None = None,
    ) -> str:
        rid = request_id or f"r{next(_ids)}"
        hdrs = {"authorization": f"Bearer {self.token}"}
        if data is not None:
            hdrs["content-type"] = "application/json"
        hdrs.update(headers or {})
        msg: dict[str, Any] = {"requestId": rid, "method": method, "path": path, "headers": hdrs}
        if data is not None:
            msg["data"] = data
        await self.conn.send(json.dumps(msg))
        return rid

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        with anyio.fail_after(timeout):
            raw = await self.conn.recv()
        msg: dict[str, Any] = json.loads(raw)
        return msg

    async def request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """Send and return the response to it (nothing else may arrive first)."""
        rid = await self.send(method, path, **kwargs)
        msg = await self.recv()
        assert msg["requestId"] == rid, msg
        return msg


@asynccontextmanager
async def ws_connect(server: EmbeddedServer, token: str = "god") -> AsyncIterator[WS]:
    async with connect(server.ws_url) as conn:
        yield WS(conn, token)


async def handshake(port: int) -> tuple[SocketStream, bytes]:
    """A raw WebSocket upgrade, so the test sees (and does not answer) pings."""
    stream = await anyio.connect_tcp("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    await stream.send(
        (
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        buffer += await stream.receive()
    head, _, rest = buffer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return stream, rest
