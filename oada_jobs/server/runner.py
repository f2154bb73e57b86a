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
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import anyio
import uvicorn
from anyio.abc import TaskStatus
from starlette.applications import Starlette

from oada_jobs.exceptions import ListenError
from oada_jobs.server.app import create_app
from oada_jobs.server.config import ServerConfig
from oada_jobs.server.core import OADACore
from oada_jobs.server.protocols import (
    READ_AHEAD,
    READ_AHEAD_BYTES,
    BatchedWebSocketProtocol,
    BoundedHttpProtocol,
    http_protocol,
)
from oada_jobs.server.ws import FRAME_ENVELOPE, MAX_FRAME

__all__ = [
    "READ_AHEAD",
    "READ_AHEAD_BYTES",
    "BatchedWebSocketProtocol",
    "BoundedHttpProtocol",
    "ServerHandle",
    "serve",
    "uvicorn_config",
]

logger = logging.getLogger(__name__)

# Seconds a peer always has to answer a keepalive ping.
_MIN_PONG_WAIT = 5.0


class _DropDebug(logging.Filter):
    """Drops DEBUG records (they may quote WebSocket frames, tokens included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG


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
    _check_tls(ssl_certfile, ssl_keyfile)
    _hide_frames()
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=http_protocol(config),
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


def _check_tls(
    ssl_certfile: str | os.PathLike[str] | None, ssl_keyfile: str | os.PathLike[str] | None
) -> None:
    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise ValueError("TLS needs both a certificate file and a key file")


def _hide_frames() -> None:
    """Keep uvicorn's DEBUG records out of the logs, once.

    The WebSocket protocol logs every frame at DEBUG, and frames carry
    bearer tokens: never let those records through.
    """
    frame_logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DropDebug) for f in frame_logger.filters):
        frame_logger.addFilter(_DropDebug())


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
    :param ssl_keyfile: The key of *ssl_certfile*.
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
    _check_tls(ssl_certfile, ssl_keyfile)
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
                await _run(server, sock, f"{host}:{port}")
            finally:
                app.state.core_slot.core = None


async def _run(server: _Uvicorn, sock: socket.socket, where: str) -> None:
    """Serve on *sock* until stopped; a failed start-up is a ``RuntimeError``."""
    try:
        await server.serve(sockets=[sock])
    except SystemExit:
        # uvicorn exits the process when the app fails to start;
        # embedded, that must be an ordinary error.
        if not server.started:
            raise RuntimeError(f"the OADA server on {where} failed to start") from None
        raise
    if not server.started:
        raise RuntimeError(f"the OADA server on {where} failed to start")


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
