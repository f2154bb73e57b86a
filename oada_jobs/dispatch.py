"""Dispatch: start a queue's jobs as the service's job slots free up.

A queue's :class:`Dispatcher` takes the best ready job from the queue's
scheduler whenever one of the service's slots is free, and jobs that only
need filing (bad, cancelled, refused) at once, without a slot. Each job
runs in a :class:`~oada_jobs.runner.Runner` the queue makes, in a task group
that outlives the queue's intake. Jobs merged into another (same unique
key) are filed with its outcome once it ends.

Owns :class:`Dispatcher` and :class:`InFlight` (the jobs running over all of
a service's queues). Gets the scheduler, a runner factory and the slots;
must not touch the queue's list watch, the service, cron or reports.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Coroutine
from datetime import datetime, timedelta
from typing import Any

import anyio
from anyio.abc import TaskGroup

from ._retry import Delay, retry
from .client import OADAClient
from .decision import Decision
from .exceptions import BadRequest, Forbidden, InvalidJob, NotFound, OADAError
from .job import Job, utc_now
from .limits import Gate, Ticket
from .outcome import JobOutcome
from .runner import Runner
from .scheduler import Entry, EntryState, Scheduler
from .tree import resource_path
from .types import JsonObject

__all__ = [
    "FIRST_READS_HOLD",
    "HOLDER_READS",
    "READ_RETRY",
    "Dispatcher",
    "InFlight",
    "MakeRunner",
]

#: Seconds before a job that could not be read or run is tried again.
READ_RETRY = 5.0
#: Reads of a job merged jobs wait on, before they are decided again.
HOLDER_READS = 5
#: Longest wait, in seconds, for the jobs of a list just read to be read
#: before the first of them starts: a high-priority job further down the list
#: must not start after lower ones read before it.
FIRST_READS_HOLD = 2.0

#: Makes the runner of a job: its decision, and the callable freeing its slot.
MakeRunner = Callable[[Decision, Callable[[], None]], Runner]


class InFlight:
    """The jobs running in a service right now, over all its queues.

    Two queues of one service may list the same job (two entries for one
    store); only the first to claim it here runs it.
    """

    def __init__(self) -> None:
        self._jobs: set[tuple[str, str]] = set()

    def claim(self, domain: str, job_id: str) -> bool:
        """Mark a job as in flight; ``False`` if it already is."""
        if (domain, job_id) in self._jobs:
            return False
        self._jobs.add((domain, job_id))
        return True

    def release(self, domain: str, job_id: str) -> None:
        self._jobs.discard((domain, job_id))


class Dispatcher:
    """Starts the jobs of one queue's scheduler (see the module docstring).

    :param scheduler: the queue's scheduler.
    :param runners: the task group jobs run in (it outlives the intake).
    :param make_runner: makes a job's runner.
    :param oada: the queue's client (to read a job others were merged into).
    :param limiter: the service's job slots.
    :param in_flight: the jobs running over all the service's queues.
    :param key: the queue's key (for log lines).
    :param domain: the queue's store (a key of *in_flight*).
    :param concurrency: jobs filed without a slot at once.
    :param backoff: waits between reads of a job others were merged into.
    :param reread: hands a job back to the queue's readers.
    :param log: the queue's logger.
    :param gate: admits jobs by type (paused types, per-type concurrency and
        rate limits); a job it refuses is held by the scheduler.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        runners: TaskGroup,
        *,
        make_runner: MakeRunner,
        oada: OADAClient,
        limiter: anyio.CapacityLimiter,
        in_flight: InFlight,
        key: str,
        domain: str,
        concurrency: int,
        backoff: Delay,
        reread: Callable[[Entry], None],
        log: logging.LoggerAdapter[logging.Logger],
        gate: Gate | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.gate = gate
        self.runners = runners
        self.make_runner = make_runner
        self.oada = oada
        self.limiter = limiter
        self.in_flight = in_flight
        self.key = key
        self.domain = domain
        self.concurrency = concurrency
        self.backoff = backoff
        self.reread = reread
        self.log = log

    def start_beside(self, func: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
        """Run *func* beside the jobs (it finishes even when the intake stops)."""
        self.runners.start_soon(func, *args)

    def left(self, entry: Entry) -> None:
        """*entry* left the list without running here: settle the jobs merged into it."""
        merged = self.scheduler.remove(entry)
        # Jobs of other shares merged into it are their owners' to file.
        merged = self.scheduler.keep_mine(merged)
        if merged:
            # Filed elsewhere (another replica, or by hand): read how it ended.
            self.start_beside(self.settle_merged, entry.job_id, merged, None)

    async def dispatch(self) -> None:
        """Start the best ready job whenever one is ready and a slot is free."""
        limiter = self.limiter
        scheduler = self.scheduler
        # The list was just read: let its jobs be read (as many as fit in
        # memory) before choosing by priority among them.
        with anyio.move_on_after(FIRST_READS_HOLD):
            while scheduler.reading_first() and not scheduler.full:
                await scheduler.changed.wait()
        while True:
            # Wait for a job first: an idle queue holds no slot.
            while not scheduler.has_ready():
                await scheduler.changed.wait()
            borrower = object()
            await _acquire(limiter, borrower)
            entry = scheduler.pop()
            if entry is None:
                limiter.release_on_behalf_of(borrower)
                continue
            self._begin(entry, limiter, borrower, gated=True)

    async def release_held(self) -> None:
        """Make jobs held back by their type ready again whenever the gate may
        let their type go (a control change, a job of the type ended, a
        limit's window moved on)."""
        gate = self.gate
        if gate is None:
            return
        while True:
            changed = gate.changed
            self.scheduler.unhold(gate.may_admit)
            wait = gate.next_check()
            with anyio.move_on_after(math.inf if wait is None else wait):
                await changed.wait()

    async def dispatch_urgent(self) -> None:
        """File jobs that need no work function (bad, cancelled, refused) at
        once, without a job slot; at most ``concurrency`` at a time."""
        scheduler = self.scheduler
        filing = anyio.CapacityLimiter(self.concurrency)
        while True:
            added = scheduler.urgent_added
            entry = scheduler.pop_urgent()
            if entry is None:
                await added.wait()
                continue
            borrower = object()
            await _acquire(filing, borrower)
            self._begin(entry, filing, borrower)

    def _begin(
        self,
        entry: Entry,
        limiter: anyio.CapacityLimiter,
        borrower: object,
        *,
        gated: bool = False,
    ) -> None:
        if self.in_flight.claim(self.domain, entry.job_id):
            self.runners.start_soon(self._run_job, entry, limiter, borrower, gated)
            return
        # Another queue of this service runs it right now.
        limiter.release_on_behalf_of(borrower)
        self.scheduler.wait(entry, anyio.current_time() + READ_RETRY)

    async def _run_job(
        self,
        entry: Entry,
        limiter: anyio.CapacityLimiter | None,
        borrower: object,
        gated: bool = False,
    ) -> None:
        ticket: Ticket | None = None
        if gated and self.gate is not None and entry.job_type is not None:
            try:
                ticket = await self.gate.admit(entry.job_type, entry.job_id)
            finally:
                if ticket is None:
                    # Held back (or cancelled while asking): it holds no slot meanwhile.
                    self.in_flight.release(self.domain, entry.job_id)
                    if limiter is not None:
                        limiter.release_on_behalf_of(borrower)
                    if entry.gone:
                        self.left(entry)
                    else:
                        self.scheduler.hold(entry)
            if ticket is None:
                return
        try:
            await self._run_admitted(entry, limiter, borrower)
        finally:
            gate = self.gate
            if ticket is not None and gate is not None and gate.holds(ticket):
                with anyio.CancelScope(shield=True), anyio.move_on_after(READ_RETRY):
                    await gate.release(ticket)

    async def _run_admitted(
        self, entry: Entry, limiter: anyio.CapacityLimiter | None, borrower: object
    ) -> None:
        released = limiter is None

        def release_slot() -> None:
            # Called once the job's outcome is written: filing it (two more
            # requests) need not hold up the next job.
            nonlocal released
            if not released:
                released = True
                assert limiter is not None
                limiter.release_on_behalf_of(borrower)

        decision = Decision(
            entry.key, entry.job_id, entry.problem, entry.duplicate_of, entry.merged_into
        )
        runner = self.make_runner(decision, release_slot)
        job = self.scheduler.take(entry)
        later: datetime | None = None
        try:
            later = await runner.run(job)
        except OADAError as error:
            self.log.error(
                "queue %r: job %s (%s) could not be processed: %s; trying again later",
                self.key,
                entry.key,
                entry.job_id,
                error,
            )
            later = utc_now() + timedelta(seconds=READ_RETRY)
        except Exception:
            self.log.exception(
                "queue %r: job %s (%s) failed unexpectedly", self.key, entry.key, entry.job_id
            )
            later = utc_now() + timedelta(seconds=READ_RETRY)
        finally:
            self.in_flight.release(self.domain, entry.job_id)
            release_slot()
            if later is not None and not entry.gone:
                self.scheduler.wait(entry, later)
            else:
                merged = self.scheduler.keep_mine(self.scheduler.remove(entry))
                if merged:
                    self.start_beside(self.settle_merged, entry.job_id, merged, runner.outcome)

    async def settle_merged(
        self, holder_id: str, merged: list[Entry], outcome: JobOutcome | None
    ) -> None:
        """File the jobs merged into *holder_id* with its outcome."""
        if outcome is None:
            holder = await self._read_holder(holder_id)
            if holder is None or not holder.finished:
                # It left the list without an outcome: decide them again.
                self.scheduler.unpark(merged)
                for entry in merged:
                    self.reread(entry)
                return
            assert holder.status is not None
            fail_type = holder.result.get("failType") if isinstance(holder.result, dict) else None
            outcome = JobOutcome(
                holder.status, holder.result, fail_type if isinstance(fail_type, str) else None
            )
        for entry in merged:
            if self.scheduler.get(entry.job_id) is entry:
                entry.merged_into = (holder_id, outcome)
                entry.state = EntryState.RUNNING
                self.start_beside(self._run_job, entry, None, None)

    async def _read_holder(self, holder_id: str) -> Job[JsonObject] | None:
        """The job merged jobs wait on, as it ended; ``None`` if it cannot be read."""

        def warn(error: BaseException, delay: float) -> None:
            self.log.warning(
                "queue %r: could not read %s: %s; retrying", self.key, holder_id, error
            )

        try:
            response = await retry(
                lambda: self.oada.get(resource_path(holder_id)),
                retryable=lambda error: (
                    isinstance(error, OADAError)
                    and not isinstance(error, NotFound | Forbidden | BadRequest)
                ),
                delay=self.backoff,
                retries=HOLDER_READS - 1,
                on_retry=warn,
            )
            return Job.from_resource(response.data, oada_id=holder_id)
        except (OADAError, InvalidJob) as error:
            self.log.warning("queue %r: could not read %s: %s", self.key, holder_id, error)
            return None


async def _acquire(limiter: anyio.CapacityLimiter, borrower: object) -> None:
    """Take a slot of *limiter* for *borrower*, waiting only if none is free.

    ``acquire_on_behalf_of`` passes through the event loop even when a slot
    is free, which cost a loop pass (about 15 us) on every job started.
    """
    try:
        limiter.acquire_on_behalf_of_nowait(borrower)
    except anyio.WouldBlock:
        await limiter.acquire_on_behalf_of(borrower)
