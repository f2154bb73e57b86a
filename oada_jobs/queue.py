"""A queue: one job list on one OADA store, watched and worked through.

A :class:`Queue` ensures its pending list exists, reads it and watches it
*from the rev it read*, so nothing posted in between is missed. Each linked
job is read once and handed to the queue's
:class:`~oada_jobs.scheduler.Scheduler`, which decides when it may start and
in what order; a dispatcher starts the best ready job whenever the service
has a free slot. At most ``keep_jobs`` read jobs wait in memory, so a large
backlog is read as room frees up. A periodic sweep re-reads the list in case
a change to it was missed.

With several replicas of the service, a queue reads only the jobs of its
replica's share (see :mod:`oada_jobs.replicas`); it takes the jobs of a share
that moved to it when the replicas change, and, when it has free slots and
nothing of its own to do, steals jobs that waited longer than
``steal_after`` in another replica's share.

Stopping a queue stops its intake (watch, readers, timers, sweep, dispatch);
jobs already running finish.

Owns :class:`Queue` (the run, its retries and the list watch) and
:class:`QueueHost`, the narrow interface a queue gets from whoever runs it:
a worker lookup, the options, the shared job slots and in-flight set, and
callables to report its state and finished jobs. Which list entries are
jobs, and the sweep, are :mod:`oada_jobs.listing`; reading jobs, and the
timers, shares and stealing that hand jobs to the readers, are
:mod:`oada_jobs.readers`; starting them is :mod:`oada_jobs.dispatch`. Hands
each job to a :class:`~oada_jobs.runner.Runner` with a
:class:`~oada_jobs.filing.Filer` for its list. Must not import the service,
cron or reports.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from ._retry import exponential, retry
from .client import OADAClient, Watch
from .config import ServiceConfig
from .decision import Decision
from .dispatch import Dispatcher, InFlight
from .exceptions import Forbidden, NotFound, OADAError, OADAStatusError, Unauthorized
from .filing import Filed, Filer
from .limits import Gate
from .listing import BadEntries, Listing
from .metrics import ServiceMetrics
from .readers import Readers
from .replicas import Shares
from .reporters import FinishReport
from .runner import Runner, RunnerSettings
from .scheduler import Entry, EntryState, Scheduler
from .tree import LAYOUT_MARKER, SERVICE_TYPE, Layout, service_root
from .watchdog import LoopWatchdog
from .worker import Worker

__all__ = ["DEFAULT_QUEUE", "InFlight", "Once", "Queue", "QueueHost"]

logger = logging.getLogger("oada_jobs")

#: Key of the queue on the service's own domain and token.
DEFAULT_QUEUE = "_default"


class Once:
    """Call ``task_status.started()`` exactly once, whichever path gets there first."""

    def __init__(self, task_status: TaskStatus[None]) -> None:
        self._task_status = task_status
        self.done = False

    def __call__(self) -> None:
        if not self.done:
            self.done = True
            self._task_status.started()


@dataclass(frozen=True, slots=True)
class QueueHost:
    """What a queue needs from the service that runs it, and nothing more."""

    #: The service name (where its lists are).
    name: str
    #: Names this service instance in job leases.
    worker_id: str
    #: The service's options (limits, waits).
    config: ServiceConfig
    #: The job-list layout.
    layout: Layout
    #: Job slots shared by all the service's queues.
    limiter: anyio.CapacityLimiter
    #: Jobs in flight over all the service's queues.
    in_flight: InFlight
    #: Running and finished jobs, by type.
    metrics: ServiceMetrics
    #: The registered worker of a job type, if any.
    workers: Callable[[str], Worker | None]
    #: Told when a queue starts or stops watching its list.
    changed: Callable[[], None]
    #: Told about every job a queue files.
    report: Callable[[FinishReport], Awaitable[None]]
    #: Names the jobs running when the event loop lags.
    watchdog: LoopWatchdog
    #: Which jobs are this replica's share (all of them, unless work is divided).
    shares: Shares
    #: Admits jobs by type (pauses, per-type concurrency, rate limits).
    gate: Gate | None = None


class Queue:
    """Watches one job list and runs its jobs through the service's workers.

    Created and run by :class:`~oada_jobs.Service`; ``key`` is the queue's key
    in the service's ``queues`` list (:data:`DEFAULT_QUEUE` for the service's
    own store). *connect* opens the queue's client for *domain* (each time
    the queue starts); *own_token* says whether it uses the service's token.
    """

    def __init__(
        self,
        host: QueueHost,
        key: str,
        *,
        domain: str,
        connect: Callable[[], AbstractAsyncContextManager[OADAClient]],
        own_token: bool = False,
    ) -> None:
        self.host = host
        self.key = key
        self.domain = domain
        self._connect = connect
        self._own_token = own_token
        self.layout: Layout = host.layout
        self.pending_path = self.layout.pending_path(host.name)
        self._oada: OADAClient | None = None
        self._stopping = False
        self._stop_event = anyio.Event()
        self._intake_scope: anyio.CancelScope | None = None
        # Around connecting and running; cancelled by stop() only before any job can run.
        self._run_scope: anyio.CancelScope | None = None
        self.log = logging.LoggerAdapter(logger, {"service": host.name, "queue": key})
        #: The queue's pending jobs and what runs next.
        self.scheduler = Scheduler(
            host.workers,
            worker_id=host.worker_id,
            keep_bodies=host.config.keep_jobs,
            owns=host.shares.owns,
            want_read=self._read_as_context,
        )
        self._readers = Readers(
            self.scheduler,
            wait=host.config.invalid_job_wait,
            start_delay=partial(_start_delay, host.workers),
            share_read=host.metrics.share_read,
            log=self.log,
            queue=key,
        )
        self._listing = Listing(
            self.scheduler,
            layout=self.layout,
            pending_path=self.pending_path,
            bad=BadEntries(counted=host.metrics.bad_entry, log=self.log, queue=key),
            read=self._readers.send,
            unreadable=self._readers.unreadable,
            left=self._left,
            log=self.log,
            queue=key,
        )
        self._runners: TaskGroup | None = None
        # Starts the jobs, on the client of the current run.
        self._dispatcher: Dispatcher | None = None
        #: Whether the queue's list watch is open right now.
        self.watching = False
        self._list_watch: Watch[Any] | None = None

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

    async def _backoff(self, delay: float) -> None:
        with anyio.move_on_after(delay):
            await self._stop_event.wait()

    def _explain(self, error: BaseException) -> str:
        if isinstance(error, Unauthorized | Forbidden):
            where = "the service's token" if self._own_token else "its entry in the queues list"
            return f"the queue's token was refused ({error.status}) by {self.domain}; check {where}"
        if isinstance(error, OADAStatusError):
            return f"{self.domain} answered {error.status}: {error}"
        return f"{type(error).__name__}: {error}"

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run until stopped: retry on errors with backoff; running jobs finish."""
        ready = Once(task_status)
        config = self.host.config

        async def attempt() -> None:
            if self._stopping:
                return
            with anyio.CancelScope() as self._run_scope:
                async with self._connect() as oada, anyio.create_task_group() as runners:
                    self._oada, self._runners = oada, runners
                    self._dispatcher = self._dispatcher_for(oada, runners)
                    await self._intake(ready)

        def failed(error: BaseException, delay: float) -> None:
            self.log.error(
                "queue %r could not start: %s; retrying in %.1f s",
                self.key,
                self._explain(error),
                delay,
            )
            ready()

        try:
            await retry(
                attempt,
                retryable=lambda error: isinstance(error, OADAError),
                delay=exponential(config.retry_initial, config.retry_max),
                on_retry=failed,
                sleep=self._backoff,
            )
        finally:
            ready()
            self._oada = self._runners = self._dispatcher = None
            self._run_scope = None

    def _dispatcher_for(self, oada: OADAClient, runners: TaskGroup) -> Dispatcher:
        """The dispatcher of one run of the queue: its client, its runners' group."""
        host, config = self.host, self.host.config
        filer = Filer(
            oada,
            layout=self.layout,
            service=host.name,
            finish_timeout=config.finish_timeout,
            on_filed=partial(_report_filed, host, self.domain, self.key),
        )
        settings = RunnerSettings(
            worker_id=host.worker_id,
            lease=config.lease,
            invalid_job_wait=config.invalid_job_wait,
            cancel_grace=config.cancel_grace,
        )
        dispatcher: Dispatcher

        def make_runner(decision: Decision, release_slot: Callable[[], None]) -> Runner:
            return Runner(
                decision,
                oada=oada,
                workers=host.workers,
                filer=filer,
                settings=settings,
                metrics=host.metrics,
                watchdog=host.watchdog,
                spawn=dispatcher.start_beside,
                release_slot=release_slot,
                service=host.name,
                queue=self.key,
            )

        dispatcher = Dispatcher(
            self.scheduler,
            runners,
            make_runner=make_runner,
            oada=oada,
            limiter=host.limiter,
            in_flight=host.in_flight,
            key=self.key,
            domain=self.domain,
            concurrency=config.concurrency,
            backoff=exponential(config.retry_initial, config.retry_max),
            reread=self._readers.send,
            log=self.log,
            gate=host.gate,
        )
        return dispatcher

    async def _intake(self, ready: Once) -> None:
        """Watch, sweep and dispatch until stopped; errors are retried here so
        that running jobs (in the runners' group) are never cancelled by them."""
        config = self.host.config

        async def watch() -> None:
            try:
                await self._watch(ready)
            finally:
                self._set_watching(False)

        def failed(error: BaseException, delay: float) -> None:
            if isinstance(error, OADAError):
                self.log.error(
                    "queue %r: %s; retrying in %.1f s", self.key, self._explain(error), delay
                )
            else:
                self.log.error(
                    "queue %r failed; retrying in %.1f s", self.key, delay, exc_info=error
                )
            # The service's start() waits for every initial queue; a failing
            # one must not hold it up while it retries.
            ready()

        with anyio.CancelScope() as scope:
            self._intake_scope = scope
            if self._stopping:
                scope.cancel()
            while True:
                # Each watch that ends normally starts the backoff afresh.
                await retry(
                    watch,
                    retryable=lambda error: True,
                    delay=exponential(config.retry_initial, config.retry_max),
                    on_retry=failed,
                    sleep=self._backoff,
                )
                self.log.warning("queue %r: the list watch ended; re-opening it", self.key)
        self._intake_scope = None

    async def _watch(self, ready: Once) -> None:
        oada = self.oada
        assert self._dispatcher is not None
        dispatcher = self._dispatcher
        await oada.ensure(self.pending_path, {}, tree=self.layout.tree)
        await _note_layout(oada, self.host.name, self.layout, self.log, self.key)
        response = await oada.get(self.pending_path)
        scheduler, readers, listing = self.scheduler, self._readers, self._listing
        config = self.host.config
        async with (
            readers.open(oada, config.concurrency) as start_readers,
            oada.watch(self.pending_path, rev=response.rev) as changes,
        ):
            self.log.info("queue %r: watching %s on %s", self.key, self.pending_path, self.domain)
            self._list_watch = changes
            self._set_watching(True)
            ready()
            async with anyio.create_task_group() as intake:
                start_readers(intake)
                intake.start_soon(readers.timers)
                intake.start_soon(dispatcher.dispatch)
                intake.start_soon(dispatcher.dispatch_urgent)
                intake.start_soon(dispatcher.release_held)
                intake.start_soon(listing.sweep, oada, config.sweep_interval)
                intake.start_soon(readers.follow_shares, self.host.shares)
                intake.start_soon(readers.steal, self.host.limiter, config.steal_after)
                # On a re-opened watch the scheduler keeps what it knew:
                # reads cut short are redone (first, as they are the
                # oldest), jobs gone meanwhile are forgotten.
                for entry in scheduler.entries():
                    if entry.state is EntryState.READING:
                        readers.send(entry)
                listing.offer(response.data, known_before=scheduler.last_seq)
                async for change in changes:
                    if change.path not in ("", "/") or not change.body:
                        continue
                    if change.type == "delete":
                        listing.forget(change.body)
                    else:
                        listing.offer(change.body)
                intake.cancel_scope.cancel()

    def _set_watching(self, value: bool) -> None:
        if self.watching != value:
            self.watching = value
            self.host.changed()

    def _left(self, entry: Entry) -> None:
        assert self._dispatcher is not None
        self._dispatcher.left(entry)

    def _read_as_context(self, entry: Entry) -> None:
        """Read a job of another share, whose place a job of this one depends on."""
        self._readers.read_as_context(entry)


async def _note_layout(
    oada: OADAClient, service: str, layout: Layout, log: logging.LoggerAdapter[Any], queue: str
) -> None:
    """Note *layout* on the resource of *service*, for requesters to find.

    Only a hint: a failure to read or write it is logged, never fatal.
    """
    root = service_root(service)
    try:
        try:
            noted = (await oada.get(f"{root}/{LAYOUT_MARKER}")).data
        except NotFound:
            noted = None
        if noted == layout.name:
            return
        if noted in ("classic", "pending"):
            log.warning(
                "queue %r: the service was noted as using the %s layout; this one uses %s",
                queue,
                noted,
                layout.name,
            )
        await oada.put(root, {LAYOUT_MARKER: layout.name}, content_type=SERVICE_TYPE)
    except OADAError as error:
        # A token for the job list only, say: requesters guess instead.
        log.debug("queue %r: could not note the layout: %s", queue, error)


def _start_delay(workers: Callable[[str], Worker | None], job_type: str) -> float:
    worker = workers(job_type)
    return worker.start_delay if worker is not None else 0.0


async def _report_filed(host: QueueHost, domain: str, queue: str, filed: Filed) -> None:
    """A job of the queue *queue* on *domain* was filed: count it and tell the reporters."""
    job, outcome = filed.job, filed.outcome
    job_type = job.type if job is not None else "(invalid)"
    host.metrics.job_finished(job_type, outcome.status, filed.duration)
    if job is not None:
        report = FinishReport(
            service=host.name,
            domain=domain,
            queue=queue,
            job=job,
            status=outcome.status,
            result=outcome.result,
            path=filed.path,
            duration=filed.duration,
        )
        await host.report(report)
