"""A queue: one job list on one OADA store, watched and worked through.

A :class:`Queue` ensures its pending list exists, reads it and watches it
*from the rev it read*, so nothing posted in between is missed. Each linked
job is read once and handed to the queue's
:class:`~oada_jobs.scheduler.Scheduler`, which decides when it may start and
in what order; a dispatcher starts the best ready job whenever the service
has a free slot. At most ``keep_jobs`` read jobs wait in memory, so a large
backlog is read as room frees up. A periodic sweep re-reads the list in case
a change to it was missed.

Stopping a queue stops its intake (watch, readers, timers, sweep, dispatch);
jobs already running finish.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .client import Watch
from .exceptions import (
    BadRequest,
    Forbidden,
    InvalidJob,
    InvalidKey,
    NotFound,
    OADAError,
    OADAStatusError,
    OADATransportError,
    PreconditionFailed,
    Unauthorized,
)
from .job import Job, JobStatus, iso, new_update, utc_now
from .runner import JobOutcome, Runner, read_job
from .scheduler import Entry, EntryState, Scheduler
from .tree import (
    JOBS_TYPE,
    LAYOUT_MARKER,
    SERVICE_TYPE,
    Layout,
    path_segment,
    resource_path,
    service_root,
)
from .types import JsonObject

if TYPE_CHECKING:
    from .client import OADAClient
    from .service import Service

__all__ = ["DEFAULT_QUEUE", "Queue"]

logger = logging.getLogger("oada_jobs")

#: Key of the queue on the service's own domain and token.
DEFAULT_QUEUE = "_default"
#: Most jobs a queue reads at once.
MAX_READERS = 16
#: Seconds before a job that could not be read or run is tried again.
READ_RETRY = 5.0
#: Readers of jobs read again (their timer fired, or their link was touched).
REREADERS = 2
#: Day lists a queue remembers as existing.
KNOWN_DAYS = 16
#: Longest wait, in seconds, for the jobs of a list just read to be read
#: before the first of them starts: a high-priority job further down the list
#: must not start after lower ones read before it.
FIRST_READS_HOLD = 2.0
#: Seconds before the same bad list entry is warned about again (it is
#: warned about when first seen, then at this slow cadence, never per sweep).
BAD_ENTRY_REWARN = 3600.0


def _describe(value: object) -> str:
    return "null" if value is None else type(value).__name__


class _Once:
    """Call ``task_status.started()`` exactly once, whichever path gets there first."""

    def __init__(self, task_status: TaskStatus[None]) -> None:
        self._task_status = task_status
        self.done = False

    def __call__(self) -> None:
        if not self.done:
            self.done = True
            self._task_status.started()


class Queue:
    """Watches one job list and runs its jobs through the service's workers.

    Created and run by :class:`~oada_jobs.Service`; ``key`` is the queue's key
    in the service's ``queues`` list (:data:`DEFAULT_QUEUE` for the service's
    own store).
    """

    def __init__(
        self,
        service: Service,
        key: str,
        *,
        domain: str,
        token: str | None,
    ) -> None:
        self.service = service
        self.key = key
        self.domain = domain
        self._token = token
        self.layout: Layout = service.layout
        self.pending_path = self.layout.pending_path(service.name)
        self._oada: OADAClient | None = None
        self._stopping = False
        self._stop_event = anyio.Event()
        self._intake_scope: anyio.CancelScope | None = None
        # Around connecting and running; cancelled by stop() only before any job can run.
        self._run_scope: anyio.CancelScope | None = None
        #: The queue's pending jobs and what runs next.
        self.scheduler = Scheduler(
            service.worker_for, worker_id=service.worker_id, keep_bodies=service.config.keep_jobs
        )
        self._runners: TaskGroup | None = None
        # Where jobs to read go, while the intake runs.
        self._reads = _Reads(None, None)
        # Day lists known to exist: linking into them needs no tree PUT.
        self._known_days: set[str] = set()
        # Open (not yet written) link batch and write lock per day list.
        self._link_batches: dict[str, _LinkBatch] = {}
        self._day_locks: dict[str, anyio.Lock] = {}
        # Bad list entries warned about: key -> (problem, anyio time warned).
        self._warned: dict[str, tuple[str, float]] = {}
        #: Whether the queue's list watch is open right now.
        self.watching = False
        self._list_watch: Watch[Any] | None = None
        self.log = logging.LoggerAdapter(logger, {"service": service.name, "queue": key})

    def __repr__(self) -> str:
        # Never the token.
        return f"Queue({self.key!r}, domain={self.domain!r})"

    @property
    def up(self) -> bool:
        """Whether the list watch is open and the server holds it now (not restoring)."""
        watch = self._list_watch
        return self.watching and watch is not None and watch.connected

    @property
    def oada(self) -> OADAClient:
        """The queue's client (only while the queue runs)."""
        if self._oada is None:
            raise RuntimeError(f"queue {self.key!r} is not running")
        return self._oada

    # ------------------------------------------------------------- lifecycle

    def stop(self) -> None:
        """Stop taking new jobs; jobs already running finish."""
        self._stopping = True
        self._stop_event.set()
        if self._intake_scope is not None:
            self._intake_scope.cancel()
        elif self._runners is None and self._run_scope is not None:
            # Still connecting (maybe to a server that never answers): no job
            # runs yet, so there is nothing to let finish.
            self._run_scope.cancel()

    @asynccontextmanager
    async def _client(self) -> AsyncIterator[OADAClient]:
        service = self.service
        if self._token is None:
            yield service.oada
        elif service.same_domain(self.domain):
            # Same store: share the service's connections; the queue's token
            # is used by this clone only.
            clone = service.oada.clone(self._token)
            try:
                yield clone
            finally:
                clone.revoke()
        else:
            from .client import OADAClient

            async with OADAClient(
                self.domain, self._token, concurrency=service.request_concurrency
            ) as client:
                yield client

    async def _backoff(self, delay: float) -> None:
        with anyio.move_on_after(delay):
            await self._stop_event.wait()

    def _explain(self, error: BaseException) -> str:
        if isinstance(error, Unauthorized | Forbidden):
            where = "the service's token" if self._token is None else "its entry in the queues list"
            return f"the queue's token was refused ({error.status}) by {self.domain}; check {where}"
        if isinstance(error, OADAStatusError):
            return f"{self.domain} answered {error.status}: {error}"
        return f"{type(error).__name__}: {error}"

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run until stopped: retry on errors with backoff; running jobs finish."""
        ready = _Once(task_status)
        config = self.service.config
        delay = config.retry_initial
        try:
            while not self._stopping:
                try:
                    with anyio.CancelScope() as self._run_scope:
                        async with self._client() as oada, anyio.create_task_group() as runners:
                            self._oada, self._runners = oada, runners
                            await self._intake(runners, ready)
                    return
                except OADAError as error:
                    self.log.error(
                        "queue %r could not start: %s; retrying in %.1f s",
                        self.key,
                        self._explain(error),
                        delay,
                    )
                ready()
                await self._backoff(delay)
                delay = min(delay * 2, config.retry_max)
        finally:
            ready()
            self._oada = self._runners = None
            self._run_scope = None

    async def _intake(self, runners: TaskGroup, ready: _Once) -> None:
        """Watch, sweep and dispatch until stopped; errors are retried here so
        that running jobs (in *runners*) are never cancelled by them."""
        config = self.service.config
        delay = config.retry_initial
        with anyio.CancelScope() as scope:
            self._intake_scope = scope
            if self._stopping:
                scope.cancel()
            while True:
                try:
                    try:
                        await self._watch(runners, ready)
                    finally:
                        self._set_watching(False)
                    delay = config.retry_initial
                    self.log.warning("queue %r: the list watch ended; re-opening it", self.key)
                except OADAError as error:
                    self.log.error(
                        "queue %r: %s; retrying in %.1f s", self.key, self._explain(error), delay
                    )
                    # The service's start() waits for every initial queue;
                    # a failing one must not hold it up while it retries.
                    ready()
                    await self._backoff(delay)
                    delay = min(delay * 2, config.retry_max)
                except Exception:
                    self.log.exception("queue %r failed; retrying in %.1f s", self.key, delay)
                    ready()
                    await self._backoff(delay)
                    delay = min(delay * 2, config.retry_max)
        self._intake_scope = None

    async def _watch(self, runners: TaskGroup, ready: _Once) -> None:
        oada = self.oada
        await oada.ensure(self.pending_path, {}, tree=self.layout.tree)
        await self._note_layout()
        response = await oada.get(self.pending_path)
        service = self.service
        scheduler = self.scheduler
        # First reads wait for room (keep_jobs); reads again never do, since
        # they are what lets waiting jobs move on and room free up.
        first, first_out = anyio.create_memory_object_stream[Entry](math.inf)
        again, again_out = anyio.create_memory_object_stream[Entry](math.inf)
        self._reads = _Reads(first, again)
        async with (
            first,
            first_out,
            again,
            again_out,
            oada.watch(self.pending_path, rev=response.rev) as changes,
        ):
            self.log.info("queue %r: watching %s on %s", self.key, self.pending_path, self.domain)
            self._list_watch = changes
            self._set_watching(True)
            ready()
            async with anyio.create_task_group() as intake:
                for _ in range(max(1, min(service.config.concurrency, MAX_READERS))):
                    intake.start_soon(self._reader, first_out.clone(), True)
                for _ in range(REREADERS):
                    intake.start_soon(self._reader, again_out.clone(), False)
                intake.start_soon(self._timers)
                intake.start_soon(self._dispatch, runners)
                intake.start_soon(self._dispatch_urgent, runners)
                intake.start_soon(self._sweep)
                # On a re-opened watch the scheduler keeps what it knew:
                # reads cut short are redone (first, as they are the
                # oldest), jobs gone meanwhile are forgotten.
                for entry in scheduler.entries():
                    if entry.state is EntryState.READING:
                        self._reads.send(entry)
                self._offer(response.data, known_before=scheduler.last_seq)
                async for change in changes:
                    if change.path not in ("", "/") or not change.body:
                        continue
                    if change.type == "delete":
                        self._forget(change.body)
                    else:
                        self._offer(change.body)
                intake.cancel_scope.cancel()

    async def _note_layout(self) -> None:
        """Note the layout on the service resource, for requesters to find.

        Only a hint: a failure to read or write it is logged, never fatal.
        """
        root = service_root(self.service.name)
        try:
            try:
                noted = (await self.oada.get(f"{root}/{LAYOUT_MARKER}")).data
            except NotFound:
                noted = None
            if noted == self.layout.name:
                return
            if noted in ("classic", "pending"):
                self.log.warning(
                    "queue %r: the service was noted as using the %s layout; this one uses %s",
                    self.key,
                    noted,
                    self.layout.name,
                )
            await self.oada.put(root, {LAYOUT_MARKER: self.layout.name}, content_type=SERVICE_TYPE)
        except OADAError as error:
            # A token for the job list only, say: requesters guess instead.
            self.log.debug("queue %r: could not note the layout: %s", self.key, error)

    def _set_watching(self, value: bool) -> None:
        if self.watching != value:
            self.watching = value
            self.service._queues_changed()

    def _offer(self, listing: object, *, known_before: int | None = None) -> None:
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
                self.key,
                _describe(listing),
            )
            return
        scheduler = self.scheduler
        seen: set[str] = set()
        # Sorted: on a (re)start the keys' order is the best record of the
        # order jobs were queued in (KSUID keys sort by creation time).
        for key in sorted(listing):
            value = listing[key]
            if key.startswith("_"):
                continue
            job_id = value.get("_id") if isinstance(value, Mapping) else None
            if key in self.layout.list_keys:
                # Filing it would move a whole job list to the failure list.
                self._bad_entry(
                    key,
                    f"it is a job list of the other layout, not a job: a requester posted to "
                    f"{self.pending_path}/{key} with the wrong layout, and those jobs are never "
                    f"run here; this service reads the {self.layout.name} layout "
                    "(docs/layouts.md)",
                )
                continue
            try:
                # Filing the job deletes its key: a key no request can name
                # would delete something else, or never leave the list.
                path_segment(key)
            except InvalidKey as error:
                self._bad_entry(key, f"{error}; it is left in the list, never run nor filed")
                continue
            unreadable: InvalidKey | None = None
            if isinstance(job_id, str) and job_id.startswith("resources/"):
                try:
                    resource_path(job_id)
                except InvalidKey as error:
                    # A link into a resource, or to one no request can name:
                    # moved to the failure list, never read nor written.
                    unreadable = error
            else:
                got = f"keys {sorted(value)}" if isinstance(value, Mapping) else _describe(value)
                self._bad_entry(key, f"expected a link {{'_id': 'resources/<key>'}}, got {got}")
                continue
            assert isinstance(job_id, str)
            self._warned.pop(key, None)
            seen.add(job_id)
            entry = scheduler.get(job_id)
            if entry is None:
                entry = scheduler.add(key, job_id)
                assert entry is not None
                if unreadable is None:
                    self._reads.send(entry)
                else:
                    scheduler.read(entry, None, unreadable)
            elif known_before is None and entry.state in _TOUCHABLE:
                scheduler.reread(entry)
                self._reads.send(entry)
        if known_before is not None:
            for key in [key for key in self._warned if key not in listing]:
                del self._warned[key]
            for entry in scheduler.entries():
                if (
                    entry.seq <= known_before
                    and entry.job_id not in seen
                    and entry.state is not EntryState.RUNNING
                ):
                    self._left(entry)

    def _bad_entry(self, key: str, problem: str) -> None:
        """Warn about a bad list entry once, then every :data:`BAD_ENTRY_REWARN` s."""
        now = anyio.current_time()
        warned = self._warned.get(key)
        if warned is not None and warned[0] == problem and now - warned[1] < BAD_ENTRY_REWARN:
            return
        self._warned[key] = (problem, now)
        self.service.metrics.bad_entry()
        self.log.warning("queue %r: skipping list entry %r: %s", self.key, key, problem)

    def _forget(self, body: Mapping[str, Any]) -> None:
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

    def _left(self, entry: Entry) -> None:
        merged = self.scheduler.remove(entry)
        if merged:
            # Filed elsewhere (another replica, or by hand): read how it ended.
            self.start_beside(self._settle_merged, entry.job_id, merged, None)

    def start_beside(self, func: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
        """Run *func* beside the jobs (it finishes even when intake stops)."""
        assert self._runners is not None
        self._runners.start_soon(func, *args)

    async def _reader(self, receive: MemoryObjectReceiveStream[Entry], first: bool) -> None:
        """Read jobs handed in by the list, the sweep and the timers."""
        async with receive:
            async for entry in receive:
                if first:
                    # A large backlog is read as room frees up, not all at once.
                    async with self.scheduler.room(entry):
                        await self._read_into_scheduler(entry)
                else:
                    await self._read_into_scheduler(entry)

    async def _read_into_scheduler(self, entry: Entry) -> None:
        if self.scheduler.get(entry.job_id) is not entry:
            return  # left the list meanwhile
        try:
            job = await self._read(entry)
        except (InvalidJob, InvalidKey, NotFound, Forbidden, BadRequest) as problem:
            self.scheduler.read(entry, None, problem)
        except OADAError as error:
            self.log.warning(
                "queue %r: could not read job %s: %s; trying again later",
                self.key,
                entry.job_id,
                error,
            )
            self.scheduler.read_failed(entry, anyio.current_time() + READ_RETRY)
        else:
            self.scheduler.read(entry, job, None)

    async def _read(self, entry: Entry) -> Job[JsonObject]:
        """Read a job for the scheduler; write a type's start delay the first time."""
        for _attempt in range(3):
            job = await read_job(
                self.oada,
                entry.job_id,
                key=entry.key,
                wait=self.service.config.invalid_job_wait,
            )
            worker = self.service.worker_for(job.type)
            if (
                worker is None
                or not worker.start_delay
                or job.tries
                or job.run_at is not None
                or job.options.not_before is not None
                or job.status not in (None, JobStatus.PENDING.value)
            ):
                return job
            # Written on the job, so a restart keeps the delay.
            run_at = utc_now() + timedelta(seconds=worker.start_delay)
            key, update = new_update("delayed", f"start delay of {worker.start_delay:g} s")
            body = {"runAt": iso(run_at), "updates": {key: update}}
            try:
                response = await self.oada.put(
                    resource_path(entry.job_id), body, content_type=JOBS_TYPE, if_match=job.etag
                )
            except PreconditionFailed:
                continue  # changed meanwhile (another replica did it): look again
            return replace(job, run_at=run_at, etag=response.etag)
        raise OADATransportError(f"job {entry.job_id} kept changing while being read")

    async def _timers(self) -> None:
        """Hand jobs whose time came back to the readers."""
        scheduler = self.scheduler
        while True:
            added = scheduler.timer_added
            for entry in scheduler.due():
                scheduler.reread(entry)
                self._reads.send(entry)
            at = scheduler.next_timer()
            with anyio.move_on_after(math.inf if at is None else at - anyio.current_time()):
                await added.wait()

    async def _sweep(self) -> None:
        """Re-read the list now and then, in case a change to it was missed."""
        while True:
            await anyio.sleep(self.service.config.sweep_interval)
            known_before = self.scheduler.last_seq
            try:
                response = await self.oada.get(self.pending_path)
            except OADAError as error:
                self.log.warning("queue %r: sweep failed: %s", self.key, error)
                continue
            self._offer(response.data, known_before=known_before)

    async def _dispatch(self, runners: TaskGroup) -> None:
        """Start the best ready job whenever one is ready and a slot is free."""
        service = self.service
        limiter = service.limiter
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
            self._begin(runners, entry, limiter, borrower)

    async def _dispatch_urgent(self, runners: TaskGroup) -> None:
        """File jobs that need no work function (bad, cancelled, refused) at
        once, without a job slot; at most ``concurrency`` at a time."""
        scheduler = self.scheduler
        filing = anyio.CapacityLimiter(self.service.config.concurrency)
        while True:
            added = scheduler.urgent_added
            entry = scheduler.pop_urgent()
            if entry is None:
                await added.wait()
                continue
            borrower = object()
            await _acquire(filing, borrower)
            self._begin(runners, entry, filing, borrower)

    def _begin(
        self, runners: TaskGroup, entry: Entry, limiter: anyio.CapacityLimiter, borrower: object
    ) -> None:
        if self.service.claim_in_flight(self.domain, entry.job_id):
            runners.start_soon(self._run_job, entry, limiter, borrower)
            return
        # Another queue of this service runs it right now.
        limiter.release_on_behalf_of(borrower)
        self.scheduler.wait(entry, anyio.current_time() + READ_RETRY)

    async def _run_job(
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

        runner = Runner(self, entry, release_slot=release_slot)
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
            self.service.release_in_flight(self.domain, entry.job_id)
            release_slot()
            if later is not None and not entry.gone:
                self.scheduler.wait(entry, later)
            else:
                merged = self.scheduler.remove(entry)
                if merged:
                    self.start_beside(self._settle_merged, entry.job_id, merged, runner.outcome)

    async def _settle_merged(
        self, holder_id: str, merged: list[Entry], outcome: JobOutcome | None
    ) -> None:
        """File the jobs merged into *holder_id* with its outcome."""
        if outcome is None:
            holder = await self._read_holder(holder_id)
            if holder is None or not holder.finished:
                # It left the list without an outcome: decide them again.
                self.scheduler.unpark(merged)
                for entry in merged:
                    self._reads.send(entry)
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
        delay = self.service.config.retry_initial
        for _attempt in range(5):
            try:
                data = (await self.oada.get(resource_path(holder_id))).data
                return Job.from_resource(data, oada_id=holder_id)
            except (NotFound, Forbidden, BadRequest, InvalidJob) as error:
                self.log.warning("queue %r: could not read %s: %s", self.key, holder_id, error)
                return None
            except OADAError as error:
                self.log.warning(
                    "queue %r: could not read %s: %s; retrying", self.key, holder_id, error
                )
                await anyio.sleep(delay)
                delay = min(delay * 2, self.service.config.retry_max)
        return None

    # ------------------------------------------------------------- filing

    async def link_into(self, day_path: str, key: str, job_id: str) -> None:
        """Add a versioned link to *job_id* under *key* in the day list *day_path*.

        Links are group-committed: while one write to a day list is in flight,
        links of other jobs finishing meanwhile gather and go out together in
        the next single PUT (each link write bumps every versioned parent up to
        the bookmarks, so this saves the server most of its work per job under
        load, and costs nothing when idle). Returns once this job's link is
        written; raises if that write failed.

        The first write into a day list is a tree PUT (it creates the list and
        links it in); later ones are a plain PUT.
        """
        batch = self._link_batches.get(day_path)
        if batch is not None:
            batch.links[key] = {"_id": job_id, "_rev": 0}
            await batch.done.wait()
            if batch.error is not None:
                raise OADATransportError(f"linking into {day_path} failed: {batch.error}")
            return
        batch = _LinkBatch({key: {"_id": job_id, "_rev": 0}})
        self._link_batches[day_path] = batch
        lock = self._day_locks.setdefault(day_path, anyio.Lock())
        try:
            async with lock:
                # Sealed from here: later links start the next batch.
                if self._link_batches.get(day_path) is batch:
                    del self._link_batches[day_path]
                if day_path in self._known_days:
                    await self.oada.put(day_path, batch.links, content_type=JOBS_TYPE)
                else:
                    await self.oada.put(day_path, batch.links, tree=self.layout.tree)
                    if len(self._known_days) >= KNOWN_DAYS:
                        # Days go by: forget old lists (at worst one more tree PUT).
                        self._known_days.clear()
                        self._day_locks = {
                            path: other
                            for path, other in self._day_locks.items()
                            if other is lock or other.locked()
                        }
                    self._known_days.add(day_path)
        except BaseException as error:
            batch.error = error
            raise
        finally:
            if self._link_batches.get(day_path) is batch:
                del self._link_batches[day_path]
            batch.done.set()


async def _acquire(limiter: anyio.CapacityLimiter, borrower: object) -> None:
    """Take a slot of *limiter* for *borrower*, waiting only if none is free.

    ``acquire_on_behalf_of`` passes through the event loop even when a slot
    is free, which cost a loop pass (about 15 us) on every job started.
    """
    try:
        limiter.acquire_on_behalf_of_nowait(borrower)
    except anyio.WouldBlock:
        await limiter.acquire_on_behalf_of(borrower)


#: States in which a touched link makes the queue read the job again.
_TOUCHABLE = frozenset({EntryState.WAITING, EntryState.READY, EntryState.PARKED})


@dataclass(slots=True)
class _Reads:
    """The queue's two read streams: first reads, and reads again."""

    first: MemoryObjectSendStream[Entry] | None
    again: MemoryObjectSendStream[Entry] | None

    def send(self, entry: Entry) -> None:
        stream = self.again if entry.settled_once else self.first
        # Closed when the intake stopped: a re-opened watch reads it then.
        with suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            if stream is not None:
                stream.send_nowait(entry)


@dataclass(slots=True)
class _LinkBatch:
    """Links waiting for one PUT into a day list."""

    links: dict[str, Any]
    done: anyio.Event = field(default_factory=anyio.Event)
    error: BaseException | None = None
