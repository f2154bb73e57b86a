"""Admission of a job before it starts: paused types, per-type concurrency, rate limits.

A :class:`Gate` is asked by the dispatcher before a job of a type starts.
It answers from what the service's control says (:mod:`oada_jobs.control`)
and, for a type with a ``concurrency`` or a ``rateLimit``, from the shared
resource ``/bookmarks/services/<name>/limits``, written by every replica
with ``If-Match`` so that of two replicas racing for the last slot only one
wins::

    {"email": {"slots": {"0": {"job": "resources/…", "worker": "…", "expires": "…"},
                         "1": null},
               "starts": {"0": "2026-…", "1": "2026-…"}, "next": 1}}

**Concurrency**: slot ``i`` (``0 <= i < concurrency``) is taken by one
running job and expires like a job lease: the replica holding it renews it
every third of the service's ``lease`` and frees it when the job ends. A
replica that dies frees its slots when they expire, so at most
``concurrency`` jobs of the type run over all replicas at once, except
while a stalled replica's slot has expired (the same window as a job
lease's).

**Rate limits**: ``starts`` keeps the start times of the last ``limit``
starts in a ring (``next`` is the oldest); a job starts only if the oldest
of them is at least ``period`` seconds old. At most ``limit`` jobs start in
any window of ``period`` seconds, as told by the replicas' clocks (their
skew is the precision); a start counts once admitted, even if the job's
claim then fails.

A job that may not start is held by its queue's scheduler (no slot, no
read) until :attr:`Gate.changed` fires or :meth:`Gate.next_check` comes.

Owns :class:`Gate`, :class:`Ticket` and :class:`TypeLimits`. May use the
client, the control model and the job clock; must not touch the scheduler,
the queue, the runner or the service.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import anyio

from .client import OADAClient
from .config import LIMIT_RECHECK
from .control import CONTROL_CONTENT_TYPE, RateLimit, control_tree
from .exceptions import NotFound, OADAError, PreconditionFailed
from .job import iso, parse_time, utc_now
from .tree import service_root
from .types import JsonObject

__all__ = ["ACQUIRE_TRIES", "Gate", "Ticket", "TypeLimits", "limits_path"]

logger = logging.getLogger("oada_jobs")

#: Conditional writes of the limits resource tried before giving up for now.
ACQUIRE_TRIES = 8


def limits_path(service: str) -> str:
    """``/bookmarks/services/<service>/limits``."""
    return f"{service_root(service)}/limits"


@dataclass(frozen=True, slots=True)
class TypeLimits:
    """What holds a type's jobs back now."""

    paused: bool = False
    concurrency: int | None = None
    rate_limit: RateLimit | None = None

    @property
    def shared(self) -> bool:
        """Whether admitting a job needs the shared limits resource."""
        return self.concurrency is not None or self.rate_limit is not None


@dataclass(frozen=True, slots=True)
class Ticket:
    """A job admitted to start; hand it back to :meth:`Gate.release` when it ends."""

    job_type: str
    job_id: str
    #: The concurrency slot taken, if the type has a concurrency.
    slot: str | None = None


class _Signal:
    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = anyio.Event()

    @property
    def event(self) -> anyio.Event:
        return self._event

    def fire(self) -> None:
        self._event.set()
        self._event = anyio.Event()


class Gate:
    """Decides whether a job of a type may start now (see the module docstring).

    :param service: the service name (where the limits resource is).
    :param worker_id: names this replica in the slots it takes.
    :param lease: how long a slot holds without renewal.
    :param limits_for: what holds a type back now (the control and the code's values).
    """

    def __init__(
        self,
        service: str,
        *,
        worker_id: str,
        lease: timedelta,
        limits_for: Callable[[str], TypeLimits],
    ) -> None:
        self.service = service
        self.path = limits_path(service)
        self.worker_id = worker_id
        self.lease = lease
        self.limits_for = limits_for
        self.oada: OADAClient | None = None
        self._changed = _Signal()
        self._running: dict[str, int] = {}
        self._tickets: set[Ticket] = set()
        self._refused_until: dict[str, float] = {}
        self._locks: dict[str, anyio.Lock] = {}

    @property
    def changed(self) -> anyio.Event:
        """Set when jobs held back may be admitted now (control changed, a job ended)."""
        return self._changed.event

    def notify(self) -> None:
        """What holds types back changed: let held jobs be asked about again."""
        self._refused_until.clear()
        self._changed.fire()

    def may_admit(self, job_type: str) -> bool:
        """Whether a job of *job_type* might be admitted now (no I/O; a first sieve)."""
        limits = self.limits_for(job_type)
        if limits.paused:
            return False
        if limits.concurrency is not None and self._running.get(job_type, 0) >= limits.concurrency:
            return False
        return self._refused_until.get(job_type, -math.inf) <= anyio.current_time()

    def next_check(self) -> float | None:
        """Seconds until a type refused for a limit held elsewhere should be asked again."""
        now = anyio.current_time()
        pending = [at for at in self._refused_until.values() if at > now]
        return max(0.0, min(pending) - now) if pending else None

    async def admit(self, job_type: str, job_id: str) -> Ticket | None:
        """A ticket if a job of *job_type* may start now, else ``None`` (hold it)."""
        if not self.may_admit(job_type):
            return None
        limits = self.limits_for(job_type)
        if not limits.shared:
            # Nothing to count: no held job waits for this one to end.
            return Ticket(job_type, job_id)
        lock = self._locks.setdefault(job_type, anyio.Lock())
        async with lock:
            if not self.may_admit(job_type):
                return None
            ticket = await self._acquire(job_type, job_id, limits)
        if ticket is not None:
            self._running[job_type] = self._running.get(job_type, 0) + 1
            self._tickets.add(ticket)
        return ticket

    def _refuse(self, job_type: str, until: datetime | None) -> None:
        wait = LIMIT_RECHECK if until is None else (until - utc_now()).total_seconds()
        self._refused_until[job_type] = anyio.current_time() + max(0.01, min(wait, 3600.0))
        # Whoever waits to release held jobs learns of the new time to ask again.
        self._changed.fire()

    async def _acquire(self, job_type: str, job_id: str, limits: TypeLimits) -> Ticket | None:
        assert self.oada is not None, "the gate is not attached to a client"
        oada = self.oada
        try:
            for _attempt in range(ACQUIRE_TRIES):
                try:
                    response = await oada.get(self.path)
                except NotFound:
                    await oada.ensure(self.path, {}, tree=control_tree())
                    continue
                data = response.data if isinstance(response.data, Mapping) else {}
                now = utc_now()
                current = data.get(job_type)
                body, slot, until = self._decide(
                    current if isinstance(current, Mapping) else {}, job_id, limits, now
                )
                if body is None:
                    self._refuse(job_type, until)
                    return None
                try:
                    await oada.put(
                        self.path,
                        {job_type: body},
                        content_type=CONTROL_CONTENT_TYPE,
                        if_match=response.etag,
                    )
                except PreconditionFailed:
                    continue  # another replica wrote it meanwhile: decide again
                return Ticket(job_type, job_id, slot)
        except OADAError as error:
            logger.warning(
                "service %s: could not check the limits of %r: %s; holding its jobs",
                self.service,
                job_type,
                error,
            )
        self._refuse(job_type, None)
        return None

    def _decide(
        self, current: Mapping[str, Any], job_id: str, limits: TypeLimits, now: datetime
    ) -> tuple[JsonObject | None, str | None, datetime | None]:
        """The write admitting a job (and its slot), or ``None`` and when to ask again."""
        body: JsonObject = {}
        slot: str | None = None
        if limits.concurrency is not None:
            slots = current.get("slots")
            slots = slots if isinstance(slots, Mapping) else {}
            earliest: datetime | None = None
            for index in range(limits.concurrency):
                held = slots.get(str(index))
                expires = parse_time(held.get("expires")) if isinstance(held, Mapping) else None
                if expires is None or expires <= now:
                    slot = str(index)
                    break
                earliest = expires if earliest is None else min(earliest, expires)
            if slot is None:
                recheck = now + timedelta(seconds=LIMIT_RECHECK)
                return None, None, min(earliest or recheck, recheck)
            body["slots"] = {
                slot: {"job": job_id, "worker": self.worker_id, "expires": iso(now + self.lease)}
            }
        rate = limits.rate_limit
        if rate is not None:
            starts = current.get("starts")
            starts = starts if isinstance(starts, Mapping) else {}
            position = current.get("next")
            if not isinstance(position, int) or isinstance(position, bool):
                position = 0
            position %= rate.limit
            oldest = parse_time(starts.get(str(position)))
            if oldest is not None and oldest > now - timedelta(seconds=rate.period):
                return None, None, oldest + timedelta(seconds=rate.period)
            body["starts"] = {str(position): iso(now)}
            body["next"] = (position + 1) % rate.limit
        return body, slot, None

    def holds(self, ticket: Ticket) -> bool:
        """Whether *ticket* holds something to release (a slot, a count)."""
        return ticket in self._tickets

    async def release(self, ticket: Ticket) -> None:
        """The admitted job ended (or did not start after all): free what it held."""
        if ticket not in self._tickets:
            return
        self._tickets.discard(ticket)
        self._running[ticket.job_type] = max(0, self._running.get(ticket.job_type, 0) - 1)
        if ticket.slot is not None and self.oada is not None:
            try:
                await self._free_slot(self.oada, ticket)
            except OADAError as error:
                logger.warning(
                    "service %s: could not free a %r slot (it expires by itself): %s",
                    self.service,
                    ticket.job_type,
                    error,
                )
        self._refused_until.pop(ticket.job_type, None)
        self._changed.fire()

    async def _free_slot(self, oada: OADAClient, ticket: Ticket) -> None:
        assert ticket.slot is not None
        for _attempt in range(ACQUIRE_TRIES):
            response = await oada.get(self.path)
            held = _slot(response.data, ticket)
            if not isinstance(held, Mapping) or held.get("job") != ticket.job_id:
                return
            try:
                await oada.put(
                    self.path,
                    {ticket.job_type: {"slots": {ticket.slot: None}}},
                    content_type=CONTROL_CONTENT_TYPE,
                    if_match=response.etag,
                )
                return
            except PreconditionFailed:
                continue

    async def renew(self, stopping: anyio.Event | None = None) -> None:
        """Renew this replica's slots every third of the lease, until cancelled,
        or until *stopping* is set and no slot is held any more."""
        interval = max(self.lease.total_seconds() / 3, 0.05)
        while True:
            deadline = anyio.current_time() + interval
            while (left := deadline - anyio.current_time()) > 0:
                stopped = stopping is not None and stopping.is_set()
                if stopped and not self._tickets:
                    return
                with anyio.move_on_after(left):
                    # Stopping: woken when a job ends (maybe the last one).
                    await (self.changed.wait() if stopped or stopping is None else stopping.wait())
            if self.oada is None or not any(t.slot is not None for t in self._tickets):
                continue
            try:
                await self._renew_once(self.oada)
            except OADAError as error:
                logger.warning("service %s: could not renew type slots: %s", self.service, error)

    async def _renew_once(self, oada: OADAClient) -> None:
        for _attempt in range(ACQUIRE_TRIES):
            response = await oada.get(self.path)
            expires = iso(utc_now() + self.lease)
            body: dict[str, JsonObject] = {}
            for ticket in list(self._tickets):
                held = _slot(response.data, ticket)
                if ticket.slot is None or not isinstance(held, Mapping):
                    continue
                if held.get("job") == ticket.job_id:
                    slots = body.setdefault(ticket.job_type, {"slots": {}})["slots"]
                    slots[ticket.slot] = {**held, "expires": expires}
            if not body:
                return
            try:
                await oada.put(
                    self.path, body, content_type=CONTROL_CONTENT_TYPE, if_match=response.etag
                )
                return
            except PreconditionFailed:
                continue


def _slot(data: object, ticket: Ticket) -> object:
    if not isinstance(data, Mapping):
        return None
    current = data.get(ticket.job_type)
    slots = current.get("slots") if isinstance(current, Mapping) else None
    return slots.get(ticket.slot) if isinstance(slots, Mapping) else None
