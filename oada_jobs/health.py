"""Health of a running service: ``/healthz``, ``/readyz`` and ``/metrics`` on one port.

Owns the probe HTTP server and the event-loop heartbeat behind it. It is
given what it needs, a :class:`~oada_jobs.metrics.ServiceMetrics` and a
function returning the service's :class:`Readiness`, and touches nothing
else of the service.

The HTTP server runs in a thread of its own, so it answers even while the
event loop is blocked, and that is the point: a task on the loop records a
heartbeat every :data:`HEARTBEAT_INTERVAL` seconds together with a snapshot
of the queues' readiness, and the thread judges liveness by the heartbeat's
age. For ``/readyz`` it asks the loop for the readiness of this moment
(waiting at most :data:`READY_WAIT` seconds, else it answers from the last
snapshot), so a probe right after a change does not see the state of up to
a heartbeat ago.

``/healthz`` (liveness)
    200 while the last heartbeat is at most ``stall_limit`` seconds old; 503
    when the event loop is blocked or dead. Restart the process on failure.
``/readyz`` (readiness)
    200 when, besides, the service is running and every queue's list watch
    is established with its connection up; 503 while the OADA server is
    unreachable and the watches are being restored, or a queue is retrying.
``/metrics``
    Prometheus metrics (any other path too, as before), including
    ``oada_jobs_queue_up{service,queue}``, refreshed with each heartbeat.

Both probes answer a small JSON object saying why.

May use the metrics; must not import the service, which hands it a readiness
callable.
"""

from __future__ import annotations

import asyncio
import errno
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from concurrent.futures import CancelledError, Future
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import anyio
import anyio.to_thread
from prometheus_client import make_wsgi_app

from .exceptions import ListenError
from .metrics import ServiceMetrics

__all__ = ["HEARTBEAT_INTERVAL", "READY_WAIT", "ProbeServer", "Readiness", "serve_probes"]

#: Seconds between heartbeats of the event loop (and readiness snapshots).
HEARTBEAT_INTERVAL = 0.5
#: Seconds ``/readyz`` waits for the event loop to report the current state.
READY_WAIT = 1.0

_JSON = [("Content-Type", "application/json"), ("Cache-Control", "no-store")]


@dataclass(frozen=True, slots=True)
class Readiness:
    """What the service says about itself at one heartbeat."""

    #: The service is running (not starting or stopping).
    running: bool
    #: Queue key -> whether its list watch is established and its connection up.
    queues: Mapping[str, bool] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return self.running and bool(self.queues) and all(self.queues.values())


@dataclass(frozen=True, slots=True)
class _Beat:
    at: float
    readiness: Readiness


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes arrive every few seconds: no access log."""


class ProbeServer:
    """The probe endpoints of one service; see the module docstring."""

    def __init__(
        self,
        metrics: ServiceMetrics,
        readiness: Callable[[], Readiness],
        *,
        stall_limit: float,
    ) -> None:
        self._metrics = metrics
        self._readiness = readiness
        self._stall_limit = stall_limit
        self._metrics_app = make_wsgi_app(metrics.registry)
        # Replaced whole by the loop, read whole by the server thread.
        self._beat = _Beat(time.monotonic(), Readiness(running=False))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        #: The port the server listens on, once started.
        self.port: int | None = None

    # -- the event-loop side -------------------------------------------------

    def beat(self) -> None:
        """Record a heartbeat with the current readiness; update the queue gauges."""
        readiness = self._readiness()
        self._metrics.set_queues_up(readiness.queues)
        self._beat = _Beat(time.monotonic(), readiness)

    async def heartbeat(self) -> None:
        """Beat every :data:`HEARTBEAT_INTERVAL` seconds, until cancelled."""
        while True:
            self.beat()
            await anyio.sleep(HEARTBEAT_INTERVAL)

    # -- the server thread ---------------------------------------------------

    def start(self, port: int, addr: str) -> int:
        """Listen on *addr*:*port* (0 picks a free port) in a thread; return the port.

        Called from the event loop whose health it reports. Raises
        :class:`~oada_jobs.exceptions.ListenError` when it cannot listen there.
        """
        self._loop = asyncio.get_running_loop()
        server_class: type[_Server] = _Server
        if ":" in addr:

            class _Server6(_Server):
                address_family = socket.AF_INET6

            server_class = _Server6
        try:
            server = make_server(
                addr, port, self._app, server_class=server_class, handler_class=_QuietHandler
            )
        except OSError as exc:
            reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise ListenError(addr, port, reason or str(exc)) from None
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="oada-jobs-probes", daemon=True
        )
        self._thread.start()
        self.port = int(server.server_port)
        return self.port

    def stop(self) -> None:
        """Stop listening (blocks up to half a second; call from a worker thread)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            ok, body = self.health()
        elif path == "/readyz":
            ok, body = self.ready()
        else:
            result: Iterable[bytes] = self._metrics_app(environ, start_response)
            return result
        # A fresh list: the server adds Content-Length to the one it is given.
        start_response("200 OK" if ok else "503 Service Unavailable", list(_JSON))
        return [json.dumps(body, sort_keys=True).encode()]

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Liveness: whether the event loop beat within ``stall_limit`` seconds."""
        age = time.monotonic() - self._beat.at
        ok = age <= self._stall_limit
        return ok, {
            "status": "ok" if ok else "event loop stalled",
            "heartbeat_age_seconds": round(age, 3),
            "stall_limit_seconds": self._stall_limit,
        }

    def _current_readiness(self) -> Readiness:
        """The readiness computed on the loop now, or the last snapshot if it does not answer."""
        loop = self._loop
        if loop is None:
            return self._beat.readiness
        answer: Future[Readiness] = Future()

        def compute() -> None:
            # On the loop: a heartbeat like any other, gauges included.
            if answer.set_running_or_notify_cancel():
                try:
                    self.beat()
                    answer.set_result(self._beat.readiness)
                except Exception as error:
                    answer.set_exception(error)

        try:
            loop.call_soon_threadsafe(compute)
            return answer.result(timeout=READY_WAIT)
        except (RuntimeError, TimeoutError, CancelledError):
            # The loop is closed, or too busy to answer now.
            answer.cancel()
            return self._beat.readiness

    def ready(self) -> tuple[bool, dict[str, Any]]:
        """Readiness: alive, running, and every queue's watch established and connected."""
        alive, body = self.health()
        readiness = self._current_readiness() if alive else self._beat.readiness
        ok = alive and readiness.ready
        if ok:
            status = "ready"
        elif not alive:
            status = "event loop stalled"
        elif not readiness.running:
            status = "not running"
        elif not readiness.queues:
            status = "no queues"
        else:
            status = "queue(s) not connected"
        body.update(status=status, running=readiness.running, queues=dict(readiness.queues))
        return ok, body


@asynccontextmanager
async def serve_probes(
    metrics: ServiceMetrics,
    readiness: Callable[[], Readiness],
    *,
    port: int,
    addr: str,
    stall_limit: float,
) -> AsyncIterator[ProbeServer]:
    """Serve the probes and run the heartbeat while the block runs."""
    probes = ProbeServer(metrics, readiness, stall_limit=stall_limit)
    probes.beat()
    probes.start(port, addr)
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(probes.heartbeat)
            try:
                yield probes
            finally:
                group.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(probes.stop)
