"""Fault-injecting proxies on 127.0.0.1, put between a service and the embedded server.

:class:`TCPProxy` copies bytes and can cut every connection at once (the
peers see the socket drop without a WebSocket close frame).

:class:`FaultProxy` is an ASGI proxy (HTTP and WebSocket) that can answer
every request with an error status (5xx, 429 with ``Retry-After``) or hold
requests (a stalled server) until told to go on. On the WebSocket it looks
into each request frame, so a client in WebSocket mode sees the same errors
as one over HTTP.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import uvicorn
import websockets
from anyio.abc import SocketStream

# ------------------------------------------------------------------ raw TCP


class TCPProxy:
    """Forward 127.0.0.1:<port> to *upstream*; :meth:`cut` drops every connection."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.cuts = 0
        self.connections = 0
        self._scopes: set[anyio.CancelScope] = set()
        #: While true, new connections are closed at once (a partition).
        self.refusing = False

    @property
    def open(self) -> int:
        """Connections open right now."""
        return len(self._scopes)

    def cut(self) -> int:
        """Drop every open connection; returns how many."""
        count = len(self._scopes)
        for scope in list(self._scopes):
            scope.cancel()
        self.cuts += 1
        return count

    async def _pump(self, source: SocketStream, sink: SocketStream) -> None:
        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            async for chunk in source:
                await sink.send(chunk)
        with contextlib.suppress(OSError, anyio.BrokenResourceError):
            await sink.send_eof()

    def partition(self) -> None:
        """Drop every connection and refuse new ones until :meth:`mend`."""
        self.refusing = True
        self.cut()

    def mend(self) -> None:
        self.refusing = False

    async def _handle(self, client: SocketStream) -> None:
        self.connections += 1
        async with client:
            if self.refusing:
                return
            try:
                upstream = await anyio.connect_tcp("127.0.0.1", self.upstream_port)
            except OSError:
                return
            async with upstream:
                with anyio.CancelScope() as scope:
                    self._scopes.add(scope)
                    try:
                        async with anyio.create_task_group() as tg:
                            tg.start_soon(self._pump, client, upstream)
                            await self._pump(upstream, client)
                            tg.cancel_scope.cancel()
                    finally:
                        self._scopes.discard(scope)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[TCPProxy]:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, self._handle)
            try:
                yield self
            finally:
                tg.cancel_scope.cancel()


# ------------------------------------------------------------------ ASGI


class _Uvicorn(uvicorn.Server):
    def capture_signals(self) -> Any:
        # Embedded in a test: the test runner owns the signals.
        return contextlib.nullcontext()


class FaultProxy:
    """An ASGI proxy in front of *upstream* (``http://127.0.0.1:<port>``).

    ``fail(status, retry_after=None)`` makes it answer every request with
    *status*; ``stall()`` makes it hold requests; ``heal()`` goes back to
    forwarding (and lets held requests through). ``injected`` counts the
    requests answered with an error, ``held`` those that were stalled.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.port = 0
        self.mode = "pass"
        self.status = 503
        self.retry_after: float | None = None
        self.injected = 0
        self.held = 0
        self.forwarded = 0
        self._released = anyio.Event()
        self._http: httpx.AsyncClient | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail(self, status: int = 503, retry_after: float | None = None) -> None:
        self.mode, self.status, self.retry_after = "fail", status, retry_after

    def stall(self) -> None:
        self.mode = "stall"
        self._released = anyio.Event()

    def heal(self) -> None:
        self.mode = "pass"
        self._released.set()

    def _error_headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if self.retry_after is not None:
            headers["retry-after"] = f"{self.retry_after:g}"
        return headers

    def _error_body(self) -> dict[str, Any]:
        return {"statusCode": self.status, "error": "Injected", "message": "injected fault"}

    async def _gate(self) -> bool:
        """``True`` if the request must be answered with an error."""
        if self.mode == "stall":
            self.held += 1
            await self._released.wait()
        if self.mode == "fail":
            self.injected += 1
            return True
        return False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        elif scope["type"] == "http":
            await self._http_request(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)

    async def _http_request(self, scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if await self._gate():
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status,
                    "headers": [(k.encode(), v.encode()) for k, v in self._error_headers().items()],
                }
            )
            await send(
                {"type": "http.response.body", "body": json.dumps(self._error_body()).encode()}
            )
            return
        assert self._http is not None
        headers = [
            (k, v) for k, v in scope["headers"] if k.lower() not in (b"host", b"content-length")
        ]
        path = scope["raw_path"].decode() if scope.get("raw_path") else scope["path"]
        response = await self._http.request(scope["method"], path, headers=headers, content=body)
        self.forwarded += 1
        out = [
            (k.encode(), v.encode())
            for k, v in response.headers.multi_items()
            if k.lower() not in ("content-length", "transfer-encoding", "content-encoding")
        ]
        await send({"type": "http.response.start", "status": response.status_code, "headers": out})
        await send({"type": "http.response.body", "body": response.content})

    async def _websocket(self, scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        upstream_url = self.upstream.replace("http", "ws", 1) + "/"
        try:
            upstream = await websockets.connect(upstream_url, max_size=None)
        except OSError:
            await send({"type": "websocket.close", "code": 1011})
            return
        await send({"type": "websocket.accept"})
        lock = anyio.Lock()

        async def to_client(text: str) -> None:
            async with lock:
                await send({"type": "websocket.send", "text": text})

        async def answer_error(request_id: Any) -> None:
            reply = {
                "requestId": request_id,
                "status": self.status,
                "statusText": "Injected",
                "headers": self._error_headers(),
                "data": self._error_body(),
            }
            await to_client(json.dumps(reply))

        async def client_to_upstream(tg: Any) -> None:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    tg.cancel_scope.cancel()
                    return
                text = message.get("text")
                if text is None:
                    continue
                try:
                    request = json.loads(text)
                    request_id = request.get("requestId")
                    method = request.get("method")
                except (ValueError, AttributeError):
                    request_id = method = None
                if request_id is not None and method not in ("unwatch", "ping"):
                    # Each request frame is held or failed on its own, as an
                    # HTTP request would be, without blocking the others.
                    tg.start_soon(gated_forward, text, request_id)
                else:
                    await upstream.send(text)

        async def gated_forward(text: str, request_id: Any) -> None:
            if await self._gate():
                await answer_error(request_id)
                return
            self.forwarded += 1
            with contextlib.suppress(websockets.ConnectionClosed):
                await upstream.send(text)

        async def upstream_to_client(tg: Any) -> None:
            with contextlib.suppress(websockets.ConnectionClosed):
                async for frame in upstream:
                    await to_client(frame if isinstance(frame, str) else frame.decode())
            tg.cancel_scope.cancel()

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(client_to_upstream, tg)
                tg.start_soon(upstream_to_client, tg)
        finally:
            await upstream.close()
            with contextlib.suppress(Exception):
                await send({"type": "websocket.close", "code": 1000})

    @asynccontextmanager
    async def running(self) -> AsyncIterator[FaultProxy]:
        config = uvicorn.Config(
            self,
            host="127.0.0.1",
            port=0,
            log_level="error",
            lifespan="on",
            ws="websockets-sansio",
            ws_max_size=64 * 1024 * 1024,
        )
        server = _Uvicorn(config)
        async with (
            httpx.AsyncClient(base_url=self.upstream, timeout=60) as http,
            anyio.create_task_group() as tg,
        ):
            self._http = http
            tg.start_soon(server.serve)
            with anyio.fail_after(10):
                while not server.started:
                    await anyio.sleep(0.01)
            self.port = server.servers[0].sockets[0].getsockname()[1]
            try:
                yield self
            finally:
                self.heal()
                server.should_exit = True
