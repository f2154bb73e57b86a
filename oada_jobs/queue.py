"""A queue: one job list on one OADA store, watched and worked through.

A :class:`Queue` ensures its pending list exists, reads it, works through what
is there and watches the list *from the rev it read*, so nothing posted in
between is missed. Keys go through a bounded stream to a dispatcher that reads
a job only when the service has a free slot, so a large backlog is never
loaded all at once. A periodic sweep re-reads the list to pick up jobs whose
worker died (expired lease) or that were given back at shutdown.

Stopping a queue stops its intake (watch, sweep, dispatch); jobs already
running finish.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .exceptions import Forbidden, OADAError, OADAStatusError, OADATransportError, Unauthorized
from .runner import Runner
from .tree import JOBS_TYPE, Layout

if TYPE_CHECKING:
    from .client import OADAClient
    from .service import Service

__all__ = ["DEFAULT_QUEUE", "Queue"]

logger = logging.getLogger("oada_jobs")

#: Key of the queue on the service's own domain and token.
DEFAULT_QUEUE = "_default"


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
        self._queued: set[str] = set()
        # Day lists known to exist: linking into them needs no tree PUT.
        self._known_days: set[str] = set()
        # Open (not yet written) link batch and write lock per day list.
        self._link_batches: dict[str, _LinkBatch] = {}
        self._day_locks: dict[str, anyio.Lock] = {}
        #: Whether the queue's list watch is open right now.
        self.watching = False
        # Times (anyio clock) at which a sweep is wanted before the periodic one.
        self._early_sweeps: list[float] = []
        self._sweep_wakeup = anyio.Event()
        self.log = logging.LoggerAdapter(logger, {"service": service.name, "queue": key})

    def __repr__(self) -> str:
        # Never the token.
        return f"Queue({self.key!r}, domain={self.domain!r})"

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
                    async with self._client() as oada, anyio.create_task_group() as runners:
                        self._oada = oada
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
            self._oada = None

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
        response = await oada.get(self.pending_path)
        bound = max(1, self.service.config.concurrency)
        send, receive = anyio.create_memory_object_stream[tuple[str, str]](bound)
        self._queued.clear()
        async with send, receive, oada.watch(self.pending_path, rev=response.rev) as changes:
            self.log.info("queue %r: watching %s on %s", self.key, self.pending_path, self.domain)
            self._set_watching(True)
            ready()
            async with anyio.create_task_group() as intake:
                intake.start_soon(self._dispatch, receive, runners)
                intake.start_soon(self._sweep, send)
                await self._offer(response.data, send)
                async for change in changes:
                    if change.type == "merge" and change.path in ("", "/") and change.body:
                        await self._offer(change.body, send)
                intake.cancel_scope.cancel()

    def _set_watching(self, value: bool) -> None:
        if self.watching != value:
            self.watching = value
            self.service._queues_changed()

    async def _offer(self, listing: object, send: MemoryObjectSendStream[tuple[str, str]]) -> None:
        """Queue every job link in *listing* (a list body or a change body)."""
        if not isinstance(listing, Mapping):
            self.log.warning(
                "queue %r: expected the job list to be an object, got %s",
                self.key,
                _describe(listing),
            )
            return
        for key, value in listing.items():
            if key.startswith("_"):
                continue
            job_id = value.get("_id") if isinstance(value, Mapping) else None
            if not isinstance(job_id, str) or not job_id.startswith("resources/"):
                self.log.warning(
                    "queue %r: skipping list entry %r: expected a link {'_id': 'resources/...'}, "
                    "got %s",
                    self.key,
                    key,
                    _describe(value) if not isinstance(value, Mapping) else f"keys {sorted(value)}",
                )
                continue
            if job_id in self._queued or self.service.in_flight(self.domain, job_id):
                continue
            self._queued.add(job_id)
            await send.send((key, job_id))

    async def _sweep(self, send: MemoryObjectSendStream[tuple[str, str]]) -> None:
        """Re-read the list now and then: jobs given back or left by a dead worker."""
        while True:
            interval = self.service.config.sweep_interval
            next_at = anyio.current_time() + interval
            while anyio.current_time() < next_at:
                if self._early_sweeps:
                    next_at = min(next_at, min(self._early_sweeps))
                self._sweep_wakeup = anyio.Event()
                with anyio.move_on_after(max(0.0, next_at - anyio.current_time())):
                    await self._sweep_wakeup.wait()
            now = anyio.current_time()
            self._early_sweeps = [at for at in self._early_sweeps if at > now]
            try:
                response = await self.oada.get(self.pending_path)
            except OADAError as error:
                self.log.warning("queue %r: sweep failed: %s", self.key, error)
                continue
            await self._offer(response.data, send)

    def sweep_at(self, delay: float) -> None:
        """Re-read the list *delay* seconds from now (e.g. for a job's retry)."""
        self._early_sweeps.append(anyio.current_time() + delay)
        self._sweep_wakeup.set()

    async def _dispatch(
        self, receive: MemoryObjectReceiveStream[tuple[str, str]], runners: TaskGroup
    ) -> None:
        limiter = self.service.limiter
        async for key, job_id in receive:
            self._queued.discard(job_id)
            borrower = object()
            await limiter.acquire_on_behalf_of(borrower)
            if not self.service.claim_in_flight(self.domain, job_id):
                limiter.release_on_behalf_of(borrower)
                continue
            runners.start_soon(self._run_job, key, job_id, borrower)

    async def _run_job(self, key: str, job_id: str, borrower: object) -> None:
        limiter = self.service.limiter
        released = False

        def release_slot() -> None:
            # Called once the job's outcome is written: filing it (two more
            # requests) need not hold up the next job.
            nonlocal released
            if not released:
                released = True
                limiter.release_on_behalf_of(borrower)

        try:
            await Runner(self, key, job_id, release_slot=release_slot).run()
        except OADAError as error:
            # The job stays in the list; the sweep will try it again.
            self.log.error(
                "queue %r: job %s (%s) could not be processed: %s", self.key, key, job_id, error
            )
        except Exception:
            self.log.exception("queue %r: job %s (%s) failed unexpectedly", self.key, key, job_id)
        finally:
            self.service.release_in_flight(self.domain, job_id)
            release_slot()

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
                    self._known_days.add(day_path)
        except BaseException as error:
            batch.error = error
            raise
        finally:
            if self._link_batches.get(day_path) is batch:
                del self._link_batches[day_path]
            batch.done.set()


@dataclass(slots=True)
class _LinkBatch:
    """Links waiting for one PUT into a day list."""

    links: dict[str, Any]
    done: anyio.Event = field(default_factory=anyio.Event)
    error: BaseException | None = None
