"""Run the embedded server with uvicorn: HTTP and WebSocket on one port, TLS optional.

:func:`serve` is meant for a task group::

    async with anyio.create_task_group() as tg:
        handle = await tg.start(serve, ServerConfig(db="oada.sqlite3"))
        print(handle.url)
        ...
        handle.shutdown()   # graceful: open sockets get close code 1012

It reports readiness only after the port is bound and the core is open.

Owns running uvicorn; must not import the framework or the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from types import FrameType
from typing import Any, cast

import anyio
import uvicorn
from anyio.abc import TaskStatus
from starlette.applications import Starlette
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState

from oada_jobs.exceptions import ListenError
from oada_jobs.server.app import create_app
from oada_jobs.server.config import ServerConfig
from oada_jobs.server.core import OADACore
from oada_jobs.server.ws import DIRECT_SEND, FRAME_ENVELOPE, MAX_FRAME

__all__ = [
    "READ_AHEAD",
    "BatchedWebSocketProtocol",
    "BoundedHttpProtocol",
    "ServerHandle",
    "serve",
    "uvicorn_config",
]

logger = logging.getLogger(__name__)

# Seconds a peer always has to answer a keepalive ping.
_MIN_PONG_WAIT = 5.0

#: Messages the application may fall behind on a socket before it stops being read.
READ_AHEAD = 16

#: Bytes of received messages the application may fall behind on a socket
#: before it stops being read. With :data:`READ_AHEAD`, a socket holds at
#: most this much read ahead plus the one message being assembled (which the
#: frame limit, ``ws_max_size``, bounds).
READ_AHEAD_BYTES = 1024 * 1024


class _DropDebug(logging.Filter):
    """Drops DEBUG records (they may quote WebSocket frames, tokens included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG


class BatchedWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol, with less work per message.

    *Sending.* Text frames sent in one event-loop pass leave together in one
    transport write. A busy socket carries many small answers and change
    notifications at once; written one by one, each costs a TLS record and a
    system call. Frames wait in the websockets protocol's buffer until the
    end of the pass, a few callbacks later. (Sending the first frame of a
    pass at once and the rest at its end cost the server 5-18 % more CPU per
    job in the benchmarks: two writes a pass where one will do.) Every other
    write of this protocol (pongs, close frames, the handshake) drains that
    same buffer first, so the order on the wire is the order of sending.

    The OADA session (:mod:`oada_jobs.server.ws`) sends without a task of its
    own through :meth:`send_text_nowait` and closes through
    :meth:`close_nowait`; the protocol offers itself to it in the ASGI scope
    under :data:`~oada_jobs.server.ws.DIRECT_SEND`. Such sends do not wait
    for the transport to drain: :meth:`send_text_nowait` says how many bytes
    are waiting (the frames of this pass and the transport's write buffer),
    and the session closes a socket whose peer lets that pass its budget
    (``ws_send_buffer_bytes``). Whatever ends a connection without the
    peer's help (the close handshake or a keepalive ping timing out) aborts
    the transport, dropping its buffer: a peer that does not read would
    otherwise hold it for as long as TCP keeps the connection up.

    *Receiving.* uvicorn stops reading the socket after every message until
    the application has taken it: two system calls (or two loop passes
    under TLS) per request. Here reading pauses only while the application
    is :data:`READ_AHEAD` messages or :data:`READ_AHEAD_BYTES` bytes behind,
    so a peer that pipelines large frames cannot make the server hold more
    than that (plus the frame being assembled) for it.
    """

    _batching = False
    #: Sizes of the received messages queued for the application, in order.
    _sizes: deque[int]
    #: Their sum.
    _queued_bytes = 0
    #: Bytes of the frames sent this pass, not yet written to the transport.
    _batched = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sizes = deque()

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        if self.response.status_code == 101:
            extensions = cast(dict[str, Any], self.scope["extensions"])
            extensions[DIRECT_SEND] = self

    # -- receiving ---------------------------------------------------------------

    def send_receive_event_to_app(self) -> None:
        size = sum(len(frame) for frame in self.frames)
        queued = self.queue.qsize()
        # Marked paused, uvicorn queues the message without pausing.
        paused, self.read_paused = self.read_paused, True
        super().send_receive_event_to_app()
        self.read_paused = paused
        if self.queue.qsize() > queued:
            self._sizes.append(size)
            self._queued_bytes += size
        if not paused and (
            self.queue.qsize() > READ_AHEAD or self._queued_bytes > READ_AHEAD_BYTES
        ):
            # receive() resumes once the application has taken them all.
            self.read_paused = True
            self.transport.pause_reading()

    async def receive(self) -> Any:
        message = await super().receive()
        if message["type"] == "websocket.receive":
            self._queued_bytes -= self._sizes.popleft()
        return message

    # -- sending -----------------------------------------------------------------

    async def send(self, message: Any) -> None:
        text = message.get("text") if message["type"] == "websocket.send" else None
        if text is None or not self.handshake_complete or self.initial_response is not None:
            await super().send(message)
            if message["type"] == "websocket.close" and self.close_timer is not None:
                # uvicorn then closes the transport, which waits for a drain
                # that a peer that reads nothing never allows: abort instead.
                self.close_timer.cancel()
                self.close_timer = self.loop.call_later(self.close_timeout, self.transport.abort)
            return
        await self.writable.wait()
        if self.disconnected:
            raise ClientDisconnected()
        if self.close_sent:
            await super().send(message)  # uvicorn's error for a send after close
            return
        data = text.encode()
        try:
            self.conn.send_text(data)
        except InvalidState:
            raise ClientDisconnected() from None
        self._batched += len(data)
        self._batch()

    def send_text_nowait(self, text: str) -> int:
        """Send a text frame (with the others of this pass) without waiting.

        Returns :meth:`buffered_bytes` after it. Frames for a socket that is
        closed or closing are dropped (and 0 is returned).
        """
        if self.disconnected or self.close_sent or self.transport.is_closing():
            return 0
        data = text.encode()
        try:
            self.conn.send_text(data)
        except InvalidState:
            return 0
        self._batched += len(data)
        self._batch()
        return self._batched + self.transport.get_write_buffer_size()

    def buffered_bytes(self) -> int:
        """Bytes sent and not yet taken by the peer's kernel.

        The frames of this pass (counted before compression, which only
        shrinks them) and the transport's write buffer (TLS records
        included); 0 once the connection is gone.
        """
        if self.disconnected:
            return 0
        return self._batched + self.transport.get_write_buffer_size()

    def close_nowait(self, code: int, reason: str = "") -> None:
        """Start the closing handshake after the frames sent so far.

        The application receives a disconnect; a peer that does not answer
        the close frame within ``close_timeout`` is cut off (it may not be
        reading at all, so the frame may never leave the buffer).
        """
        if self.disconnected or self.close_sent or self.transport.is_closing():
            return
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.conn.send_close(code, reason)
        self._write()
        self.close_sent = True
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        self.close_timer = self.loop.call_later(self.close_timeout, self.transport.abort)

    def keepalive_timeout(self) -> None:
        super().keepalive_timeout()
        # uvicorn closes the transport, which waits for its buffer to drain:
        # for a peer that reads nothing, never.
        if self.close_sent and not self.disconnected:
            self.transport.abort()

    def _batch(self) -> None:
        if not self._batching:
            self._batching = True
            self.loop.call_soon(self._end_batch)

    def _end_batch(self) -> None:
        self._batching = False
        self._write()

    def _write(self) -> None:
        self._batched = 0
        output = self.conn.data_to_send()
        if output and not self.transport.is_closing():
            self.transport.write(b"".join(output))


class BoundedHttpProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol, with the size of a request head and its reading time bounded.

    uvicorn bounds neither: a request line and headers may grow without end
    (llhttp buffers a header however long it is), and a client may take
    forever to send a request, holding one of the ``max_connections`` slots
    with it; a thousand peers trickling a byte now and then would deny
    service to everyone. Here

    * a request whose line and headers pass :attr:`max_head_bytes` before
      they end is answered **431** and its connection closed;
    * a request not received whole (line, headers and body) within
      :attr:`read_timeout` seconds of its first byte, or of the connection
      being made, is answered **408** (unless its answer has begun) and its
      connection closed; the application then sees the client gone, so a
      half-received write is never applied.

    The clock stops while a pipelined request waits for the one before it
    to be answered (it is not being read then) and once a connection turns
    into a WebSocket. :func:`uvicorn_config` makes a subclass holding the
    server's limits.
    """

    #: Bytes of request line and headers accepted (``max_header_bytes``).
    max_head_bytes: int = 64 * 1024
    #: Seconds to receive one request whole (``request_read_timeout``).
    read_timeout: float = 60.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_bytes = 0
        self._in_head = True
        # Heads and requests read whole so far.
        self._heads = 0
        self._deadline: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        heads = self._heads
        super().data_received(data)
        if self._in_head and self._heads == heads:
            # No head nor request ended in this read, and a head is being
            # read: all of this read was head. (A read that ended something
            # is not counted: the next head's count starts with the next read.)
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes and not self.transport.is_closing():
                self._refuse(431, f"request headers over {self.max_head_bytes} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0
        self._arm()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._heads += 1
        super().on_headers_complete()
        if self.pipeline and self.pipeline[0][0] is self.cycle:
            # Queued behind the request before it: not read until that is answered.
            self._disarm()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._heads += 1
        self._in_head = True
        self._head_bytes = 0
        self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not self.transport.is_closing():
            # A pipelined request whose body is read from now on.
            self._arm()

    def handle_websocket_upgrade(self) -> None:
        self._disarm()
        super().handle_websocket_upgrade()

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.read_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self._refuse(408, f"the request was not received within {self.read_timeout:g} s")

    def _refuse(self, status: int, message: str) -> None:
        """Answer *status* (unless an answer has begun) and close the connection."""
        self._disarm()
        cycle = self.cycle
        if cycle is None or cycle.response_complete or not cycle.response_started:
            body = message.encode("ascii")
            self.transport.write(
                b"".join(
                    [
                        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n".encode("ascii"),
                        b"content-type: text/plain; charset=utf-8\r\n",
                        b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                        b"connection: close\r\n\r\n",
                        body,
                    ]
                )
            )
        self.transport.close()


def _http_protocol(config: ServerConfig) -> type[BoundedHttpProtocol]:
    """:class:`BoundedHttpProtocol` holding *config*'s limits."""
    return type(
        "BoundedHttpProtocol",
        (BoundedHttpProtocol,),
        {
            "max_head_bytes": config.max_header_bytes,
            "read_timeout": config.request_read_timeout,
        },
    )


class _Uvicorn(uvicorn.Server):
    """uvicorn's server, with a start-up hook and optional signal handling.

    uvicorn runs on asyncio only, so its hooks here use asyncio directly.
    """

    def __init__(self, config: uvicorn.Config, *, handle_signals: bool) -> None:
        super().__init__(config)
        self._handle_signals = handle_signals
        self.on_started: list[Any] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._exit_requested: asyncio.Event | None = None

    def request_exit(self) -> None:
        """Stop serving; safe from any thread and from signal handlers."""
        self.should_exit = True
        loop, event = self._loop, self._exit_requested
        if loop is not None and event is not None and not loop.is_closed():
            loop.call_soon_threadsafe(event.set)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self.request_exit()

    async def main_loop(self) -> None:
        # uvicorn polls should_exit every 0.1 s; waking on an event instead
        # makes every stop (and so every test using a server) 0.1 s faster.
        # The tick still runs about once a second for the Date header.
        self._loop = asyncio.get_running_loop()
        self._exit_requested = asyncio.Event()
        if self.should_exit:
            return
        counter = 0
        while not await self.on_tick(counter):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._exit_requested.wait(), 1.0)
            counter += 10

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # Embedded in a test or another program, the host owns the signals.
        # Otherwise SIGINT and SIGTERM stop the server gracefully, and that
        # is the end of it: uvicorn would raise the signal again afterwards,
        # so that a clean stop exited 130 or 143 instead of 0.
        if not self._handle_signals or threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            for callback in self.on_started:
                callback()


@dataclass(slots=True)
class ServerHandle:
    """A running server, as reported by :func:`serve` once it is ready."""

    #: Bound host and (actual) port.
    host: str
    port: int
    #: Whether the port speaks TLS.
    tls: bool
    #: The settings served (they hold the tokens: kept out of the repr).
    config: ServerConfig = field(repr=False)
    _server: _Uvicorn = field(repr=False)
    _app: Starlette = field(repr=False)

    @property
    def core(self) -> OADACore | None:
        """The open core (None before start-up and after shut-down)."""
        slot = self._app.state.core_slot
        core: OADACore | None = slot.core
        return core

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8080``."""
        scheme = "https" if self.tls else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    @property
    def ws_url(self) -> str:
        """WebSocket URL, e.g. ``ws://127.0.0.1:8080/``."""
        return self.url.replace("http", "ws", 1) + "/"

    def shutdown(self) -> None:
        """Ask the server to stop gracefully (close sockets, finish requests, close the core)."""
        self._server.request_exit()


def uvicorn_config(
    app: Any,
    config: ServerConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    ssl_certfile: str | os.PathLike[str] | None = None,
    ssl_keyfile: str | os.PathLike[str] | None = None,
    graceful_timeout: float = 5.0,
    per_message_deflate: bool = True,
) -> uvicorn.Config:
    """uvicorn's settings for serving *app* (``create_app(config)``, or a wrapper of it).

    :func:`serve` uses them; so does anything that must run the server as
    ``oada-jobs serve`` does, e.g. with ASGI middleware around the app.
    Other arguments are as for :func:`serve`.

    *per_message_deflate* accepts WebSocket compression from clients that
    offer it (Node's ``ws`` does by default). The reference server never
    accepts it, but @oada/client 5.3.0 depends on it here: it starts
    listening for a watch's changes only once the watch's response has been
    handled, so when the response and the replay of a resumed watch, which
    this server sends together, arrive in one read, the replay is lost;
    inflating hands the client each message on its own. Turning it off
    makes Node clients cost what they would against the reference server
    (the benchmarks do, so as not to charge the original framework for
    compression).
    """
    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise ValueError("TLS needs both a certificate file and a key file")
    # The WebSocket protocol logs every frame at DEBUG, and frames carry
    # bearer tokens: never let those records through.
    frame_logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DropDebug) for f in frame_logger.filters):
        frame_logger.addFilter(_DropDebug())
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=_http_protocol(config),
        ws=BatchedWebSocketProtocol,
        ws_ping_interval=config.ws_ping_interval,
        # A peer that has not answered one ping by the next is gone; but give
        # it at least _MIN_PONG_WAIT, so short test intervals do not drop
        # healthy clients whose loop is briefly busy (e.g. with a big frame).
        ws_ping_timeout=max(config.ws_ping_interval, _MIN_PONG_WAIT),
        # Oversized requests are answered 413 under their requestId (ws.py);
        # only frames beyond this hard cap close the socket (code 1009).
        ws_max_size=max(MAX_FRAME, config.max_body_bytes + FRAME_ENVELOPE),
        ws_per_message_deflate=per_message_deflate,
        # Past this many open connections (or requests in progress) uvicorn
        # answers 503 at once instead of taking on more: each connection can
        # hold a body or a frame being read, so their number bounds memory.
        limit_concurrency=config.max_connections,
        log_level="warning",
        access_log=False,
        lifespan="on",
        server_header=False,
        proxy_headers=False,
        ssl_certfile=os.fspath(ssl_certfile) if ssl_certfile is not None else None,
        ssl_keyfile=os.fspath(ssl_keyfile) if ssl_keyfile is not None else None,
        timeout_graceful_shutdown=max(1, round(graceful_timeout)),
    )


async def serve(
    config: ServerConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    ssl_certfile: str | os.PathLike[str] | None = None,
    ssl_keyfile: str | os.PathLike[str] | None = None,
    handle_signals: bool = False,
    graceful_timeout: float = 5.0,
    task_status: TaskStatus[ServerHandle] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve *config* until :meth:`ServerHandle.shutdown` (or a signal) stops it.

    :param config: Server settings (defaults when ``None``).
    :param host: Where to listen; ``port=0`` picks a free port (see the handle).
    :param port: Where to listen; ``port=0`` picks a free port (see the handle).
    :param ssl_certfile: PEM certificate (chain) and key; both or neither. With them the port
        speaks HTTPS and WSS only.
    :param ssl_keyfile: PEM certificate (chain) and key; both or neither. With them the port
        speaks HTTPS and WSS only.
    :param handle_signals: Install SIGINT/SIGTERM handlers for a graceful stop (for the
        ``oada-jobs serve`` command; leave off when embedding).
    :param graceful_timeout: Seconds to let running requests finish on shutdown before they are
        cancelled.
    :param task_status: Receives the :class:`ServerHandle` once the port is bound and the
        core is open (use with ``task_group.start``).

    Raises :class:`~oada_jobs.exceptions.DatabaseLocked` if another server
    has ``config.db`` open, :class:`~oada_jobs.exceptions.ListenError` (an
    ``OSError``) if the port cannot be bound, and ``RuntimeError`` if the
    server fails to start otherwise.
    """
    config = config if config is not None else ServerConfig()
    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise ValueError("TLS needs both a certificate file and a key file")
    # Bound and opened before the core's task group starts, so that a port
    # in use or a database in use is raised as it is, not in a group.
    with _listen(host, port) as sock:
        async with OADACore(config) as core:
            app = create_app(config, core=core)
            uv_config = uvicorn_config(
                app,
                config,
                host=host,
                port=port,
                ssl_certfile=ssl_certfile,
                ssl_keyfile=ssl_keyfile,
                graceful_timeout=graceful_timeout,
            )
            server = _Uvicorn(uv_config, handle_signals=handle_signals)

            def started() -> None:
                bound_port = int(sock.getsockname()[1])
                task_status.started(
                    ServerHandle(host, bound_port, ssl_certfile is not None, config, server, app)
                )

            server.on_started.append(started)
            try:
                await server.serve(sockets=[sock])
            except SystemExit:
                # uvicorn exits the process when the app fails to start;
                # embedded, that must be an ordinary error.
                if not server.started:
                    raise RuntimeError(
                        f"the OADA server on {host}:{port} failed to start"
                    ) from None
                raise
            finally:
                app.state.core_slot.core = None
            if not server.started:
                raise RuntimeError(f"the OADA server on {host}:{port} failed to start")


def _listen(host: str, port: int) -> socket.socket:
    """A TCP socket bound to *host*:*port*, as uvicorn would bind it (it listens)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on
    # accepted sockets whose listener names the protocol.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise ListenError(host, port, reason or str(exc)) from None
    except BaseException:
        sock.close()
        raise
    return sock
