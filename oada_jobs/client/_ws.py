"""The WebSocket side of the client: one multiplexed socket, watches that survive drops.

Every message carries its own ``requestId``; one reader task routes answers to
the waiting request and change notifications to their watches. When the
socket drops, requests that were on it fail (the caller decides whether a
retry is safe) and every watch is re-issued on a new socket with
``x-oada-rev`` set to the last rev it queued, so the server replays exactly
what was missed.

Owns the socket, its requests in flight and its watches' delivery; must not
import ``_client``, the framework or the server. :class:`WSConnection` (and
so the file) is longer than the ~300 lines kept to elsewhere because one
socket's state (requests in flight, watches, reconnection) changes together;
split, it would be passed around.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Protocol

import anyio
import anyio.abc
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    wait_exponential_jitter,
)
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException
from websockets.frames import Frame, Opcode
from websockets.protocol import Event, State

from ..exceptions import (
    ClientClosed,
    OADAError,
    OADAStatusError,
    OADATimeout,
    OADATransportError,
    WatchLost,
    redact,
)
from ._common import BaseURL, dumps, loads, new_request_id
from ._http import ConnectFailed, ConnectionLost
from ._response import Change, Response, parse_change_array, status_error

__all__ = ["WSConnection", "WatchSink"]

logger = logging.getLogger("oada_jobs.client")


class _NoFrameDumps(logging.Filter):
    """Drop websockets' DEBUG records: they dump frames, and frames carry tokens."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG


#: The logger handed to websockets for our sockets (connection events only).
wire_logger = logging.getLogger("oada_jobs.client.websocket")
wire_logger.addFilter(_NoFrameDumps())


class WatchSink(Protocol):
    """What the connection needs from a watch to route, restore and end it."""

    path: str
    method: str
    token: str
    request_id: str | None
    generation: int
    deadline: float
    serial: int
    #: set false by the connection when the socket under the watch drops
    connected: bool

    def request_headers(self) -> dict[str, str]: ...
    def opened(self, response: Response) -> None: ...
    def feed(self, changes: list[Change]) -> None: ...
    def fail(self, error: OADAError) -> None: ...


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
        self._max_backoff = max_backoff
        self._user_agent = user_agent
        self._socket: _Socket | None = None
        self._generation = 0
        self._lock = anyio.Lock()
        self._pending: dict[str, _Pending] = {}
        self._routes: dict[str, WatchSink] = {}
        #: live watches, in the order they were opened
        self._watches: dict[WatchSink, None] = {}
        #: watches waiting to be re-issued -> when their socket dropped
        self._lost: dict[WatchSink, float] = {}
        self._last_restore_error = ""
        self._restoring = False
        self._closing = False
        self._task_group: anyio.abc.TaskGroup | None = None
        self._wake_watchdog = anyio.Event()
        #: frames waiting for the next write (with their request ids), and their socket
        self._outbox: list[tuple[str, bytes]] = []
        self._outbox_socket: ClientConnection | None = None

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
        for watch in list(self._watches):
            watch.fail(ClientClosed("the client was closed", path=watch.path))
        self._watches.clear()
        self._lost.clear()
        self._routes.clear()
        sock, self._socket = self._socket, None
        if sock is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await sock.close()
        assert self._task_group is not None
        self._task_group.cancel_scope.cancel()
        return await self._task_group.__aexit__(exc_type, exc, tb)

    @property
    def connected(self) -> bool:
        return self._socket is not None

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
        if self._closing:
            return
        now = anyio.current_time()
        for watch in self._watches:
            if watch.generation == generation and watch not in self._lost:
                self._lost[watch] = now
                watch.connected = False
        if self._lost:
            logger.warning(
                "WebSocket to %s dropped; restoring %d watch(es)",
                self._url,
                len(self._lost),
            )
            self._start_restore()

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
        seen: set[int] = set()
        for request_id in ids:
            watch = self._routes.get(request_id)
            if watch is not None and id(watch) not in seen:
                seen.add(id(watch))
                watch.feed(changes)

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

    async def _wait_for_room(self, sock: ClientConnection, pending: _Pending) -> None:
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
                await self._wait_for_room(sock, pending)
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

    # -- watches ------------------------------------------------------------

    async def open_watch(self, watch: WatchSink, *, answer_within: float) -> Response:
        """Issue *watch* and start routing its changes; raise if the server refuses."""
        response, generation = await self._issue(watch, answer_within=answer_within)
        self._watches[watch] = None
        if generation != self._generation or self._socket is None:
            # The socket dropped between the answer and now: restore it.
            self._lost.setdefault(watch, anyio.current_time())
            self._start_restore()
        return response

    async def _issue(self, watch: WatchSink, *, answer_within: float) -> tuple[Response, int]:
        request_id = new_request_id()
        if watch.request_id is not None:
            self._routes.pop(watch.request_id, None)
        watch.request_id = request_id
        # Route before sending: changes can follow the answer immediately.
        self._routes[request_id] = watch
        message = {
            "requestId": request_id,
            "method": watch.method,
            "path": watch.path,
            "headers": watch.request_headers(),
        }
        try:
            response, reason, generation = await self.roundtrip(
                message, answer_within=answer_within, token=watch.token
            )
            if response.status >= 300:
                raise status_error(
                    response, method=watch.method, path=watch.path, reason=reason, token=watch.token
                )
        except BaseException:
            self._routes.pop(request_id, None)
            raise
        watch.generation = generation
        watch.opened(response)
        return response, generation

    async def close_watch(self, watch: WatchSink) -> None:
        """Stop routing *watch* and tell the server (best effort)."""
        self._watches.pop(watch, None)
        self._lost.pop(watch, None)
        request_id = watch.request_id
        if request_id is None:
            return
        self._routes.pop(request_id, None)
        if self._closing or self._socket is None or watch.generation != self._generation:
            return
        message = {
            "requestId": request_id,
            "method": "unwatch",
            "path": watch.path,
            "headers": {"authorization": ""},
        }
        with anyio.CancelScope(shield=True), anyio.move_on_after(2):
            try:
                await self.roundtrip(message, answer_within=2, token=watch.token)
            except OADAError as error:
                logger.debug("unwatch failed: %s", error)

    def _start_restore(self) -> None:
        if self._restoring or self._closing or self._task_group is None:
            return
        self._restoring = True
        self._task_group.start_soon(self._restore)

    async def _restore(self) -> None:
        try:
            retrying = AsyncRetrying(
                retry=retry_if_exception_type(OADATransportError),
                wait=wait_exponential_jitter(multiplier=0.05, max=self._max_backoff),
                stop=self._give_up,
                sleep=anyio.sleep,
                before_sleep=self._log_attempt,
                reraise=True,
            )
            try:
                async for attempt in retrying:
                    with attempt:
                        await self._restore_all()
            except OADATransportError:
                pass  # _give_up has already failed every watch it gave up on
            except ClientClosed:
                pass  # closing: the watches were ended by __aexit__
        except Exception as error:
            # Never let this escape into the client's task group (see _read).
            logger.exception("restoring watches failed")
            for watch in list(self._lost):
                self._lost.pop(watch, None)
                self._watches.pop(watch, None)
                watch.fail(WatchLost(f"restoring the watch failed: {error!r}", path=watch.path))
        finally:
            self._restoring = False

    async def _restore_all(self) -> None:
        while self._lost and not self._closing:
            try:
                await self._ensure_socket()
            except OADATransportError as error:
                self._last_restore_error = str(error)
                raise
            for watch in sorted(self._lost, key=lambda w: w.serial):
                if watch not in self._watches:
                    self._lost.pop(watch, None)
                    continue
                try:
                    await self._issue(watch, answer_within=self._connect_timeout)
                except OADAStatusError as error:
                    self._lost.pop(watch, None)
                    self._watches.pop(watch, None)
                    watch.fail(
                        WatchLost(
                            f"the server refused to restore the watch: {error.message}",
                            path=watch.path,
                            status=error.status,
                        )
                    )
                    continue
                except OADATransportError as error:
                    self._last_restore_error = str(error)
                    raise
                since = self._lost.pop(watch, None)
                down = anyio.current_time() - since if since is not None else 0.0
                logger.info("restored the watch on %s after %.1f s", watch.path, down)

    def _log_attempt(self, state: RetryCallState) -> None:
        """Say that a reconnect attempt failed, and when the next one is."""
        waited = anyio.current_time() - min(self._lost.values(), default=anyio.current_time())
        next_in = state.next_action.sleep if state.next_action is not None else 0.0
        logger.warning(
            "reconnecting to %s: attempt %d failed (%s); %d watch(es) down for %.1f s, "
            "next attempt in %.1f s",
            self._url,
            state.attempt_number,
            self._last_restore_error or "connection lost",
            len(self._lost),
            waited,
            next_in,
        )

    def _give_up(self, state: RetryCallState) -> bool:
        now = anyio.current_time()
        for watch, since in list(self._lost.items()):
            if now - since >= watch.deadline:
                self._lost.pop(watch, None)
                self._watches.pop(watch, None)
                if watch.request_id is not None:
                    self._routes.pop(watch.request_id, None)
                watch.fail(
                    WatchLost(
                        f"could not restore the watch within {watch.deadline}s "
                        f"({self._last_restore_error or 'connection lost'})",
                        path=watch.path,
                    )
                )
        return not self._lost or self._closing
