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

Owns :class:`Queue` (intake and dispatch) and :class:`QueueHost`, the
narrow interface a queue gets from whoever runs it: a worker lookup, the
options, the shared job slots and in-flight set, and callables to report its
state and finished jobs. Hands each job to a :class:`~oada_jobs.runner.Runner`
with a :class:`~oada_jobs.filing.Filer` for its list. Must not import the
service, cron or reports.

:class:`Queue` is longer than the ~300 lines a class here keeps to: its
list watch, readers, timers and sweep share the scheduler, the read streams
and the stop state of one run, and split apart they would pass them around.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, suppress
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._retry import exponential, retry
from .client import OADAClient, Watch
from .config import ServiceConfig
from .dispatch import READ_RETRY, Dispatcher, InFlight
from .exceptions import (
    BadRequest,
    Forbidden,
    InvalidJob,
    InvalidKey,
    NotFound,
    OADAError,
    OADAStatusError,
    Unauthorized,
)
from .filing import Filed, Filer
from .limits import Gate
from .metrics import ServiceMetrics
from .reading import read_for_queue
from .replicas import Shares
from .reporters import FinishReport
from .runner import Decision, Runner, RunnerSettings
from .scheduler import Entry, EntryState, Scheduler
from .tree import (
    LAYOUT_MARKER,
    SERVICE_TYPE,
    Layout,
    path_segment,
    resource_path,
    service_root,
)
from .watchdog import LoopWatchdog
from .worker import Worker

__all__ = ["DEFAULT_QUEUE", "InFlight", "Once", "Queue", "QueueHost"]

logger = logging.getLogger("oada_jobs")

#: Key of the queue on the service's own domain and token.
DEFAULT_QUEUE = "_default"
#: Most jobs a queue reads at once.
MAX_READERS = 16
#: Readers of jobs read again (their timer fired, or their link was touched).
REREADERS = 2
#: Seconds before the same bad list entry is warned about again (it is
#: warned about when first seen, then at this slow cadence, never per sweep).
BAD_ENTRY_REWARN = 3600.0
#: Seconds between looks for jobs to steal while there are some to take.
STEAL_AGAIN = 0.05


def _describe(value: object) -> str:
    return "null" if value is None else type(value).__name__


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
        #: The queue's pending jobs and what runs next.
        self.scheduler = Scheduler(
            host.workers,
            worker_id=host.worker_id,
            keep_bodies=host.config.keep_jobs,
            owns=host.shares.owns,
            want_read=self._read_as_context,
        )
        self._runners: TaskGroup | None = None
        # Starts the jobs, on the client of the current run.
        self._dispatcher: Dispatcher | None = None
        # Where jobs to read go, while the intake runs.
        self._reads = _Reads(None, None)
        # Bad list entries warned about: key -> (problem, anyio time warned).
        self._warned: dict[str, tuple[str, float]] = {}
        #: Whether the queue's list watch is open right now.
        self.watching = False
        self._list_watch: Watch[Any] | None = None
        self.log = logging.LoggerAdapter(logger, {"service": host.name, "queue": key})

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
            on_filed=self._filed,
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
            reread=lambda entry: self._reads.send(entry),
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
        await self._note_layout()
        response = await oada.get(self.pending_path)
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
                for _ in range(max(1, min(self.host.config.concurrency, MAX_READERS))):
                    intake.start_soon(self._reader, first_out.clone(), True)
                for _ in range(REREADERS):
                    intake.start_soon(self._reader, again_out.clone(), False)
                intake.start_soon(self._timers)
                intake.start_soon(dispatcher.dispatch)
                intake.start_soon(dispatcher.dispatch_urgent)
                intake.start_soon(dispatcher.release_held)
                intake.start_soon(self._sweep)
                intake.start_soon(self._follow_shares)
                intake.start_soon(self._steal)
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
        root = service_root(self.host.name)
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
            self.host.changed()

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
                if unreadable is not None:
                    self._count_owned(entry)
                    scheduler.read(entry, None, unreadable)
                elif entry.state is EntryState.READING:
                    self._reads.send(entry)
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
        self.host.metrics.bad_entry()
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
        assert self._dispatcher is not None
        self._dispatcher.left(entry)

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
            job = await read_for_queue(
                self.oada,
                entry.job_id,
                key=entry.key,
                wait=self.host.config.invalid_job_wait,
                # Another share's job (read as context) is its owner's to delay.
                start_delay=self._start_delay if self.scheduler.mine(entry) else _no_delay,
            )
        except (InvalidJob, InvalidKey, NotFound, Forbidden, BadRequest) as problem:
            self._count_owned(entry)
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
            self._count_owned(entry)
            self.scheduler.read(entry, job, None)

    def _count_owned(self, entry: Entry) -> None:
        if not entry.settled_once and not entry.stolen and self.scheduler.mine(entry):
            self.host.metrics.share_read("owned")

    def _read_as_context(self, entry: Entry) -> None:
        """Read a job of another share, whose place a job of this one depends on."""
        self.host.metrics.share_read("context")
        self._reads.send(entry, again=True)

    async def _follow_shares(self) -> None:
        """Take in the jobs of shares that move to this replica."""
        shares, scheduler = self.host.shares, self.scheduler
        while True:
            changed = shares.changed
            for entry in scheduler.reown():
                self._reads.send(entry)
            await changed.wait()

    async def _steal(self) -> None:
        """With free slots and nothing of its own to do, take jobs that waited
        longer than ``steal_after`` in another replica's share."""
        config, scheduler, limiter = self.host.config, self.scheduler, self.host.limiter
        bound = config.steal_after
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
                self.host.metrics.share_read("stolen")
                self._reads.send(entry)
            if taken:
                self.log.debug("queue %r: took %d jobs from other shares", self.key, len(taken))

    def _start_delay(self, job_type: str) -> float:
        worker = self.host.workers(job_type)
        return worker.start_delay if worker is not None else 0.0

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
            await anyio.sleep(self.host.config.sweep_interval)
            known_before = self.scheduler.last_seq
            try:
                response = await self.oada.get(self.pending_path)
            except OADAError as error:
                self.log.warning("queue %r: sweep failed: %s", self.key, error)
                continue
            self._offer(response.data, known_before=known_before)

    async def _filed(self, filed: Filed) -> None:
        """A job of this queue was filed: count it and tell the reporters."""
        job, outcome = filed.job, filed.outcome
        job_type = job.type if job is not None else "(invalid)"
        self.host.metrics.job_finished(job_type, outcome.status, filed.duration)
        if job is not None:
            report = FinishReport(
                service=self.host.name,
                domain=self.domain,
                queue=self.key,
                job=job,
                status=outcome.status,
                result=outcome.result,
                path=filed.path,
                duration=filed.duration,
            )
            await self.host.report(report)


def _no_delay(job_type: str) -> float:
    return 0.0


#: States in which a touched link makes the queue read the job again.
_TOUCHABLE = frozenset({EntryState.WAITING, EntryState.READY, EntryState.PARKED, EntryState.HELD})


@dataclass(slots=True)
class _Reads:
    """The queue's two read streams: first reads, and reads again."""

    first: MemoryObjectSendStream[Entry] | None
    again: MemoryObjectSendStream[Entry] | None

    def send(self, entry: Entry, *, again: bool = False) -> None:
        # Reads again never wait for room (see Queue._watch).
        stream = self.again if entry.settled_once or again else self.first
        # Closed when the intake stopped: a re-opened watch reads it then.
        with suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            if stream is not None:
                stream.send_nowait(entry)
