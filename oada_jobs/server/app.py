"""The ASGI application of the embedded server: HTTP and WebSocket on one port.

Every HTTP request, whatever its method and path, becomes one
:class:`~oada_jobs.server.core.CoreRequest`; routing, auth and errors are
the core's business. This module only

* reads the body, refusing it with 413 as soon as it grows past
  ``max_body_bytes`` (so a huge upload is never held in memory);
* passes the **raw** path (not percent-decoded, protocol §1.2) and
  lower-case headers, adding ``x-forwarded-proto`` so the core can build
  absolute URLs in ``/.well-known`` documents;
* adds ``x-request-id`` and the (possibly empty) ``x-oada-path-leftover``
  header the reference server always sends on resolved paths;
* allows every origin (CORS, protocol §8).

The WebSocket endpoint is ``/`` (see :mod:`oada_jobs.server.ws`).

Owns the ASGI app and its HTTP adapter; must not import the framework or the
client.
"""

from __future__ import annotations

import enum
import itertools
import json
import logging
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from oada_jobs.server.config import ServerConfig
from oada_jobs.server.core import CoreRequest, CoreResponse, OADACore
from oada_jobs.server.ws import SendBudget, WatchLimits, WebSocketSession

__all__ = ["EXPOSED_HEADERS", "create_app"]

logger = logging.getLogger(__name__)

#: Response headers browsers may read (protocol §8, plus the ETag and
#: request id, which clients use too).
EXPOSED_HEADERS = (
    "x-oada-rev",
    "x-oada-path-leftover",
    "location",
    "content-location",
    "etag",
    "x-request-id",
)


class _Gone(enum.Enum):
    """Marks a body whose client disconnected before sending all of it."""

    GONE = "gone"


_GONE = _Gone.GONE

# Characters no HTTP header value may hold.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# Statuses whose responses never carry a body (RFC 9110).
_NO_BODY = frozenset({204, 304})


# Request ids only need to be unique and cheap: a random per-process prefix
# and a counter (a KSUID per request cost more than serving a small GET).
_REQUEST_PREFIX = os.urandom(6).hex()
_request_counter = itertools.count(1)


def _next_request_id() -> str:
    return f"{_REQUEST_PREFIX}-{next(_request_counter)}"


class _CoreSlot:
    """Where the endpoints find the core the lifespan opened."""

    __slots__ = ("core",)

    def __init__(self, core: OADACore | None) -> None:
        self.core = core


def _error(status: int, message: str) -> CoreResponse:
    body = json.dumps(
        {"statusCode": status, "error": HTTPStatus(status).phrase, "message": message}
    ).encode()
    return CoreResponse(status, {"content-type": "application/json"}, body)


def _request_headers(scope: Scope) -> dict[str, str]:
    """Lower-case request headers; repeated headers are joined with ``", "``."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    if "x-forwarded-proto" not in headers:
        headers["x-forwarded-proto"] = scope.get("scheme", "http")
    return headers


def _raw_path(scope: Scope) -> str | None:
    """The request path exactly as sent (no percent-decoding), or None if not ASCII.

    A URI is ASCII; other characters must be percent-encoded (and then stay
    encoded, protocol §1.2).
    """
    raw: bytes | None = scope.get("raw_path")
    if raw is None:
        # Servers without raw_path (rare): the decoded path is the best we have.
        return str(scope["path"])
    path = raw.split(b"?", 1)[0]
    return path.decode("ascii") if path.isascii() else None


def _header_bytes(value: str) -> bytes:
    if _CONTROL.search(value):
        # HTTP forbids control characters in a header; a stored link may
        # still name an id holding one, echoed in content-location.
        value = _CONTROL.sub(lambda m: f"%{ord(m.group()):02X}", value)
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        # A value built from non-Latin-1 data (e.g. a key written over
        # WebSocket, echoed in content-location) still goes out intact.
        return value.encode("utf-8", "replace")


class _HTTPEndpoint:
    """ASGI endpoint that hands every HTTP request to the core."""

    def __init__(self, slot: _CoreSlot, config: ServerConfig) -> None:
        self._slot = slot
        self._limit = config.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = str(scope["method"]).lower()
        headers = _request_headers(scope)
        request_id = headers.get("x-request-id") or _next_request_id()
        path = _raw_path(scope)
        core = self._slot.core
        if core is None:
            response = _error(503, "the server is starting or stopping")
        elif path is None:
            response = _error(
                400, "the request path must be ASCII; percent-encode other characters"
            )
        else:
            body = await self._read_body(headers, receive)
            if body is _GONE:
                # The client went away mid-body: a half-received write must
                # not be applied, and nobody is left to answer.
                return
            if body is None:
                response = _error(
                    413, f"request body is larger than the limit of {self._limit} bytes"
                )
            else:
                response = await core.handle(CoreRequest(method, path, headers, body))
        await self._respond(send, method, request_id, response)

    async def _read_body(self, headers: dict[str, str], receive: Receive) -> bytes | _Gone | None:
        """The whole body; None as soon as it exceeds the limit; :data:`_GONE` on disconnect."""
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._limit:
            return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return _GONE
            chunk: bytes = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > self._limit:
                    return None
                chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    @staticmethod
    async def _respond(send: Send, method: str, request_id: str, response: CoreResponse) -> None:
        headers = response.headers
        out: list[tuple[bytes, bytes]] = [
            (name.encode("latin-1"), _header_bytes(value)) for name, value in headers.items()
        ]
        if "content-location" in headers and "x-oada-path-leftover" not in headers:
            # The reference server sends it (empty) on every resolved path.
            out.append((b"x-oada-path-leftover", b""))
        out.append((b"x-request-id", request_id.encode("latin-1")))
        status = response.status
        body = response.body
        if status in _NO_BODY:
            body = b""
        elif method != "head":
            out.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": b"" if method == "head" else body})


class _OADAApp(Starlette):
    """Starlette, with HTTP requests and WebSockets on ``/`` sent straight to their endpoints.

    Every HTTP request has one destination, so routing and Starlette's
    exception layers (the endpoint never raises for a request) would only
    add cost to each request. The same holds for the WebSocket on ``/``,
    where those layers wrap every message sent; other WebSocket paths and
    the lifespan go through Starlette (which refuses such sockets).
    """

    def __init__(
        self,
        http: ASGIApp,
        websocket: Callable[[WebSocket], Awaitable[None]],
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._http = http
        self._websocket = websocket

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            scope["app"] = self
            await self._http(scope, receive, send)
        elif kind == "websocket" and scope["path"] == "/" and not scope.get("root_path"):
            scope["app"] = self
            await self._websocket(WebSocket(scope, receive, send))
        else:
            await super().__call__(scope, receive, send)


def create_app(config: ServerConfig | None = None, *, core: OADACore | None = None) -> Starlette:
    """The ASGI application serving *config* (HTTP on every path, WebSocket on ``/``).

    :param config: Server settings; :class:`ServerConfig` defaults when ``None``.
    :param core: An already opened core to serve. Without one, the application's
        lifespan opens an :class:`OADACore` on start-up and closes it on
        shut-down, so run it with lifespan support (uvicorn's default).

    >>> app = create_app(ServerConfig(db="oada.sqlite3"))  # doctest: +SKIP
    >>> uvicorn.run(app, port=8080)  # doctest: +SKIP
    """
    config = config if config is not None else (core.config if core else ServerConfig())
    slot = _CoreSlot(core)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        if core is not None:
            yield {"core": core}
            return
        # The core is opened and closed in this one task, as it requires.
        async with OADACore(config) as opened:
            slot.core = opened
            try:
                yield {"core": opened}
            finally:
                slot.core = None

    # What waits to be sent on all the app's sockets together.
    budget = SendBudget(config.ws_send_buffer_total_bytes)
    # The watches held on all of them.
    watch_limits = WatchLimits(per_socket=config.max_watches_per_socket, total=config.max_watches)

    async def websocket_endpoint(websocket: WebSocket) -> None:
        opened = slot.core
        if opened is None:
            await websocket.close(code=1013, reason="the server is starting or stopping")
            return
        await WebSocketSession(opened, websocket, budget=budget, watch_limits=watch_limits).run()

    cors: dict[str, Any] = {
        "allow_origins": ["*"],
        "allow_methods": ["*"],
        "allow_headers": ["*"],
        "expose_headers": list(EXPOSED_HEADERS),
    }
    app = _OADAApp(
        CORSMiddleware(_HTTPEndpoint(slot, config), **cors),
        websocket_endpoint,
        routes=[WebSocketRoute("/", websocket_endpoint)],
        middleware=[Middleware(CORSMiddleware, **cors)],
        lifespan=lifespan,
    )
    app.state.core_slot = slot
    return app
