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

Owns the WebSocket protocol; must not import the framework or the client.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Protocol

import anyio
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from starlette.websockets import WebSocket, WebSocketDisconnect

from oada_jobs.server.core import CoreRequest, CoreResponse, OADACore, error_response
from oada_jobs.server.documents import ChangeArray, dumpb, dumps, is_json_type
from oada_jobs.server.edge import Reject, check_text, decode_json, parse_rev

__all__ = [
    "DIRECT_SEND",
    "FRAME_ENVELOPE",
    "MAX_FRAME",
    "MAX_REQUEST_ID",
    "DirectSocket",
    "SendBudget",
    "WatchLimits",
    "WebSocketSession",
]

logger = logging.getLogger(__name__)

#: Requests a connection's reader serves before it lets the event loop run
#: (see ``WebSocketSession._reader``).
REQUESTS_PER_TURN = 4

#: Revs a watch's replay reads from SQLite in one query (see ``_replay``).
REPLAY_PAGE = 64

#: Room for the JSON envelope (requestId, method, headers) around a body.
FRAME_ENVELOPE = 1024 * 1024

#: Longest ``requestId`` accepted, in characters.
MAX_REQUEST_ID = 1024

#: Room for the JSON items of the envelope (requestId, method, path,
#: headers) around a body's ``max_body_items``.
ENVELOPE_ITEMS = 4096

#: Largest frame the socket accepts at all (as the reference server, 100 MiB);
#: frames between the body limit and this get 413 under their requestId.
MAX_FRAME = 100 * 1024 * 1024

#: ASGI scope extension under which a server's WebSocket protocol may offer a
#: :class:`DirectSocket` (the embedded server's does).
DIRECT_SEND = "oada.websocket.direct"

_REQUEST_ID = re.compile(r'"requestId"\s*:\s*"((?:[^"\\]|\\.){1,256})"')

_PLAIN = frozenset({"head", "get", "put", "post", "delete"})
_WATCHES = {
    "watch": "head",
    "head-watch": "head",
    "get-watch": "get",
    "put-watch": "put",
    "post-watch": "post",
    "delete-watch": "delete",
}
_METHODS = _PLAIN | _WATCHES.keys() | {"unwatch", "ping"}
_BINARY_OVER_WS = "Cannot GET binary over WebSockets"
_TOO_SLOW = "client too slow to receive changes"
_SERVER_FULL = "server send buffers full; this client is furthest behind"
_ERROR_HREF = "https://github.com/OADA/oada-docs/blob/master/rest-specs/README.md"
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


class _Sender(Protocol):
    """What :class:`SendBudget` needs of a session."""

    def waiting_bytes(self) -> int:
        """Bytes waiting to be sent on the session's socket now."""
        ...

    def shed(self, waiting: int, reason: str) -> None:
        """Close the socket as too slow (with 1013 and *reason*)."""
        ...


class SendBudget:
    """The bytes waiting on every socket of one server, held to one budget.

    Each session says what waits on its socket whenever it sends. When the
    sum passes *limit*, every socket is measured afresh (sockets drain
    without saying so) and, while the sum is still over, the one furthest
    behind is closed with 1013. The figures of sockets that drained since
    they last sent are too high until then, never too low.

    >>> budget = SendBudget(256 * 1024 * 1024)  # one per server  # doctest: +SKIP
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._waiting: dict[_Sender, int] = {}
        self._total = 0

    @property
    def total(self) -> int:
        """The bytes waiting on all sockets, as last reported."""
        return self._total

    @property
    def senders(self) -> int:
        """How many sockets share the budget."""
        return len(self._waiting)

    def join(self, sender: _Sender) -> None:
        """Count *sender*'s socket from now on (nothing waits on it yet)."""
        self._waiting.setdefault(sender, 0)

    def leave(self, sender: _Sender) -> None:
        """Stop counting *sender*'s socket (it closed, or is closing); idempotent."""
        self._total -= self._waiting.pop(sender, 0)

    def report(self, sender: _Sender, waiting: int) -> None:
        """*sender* has *waiting* bytes waiting now; shed sockets if that is too many."""
        waiting_before = self._waiting.get(sender)
        if waiting_before is None:
            return
        self._waiting[sender] = waiting
        self._total += waiting - waiting_before
        if self._total > self.limit:
            self._shed()

    def _shed(self) -> None:
        figures = self._waiting
        for sender in figures:
            figures[sender] = sender.waiting_bytes()
        self._total = sum(figures.values())
        while self._total > self.limit and figures:
            sender = max(figures, key=figures.__getitem__)
            waiting = figures.pop(sender)
            self._total -= waiting
            logger.warning(
                "WebSocket send buffers hold %d bytes (ws_send_buffer_total_bytes is %d)",
                self._total + waiting,
                self.limit,
            )
            sender.shed(waiting, _SERVER_FULL)


class _Watcher(Protocol):
    """What :class:`WatchLimits` needs of a session."""

    def watch_count(self) -> int:
        """How many watches the session's socket holds now."""
        ...


class WatchLimits:
    """The watches of one server's sockets, held to a count per socket and in all.

    A watch costs memory for as long as it lasts (its subscription, its
    notifier, its request id), whether or not anything is sent on it, so
    their number is bounded, not only the bytes waiting to be sent.

    >>> limits = WatchLimits(per_socket=1_000, total=100_000)  # one per server  # doctest: +SKIP
    """

    def __init__(self, *, per_socket: int, total: int) -> None:
        self.per_socket = per_socket
        self.total = total
        self._watchers: set[_Watcher] = set()

    def join(self, watcher: _Watcher) -> None:
        """Count *watcher*'s watches from now on."""
        self._watchers.add(watcher)

    def leave(self, watcher: _Watcher) -> None:
        """Stop counting *watcher*'s watches (its socket closed); idempotent."""
        self._watchers.discard(watcher)

    def held(self) -> int:
        """The watches held on all sockets now."""
        return sum(watcher.watch_count() for watcher in self._watchers)

    def refusal(self, watcher: _Watcher) -> tuple[int, str] | None:
        """Why *watcher* may not add a watch now (status, message), or None if it may."""
        if watcher.watch_count() >= self.per_socket:
            return (
                429,
                f"this socket already holds {self.per_socket} watches "
                "(max_watches_per_socket); unwatch one first",
            )
        if self.held() >= self.total:
            return (
                503,
                f"the server already holds {self.total} watches (max_watches); try again later",
            )
        return None


class InvalidMessage(ValueError):
    """A frame that is not a valid OADA WebSocket request."""

    def __init__(self, detail: str, request_id: str | None = None, status: int = 400) -> None:
        super().__init__(detail)
        self.detail = detail
        self.request_id = request_id
        self.status = status


@dataclass(frozen=True, slots=True)
class WSRequest:
    """One parsed WebSocket request."""

    request_id: str
    method: str
    path: str
    #: Lower-case names, string values.
    headers: dict[str, str]
    #: The request body: ``data`` as JSON text, or ``b""`` when absent.
    body: bytes


def _textual_request_id(text: str | bytes) -> str | None:
    """The frame's ``requestId`` found without parsing it (for frames that cannot be)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    match = _REQUEST_ID.search(text)
    if match is None:
        return None
    try:
        found = json.loads(f'"{match.group(1)}"')
        check_text(found, "requestId")
    except (ValueError, Reject):
        return None
    return found if isinstance(found, str) else None


def parse_request(text: str | bytes, *, max_depth: int, max_items: int) -> WSRequest:
    """Parse and validate one frame (formats:``oada/websockets/request``).

    The frame goes through the validation edge's JSON decoder, so ``data``
    may nest *max_depth* levels (the frame itself adds one), hold about
    *max_items* items (the envelope may add :data:`ENVELOPE_ITEMS`; the
    core counts the body's own exactly) and no string in it may be one that
    UTF-8 cannot encode. Raises :class:`InvalidMessage` saying what was
    expected (with status 413 for too many items); it carries the
    ``requestId`` when the frame had a usable one.
    """
    try:
        msg = decode_json(
            text,
            max_depth=max_depth + 1,
            max_items=max_items + ENVELOPE_ITEMS,
            what="WebSocket message",
        )
    except Reject as exc:
        raise InvalidMessage(exc.message, _textual_request_id(text), exc.status) from None
    if not isinstance(msg, dict):
        raise InvalidMessage(f"expected a JSON object, got {type(msg).__name__}")
    request_id = msg.get("requestId")
    if not isinstance(request_id, str) or not request_id:
        raise InvalidMessage(f"expected 'requestId' to be a non-empty string, got {request_id!r}")
    if len(request_id) > MAX_REQUEST_ID:
        # A watch's id is kept, and sent with each of its changes.
        raise InvalidMessage(
            f"expected 'requestId' of at most {MAX_REQUEST_ID} characters, got {len(request_id)}"
        )
    method = msg.get("method")
    if not isinstance(method, str) or method.lower() not in _METHODS:
        raise InvalidMessage(
            f"expected 'method' to be one of {', '.join(sorted(_METHODS))}, got {method!r}",
            request_id,
        )
    method = method.lower()
    path = msg.get("path")
    if not isinstance(path, str):
        raise InvalidMessage(f"expected 'path' to be a string, got {path!r}", request_id)
    raw_headers = msg.get("headers")
    if not isinstance(raw_headers, dict):
        raise InvalidMessage(
            f"expected 'headers' to be an object, got {type(raw_headers).__name__}", request_id
        )
    headers: dict[str, str] = {}
    for name, value in raw_headers.items():
        if not isinstance(value, str):
            raise InvalidMessage(
                f"expected header {name!r} to be a string, got {type(value).__name__}",
                request_id,
            )
        headers[name.lower()] = value
    body = dumpb(msg["data"]) if "data" in msg else b""
    return WSRequest(request_id, method, path.split("?", 1)[0], headers, body)


def _resource_of(content_location: str) -> str | None:
    """``resources/<key>`` from a content-location such as ``/resources/K/a/b``."""
    parts = content_location.split("/")
    if len(parts) >= 3 and parts[0] == "" and parts[1] == "resources" and parts[2]:
        return f"resources/{parts[2]}"
    return None


def _is_whole_delete(change: list[dict[str, Any]]) -> bool:
    return bool(change) and change[0].get("type") == "delete" and change[0].get("body") is None


@dataclass(slots=True)
class _Notifier:
    """All watches of one socket on one resource (they share one subscription)."""

    resource_id: str
    #: Watches that get live changes.
    request_ids: list[str] = field(default_factory=list)
    #: Watches whose replay is still being sent → the live changes held for
    #: them meanwhile, as ``(rev, change)``.
    replaying: dict[str, list[tuple[int, list[dict[str, Any]]]]] = field(default_factory=dict)
    #: Each watch's ``Authorization`` header: every change is authorized for it.
    authorizations: dict[str, str | None] = field(default_factory=dict)
    unsubscribe: Callable[[], None] = lambda: None


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
        self._replay_slice = core.config.replay_slice
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
        #: resource id → notifier
        self._notifiers: dict[str, _Notifier] = {}
        #: watch request id → notifier
        self._watches: dict[str, _Notifier] = {}

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
                    self._drop_all()
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
                    self._drop_all()
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

    # -- requests ---------------------------------------------------------------

    def _send_too_large(self, frame: str | bytes) -> None:
        """Answer an oversized frame with 413 without parsing it."""
        request_id: str | list[str] = _textual_request_id(frame) or ["error"]
        limit = self._core.config.max_body_bytes
        self._enqueue(
            {
                "requestId": request_id,
                "status": 413,
                "statusText": HTTPStatus(413).phrase,
                "headers": {},
                "data": {
                    "statusCode": 413,
                    "error": HTTPStatus(413).phrase,
                    "message": f"the message is {len(frame)} bytes; "
                    f"bodies of at most {limit} bytes are accepted",
                },
            }
        )

    def _send_invalid(self, exc: InvalidMessage) -> None:
        request_id: str | list[str] = ["error"]
        # Answering under the sender's own id (when it had one) lets a client
        # fail that request at once instead of waiting for a timeout; the
        # reference server always answers under ["error"].
        if exc.request_id is not None and not self._reference:
            request_id = exc.request_id
        status = exc.status
        self._enqueue(
            {
                "requestId": request_id,
                "status": status,
                "statusText": HTTPStatus(status).phrase,
                "headers": {},
                "data": {
                    "code": str(status),
                    "status": status,
                    "title": HTTPStatus(status).phrase,
                    "href": _ERROR_HREF,
                    "userMessage": "Invalid WebSocket request",
                    "detail": exc.detail,
                },
            }
        )

    async def _dispatch(self, req: WSRequest) -> None:
        method = req.method
        if method == "ping":
            self._enqueue({"requestId": req.request_id, "status": 204})
        elif method == "unwatch":
            self._unwatch(req.request_id)
            self._enqueue({"requestId": req.request_id, "status": 200})
        elif method in _PLAIN:
            # Not awaited: the next request is read while this one's writes
            # wait for their group's commit, so requests read together commit together.
            self._core.submit(
                self._core_request(req, method),
                lambda response: self._enqueue(self._frame(req, method, response)[1]),
            )
        else:
            await self._watch(req, _WATCHES[method])

    def _core_request(self, req: WSRequest, method: str) -> CoreRequest:
        headers = dict(req.headers)
        headers["x-request-id"] = req.request_id
        headers.setdefault("x-forwarded-proto", self._proto)
        headers.setdefault("host", self._host)
        body = req.body if method in ("put", "post") else b""
        return CoreRequest(method, req.path, headers, body)

    def _frame(self, req: WSRequest, method: str, response: CoreResponse) -> tuple[int, str]:
        """The response status and message (JSON-encoded; bodies are spliced in as they are)."""
        status = response.status
        headers = {k: v for k, v in response.headers.items() if v}
        headers["x-request-id"] = req.request_id
        content_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        body = response.body
        data: bytes | None = None
        if body and method != "head":
            if is_json_type(content_type):
                data = body
            elif status < 300:
                # Binary can only travel over HTTP (protocol §4.2).
                message: dict[str, Any] = {
                    "requestId": req.request_id,
                    "status": 400,
                    "statusText": _BINARY_OVER_WS,
                    "headers": headers,
                    "data": {
                        "statusCode": 400,
                        "error": "Bad Request",
                        "message": f"{_BINARY_OVER_WS}; use HTTP to read {content_type} resources",
                    },
                }
                return 400, _dumps(message)
        out: dict[str, Any] = {"requestId": req.request_id, "status": status, "headers": headers}
        if status >= 300:
            out["statusText"] = HTTPStatus(status).phrase
        text = _dumps(out)
        if data is not None:
            # The core's JSON text is valid JSON already: splice it in rather
            # than parse and re-encode a possibly large document.
            text = f'{text[:-1]},"data":{data.decode()}}}'
        return status, text

    # -- watches ----------------------------------------------------------------

    def watch_count(self) -> int:
        """How many watches this socket holds now."""
        return len(self._watches)

    async def _watch(self, req: WSRequest, method: str) -> None:
        # Refused before the underlying request runs: a refused put-watch
        # writes nothing. A watch replacing one under the same id is no more.
        refusal = None if req.request_id in self._watches else self._watch_limits.refusal(self)
        if refusal is not None:
            status, message = refusal
            self._enqueue(
                {
                    "requestId": req.request_id,
                    "status": status,
                    "statusText": HTTPStatus(status).phrase,
                    "headers": {"x-request-id": req.request_id},
                    "data": {
                        "statusCode": status,
                        "error": HTTPStatus(status).phrase,
                        "message": message,
                    },
                }
            )
            return
        response = await self._core.handle(self._core_request(req, method))
        status, frame = self._frame(req, method, response)
        resource_id = _resource_of(response.headers.get("content-location", ""))
        if status >= 300:
            # Errors (and binary GETs) are answered and no watch is made.
            self._enqueue(frame)
            return
        if resource_id is None:
            self._enqueue(
                {
                    "requestId": req.request_id,
                    "status": 400,
                    "statusText": HTTPStatus(400).phrase,
                    "headers": {"x-request-id": req.request_id},
                    "data": {
                        "statusCode": 400,
                        "error": "Bad Request",
                        "message": f"only resources can be watched, not {req.path!r}",
                    },
                }
            )
            return
        since, resume = self._since(req, response)
        # From here until the replay starts nothing awaits: response and
        # subscription are queued atomically with respect to every change.
        rid = req.request_id
        authorization = req.headers.get("authorization")
        if self._core.watch_view(authorization, resource_id, []) is None:
            # Access was lost while the request waited for its commit.
            self._enqueue(self._frame(req, method, _FORBIDDEN)[1])
            return
        if resume and self._reference:
            # The reference server answers a resume twice: first a bare 200,
            # then (after the replay) the real response.
            self._enqueue({"requestId": rid, "status": 200})
        else:
            self._enqueue(frame)
        self._unwatch(rid)
        notifier = self._notifiers.get(resource_id)
        if notifier is None:
            notifier = _Notifier(resource_id)
            self._notifiers[resource_id] = notifier
            notifier.unsubscribe = self._core.subscribe(resource_id, self._listener(notifier))
        self._watches[rid] = notifier
        notifier.authorizations[rid] = authorization
        if since is None:
            notifier.request_ids.append(rid)
            return
        held = notifier.replaying[rid] = []
        try:
            last = await self._replay(rid, resource_id, since, authorization)
        finally:
            notifier.replaying.pop(rid, None)
        if self._watches.get(rid) is not notifier or self._overflowed:
            if not notifier.request_ids and not notifier.replaying:
                self._drop(notifier)
            return
        # Live changes committed during the replay, after what it sent.
        for rev, change in held:
            if rev <= last:
                continue
            view = self._core.watch_view(authorization, resource_id, change)
            if view is None:
                self._unwatch(rid)
                break
            self._enqueue(self._change_message([rid], resource_id, view))
            if _is_whole_delete(change):
                self._unwatch(rid)
                break
        else:
            notifier.request_ids.append(rid)
        if resume and self._reference:
            self._enqueue(frame)

    async def _replay(
        self, request_id: str, resource_id: str, since: int, authorization: str | None
    ) -> int:
        """Send the changes of *resource_id* after *since*; return the last rev sent.

        Read from SQLite in pages of :data:`REPLAY_PAGE` revs and sent in
        slices of ``replay_slice`` seconds, letting the event loop run
        between slices: a replay of a long history does not stall other
        clients. This socket's next requests wait for it (they are read by
        this task), and its live changes are held meanwhile, so its
        messages stay in order. Each change is authorized for the watch's
        token; once it may no longer read the resource, the watch ends.
        """
        last = since
        deadline = time.perf_counter() + self._replay_slice
        while True:
            page = self._core.changes_page(resource_id, last, REPLAY_PAGE)
            for rev, change in page:
                view = self._core.watch_view(authorization, resource_id, change)
                if view is None:
                    self._unwatch(request_id)
                    return last
                self._enqueue(self._change_message([request_id], resource_id, view))
                last = rev
                if _is_whole_delete(change):
                    # The replay reached the resource's delete: the watch ends
                    # there, whether or not the delete was also held live.
                    self._unwatch(request_id)
                    return last
            if len(page) < REPLAY_PAGE or self._overflowed:
                return last
            if time.perf_counter() >= deadline:
                await anyio.lowlevel.checkpoint()
                deadline = time.perf_counter() + self._replay_slice

    @staticmethod
    def _since(req: WSRequest, response: CoreResponse) -> tuple[int | None, bool]:
        """The rev after which to replay (None: no replay), and whether the client resumes.

        With ``x-oada-rev`` that is the client's rev (the validation edge
        refused the request if it was not one). Otherwise the rev the
        underlying request saw: normally nothing is newer, but a change that
        slipped in before the subscription is replayed rather than lost. Rev
        0 (a resource deleted, or not there) has nothing to replay.
        """
        asked = req.headers.get("x-oada-rev", "")
        if asked:
            return parse_rev(asked, "header x-oada-rev"), True
        seen = response.headers.get("x-oada-rev", "")
        if seen.isascii() and seen.isdigit() and int(seen) > 0:
            return int(seen), False
        return None, False

    def _listener(self, notifier: _Notifier) -> Callable[[str, int, list[dict[str, Any]]], None]:
        def on_change(resource_id: str, rev: int, change: list[dict[str, Any]]) -> None:
            for held in notifier.replaying.values():
                held.append((rev, change))
            if not notifier.request_ids:
                return
            # Watches made with different tokens may see different parts.
            by_token: dict[str | None, list[str]] = {}
            for request_id in notifier.request_ids:
                by_token.setdefault(notifier.authorizations.get(request_id), []).append(request_id)
            for authorization, request_ids in by_token.items():
                view = self._core.watch_view(authorization, resource_id, change)
                if view is None:
                    # No longer readable with that token: those watches end.
                    for request_id in request_ids:
                        self._unwatch(request_id)
                    continue
                self._enqueue(self._change_message(request_ids, resource_id, view))
            if _is_whole_delete(change):
                # A deleted resource ends all its watches (after the delete
                # change itself was delivered); a watch still replaying ends
                # once its replay reaches the delete.
                if notifier.replaying:
                    for request_id in notifier.request_ids:
                        self._watches.pop(request_id, None)
                    notifier.request_ids.clear()
                else:
                    self._drop(notifier)

        return on_change

    @staticmethod
    def _change_message(
        request_ids: list[str], resource_id: str, change: list[dict[str, Any]]
    ) -> str:
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

    def _unwatch(self, request_id: str) -> None:
        notifier = self._watches.pop(request_id, None)
        if notifier is None:
            return
        if request_id in notifier.request_ids:
            notifier.request_ids.remove(request_id)
        notifier.authorizations.pop(request_id, None)
        if not notifier.request_ids and not notifier.replaying:
            self._drop(notifier)

    def _drop(self, notifier: _Notifier) -> None:
        notifier.unsubscribe()
        for request_id in notifier.request_ids:
            self._watches.pop(request_id, None)
        notifier.request_ids.clear()
        notifier.authorizations.clear()
        if self._notifiers.get(notifier.resource_id) is notifier:
            del self._notifiers[notifier.resource_id]

    def _drop_all(self) -> None:
        for notifier in list(self._notifiers.values()):
            self._drop(notifier)
