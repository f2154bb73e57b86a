"""Serve a dashboard app with uvicorn (what ``oada-jobs dashboard`` and the tests use).

Owns the listening socket and the uvicorn server; knows nothing of pages.
Binding is checked by :func:`~oada_jobs.dashboard.security.check_bind`
before anything listens.

Must not import the framework or the client.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import anyio
import uvicorn
from anyio.abc import TaskStatus
from starlette.applications import Starlette

from .security import check_bind

__all__ = ["DashboardHandle", "serve_dashboard"]


class _Server(uvicorn.Server):
    def __init__(
        self, config: uvicorn.Config, *, handle_signals: bool, on_stop: Callable[[], None]
    ) -> None:
        super().__init__(config)
        self._handle_signals = handle_signals
        self.ready = anyio.Event()
        self._on_stop = on_stop

    def stop(self) -> None:
        self._on_stop()
        self.should_exit = True

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._on_stop()
        super().handle_exit(sig, frame)

    def capture_signals(self) -> Any:
        if self._handle_signals:
            return super().capture_signals()
        return contextlib.nullcontext()  # embedded: the host owns the signals

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.ready.set()


@dataclass(slots=True)
class DashboardHandle:
    """A running dashboard, as reported by :func:`serve_dashboard` once it answers."""

    host: str
    port: int
    _server: _Server = field(repr=False)

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8300``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def shutdown(self) -> None:
        """Stop serving: live streams end at once, other requests get ``shutdown_grace`` seconds."""
        self._server.stop()


async def serve_dashboard(
    app: Starlette,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    allow_remote: bool = False,
    handle_signals: bool = False,
    task_status: TaskStatus[DashboardHandle] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve *app* on *host*:*port* (0 = a free port) until shut down.

    *app* is one :func:`~oada_jobs.dashboard.create_dashboard_app` made.
    Refuses a non-loopback *host* unless *allow_remote*, and then only when
    the app asks for a login. Use it as
    ``handle = await task_group.start(serve_dashboard, app)``.
    """
    check_bind(host, allow_remote=allow_remote, has_login=app.state.dashboard.login_required)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    config = uvicorn.Config(
        app,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=app.state.dashboard.config.shutdown_grace,
        server_header=False,
    )
    server = _Server(
        config, handle_signals=handle_signals, on_stop=app.state.dashboard.stop_streams
    )
    with sock:
        async with anyio.create_task_group() as group:
            group.start_soon(server.serve, [sock])
            with anyio.fail_after(30):
                await server.ready.wait()
            task_status.started(DashboardHandle(host, sock.getsockname()[1], server))
