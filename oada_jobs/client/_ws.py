"""The WebSocket side of the client: one multiplexed socket, re-opened after drops.

Every message carries its own ``requestId``; one reader task routes answers to
the waiting request and change notifications to the watches' keeper. When the
socket drops, requests that were on it fail (the caller decides whether a
retry is safe) and the keeper restores the watches on a new socket.

Owns the socket, the frames waiting to be written, the requests in flight and
their timeouts; the watches on the socket are the :class:`WatchKeeper`'s
(``_ws_watches``), which reaches this connection as its :class:`Link`. Must
not import ``_client``, the framework or the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Coroutine, Mapping
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException
from websockets.frames import Frame, Opcode
from websockets.protocol import Event, State

from ..exceptions import ClientClosed, OADAError, OADATimeout, redact
from ._common import BaseURL, dumps, loads
from ._http import ConnectFailed, ConnectionLost
from ._response import Response, parse_change_array
from ._ws_watches import WatchKeeper

__all__ = ["WSConnection"]

logger = logging.getLogger("oada_jobs.client")


class _NoFrameDumps(logging.Filter):
    """Drop websockets' DEBUG records: they dump frames, and frames carry tokens."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG


#: The logger handed to websockets for our sockets (connection events only).
wire_logger = logging.getLogger("oada_jobs.client.websocket")
wire_logger.addFilter(_NoFrameDumps())


class _Pending:
    __slots__ = ("answered", "deadline", "error", "generation", "limit", "message")

    def __init__(self, generation: int, limit: float) -> None:
        # A bare future: an anyio.Event costs twice as much to make and wait on.
        loop = asyncio.get_running_loop()
        self.answered: asyncio.Future[None] = loop.create_future()
        self.generation = generation
        self.limit = limit
        self.deadline = loop.time() + limit
        self.message: dict[str, Any] | None = None
        self.error: OADAError | None = None

    def settle(self) -> None:
        """Wake the request (if it is still waiting: it may have been cancelled)."""
        if not self.answered.done():
            self.answered.set_result(None)


#: Longest the timeout watchdog sleeps; a request times out at most this late.
_WATCHDOG_TICK = 0.25


def _ids(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return []


def _string_headers(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {str(key).lower(): str(item) for key, item in value.items() if item is not None}


_DATA = (Opcode.TEXT, Opcode.BINARY, Opcode.CONT)


async def _wait_for_room(sock: ClientConnection, pending: _Pending) -> None:
    """Wait while the socket's write buffer is over its limit, as websockets' send() does.

    Without this a server that reads slowly would let the buffer (and the
    requests behind it) grow without bound. The wait ends by the request's
    deadline, or when the socket closes; then ``pending.error`` says why
    the request was not sent.
    """
    with anyio.move_on_after(max(pending.deadline - anyio.current_time(), 0)):
        with contextlib.suppress(Exception):  # a closed socket is checked below
            await sock.drain()
    if pending.error is not None:
        return  # the watchdog timed it out meanwhile
    if sock.state is not State.OPEN:
        pending.error = ConnectFailed("the WebSocket closed before the request was sent")
    elif sock.paused:
        pending.error = OADATimeout(
            f"the server read nothing more within {pending.limit}s; the request was not sent"
        )


class _Socket(ClientConnection):
    """A websockets connection handing each message to a callback as it arrives.

    websockets queues incoming messages for ``recv()``: an assembler and a
    task wake-up per message. The OADA connection only routes them, which
    never waits, so it does that right where the data is read.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._parts: list[bytes | bytearray | memoryview] = []
        #: Messages that arrived before :meth:`deliver_to` (then ``None``).
        self._early: list[bytes] | None = []
        self._deliver: Callable[[bytes], None] | None = None

    def deliver_to(self, handler: Callable[[bytes], None]) -> None:
        """Hand every message (the early ones first) to *handler*, which must not raise."""
        early, self._early = self._early or [], None
        self._deliver = handler
        for data in early:
            handler(data)

    def process_event(self, event: Event) -> None:
        if not isinstance(event, Frame) or event.opcode not in _DATA:
            super().process_event(event)
            return
        if event.opcode is Opcode.CONT:
            self._parts.append(event.data)
        else:
            self._parts = [event.data]
        if not event.fin:
            return
        parts, self._parts = self._parts, []
        data = bytes(parts[0]) if len(parts) == 1 else b"".join(parts)
        if self._deliver is not None:
            self._deliver(data)
        elif self._early is not None:
            self._early.append(data)


class WSConnection:
    """One WebSocket to ``ws(s)://host/``, opened on demand and re-opened after drops."""

    def __init__(
        self,
        base: BaseURL,
        *,
        ssl_context: ssl.SSLContext,
        connect_timeout: float,
        max_backoff: float,
        user_agent: str,
    ) -> None:
        self._url = base.ws
        self._ssl = ssl_context if base.secure else None
        self._connect_timeout = connect_timeout
        self._user_agent = user_agent
        self._socket: _Socket | None = None
        self._generation = 0
        self._lock = anyio.Lock()
        self._pending: dict[str, _Pending] = {}
        self._closing = False
        self._task_group: anyio.abc.TaskGroup | None = None
        self._wake_watchdog = anyio.Event()
        #: frames waiting for the next write (with their request ids), and their socket
        self._outbox: list[tuple[str, bytes]] = []
        self._outbox_socket: ClientConnection | None = None
        #: the watches on this connection's sockets
        self.watches = WatchKeeper(
            self, url=self._url, reissue_within=connect_timeout, max_backoff=max_backoff
        )

    async def __aenter__(self) -> WSConnection:
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._watchdog)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        self._closing = True
        for pending in self._pending.values():
            pending.error = ClientClosed("the client was closed")
            pending.settle()
        self._pending.clear()
        self.watches.end_all()
        sock, self._socket = self._socket, None
        if sock is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await sock.close()
        assert self._task_group is not None
        self._task_group.cancel_scope.cancel()
        return await self._task_group.__aexit__(exc_type, exc, tb)

    # -- what the watches' keeper sees (its Link) ----------------------------

    @property
    def generation(self) -> int | None:
        """The open socket's generation (one more per socket), ``None`` while there is none."""
        return self._generation if self._socket is not None else None

    @property
    def closing(self) -> bool:
        """Whether the connection is closing for good."""
        return self._closing

    def start_soon(self, task: Callable[[], Coroutine[Any, Any, None]]) -> bool:
        """Run *task* in the connection's task group; false before it is entered."""
        if self._task_group is None:
            return False
        self._task_group.start_soon(task)
        return True

    # -- connecting ---------------------------------------------------------

    async def connect(self) -> None:
        """Open the socket now (``auto`` mode probes with this)."""
        await self._ensure_socket()

    async def _ensure_socket(self) -> tuple[_Socket, int]:
        sock = self._socket
        if sock is not None:
            return sock, self._generation
        async with self._lock:
            if self._closing:
                raise ClientClosed("the client was closed")
            if self._socket is not None:
                return self._socket, self._generation
            try:
                with anyio.fail_after(self._connect_timeout):
                    connection = await connect(
                        self._url,
                        ssl=self._ssl,
                        compression=None,
                        max_size=None,
                        open_timeout=None,
                        user_agent_header=self._user_agent,
                        logger=wire_logger,
                        create_connection=_Socket,
                    )
            except TimeoutError:
                raise ConnectFailed(
                    f"timed out after {self._connect_timeout}s opening the WebSocket {self._url}"
                ) from None
            except (OSError, WebSocketException) as error:
                raise ConnectFailed(
                    f"could not open the WebSocket {self._url}: {type(error).__name__}: {error}"
                ) from None
            self._generation += 1
            assert isinstance(connection, _Socket)
            self._socket = sock = connection
            assert self._task_group is not None
            self._task_group.start_soon(self._read, sock, self._generation)
            return sock, self._generation

    async def _read(self, sock: _Socket, generation: int) -> None:
        sock.deliver_to(self._receive)
        try:
            await sock.wait_closed()
        finally:
            self._socket_lost(sock, generation)

    def _receive(self, raw: bytes) -> None:
        try:
            self._dispatch(raw)
        except Exception:  # a bad message must never stop the reading
            logger.exception("ignored a WebSocket message that could not be handled")

    def _socket_lost(self, sock: ClientConnection, generation: int) -> None:
        if self._socket is sock:
            self._socket = None
        for request_id, pending in list(self._pending.items()):
            if pending.generation == generation:
                del self._pending[request_id]
                pending.error = ConnectionLost("the WebSocket closed before the answer came")
                pending.settle()
        if not self._closing:
            self.watches.socket_lost(generation)

    # -- routing ------------------------------------------------------------

    def _dispatch(self, raw: str | bytes) -> None:
        try:
            message = loads(raw)
        except ValueError:
            logger.debug("ignored a WebSocket message that is not JSON")
            return
        if not isinstance(message, dict):
            return
        ids = _ids(message.get("requestId"))
        if "status" in message:
            if not isinstance(message["status"], int):
                return
            for request_id in ids:
                # Popping makes a second answer for the same id (a known
                # server quirk on resumed watches) a no-op.
                pending = self._pending.pop(request_id, None)
                if pending is not None:
                    pending.message = message
                    pending.settle()
            return
        changes = parse_change_array(message.get("change"))
        if changes is None:
            logger.debug("ignored a WebSocket message that is neither an answer nor a change")
            return
        self.watches.route(ids, changes)

    # -- requests -----------------------------------------------------------

    def _queue_frame(self, sock: ClientConnection, request_id: str, text: str) -> None:
        """Queue a text frame; every frame queued in one event-loop pass goes out in one write.

        Requests made together (one per job, by many jobs at once) then cost
        one TLS record and one system call between them instead of one each,
        on this side and on the server's. The frames wait here, not in the
        websockets protocol, whose reader would write them one by one.
        """
        if self._outbox_socket is not sock:
            self._flush()  # frames for an older socket go (or fail) first
            self._outbox_socket = sock
            asyncio.get_running_loop().call_soon(self._flush)
        self._outbox.append((request_id, text.encode()))

    def _flush(self) -> None:
        sock, frames = self._outbox_socket, self._outbox
        self._outbox_socket, self._outbox = None, []
        if sock is None:
            return
        if sock.state is not State.OPEN or sock.transport.is_closing():
            # Never sent, so safe to send again: fail them as such at once
            # rather than as lost when the reader notices the socket is gone.
            for request_id, _ in frames:
                pending = self._pending.pop(request_id, None)
                if pending is not None:
                    pending.error = ConnectFailed(
                        "the WebSocket closed before the request was sent"
                    )
                    pending.settle()
            return
        for _, frame in frames:
            sock.protocol.send_text(frame)
        sock.transport.write(b"".join(sock.protocol.data_to_send()))

    async def roundtrip(
        self,
        message: dict[str, Any],
        *,
        answer_within: float,
        token: str,
        encoded: str | None = None,
    ) -> tuple[Response, str | None, int]:
        """Send *message* and wait for the answer with its ``requestId``.

        *encoded*, when given, is the JSON text of *message* without its
        ``requestId`` (requests are encoded once, up front, which also
        validates their data before anything is sent).

        Returns the response, its status text and the socket generation it
        travelled on. Raises :class:`ConnectFailed` when it was never sent,
        :class:`ConnectionLost` when the socket dropped after sending and
        :class:`OADATimeout` when no answer came in *timeout* seconds.
        """
        method, path = message["method"], message["path"]
        sock, generation = await self._ensure_socket()
        request_id = message["requestId"]
        pending = _Pending(generation, answer_within)
        self._pending[request_id] = pending
        self._wake_watchdog.set()
        try:
            if sock.state is not State.OPEN:
                if self._socket is sock:
                    self._socket = None
                raise ConnectFailed("the WebSocket was closing", method=method, path=path)
            if encoded is None:
                text = dumps(message)
            else:
                # Request ids are made of [0-9a-f-]: no escaping needed.
                text = f'{{"requestId":"{request_id}",{encoded[1:]}'
            if sock.paused:
                await _wait_for_room(sock, pending)
            if pending.error is None:
                # No cancel scope per request (it costs more than the rest of
                # the round trip): the watchdog fails requests past their deadline.
                self._queue_frame(sock, request_id, text)
                await pending.answered
        finally:
            self._pending.pop(request_id, None)
        if pending.error is not None:
            error = pending.error
            error.method, error.path = method, path
            raise error
        answer = pending.message
        assert answer is not None
        status_text = answer.get("statusText")
        response = Response(
            answer["status"], _string_headers(answer.get("headers")), answer.get("data")
        )
        return (
            response,
            redact(status_text, token) if isinstance(status_text, str) else None,
            generation,
        )

    async def _watchdog(self) -> None:
        """Fail requests whose answer is overdue with :class:`OADATimeout`."""
        while True:
            await self._wake_watchdog.wait()
            self._wake_watchdog = anyio.Event()
            while self._pending:
                now = anyio.current_time()
                earliest = min(pending.deadline for pending in self._pending.values())
                if earliest > now:
                    await anyio.sleep(min(earliest - now, _WATCHDOG_TICK))
                    continue
                for request_id, pending in list(self._pending.items()):
                    if pending.deadline <= now:
                        del self._pending[request_id]
                        pending.error = OADATimeout(f"no answer within {pending.limit}s")
                        pending.settle()
