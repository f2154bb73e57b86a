"""Read jobs kept in memory, and room for the first reads of new ones.

The queue reads a job linked into its pending list only while fewer than
``keep_bodies`` read jobs are held (or being read for the first time); a
job handed to its runner, put on a timer or held back gives its room up.

Owns :class:`Bodies`: the count of jobs held and of reads under way, and the
wait for room. Sees jobs only as :class:`~oada_jobs.entry.Entry`; is told
which read may go past a full scheduler and whom to tell of a change; must
not touch the scheduler's other books.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

from .entry import Entry, Signal
from .job import Job

__all__ = ["Bodies"]


class Bodies:
    """The jobs of one queue held in memory, at most *keep* of them.

    *jump* tells whether a read may go past a full scheduler (the jobs read
    after it wait for it); *on_change* is called whenever room is freed.
    """

    def __init__(
        self, keep: int, jump: Callable[[Entry], bool], on_change: Callable[[], None]
    ) -> None:
        self._keep = keep
        self._jump = jump
        self._on_change = on_change
        self._held = 0
        self._reserved = 0
        # Only readers waiting for room wait on it, so they are not woken
        # by every other change.
        self._room = Signal()

    @property
    def held(self) -> int:
        """How many read jobs are kept in memory."""
        return self._held

    @property
    def full(self) -> bool:
        """Whether ``keep`` jobs are held (or being read for the first time)."""
        return self._held + self._reserved >= self._keep

    def wake(self) -> None:
        """Wake the reads waiting for room: one of them may now go past."""
        self._room.fire()

    def keep(self, entry: Entry, job: Job[Any] | None) -> None:
        """Hold *job* as *entry*'s (dropping what it held); trimmed later if too many are held."""
        self.drop(entry)
        if job is not None:
            entry.job = job
            self._held += 1

    def drop(self, entry: Entry) -> None:
        """Forget *entry*'s job, if held: it is read again before it runs."""
        if entry.job is not None:
            entry.job = None
            self._held -= 1
            self._room.fire()
            self._on_change()

    def take(self, entry: Entry) -> Job[Any] | None:
        """Hand *entry*'s job (if still held) over, freeing its room."""
        job = entry.job
        self.drop(entry)
        return job

    @asynccontextmanager
    async def room(self, entry: Entry) -> AsyncIterator[None]:
        """Wait until the first read of *entry* fits under ``keep``, and hold
        that room while reading, unless *entry* may jump the wait."""
        while self.full and not self._jump(entry):
            await self._room.event.wait()
        self._reserved += 1
        try:
            yield
        finally:
            self._reserved -= 1
            if entry.job is None:
                self._room.fire()  # not read (or not kept): its room is free again
            self._on_change()

    def check(self, known: Iterable[Entry]) -> None:
        """Raise :class:`AssertionError` unless the count of jobs held is that of
        the *known* entries holding one, and no count went below zero."""
        assert self._held == sum(entry.job is not None for entry in known), self._held
        assert self._reserved >= 0
