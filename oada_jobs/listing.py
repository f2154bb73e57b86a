"""A queue's job list as the scheduler hears of it: which entries are jobs.

A :class:`Listing` takes in the list a queue read, or a change to it: each
entry that is a link to a job is added to the scheduler and handed to the
readers; a link touched again makes a waiting job be read again; a key
deleted, or missing from the whole list when it is read again, means the
job left. Entries that are no job link (a job list of the other layout, a
key no request can name, anything but ``{'_id': 'resources/<key>'}``) are
skipped and warned about through :class:`BadEntries`: once when first seen,
then at a slow cadence, never on every sweep. The periodic sweep that reads
the whole list again, in case a change to it was missed, is here too.

Owns :class:`Listing` and :class:`BadEntries`. Gets the scheduler, the
layout, and callables to read a job, settle one no request can read and
let go of one that left; must not touch the readers, the dispatcher, the
runner or the service.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio

from .client import OADAClient
from .exceptions import InvalidKey, OADAError
from .scheduler import Entry, EntryState, Scheduler
from .tree import Layout, path_segment, resource_path

__all__ = ["BAD_ENTRY_REWARN", "BadEntries", "Listing"]

#: Seconds before the same bad list entry is warned about again (it is
#: warned about when first seen, then at this slow cadence, never per sweep).
BAD_ENTRY_REWARN = 3600.0

#: States in which a touched link makes the queue read the job again.
_TOUCHABLE = frozenset({EntryState.WAITING, EntryState.READY, EntryState.PARKED, EntryState.HELD})


def _describe(value: object) -> str:
    return "null" if value is None else type(value).__name__


class BadEntries:
    """The bad entries of one list warned about, so each is warned about once
    and then every :data:`BAD_ENTRY_REWARN` seconds, not on every sweep.

    :param counted: told about each warning (a metric).
    :param log: the queue's logger; *queue* is its key, in the warnings.
    """

    def __init__(
        self, *, counted: Callable[[], None], log: logging.LoggerAdapter[Any], queue: str
    ) -> None:
        self._counted = counted
        self._log = log
        self._queue = queue
        # Key -> (problem, anyio time warned).
        self._warned: dict[str, tuple[str, float]] = {}

    def warn(self, key: str, problem: str) -> None:
        """Warn that entry *key* is skipped for *problem*, unless that was said lately."""
        now = anyio.current_time()
        warned = self._warned.get(key)
        if warned is not None and warned[0] == problem and now - warned[1] < BAD_ENTRY_REWARN:
            return
        self._warned[key] = (problem, now)
        self._counted()
        self._log.warning("queue %r: skipping list entry %r: %s", self._queue, key, problem)

    def fixed(self, key: str) -> None:
        """Entry *key* is a good link now: warn again should it go bad."""
        self._warned.pop(key, None)

    def keep_only(self, keys: Mapping[str, object]) -> None:
        """Forget the entries no longer in the list (*keys*: the whole list)."""
        for key in [key for key in self._warned if key not in keys]:
            del self._warned[key]


@dataclass(frozen=True, slots=True)
class _Link:
    """A list entry that links to a job."""

    job_id: str
    #: Why no request can read the job (it is only moved to the failure list).
    unreadable: InvalidKey | None = None


class Listing:
    """Takes in one job list for a queue's scheduler (see the module docstring).

    :param scheduler: the queue's scheduler.
    :param layout: the job-list layout; *pending_path* is the list.
    :param bad: warns about entries that are no job link.
    :param read: hands a job to the queue's readers.
    :param unreadable: settles a job no request can read with that problem.
    :param left: lets go of a job that left the list (it is not running).
    :param log: the queue's logger; *queue* is its key, in log records.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        *,
        layout: Layout,
        pending_path: str,
        bad: BadEntries,
        read: Callable[[Entry], None],
        unreadable: Callable[[Entry, InvalidKey], None],
        left: Callable[[Entry], None],
        log: logging.LoggerAdapter[Any],
        queue: str,
    ) -> None:
        self.scheduler = scheduler
        self.layout = layout
        self.pending_path = pending_path
        self.bad = bad
        self._read = read
        self._unreadable = unreadable
        self._left = left
        self.log = log
        self.queue = queue

    def offer(self, listing: object, *, known_before: int | None = None) -> None:
        """Take in every job link in *listing* (the list, or a change to it).

        New jobs are read. In a change, a known job that is not running is
        read again: touching its link is how a released or cancelled job is
        noticed at once. With *known_before* (*listing* is the whole list,
        read when the scheduler had seen that many jobs), jobs seen by then
        but missing are forgotten.
        """
        if not isinstance(listing, Mapping):
            self.log.warning(
                "queue %r: expected the job list to be an object, got %s",
                self.queue,
                _describe(listing),
            )
            return
        seen: set[str] = set()
        # Sorted: on a (re)start the keys' order is the best record of the
        # order jobs were queued in (KSUID keys sort by creation time).
        for key in sorted(listing):
            if key.startswith("_"):
                continue
            link = self._link(key, listing[key])
            if isinstance(link, str):
                self.bad.warn(key, link)
                continue
            self.bad.fixed(key)
            seen.add(link.job_id)
            self._take(key, link, touched=known_before is None)
        if known_before is not None:
            self.bad.keep_only(listing)
            self._missing(seen, known_before)

    def _link(self, key: str, value: object) -> _Link | str:
        """The job link list entry *key* holds, or the problem that makes it none."""
        if key in self.layout.list_keys:
            # Filing it would move a whole job list to the failure list.
            return (
                f"it is a job list of the other layout, not a job: a requester posted to "
                f"{self.pending_path}/{key} with the wrong layout, and those jobs are never "
                f"run here; this service reads the {self.layout.name} layout "
                "(docs/layouts.md)"
            )
        try:
            # Filing the job deletes its key: a key no request can name
            # would delete something else, or never leave the list.
            path_segment(key)
        except InvalidKey as error:
            return f"{error}; it is left in the list, never run nor filed"
        job_id = value.get("_id") if isinstance(value, Mapping) else None
        if not (isinstance(job_id, str) and job_id.startswith("resources/")):
            got = f"keys {sorted(value)}" if isinstance(value, Mapping) else _describe(value)
            return f"expected a link {{'_id': 'resources/<key>'}}, got {got}"
        try:
            resource_path(job_id)
        except InvalidKey as error:
            # A link into a resource, or to one no request can name:
            # moved to the failure list, never read nor written.
            return _Link(job_id, error)
        return _Link(job_id)

    def _take(self, key: str, link: _Link, *, touched: bool) -> None:
        """A new job is read; a known one, if *touched* and waiting, read again."""
        scheduler = self.scheduler
        entry = scheduler.get(link.job_id)
        if entry is None:
            entry = scheduler.add(key, link.job_id)
            assert entry is not None
            if link.unreadable is not None:
                self._unreadable(entry, link.unreadable)
            elif entry.state is EntryState.READING:
                self._read(entry)
        elif touched and entry.state in _TOUCHABLE:
            scheduler.reread(entry)
            self._read(entry)

    def _missing(self, seen: set[str], known_before: int) -> None:
        """Let go of the jobs known before the list was read but not in it."""
        for entry in self.scheduler.entries():
            if (
                entry.seq <= known_before
                and entry.job_id not in seen
                and entry.state is not EntryState.RUNNING
            ):
                self._left(entry)

    def forget(self, body: Mapping[str, Any]) -> None:
        """Keys deleted from the list: those jobs are gone (filed, or removed)."""
        for key, value in body.items():
            if value is None and not key.startswith("_"):
                entry = self.scheduler.by_key(key)
                if entry is None:
                    continue
                if entry.state is EntryState.RUNNING:
                    self.scheduler.mark_gone(entry)
                else:
                    self._left(entry)

    async def sweep(self, oada: OADAClient, interval: float) -> None:
        """Re-read the list every *interval* seconds, in case a change to it was missed."""
        while True:
            await anyio.sleep(interval)
            known_before = self.scheduler.last_seq
            try:
                response = await oada.get(self.pending_path)
            except OADAError as error:
                self.log.warning("queue %r: sweep failed: %s", self.queue, error)
                continue
            self.offer(response.data, known_before=known_before)
