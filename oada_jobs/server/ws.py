"""The OADA WebSocket protocol (protocol §4.2 to §4.3) on top of :class:`OADACore`.

One :class:`WebSocketSession` serves one socket. Each text frame is a JSON
request ``{requestId, method, path, headers, data?}``:

* ``head get put post delete`` run as ordinary core requests and are
  answered with ``{requestId, status, headers, data?, statusText?}``:
  ``headers`` holds only non-empty string values, ``data`` is the parsed
  JSON body, ``statusText`` is added to errors;
* ``watch`` (= ``head-watch``), ``get-watch`` and ``put/post/delete-watch``
  run the underlying request; on success the socket is subscribed to the
  whole resource named by the first two segments of ``content-location``.
  With ``x-oada-rev: r`` the revisions ``r+1 … current`` are replayed right
  after the (single) response. Later changes arrive as
  ``{requestId: [...], resourceId, path_leftover, change}``. Each change,
  replayed or live, is authorized for the watch's own token
  (:meth:`OADACore.watch_view`): nested changes of resources it may not
  read are left out, and a watch whose resource it may no longer read ends;
* ``unwatch`` → 200 (also for unknown ids), ``ping`` → 204;
* anything that is not such a request gets status 400.

Ordering: every outgoing message goes through one per-socket queue, and
everything from a watch's request being answered (after the commit of the
writes it may have seen) to queueing its replay is synchronous (no
``await``), so a watch's response, its replay and its live changes can never
be reordered or interleaved with another watch's. Plain requests are not
awaited one by one: their answers are queued in request order once the
core has committed what they depend on (:meth:`OADACore.submit`).

A socket that cannot keep up is closed with code 1013 instead of silently
losing changes, once more than ``ws_send_buffer_bytes`` wait to be sent on
it: in the server's WebSocket protocol (the frames of this pass and the
transport's write buffer, see :class:`DirectSocket`) or, under another ASGI
server, in this session's queue (whose writer sends one message at a time,
under the ASGI server's flow control). The client reconnects and resumes
with ``x-oada-rev``. All the sockets of one server share a
:class:`SendBudget` of ``ws_send_buffer_total_bytes`` as well: past it, the
sockets furthest behind are closed the same way. A session keeps no
reference to anything once it ends: its watches are unsubscribed, its queue
closed and its share of the budget given back.

The session reads, queues and closes; a socket's watches are
:class:`~oada_jobs.server.watches.Watches`, the frames' formats
:mod:`oada_jobs.server.frames` and the limits all sockets share
:mod:`oada_jobs.server.budgets`.

Owns the WebSocket session; must not import the framework or the client.
"""

from __future__ import annotations

import itertools
import logging
import math
import sys
from http import HTTPStatus
from typing import Any, Protocol

import anyio
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from starlette.websockets import WebSocket, WebSocketDisconnect

from oada_jobs.server.budgets import SendBudget, WatchLimits
from oada_jobs.server.core import CoreRequest, OADACore, error_response
from oada_jobs.server.documents import ChangeArray, dumps
from oada_jobs.server.frames import (
    MAX_REQUEST_ID,
    PLAIN_METHODS,
    WATCH_METHODS,
    InvalidMessage,
    WSRequest,
    error_message,
    invalid_message,
    parse_request,
    replay_since,
    response_frame,
    too_large_message,
)
from oada_jobs.server.watches import REPLAY_PAGE, Watches

__all__ = [
    "DIRECT_SEND",
    "FRAME_ENVELOPE",
    "MAX_FRAME",
    "MAX_REQUEST_ID",
    "REPLAY_PAGE",
    "DirectSocket",
    "InvalidMessage",
    "SendBudget",
    "WSRequest",
    "WatchLimits",
    "WebSocketSession",
    "parse_request",
]

logger = logging.getLogger(__name__)

#: Requests a connection's reader serves before it lets the event loop run
#: (see ``WebSocketSession._reader``).
REQUESTS_PER_TURN = 4

#: Room for the JSON envelope (requestId, method, headers) around a body.
FRAME_ENVELOPE = 1024 * 1024

#: Largest frame the socket accepts at all (as the reference server, 100 MiB);
#: frames between the body limit and this get 413 under their requestId.
MAX_FRAME = 100 * 1024 * 1024

#: ASGI scope extension under which a server's WebSocket protocol may offer a
#: :class:`DirectSocket` (the embedded server's does).
DIRECT_SEND = "oada.websocket.direct"

_TOO_SLOW = "client too slow to receive changes"
_FORBIDDEN = error_response(403, "User does not have read permission for this resource")


# Outgoing messages: compact, non-ASCII as is (orjson, stdlib for what it refuses).
_dumps = dumps


class DirectSocket(Protocol):
    """Sending on a socket without awaiting, offered by the server's WebSocket protocol.

    Under plain ASGI every message sent takes a task switch and a pass
    through the framework; a session given one of these sends from wherever
    the message arises (a request's commit, another request's change).
    """

    def send_text_nowait(self, text: str) -> int:
        """Send *text*; return how many bytes now wait to be sent on this socket.

        That is what was sent and is still held in the server: frames not yet
        handed to the transport and the transport's write buffer.
        """
        ...

    def close_nowait(self, code: int, reason: str = "") -> None:
        """Close after what was sent; the session then receives a disconnect."""
        ...

    def buffered_bytes(self) -> int:
        """How many bytes wait to be sent now (as :meth:`send_text_nowait` returns)."""
        ...


def _resource_of(content_location: str) -> str | None:
    """``resources/<key>`` from a content-location such as ``/resources/K/a/b``."""
    parts = content_location.split("/")
    if len(parts) >= 3 and parts[0] == "" and parts[1] == "resources" and parts[2]:
        return f"resources/{parts[2]}"
    return None


def change_message(request_ids: list[str], resource_id: str, change: list[dict[str, Any]]) -> str:
    """The change message, JSON-encoded; a :class:`ChangeArray` is encoded once for all."""
    head = _dumps(
        {
            "requestId": request_ids,
            "resourceId": resource_id,
            "path_leftover": [""] * len(request_ids),
        }
    )
    body = change.text() if isinstance(change, ChangeArray) else _dumps(change)
    return f'{head[:-1]},"change":{body}}}'


class WebSocketSession:
    """Serves the OADA WebSocket protocol on one accepted-or-not Starlette socket.

    >>> await WebSocketSession(core, websocket).run()  # doctest: +SKIP
    """

    def __init__(
        self,
        core: OADACore,
        websocket: WebSocket,
        *,
        budget: SendBudget | None = None,
        watch_limits: WatchLimits | None = None,
    ) -> None:
        self._core = core
        config = core.config
        # Shared with the server's other sockets (one of its own when alone).
        self._budget = (
            budget if budget is not None else SendBudget(config.ws_send_buffer_total_bytes)
        )
        self._watch_limits = (
            watch_limits
            if watch_limits is not None
            else WatchLimits(per_socket=config.max_watches_per_socket, total=config.max_watches)
        )
        self._ws = websocket
        self._reference = core.config.quirks == "reference"
        # Frames this large cannot hold an acceptable body: refuse unparsed.
        self._frame_limit = core.config.max_body_bytes + FRAME_ENVELOPE
        self._max_depth = core.config.max_depth
        self._max_items = core.config.max_body_items
        # Added to every request's headers (websocket.url builds a URL object).
        self._proto = "https" if websocket.url.scheme == "wss" else "http"
        self._host = websocket.headers.get("host", "localhost")
        self._out: MemoryObjectSendStream[str] | None = None
        extensions = websocket.scope.get("extensions") or {}
        self._direct: DirectSocket | None = extensions.get(DIRECT_SEND)
        self._overflowed = False
        self._close_reason = _TOO_SLOW
        self._send_limit = core.config.ws_send_buffer_bytes
        # Bytes of the messages in the queue (plain ASGI only).
        self._queued = 0
        self._watches = Watches(
            core, self._send_change, self._closing, replay_slice=core.config.replay_slice
        )

    async def run(self) -> None:
        """Accept the socket and serve it until either side closes it."""
        self._budget.join(self)
        self._watch_limits.join(self)
        try:
            if self._direct is not None:
                try:
                    await self._ws.accept()
                    await self._reader()
                finally:
                    self._watches.drop_all()
                return
            # Bounded in bytes by _enqueue, not in messages.
            send, receive = anyio.create_memory_object_stream[str](max_buffer_size=math.inf)
            with send, receive:
                self._out = send
                try:
                    await self._ws.accept()
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(self._writer, receive, tg.cancel_scope)
                        await self._reader()
                        tg.cancel_scope.cancel()
                finally:
                    self._watches.drop_all()
        finally:
            self._budget.leave(self)
            self._watch_limits.leave(self)

    # -- I/O --------------------------------------------------------------------

    async def _reader(self) -> None:
        for served in itertools.count():
            if served and served % REQUESTS_PER_TURN == 0:
                # Requests that arrived together would otherwise all be served
                # in this pass, and their answers wait for the last of them:
                # meanwhile the client idles, then the server does. Letting the
                # loop run brings their commit (the core commits a group one
                # pass after its first write, so two turns share one) and
                # answers sooner, so the client works on them while the rest
                # are served (and other connections get their turn). Measured:
                # 4 beat both 2 and 8, and with the later commit still beat 8.
                await anyio.lowlevel.checkpoint()
            message = await self._ws.receive()
            kind = message["type"]
            if kind == "websocket.disconnect":
                return
            if kind != "websocket.receive":
                continue
            text = message.get("text")
            frame: str | bytes = text if text is not None else message.get("bytes") or b""
            if len(frame) > self._frame_limit:
                self._send_too_large(frame)
                continue
            try:
                request = parse_request(frame, max_depth=self._max_depth, max_items=self._max_items)
            except InvalidMessage as exc:
                self._send_invalid(exc)
                continue
            try:
                await self._dispatch(request)
            except Exception:
                logger.exception("WebSocket %s %s failed", request.method, request.path)
                self._enqueue(
                    {
                        "requestId": request.request_id,
                        "status": 500,
                        "statusText": HTTPStatus(500).phrase,
                        "headers": {},
                    }
                )

    async def _writer(
        self, receive: MemoryObjectReceiveStream[str], scope: anyio.CancelScope
    ) -> None:
        try:
            while True:
                # receive() always yields to the event loop first, even with
                # messages waiting: take what is queued without that pass.
                try:
                    text = receive.receive_nowait()
                except anyio.WouldBlock:
                    try:
                        text = await receive.receive()
                    except anyio.EndOfStream:
                        break
                except anyio.EndOfStream:
                    break
                if self._overflowed:
                    break
                await self._ws.send_text(text)
                self._queued -= sys.getsizeof(text)
            if self._overflowed:
                await self._ws.close(code=1013, reason=self._close_reason)
        except (OSError, RuntimeError, WebSocketDisconnect):
            # The socket is gone; the reader sees the disconnect too, but do
            # not wait for it.
            scope.cancel()

    def _enqueue(self, message: dict[str, Any] | str) -> None:
        """Queue one outgoing message; never blocks (ordering relies on that)."""
        if self._overflowed:
            return
        text = message if isinstance(message, str) else _dumps(message)
        direct = self._direct
        if direct is not None:
            waiting = direct.send_text_nowait(text)
        else:
            out = self._out
            if out is None:
                return
            size = sys.getsizeof(text)
            waiting = self._queued + size
            if waiting <= self._send_limit:
                try:
                    out.send_nowait(text)
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    return
                self._queued = waiting
        if waiting > self._send_limit:
            logger.warning(
                "closing a WebSocket with %d bytes waiting to be sent (ws_send_buffer_bytes is %d)",
                waiting,
                self._send_limit,
            )
            self.shed(waiting, _TOO_SLOW)
        else:
            self._budget.report(self, waiting)

    def waiting_bytes(self) -> int:
        """Bytes waiting to be sent on this socket now (see the module docstring)."""
        if self._overflowed:
            return 0
        direct = self._direct
        return direct.buffered_bytes() if direct is not None else self._queued

    def shed(self, waiting: int, reason: str) -> None:
        """Close the socket with 1013 after what was sent: its peer is too far behind."""
        if self._overflowed:
            return
        self._overflowed = True
        self._close_reason = reason
        self._budget.leave(self)
        if self._direct is not None:
            self._direct.close_nowait(1013, reason)
        elif self._out is not None:
            # Wake the writer even if it was idle; it closes the socket.
            self._out.close()

    def _closing(self) -> bool:
        """Whether the socket is being closed as too slow (nothing more is sent)."""
        return self._overflowed

    # -- requests ---------------------------------------------------------------

    def _send_too_large(self, frame: str | bytes) -> None:
        """Answer an oversized frame with 413 without parsing it."""
        self._enqueue(too_large_message(frame, self._core.config.max_body_bytes))

    def _send_invalid(self, exc: InvalidMessage) -> None:
        self._enqueue(invalid_message(exc, reference=self._reference))

    async def _dispatch(self, req: WSRequest) -> None:
        method = req.method
        if method == "ping":
            self._enqueue({"requestId": req.request_id, "status": 204})
        elif method == "unwatch":
            self._watches.unwatch(req.request_id)
            self._enqueue({"requestId": req.request_id, "status": 200})
        elif method in PLAIN_METHODS:
            # Not awaited: the next request is read while this one's writes
            # wait for their group's commit, so requests read together commit together.
            self._core.submit(
                self._core_request(req, method),
                lambda response: self._enqueue(response_frame(req, method, response)[1]),
            )
        else:
            await self._watch(req, WATCH_METHODS[method])

    def _core_request(self, req: WSRequest, method: str) -> CoreRequest:
        headers = dict(req.headers)
        headers["x-request-id"] = req.request_id
        headers.setdefault("x-forwarded-proto", self._proto)
        headers.setdefault("host", self._host)
        body = req.body if method in ("put", "post") else b""
        return CoreRequest(method, req.path, headers, body)

    # -- watches ----------------------------------------------------------------

    def watch_count(self) -> int:
        """How many watches this socket holds now."""
        return len(self._watches)

    async def _watch(self, req: WSRequest, method: str) -> None:
        rid = req.request_id
        # Refused before the underlying request runs: a refused put-watch
        # writes nothing. A watch replacing one under the same id is no more.
        refusal = None if rid in self._watches else self._watch_limits.refusal(self)
        if refusal is not None:
            self._enqueue(error_message(rid, *refusal))
            return
        response = await self._core.handle(self._core_request(req, method))
        status, frame = response_frame(req, method, response)
        resource_id = _resource_of(response.headers.get("content-location", ""))
        if status >= 300:
            # Errors (and binary GETs) are answered and no watch is made.
            self._enqueue(frame)
            return
        if resource_id is None:
            message = f"only resources can be watched, not {req.path!r}"
            self._enqueue(error_message(rid, 400, message))
            return
        since, resume = replay_since(req, response)
        # From here until the replay starts nothing awaits: response and
        # subscription are queued atomically with respect to every change.
        authorization = req.headers.get("authorization")
        if self._core.watch_view(authorization, resource_id, []) is None:
            # Access was lost while the request waited for its commit.
            self._enqueue(response_frame(req, method, _FORBIDDEN)[1])
            return
        if resume and self._reference:
            # The reference server answers a resume twice: first a bare 200,
            # then (after the replay) the real response.
            self._enqueue({"requestId": rid, "status": 200})
        else:
            self._enqueue(frame)
        watches = self._watches
        notifier = watches.open(rid, resource_id, authorization, live=since is None)
        if since is None:
            return
        if await watches.replay(rid, notifier, since, authorization) and resume and self._reference:
            self._enqueue(frame)

    def _send_change(
        self, request_ids: list[str], resource_id: str, change: list[dict[str, Any]]
    ) -> None:
        self._enqueue(change_message(request_ids, resource_id, change))
