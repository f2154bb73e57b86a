"""The queues a running service holds by key, and the queues list they follow.

Owns :class:`QueueSet`: one :class:`~oada_jobs.queue.Queue` for the
service's own store, under :data:`~oada_jobs.queue.DEFAULT_QUEUE`, and one
per valid entry of ``/bookmarks/services/<name>/queues`` (read and validated
by :class:`~oada_jobs.queue_list.QueuesList`); an entry added, changed or
removed starts or stops its queue at once, and waiters hear of every change.

It gets a function that makes a queue, never the service, and must not
import :mod:`oada_jobs.service`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from functools import partial

import anyio
from anyio.abc import TaskGroup, TaskStatus

from ._retry import Delay
from .client import OADAClient
from .queue import DEFAULT_QUEUE, Once, Queue
from .queue_list import QueueEntry, QueuesList
from .tree import Layout

__all__ = ["MakeQueue", "QueueSet"]

logger = logging.getLogger("oada_jobs")

#: Makes the queue *key* for a domain, with a token (``None``: the service's own).
MakeQueue = Callable[[str, str, str | None], Queue]


class _Started:
    """The task status of a queue started without waiting for it: an event."""

    def __init__(self) -> None:
        self.event = anyio.Event()

    def started(self, value: None = None) -> None:
        self.event.set()


class QueueSet:
    """The queues of service *name* by key; *counted* hears how many there
    are after each change."""

    def __init__(self, name: str, *, counted: Callable[[int], None]) -> None:
        self.name = name
        self._counted = counted
        self._queues: dict[str, Queue] = {}
        self._entries: dict[str, QueueEntry] = {}
        self._event = anyio.Event()
        self._scope: anyio.CancelScope | None = None

    @property
    def queues(self) -> Mapping[str, Queue]:
        """The queues by key, started or retrying (a copy)."""
        return dict(self._queues)

    def up(self) -> dict[str, bool]:
        """Whether each queue's list watch is established and connected, by key."""
        return {key: queue.up for key, queue in self._queues.items()}

    def changed(self) -> None:
        """Tell waiters the queues changed (one was added or removed, or its watch)."""
        self._counted(len(self._queues))
        self._event.set()
        self._event = anyio.Event()

    async def wait_for(self, predicate: Callable[[Mapping[str, Queue]], bool]) -> None:
        """Wait until the queues (by key) satisfy *predicate*."""
        while True:
            event = self._event
            if predicate(self.queues):
                return
            await event.wait()

    async def follow(
        self,
        oada: OADAClient,
        work: TaskGroup,
        *,
        make: MakeQueue,
        domain: str,
        layout: Layout,
        backoff: Delay,
        start_wait: float,
        task_status: TaskStatus[None],
    ) -> None:
        """Run the queue of *domain* and one per entry of the queues list, in
        *work* and made by *make*, until :meth:`stop_following`.

        Started once the own queue and the first entries watch their lists,
        or after *start_wait* seconds each: a queue whose server is slow to
        answer (or never answers) goes on starting in the background rather
        than holding up the service's start.
        """
        with anyio.CancelScope() as self._scope:
            own = make(DEFAULT_QUEUE, domain, None)
            await self._start(work, [own], wait=start_wait)
            queues_list = QueuesList(
                self.name,
                layout=layout,
                backoff=backoff,
                apply=partial(self._apply, work, make, start_wait),
            )
            await queues_list.follow(oada, Once(task_status))

    def stop_following(self) -> None:
        """Stop following the queues list; the queues go on."""
        if self._scope is not None:
            self._scope.cancel()

    def stop_queues(self) -> None:
        """Stop every queue: no new jobs; each ends once its running jobs end."""
        for queue in self._queues.values():
            queue.stop()

    async def _apply(
        self,
        work: TaskGroup,
        make: MakeQueue,
        start_wait: float,
        wanted: dict[str, QueueEntry],
        wait: bool,
    ) -> None:
        """Run a queue for each entry of *wanted* (by key), and no other."""
        for key in list(self._entries):
            if wanted.get(key) != self._entries[key]:
                logger.info("service %s: stopping queue %r", self.name, key)
                self._queues.pop(key).stop()
                del self._entries[key]
                self.changed()
        new = []
        for key, entry in wanted.items():
            if key not in self._entries:
                logger.info("service %s: starting queue %r on %s", self.name, key, entry.domain)
                self._entries[key] = entry
                new.append(make(key, entry.domain, entry.token))
        await self._start(work, new, wait=start_wait if wait else None)

    async def _start(self, work: TaskGroup, queues: list[Queue], *, wait: float | None) -> None:
        """Start *queues* in *work*; unless *wait* is ``None``, until each
        watches its list, at most *wait* seconds in all."""
        started = []
        for queue in queues:
            # Listed before it starts, so a stop meanwhile reaches it too.
            self._queues[queue.key] = queue
            status = _Started()
            work.start_soon(partial(queue.run, task_status=status))
            started.append(status.event)
        if queues:
            self.changed()
        if wait is None:
            return
        with anyio.move_on_after(wait):
            for event in started:
                await event.wait()
