"""A queue's readers: jobs read into its scheduler, and what hands them over.

Jobs to read come from the list (:mod:`oada_jobs.listing`), from timers that
came due, from shares that moved to this replica and from jobs stolen from
other shares. They go through two streams: first reads wait for room in the
scheduler (``keep_jobs``), so a large backlog is read as room frees up;
reads again never do, since they are what lets waiting jobs move on and room
free up. The streams live as long as one list watch; a job handed over
while none is open is read when the next one opens (it is still marked as
being read in the scheduler).

Owns :class:`Readers`. Gets the scheduler, a start-delay lookup and the
counter of jobs read by share; the client is given to each opening of the
streams. Must not touch the list watch, the runner or the service.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .client import OADAClient
from .dispatch import READ_RETRY
from .exceptions import BadRequest, Forbidden, InvalidJob, InvalidKey, NotFound, OADAError
from .reading import read_for_queue
from .replicas import Shares
from .scheduler import Entry, Scheduler

__all__ = ["MAX_READERS", "REREADERS", "STEAL_AGAIN", "Readers"]

#: Most jobs a queue reads at once.
MAX_READERS = 16
#: Readers of jobs read again (their timer fired, or their link was touched).
REREADERS = 2
#: Seconds between looks for jobs to steal while there are some to take.
STEAL_AGAIN = 0.05


def _no_delay(job_type: str) -> float:
    return 0.0


class Readers:
    """Reads the jobs of one queue into its scheduler (see the module docstring).

    :param scheduler: the queue's scheduler.
    :param wait: seconds to wait for a resource that is not a job yet.
    :param start_delay: a job type's start delay.
    :param share_read: counts a job read, by why: ``owned``, ``context``, ``stolen``.
    :param log: the queue's logger; *queue* is its key, in log records.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        *,
        wait: float,
        start_delay: Callable[[str], float],
        share_read: Callable[[str], None],
        log: logging.LoggerAdapter[Any],
        queue: str,
    ) -> None:
        self.scheduler = scheduler
        self.wait = wait
        self.start_delay = start_delay
        self.share_read = share_read
        self.log = log
        self.queue = queue
        # Where jobs to read go, while a list watch is open.
        self._first: MemoryObjectSendStream[Entry] | None = None
        self._again: MemoryObjectSendStream[Entry] | None = None

    # ------------------------------------------------------------- handing over

    def send(self, entry: Entry, *, again: bool = False) -> None:
        """Hand *entry* to the readers (*again*: to those of reads again)."""
        stream = self._again if entry.settled_once or again else self._first
        # Closed when the intake stopped: a re-opened watch reads it then.
        with suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            if stream is not None:
                stream.send_nowait(entry)

    def read_as_context(self, entry: Entry) -> None:
        """Read a job of another share, whose place a job of this one depends on."""
        self.share_read("context")
        self.send(entry, again=True)

    def unreadable(self, entry: Entry, problem: BaseException) -> None:
        """Settle *entry* as a job that cannot run for *problem*, unread."""
        self._count_owned(entry)
        self.scheduler.read(entry, None, problem)

    # ------------------------------------------------------------- reading

    @asynccontextmanager
    async def open(
        self, oada: OADAClient, concurrency: int
    ) -> AsyncIterator[Callable[[TaskGroup], None]]:
        """Open the read streams, for as long as one list watch is open.

        Yields what starts the readers, reading with *oada*, in a task group
        (the intake's): as many readers of first reads as the service runs
        jobs at once (up to :data:`MAX_READERS`), and :data:`REREADERS` of
        reads again.
        """
        first, first_out = anyio.create_memory_object_stream[Entry](math.inf)
        again, again_out = anyio.create_memory_object_stream[Entry](math.inf)
        self._first, self._again = first, again

        def start(group: TaskGroup) -> None:
            for _ in range(max(1, min(concurrency, MAX_READERS))):
                group.start_soon(self._reader, oada, first_out.clone(), True)
            for _ in range(REREADERS):
                group.start_soon(self._reader, oada, again_out.clone(), False)

        async with first, first_out, again, again_out:
            yield start

    async def _reader(
        self, oada: OADAClient, receive: MemoryObjectReceiveStream[Entry], first: bool
    ) -> None:
        async with receive:
            async for entry in receive:
                if first:
                    # A large backlog is read as room frees up, not all at once.
                    async with self.scheduler.room(entry):
                        await self._read(oada, entry)
                else:
                    await self._read(oada, entry)

    async def _read(self, oada: OADAClient, entry: Entry) -> None:
        if self.scheduler.get(entry.job_id) is not entry:
            return  # left the list meanwhile
        try:
            job = await read_for_queue(
                oada,
                entry.job_id,
                key=entry.key,
                wait=self.wait,
                # Another share's job (read as context) is its owner's to delay.
                start_delay=self.start_delay if self.scheduler.mine(entry) else _no_delay,
            )
        except (InvalidJob, InvalidKey, NotFound, Forbidden, BadRequest) as problem:
            self.unreadable(entry, problem)
        except OADAError as error:
            self.log.warning(
                "queue %r: could not read job %s: %s; trying again later",
                self.queue,
                entry.job_id,
                error,
            )
            self.scheduler.read_failed(entry, anyio.current_time() + READ_RETRY)
        else:
            self._count_owned(entry)
            self.scheduler.read(entry, job, None)

    def _count_owned(self, entry: Entry) -> None:
        if not entry.settled_once and not entry.stolen and self.scheduler.mine(entry):
            self.share_read("owned")

    # ------------------------------------------------------------- feeding

    async def timers(self) -> None:
        """Hand jobs whose time came back to the readers."""
        scheduler = self.scheduler
        while True:
            added = scheduler.timer_added
            for entry in scheduler.due():
                scheduler.reread(entry)
                self.send(entry)
            at = scheduler.next_timer()
            with anyio.move_on_after(math.inf if at is None else at - anyio.current_time()):
                await added.wait()

    async def follow_shares(self, shares: Shares) -> None:
        """Take in the jobs of shares that move to this replica."""
        scheduler = self.scheduler
        while True:
            changed = shares.changed
            for entry in scheduler.reown():
                self.send(entry)
            await changed.wait()

    async def steal(self, limiter: anyio.CapacityLimiter, bound: float) -> None:
        """With free slots in *limiter* and nothing of its own to do, take jobs
        that waited longer than *bound* seconds in another replica's share."""
        scheduler = self.scheduler
        taken: list[Entry] = []
        while True:
            # While there is something to take, look again as soon as the
            # jobs taken are under way; else at a quarter of the bound.
            await anyio.sleep(STEAL_AGAIN if taken else max(bound / 4, STEAL_AGAIN))
            free = int(limiter.available_tokens)
            if free < 1 or scheduler.busy():
                taken = []
                continue
            taken = scheduler.steal(min(free, MAX_READERS), anyio.current_time() - bound)
            for entry in taken:
                self.share_read("stolen")
                self.send(entry)
            if taken:
                self.log.debug("queue %r: took %d jobs from other shares", self.queue, len(taken))
