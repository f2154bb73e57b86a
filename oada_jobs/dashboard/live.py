"""Live pages: OADA watches on the server, Server-Sent Events to the browser.

A live page opens ``EventSource`` on its ``/events/...`` URL. The stream
here watches, with the dashboard's one OADA client, what the page shows
(:meth:`JobReader.watch_paths` and friends) and sends one ``changed`` event
per burst of changes; the browser then fetches the page's fragment again.

Correctness across failures:

* a ``changed`` event is sent as soon as the stream opens, after its watches
  are open, so a page re-renders from a fresh read after every (re)connect of
  the browser and never misses a change made while it loaded;
* a watch that fails (the OADA server restarted or went away) is opened
  again with backoff, and every re-open sends ``changed``;
* when a render failed to reach OADA (:class:`Health`), the stream probes
  OADA until it answers, then sends ``changed``.

This module owns the event stream and its tasks; it reads nothing a page
shows and never writes to OADA.
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

__all__ = ["EventStream", "Health", "Signal"]

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


class EventStream:
    """The SSE response of one live page: watches *paths*, says ``changed``."""

    def __init__(
        self,
        oada: OADAClient,
        config: DashboardConfig,
        paths: PathsFunction,
        health: Health,
        stopping: anyio.Event,
    ) -> None:
        self.oada = oada
        self.config = config
        self.paths = paths
        self.health = health
        self.stopping = stopping
        self.changed = Signal()
        self._watching: dict[str, anyio.CancelScope] = {}

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
        async with anyio.create_task_group() as group:
            group.start_soon(self._until_disconnect, receive, group)
            group.start_soon(self._until_stopping, group)
            group.start_soon(self._probe_when_broken)
            await self._sync(group)
            # The first event: the page re-reads after its watches are open.
            await self._event(send, "changed")
            await self._forward(send, group)

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

    async def _forward(self, send: Send, group: TaskGroup) -> None:
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
                await self._sync(group)
            except OADAError as error:
                logger.info("dashboard: cannot read what to watch: %s", error)
                self.health.failed()
            await self._event(send, "changed")

    async def _sync(self, group: TaskGroup) -> None:
        """Watch what the page shows now; stop watching what it no longer shows."""
        wanted = set(await self.paths())
        for path in list(self._watching):
            if path not in wanted:
                self._watching.pop(path).cancel()
        for path in sorted(wanted - set(self._watching)):
            scope = anyio.CancelScope()
            self._watching[path] = scope
            await group.start(self._watch, path, scope)

    async def _watch(
        self,
        path: str,
        scope: anyio.CancelScope,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        delay = self.config.retry_initial
        started = opened = False
        with scope:
            while True:
                try:
                    async with self.oada.watch(path) as changes:
                        opened = True
                        if started:
                            self.changed.set()  # re-opened: the page reads afresh
                        else:
                            started = True
                            task_status.started()
                        delay = self.config.retry_initial
                        async for _change in changes:
                            self.changed.set()
                    self.changed.set()  # the resource was deleted
                except NotFound:
                    pass  # not there yet: a change above it will show it
                except ClientClosed:
                    raise
                except OADAError as error:
                    logger.info(
                        "dashboard: watch on %s failed: %s; again in %.1f s", path, error, delay
                    )
                    if opened:
                        self.changed.set()  # lost: what it watched may have changed
                if not started:
                    started = True
                    task_status.started()
                await anyio.sleep(delay)
                delay = min(delay * 2, self.config.retry_max)

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
