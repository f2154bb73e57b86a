"""Live pages: OADA watches on the server, Server-Sent Events to the browser.

A live page opens ``EventSource`` on its ``/events/...`` URL. The stream
here subscribes to what the page shows (:meth:`JobReader.watch_paths` and
friends) and sends one ``changed`` event per burst of changes; the browser
then fetches the page's fragment again. The OADA watches themselves live in
the :class:`WatchHub`: one per path, with the dashboard's one OADA client,
shared by every open page that shows the path, and run in the task group of
the dashboard's lifespan.

Correctness across failures:

* a ``changed`` event is sent as soon as the stream opens, after its watches
  are open, so a page re-renders from a fresh read after every (re)connect of
  the browser and never misses a change made while it loaded;
* a watch that fails (the OADA server restarted or went away) is opened
  again with backoff, and every re-open sends ``changed``;
* when a render failed to reach OADA (:class:`Health`), the stream probes
  OADA until it answers, then sends ``changed``.

This module owns the event streams, the watch hub and their tasks; it reads
nothing a page shows and never writes to OADA.

May use the client; must not import the rest of the dashboard but its
config, nor the service.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio
from anyio.abc import TaskGroup
from starlette.types import Receive, Scope, Send

from ..client import OADAClient
from ..exceptions import ClientClosed, NotFound, OADAError
from .config import DashboardConfig

__all__ = ["EventStream", "Health", "Signal", "WatchHub"]

logger = logging.getLogger("oada_jobs.dashboard")

PathsFunction = Callable[[], Awaitable[list[str]]]


class Signal:
    """A level-triggered flag tasks can set and one task can wait for."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()

    def clear(self) -> None:
        if self._event.is_set():
            self._event = anyio.Event()


class Health:
    """Whether the last read of OADA failed to reach it (shared by all streams)."""

    def __init__(self) -> None:
        self.broken = False
        self._changed = Signal()

    def failed(self) -> None:
        self.broken = True
        self._changed.set()

    def recovered(self) -> None:
        self.broken = False

    async def wait_broken(self) -> None:
        while not self.broken:
            self._changed.clear()
            await self._changed.wait()


class _Watcher:
    """One OADA watch and the pages (their signals) that follow it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.subscribers: set[Signal] = set()
        self.scope = anyio.CancelScope()
        #: Set once the watch is open (or its first try failed).
        self.ready = anyio.Event()

    def notify(self) -> None:
        for signal in self.subscribers:
            signal.set()


class WatchHub:
    """One OADA watch per path, shared by every live page that shows it.

    A path's watch starts with its first subscriber and ends with its last.
    Its task runs in *group* (the dashboard's lifespan task group), so no
    watch outlives the dashboard.
    """

    def __init__(self, oada: OADAClient, config: DashboardConfig, group: TaskGroup) -> None:
        self.oada = oada
        self.config = config
        self._group = group
        self._watchers: dict[str, _Watcher] = {}

    def paths(self) -> set[str]:
        """The paths watched now."""
        return set(self._watchers)

    async def subscribe(self, path: str, signal: Signal) -> None:
        """Set *signal* on every change at *path*; returns once the watch is open.

        Every (re)open of the watch sets it too: what the path holds may have
        changed while it was not watched. Always pair with :meth:`unsubscribe`.
        """
        watcher = self._watchers.get(path)
        if watcher is None:
            watcher = self._watchers[path] = _Watcher(path)
            self._group.start_soon(self._run, watcher)
        watcher.subscribers.add(signal)
        await watcher.ready.wait()

    def unsubscribe(self, path: str, signal: Signal) -> None:
        """Stop setting *signal* for *path*; the watch ends with its last subscriber."""
        watcher = self._watchers.get(path)
        if watcher is None:
            return
        watcher.subscribers.discard(signal)
        if not watcher.subscribers:
            del self._watchers[path]
            watcher.scope.cancel()

    async def _run(self, watcher: _Watcher) -> None:
        delay = self.config.retry_initial
        opened = False
        with watcher.scope:
            try:
                while True:
                    try:
                        async with self.oada.watch(watcher.path) as changes:
                            opened = True
                            watcher.ready.set()
                            watcher.notify()  # (re)opened: the pages read afresh
                            delay = self.config.retry_initial
                            async for _change in changes:
                                watcher.notify()
                        watcher.notify()  # the resource was deleted
                    except NotFound:
                        pass  # not there yet: a change above it will show it
                    except ClientClosed:
                        return  # the dashboard is stopping
                    except OADAError as error:
                        logger.info(
                            "dashboard: watch on %s failed: %s; again in %.1f s",
                            watcher.path,
                            error,
                            delay,
                        )
                        if opened:
                            watcher.notify()  # lost: what it watched may have changed
                    watcher.ready.set()
                    await anyio.sleep(delay)
                    delay = min(delay * 2, self.config.retry_max)
            finally:
                watcher.ready.set()


class EventStream:
    """The SSE response of one live page: follows *paths* through the hub, says ``changed``."""

    def __init__(
        self,
        hub: WatchHub,
        config: DashboardConfig,
        paths: PathsFunction,
        health: Health,
        stopping: anyio.Event,
    ) -> None:
        self.hub = hub
        self.oada = hub.oada
        self.config = config
        self.paths = paths
        self.health = health
        self.stopping = stopping
        self.changed = Signal()
        self._following: set[str] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-store"),
                    (b"x-accel-buffering", b"no"),
                ],
            }
        )
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._until_disconnect, receive, group)
                group.start_soon(self._until_stopping, group)
                group.start_soon(self._probe_when_broken)
                await self._sync()
                # The first event: the page re-reads after its watches are
                # open (which covers what their opening announced).
                self.changed.clear()
                await self._event(send, "changed")
                await self._forward(send)
        finally:
            for path in self._following:
                self.hub.unsubscribe(path, self.changed)
            self._following.clear()

    async def _until_disconnect(self, receive: Receive, group: TaskGroup) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        group.cancel_scope.cancel()

    async def _until_stopping(self, group: TaskGroup) -> None:
        # The server is shutting down: end the stream now rather than be cut
        # at the end of the grace period (the browser reconnects by itself).
        await self.stopping.wait()
        group.cancel_scope.cancel()

    async def _event(self, send: Send, name: str) -> None:
        await send(
            {
                "type": "http.response.body",
                "body": f"event: {name}\ndata: {name}\n\n".encode(),
                "more_body": True,
            }
        )

    async def _forward(self, send: Send) -> None:
        while True:
            with anyio.move_on_after(self.config.stream_keepalive) as idle:
                await self.changed.wait()
            if idle.cancelled_caught:
                await send(
                    {"type": "http.response.body", "body": b": keep-alive\n\n", "more_body": True}
                )
                continue
            # Gather a burst of changes into one re-render.
            await anyio.sleep(self.config.stream_coalesce)
            self.changed.clear()
            try:
                await self._sync()
            except OADAError as error:
                logger.info("dashboard: cannot read what to watch: %s", error)
                self.health.failed()
            await self._event(send, "changed")

    async def _sync(self) -> None:
        """Follow what the page shows now; stop following what it no longer shows."""
        wanted = set(await self.paths())
        for path in self._following - wanted:
            self._following.discard(path)
            self.hub.unsubscribe(path, self.changed)
        new = wanted - self._following
        # Recorded before subscribing, so a cancelled subscribe is undone too.
        self._following |= new
        async with anyio.create_task_group() as group:
            for path in sorted(new):
                group.start_soon(self.hub.subscribe, path, self.changed)

    async def _probe_when_broken(self) -> None:
        while True:
            await self.health.wait_broken()
            delay = self.config.retry_initial
            while True:
                try:
                    await self.oada.head("/bookmarks")
                except ClientClosed:
                    raise
                except OADAError:
                    await anyio.sleep(delay)
                    delay = min(delay * 2, self.config.retry_max)
                    continue
                break
            self.health.recovered()
            self.changed.set()
