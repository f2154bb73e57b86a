"""Running one job: read it, claim it, run its work function, file the outcome.

A :class:`Runner` handles one key of a job list. In steady state a job costs
five OADA requests:

1. ``GET /<job>``;
2. the claim: ``PUT /<job>`` with ``If-Match`` on the ETag just read, writing
   ``status: running``, a worker lease and the ``started`` update;
3. the result: ``PUT /<job>`` with ``status``, ``result`` and the finishing
   update in one merge body;
4. the day-index link: ``PUT <list>/day-index/<date>`` (a tree PUT the first
   time a day list is used);
5. ``DELETE <pending>/<key>``.

The claim is what lets several replicas share one queue: of two workers that
read the same ETag only one write succeeds, the other gets 412 and skips the
job. A running worker renews its lease; a job whose lease expired (its worker
died) is claimed again by a later sweep of the pending list.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
from collections.abc import Awaitable, Callable, Coroutine, Mapping, MutableMapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from pydantic import BaseModel, ValidationError

from . import telemetry
from .client._common import dumps
from .exceptions import (
    BadRequest,
    ClientClosed,
    Forbidden,
    InvalidJob,
    InvalidKey,
    JobCancelled,
    JobError,
    NotFound,
    OADAError,
    OADATransportError,
    PayloadTooLarge,
    PreconditionFailed,
    Reschedule,
    Retry,
    ServerError,
    TooManyRequests,
)
from .job import Job, JobStatus, Lease, error_result, iso, new_update, parse_time, utc_now
from .scheduler import UniquePolicy
from .settings import LOGGING_ENV, update_levels
from .tree import JOB_TYPE, JOBS_TYPE, LayoutName, path_segment, resource_path
from .types import Json, JsonObject, WorkFunction

if TYPE_CHECKING:
    from .client import OADAClient
    from .queue import Queue
    from .scheduler import Entry

__all__ = ["JobLogAdapter", "JobLogger", "JobOutcome", "Runner", "Worker", "WorkerContext"]

logger = logging.getLogger("oada_jobs")

T = TypeVar("T")


#: Fail type of jobs whose work function ran past its timeout.
TIMEOUT_FAIL_TYPE = "timeout"
#: Fail type of jobs whose config did not validate against the declared model.
INVALID_CONFIG_FAIL_TYPE = "invalid-config"
#: Fail type of resources in a job list that are not jobs.
INVALID_JOB_FAIL_TYPE = "invalid-job"
#: Fail type of jobs whose function asked to retry once too often.
RETRY_LIMIT_FAIL_TYPE = "retry-limit"
#: Fail type of jobs older than their type's ``min_version``.
UNSUPPORTED_VERSION_FAIL_TYPE = "unsupported-version"
#: Fail type of jobs refused because their unique key was taken.
DUPLICATE_FAIL_TYPE = "duplicate"
#: Fail type of jobs whose result did not validate against the declared model.
INVALID_RESULT_FAIL_TYPE = "invalid-result"
#: Seconds a job runs before the runner starts watching it for cancellation
#: (short jobs then cost no watch).
CANCEL_WATCH_AFTER = 1.0


@dataclass(frozen=True, slots=True)
class Worker:
    """A registered work function for one job type, with the type's job defaults."""

    #: The job type it handles.
    job_type: str
    #: The work function.
    work: WorkFunction
    #: Seconds the function may run; ``None`` for no limit.
    timeout: float | None
    #: The pydantic model the job's ``config`` is validated into, if any.
    config_model: type[BaseModel] | None = None
    #: How many times a job may be started in all (``options.tries`` overrides).
    tries: int = 3
    #: Seconds before the second try when the function gives no ``Retry(defer=)``;
    #: each later try waits *backoff* times longer, up to *max_retry_delay*.
    retry_delay: float = 5.0
    backoff: float = 2.0
    max_retry_delay: float = 3600.0
    #: Wait a random 50-100 % of the computed delay, so retries spread out.
    jitter: bool = True
    #: Exceptions that count as a failed try (retried while tries remain)
    #: instead of failing the job; ``TimeoutError`` covers the timeout.
    retry_on: tuple[type[BaseException], ...] = ()
    #: Seconds a job waits after the service first sees it.
    start_delay: float = 0.0
    #: Priority of jobs that set none.
    priority: int = 0
    #: What happens to a job whose ``uniqueKey`` is already pending or running.
    unique: UniquePolicy = "refuse"
    #: How many jobs of one group may run at once.
    group_limit: int = 1
    #: Jobs with a lower ``options.version`` (default 1) fail as ``unsupported-version``.
    min_version: int | None = None
    #: The pydantic model the function's return value is validated into, if any.
    result_model: type[BaseModel] | None = None

    def retry_delay_for(self, tried: int) -> float:
        """Seconds to wait after the *tried*-th failed try (1 for the first)."""
        delay = min(self.max_retry_delay, self.retry_delay * self.backoff ** max(0, tried - 1))
        return delay * random.uniform(0.5, 1.0) if self.jitter else delay

    def retries(self, error: BaseException) -> bool:
        """Whether *error* from the work function counts as a failed try."""
        return isinstance(error, self.retry_on)


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """How a job finished: what is written to it and where it is filed."""

    #: ``"success"`` or ``"failure"``.
    status: str
    #: The job's ``result``.
    result: Json
    #: Also file under ``typed-failure/<fail_type>``.
    fail_type: str | None = None
    #: Human-readable text for the finishing update.
    meta: str = "Runner finished"
    #: Set when the job goes back to pending instead of being filed (the
    #: work function raised ``Retry`` or ``Reschedule``): when it runs next.
    run_at: datetime | None = None
    #: For a reschedule: the job's new ``state``.
    rescheduled: bool = False
    #: For a retry: why the try failed (written as ``lastError``).
    reason: str | None = None
    state: Json = None


def _raised_by_work(error: BaseException) -> bool:
    """Whether a non-``Exception`` from a work function is its own failure.

    Not when the process is stopping, nor when this task is being cancelled
    (by the job's timeout, its cancellation or the service's shutdown: each
    cancels a scope around the work, which leaves no time to run). A
    ``CancelledError`` the function merely let through, from a task it
    awaited, fails the job like any error. (``Task.cancelling()`` cannot
    tell: on Python 3.11 an ``asyncio.TaskGroup`` may leave it raised.)
    """
    if isinstance(error, KeyboardInterrupt | SystemExit | GeneratorExit):
        return False
    if isinstance(error, asyncio.CancelledError):
        return anyio.current_effective_deadline() != -math.inf
    return True


def _failed(error: JobError, message: str) -> JobOutcome:
    """The failure outcome of *error*: its result and fail type, *message* as the update."""
    return JobOutcome(JobStatus.FAILURE.value, error_result(error), error.fail_type, message)


class JobLogAdapter(logging.LoggerAdapter[logging.Logger]):
    """A :class:`logging.LoggerAdapter` adding the job's context to every record.

    Records carry ``service``, ``queue``, ``job_id``, ``job_key``, ``job_type``
    and ``trace_id`` (the config's ``traceId``) as attributes, for structured
    log handlers; the message is prefixed with ``[service/job_key]``.
    """

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        extra = dict(self.extra or {})
        extra.update(kwargs.get("extra") or {})
        kwargs["extra"] = extra
        return (
            f"[{extra.get('service')}/{extra.get('job_key') or extra.get('job_id')}] {msg}",
            kwargs,
        )


def enabled_levels() -> frozenset[str]:
    """The optional update levels ``OADA_JOBS_LOGGING`` asks for (``debug``, ``trace``)."""
    # Read at each call, as @oada/jobs does, by the one parser settings use.
    return update_levels(os.environ.get(LOGGING_ENV))


class JobLogger:
    """``ctx.log``: writes ``updates`` entries on the running job.

    ``info`` and ``error`` always write; ``debug`` and ``trace`` only when
    ``OADA_JOBS_LOGGING`` contains ``debug`` / ``trace``. Each call also emits
    a Python log record (with the job's context) at the matching level.

    >>> await ctx.log.info("sending", {"to": "a@example.org"})  # doctest: +SKIP
    """

    def __init__(
        self,
        oada: OADAClient,
        job_id: str,
        log: JobLogAdapter,
        on_write: Callable[[str | None], None] = lambda etag: None,
    ) -> None:
        self._oada = oada
        self._job_id = job_id
        self._log = log
        self._on_write = on_write

    async def _update(self, level: int, status: str, meta: Json) -> None:
        self._log.log(level, "update %s: %s", status, meta)
        key, body = new_update(status, meta)
        # PUT at a client-chosen KSUID key is what POST does server-side, but
        # keeps the keys time-ordered by this process's clock.
        try:
            response = await self._oada.put(
                f"{resource_path(self._job_id)}/updates/{path_segment(key)}",
                body,
                content_type=JOB_TYPE,
            )
        except (OADATransportError, ServerError, TooManyRequests) as error:
            # The client retried already; a progress note is not worth
            # failing the work for while the server is away.
            self._log.warning("update %s not written (the work goes on): %s", status, error)
            return
        self._on_write(response.etag)

    async def info(self, status: str, meta: Json = None) -> None:
        """Record an update with *status* and optional JSON *meta*."""
        await self._update(logging.INFO, status, meta)

    async def error(self, status: str, meta: Json = None) -> None:
        """Record an error update (always written)."""
        await self._update(logging.ERROR, status, meta)

    async def debug(self, status: str, meta: Json = None) -> None:
        """Record an update only when ``OADA_JOBS_LOGGING`` contains ``debug``."""
        if "debug" in enabled_levels():
            await self._update(logging.DEBUG, status, meta)

    async def trace(self, status: str, meta: Json = None) -> None:
        """Record an update only when ``OADA_JOBS_LOGGING`` contains ``trace``."""
        if "trace" in enabled_levels():
            await self._update(logging.DEBUG, status, meta)


@dataclass(frozen=True, slots=True)
class WorkerContext:
    """What a work function gets besides the job.

    ``oada`` is a client for the job's queue, scoped to this job: when the job
    finishes, times out or is cancelled it is revoked, and any further request
    through it raises :class:`~oada_jobs.ClientClosed` — so nothing a
    timed-out function still tries to write lands on the job.
    """

    #: The job resource id, ``resources/<key>``.
    job_id: str
    #: Writes updates on the job (``await ctx.log.info(status, meta)``).
    log: JobLogger
    #: The job-scoped OADA client.
    oada: OADAClient
    #: A Python logger whose records carry the job's context.
    logger: JobLogAdapter
    #: The job-list layout of the queue this job came from; follow-up jobs
    #: are posted in it unless told otherwise.
    layout: LayoutName = "classic"

    async def post_job(
        self,
        service: str,
        type: str,
        config: Any = None,
        *,
        name: str | None = None,
        key: str | None = None,
        options: Any = None,
        layout: LayoutName | None = None,
    ) -> str:
        """Post a follow-up job linked to this one (``parent`` on it, ``children`` here).

        *layout* defaults to this job's own. With *name* (or an explicit
        *key*) the child's key is fixed, so a retried run that posts the same
        child again gets the one already posted instead of a second one.
        """
        from .requester import post_child_job

        return await post_child_job(
            self, service, type, config, name=name, key=key, options=options, layout=layout
        )

    async def progress(self, fraction: float, message: str | None = None) -> None:
        """Record progress: an update ``progress`` with meta ``{fraction, message}``."""
        from .requester import write_progress

        await write_progress(self, fraction, message)


def _describe(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _json_result(value: object) -> Json:
    """The work function's return value as JSON, or raise :class:`TypeError`."""
    if isinstance(value, BaseModel):
        dumped: Json = value.model_dump(mode="json")
        return dumped
    try:
        # The client's encoder: what passes here is what the write sends.
        dumps(value)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"expected the work function to return JSON (dict, list, str, number, bool, None "
            f"or a pydantic model), got {_describe(value)}: {error}"
        ) from None
    return value  # type: ignore[return-value]  # checked to be JSON just above


def _release_body(job: Job[Any]) -> JsonObject:
    """What giving a job back writes on it."""
    key, update = new_update(
        "released", "Worker stopped before the job finished; it will run again"
    )
    return {
        "status": JobStatus.PENDING.value,
        "lease": None,
        # A stop is not a failed try: the claim's count is given back.
        "tries": job.tries,
        "updates": {key: update},
    }


def _lease_taken(value: object, worker: str) -> bool:
    lease = Lease.from_json(value)
    return lease is not None and lease.worker != worker


async def read_job(oada: OADAClient, job_id: str, *, key: str, wait: float) -> Job[JsonObject]:
    """Read a job of a list; a resource that is not a job yet is read once more.

    A job posted with a tree PUT is first an empty resource linked into the
    list and only then filled in, so the first read may see ``{}``. The
    second read waits (up to *wait* seconds) for the resource to change.
    Raises :class:`~oada_jobs.InvalidJob` if it is still not a job then.
    """

    async def get() -> tuple[Job[JsonObject] | InvalidJob, int | None]:
        response = await oada.get(resource_path(job_id))
        try:
            job = Job.from_resource(response.data, oada_id=job_id, key=key, etag=response.etag)
        except InvalidJob as error:
            return error, response.rev
        return job, response.rev

    first, rev = await get()
    if isinstance(first, Job):
        return first
    with anyio.move_on_after(wait):
        async with oada.watch(resource_path(job_id), rev=rev) as changes:
            async for _change in changes:
                break
    second, _ = await get()
    if isinstance(second, Job):
        return second
    raise second


class _Helpers:
    """Tasks that watch over one run (for a cancel request, to renew the lease).

    They start only when due, which most runs never are, and run beside the
    jobs rather than in a task group of the run's own: such a group costs an
    event-loop pass on leaving it even when nothing was started in it. As in
    a task group, a helper's error stops the work and is raised from
    :meth:`stop`, and the run goes on only once its helpers are gone.
    """

    __slots__ = ("_error", "_helpers", "_on_error", "_spawn")

    def __init__(
        self,
        spawn: Callable[[Callable[[], Coroutine[Any, Any, None]]], object],
        on_error: Callable[[], None],
    ) -> None:
        self._spawn = spawn
        self._on_error = on_error
        self._helpers: list[_Helper] = []
        self._error: Exception | None = None

    def start(self, func: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
        helper = _Helper()
        self._helpers.append(helper)

        async def run() -> None:
            helper.started = True
            try:
                with helper.scope:
                    if not helper.scope.cancel_called:  # stopped before it got to run
                        await func(*args)
            except Exception as error:
                if self._error is None:
                    self._error = error
                self._on_error()
            finally:
                helper.done.set()

        self._spawn(run)

    def cancel(self) -> None:
        """Cancel the helpers without waiting for them."""
        for helper in self._helpers:
            helper.scope.cancel()

    async def stop(self) -> None:
        """Cancel the helpers and wait until they are gone; raise the first one's error."""
        if not self._helpers:
            return
        for helper in self._helpers:
            helper.scope.cancel()
        # Shielded: even a run being cancelled lets its helpers finish first
        # (cancelled, they end promptly). One that has not started yet will
        # find itself cancelled and do nothing, so it is not waited for.
        with anyio.CancelScope(shield=True):
            for helper in self._helpers:
                if helper.started:
                    await helper.done.wait()
        if self._error is not None:
            raise self._error


class _Helper:
    __slots__ = ("done", "scope", "started")

    def __init__(self) -> None:
        self.scope = anyio.CancelScope()
        self.done = anyio.Event()
        self.started = False


class Runner:
    """Runs one job from a :class:`~oada_jobs.queue.Queue`."""

    def __init__(
        self,
        queue: Queue,
        entry: Entry,
        *,
        release_slot: Callable[[], None] = lambda: None,
    ) -> None:
        #: Frees the job's concurrency slot (idempotent); called once the
        #: outcome is written, before filing.
        self.release_slot = release_slot
        #: The scheduler's view of the job (what it decided about it).
        self.entry = entry
        #: The outcome written to the job, once it is filed here.
        self.outcome: JobOutcome | None = None
        # ETag of this worker's latest write to the job while it holds it:
        # writes conditional on it fail (412) if anyone else wrote since.
        self._etag: str | None = None
        # Set when a work function ignored its cancellation past
        # ``cancel_grace``: its outcome is settled without waiting for it,
        # and this is set once that is done.
        self._abandoned: anyio.Event | None = None
        # Whether this run gave the job back already (a stop past its grace).
        self._released = False
        self._abandoned_later: datetime | None = None
        self.queue = queue
        self.service = queue.service
        self.oada = queue.oada
        self.key = key = entry.key
        self.job_id = job_id = entry.job_id
        try:
            self.path = resource_path(job_id)
        except InvalidKey:
            # Never requested: the queue gave such an entry a problem, so
            # it is only moved to the failure list.
            self.path = ""
        self.log = JobLogAdapter(
            logger,
            {
                "service": self.service.name,
                "queue": queue.key,
                "job_id": job_id,
                "job_key": key,
                "job_type": None,
                "trace_id": None,
            },
        )

    # ----------------------------------------------------------------- reading

    async def read(self) -> Job[JsonObject]:
        """Read the job (see :func:`read_job`)."""
        return await read_job(
            self.oada, self.job_id, key=self.key, wait=self.service.config.invalid_job_wait
        )

    def _bind(self, job: Job[Any]) -> None:
        assert self.log.extra is not None
        extra = dict(self.log.extra)
        extra.update(job_type=job.type, trace_id=job.trace_id)
        self.log.extra = extra

    # ----------------------------------------------------------------- the run

    async def run(self, job: Job[Any] | None = None) -> datetime | None:
        """Process the job (*job*: as the queue read it, else read here).

        Returns when the queue should look at the job again (it is still
        pending: a retry, a reschedule, not due yet, or running elsewhere),
        or ``None`` when it is done here (filed, or gone from the list).
        """
        merged_into = self.entry.merged_into
        problem = self.entry.problem
        try:
            if problem is not None:
                raise problem
            if job is None:
                job = await self.read()
        except InvalidJob as error:
            self.log.error("%s", error)
            outcome = JobOutcome(
                JobStatus.FAILURE.value,
                {**error_result(error), "failType": INVALID_JOB_FAIL_TYPE},
                INVALID_JOB_FAIL_TYPE,
                meta=str(error),
            )
            await self._write_and_file(outcome, None, etag=None)
            return None
        except (NotFound, Forbidden, BadRequest, InvalidKey) as error:
            # Older OADA servers answer 403 for a resource that does not
            # exist; either way this queue can never run the job.
            if isinstance(error, InvalidKey):
                self.log.error(
                    "list entry %r links to %s, which no request can read (%s); moving the "
                    "link to the failure list",
                    self.key,
                    self.job_id,
                    error,
                )
            else:
                self.log.error(
                    "list entry %r links to %s, which does not exist, or which this queue's "
                    "token may not read, or whose path the server refuses (%s); moving the "
                    "link to the failure list",
                    self.key,
                    self.job_id,
                    error.status,
                )
            await self._shielded(partial(self._file, JobStatus.FAILURE.value, None, utc_now()))
            return None
        self._bind(job)
        if job.finished:
            self.log.info("job is already %s; filing it", job.status)
            assert job.status is not None
            await self._shielded(partial(self._file, job.status, None, self._finish_time(job)))
            return None
        verdict = self._verdict(job, merged_into)
        if isinstance(verdict, JobOutcome):
            # Filed without running, conditionally on the ETag read, so
            # that of several replicas only one does.
            await self._write_and_file(verdict, job, etag=job.etag)
            return None
        if verdict is not None:
            return verdict
        with telemetry.job_span(self.service.name, self.queue.key, job):
            with telemetry.step_span("claim"):
                claimed = await self._claim(job)
            if claimed is None:
                # Someone wrote the job since it was read, most likely another
                # replica's claim. Looking again a moment later costs nothing
                # if that one files the job by then (the list watch tells).
                return utc_now() + timedelta(seconds=1)
            again = await self._execute(job, claimed)
            if self.outcome is not None:
                telemetry.set_job_outcome(self.outcome.status, self.outcome.fail_type)
            return again

    def _verdict(
        self, job: Job[Any], merged_into: tuple[str, JobOutcome] | None
    ) -> JobOutcome | datetime | None:
        """What to do with a pending job before claiming it: an outcome to file
        it with, a time to look again, or ``None`` to run it now."""
        worker = self.service.worker_for(job.type)
        if job.status == JobStatus.CANCEL_REQUESTED.value:
            return self._cancelled("the job was cancelled before it ran")
        if merged_into is not None:
            holder, outcome = merged_into
            self.log.info("merged into %s (same unique key); taking its outcome", holder)
            return replace(outcome, meta=f"merged into {holder}: {outcome.meta}")
        if self.entry.duplicate_of is not None:
            message = (
                f"refused: job {self.entry.duplicate_of} with the same unique key "
                f"{job.options.unique_key!r} is pending or running"
            )
            self.log.warning("%s", message)
            error = JobError(
                message,
                DUPLICATE_FAIL_TYPE,
                details={"duplicateOf": self.entry.duplicate_of},
            )
            return _failed(error, message)
        if worker is not None and worker.min_version is not None:
            version = job.options.effective_version
            if version < worker.min_version:
                message = (
                    f"job version {version} is older than the {worker.min_version} "
                    f"that job type {job.type!r} accepts"
                )
                self.log.error("%s", message)
                error = JobError(message, UNSUPPORTED_VERSION_FAIL_TYPE)
                return _failed(error, message)
        until = job.wait_until(self.service.worker_id)
        if until is not None:
            self.log.debug("job is not due or held elsewhere until %s", iso(until))
            return until
        allowed = job.options.tries or (worker.tries if worker is not None else 1)
        if job.tries >= allowed:
            # Only a run that never finished leaves this (its worker died, or
            # the job itself brought it down): do not start it again forever.
            message = (
                f"the job was started {job.tries} time(s) without finishing (its worker "
                f"stopped or crashed) and may be started {allowed} time(s)"
            )
            self.log.error("%s", message)
            error = JobError(message, RETRY_LIMIT_FAIL_TYPE)
            return _failed(error, message)
        return None

    async def _claim(self, job: Job[JsonObject]) -> int | None:
        """Conditionally mark the job running for this worker.

        Returns the claim's rev, or ``None`` on 412: someone wrote the job
        since it was read (another replica's claim, a requester's cancel).
        """
        lease = Lease.new(self.service.worker_id, self.service.config.lease)
        key, update = new_update("started", "Runner started")
        body: JsonObject = {
            "status": JobStatus.RUNNING.value,
            "lease": lease.to_json(),
            "tries": job.tries + 1,
            "updates": {key: update},
        }
        if job.run_at is not None:
            body["runAt"] = None
        try:
            response = await self.oada.put(
                self.path, body, content_type=JOBS_TYPE, if_match=job.etag
            )
        except PreconditionFailed:
            self.log.debug("the job changed since it was read; reading it again")
            return None
        self._etag = response.etag
        return response.rev if response.rev is not None else 0

    async def _execute(self, job: Job[JsonObject], claim_rev: int) -> datetime | None:
        service = self.service
        worker = service.worker_for(job.type)
        metrics = service.metrics
        started = anyio.current_time()
        metrics.job_started(job.type)
        scoped = self.oada.clone()
        ctx = WorkerContext(
            job_id=self.job_id,
            log=JobLogger(scoped, self.job_id, self.log, self._note_write),
            oada=scoped,
            logger=self.log,
            layout=self.queue.layout.name,
        )
        outcome: JobOutcome | None = None
        watchdog = service.watchdog
        watchdog.started(self.job_id, f"{self.key} ({job.type})")
        try:
            with telemetry.step_span("run"):
                outcome = await self._call(worker, job, ctx, scoped, claim_rev, started)
        except anyio.get_cancelled_exc_class():
            # Shutdown past its grace period: give the job back so it runs
            # again, here or on another replica.
            scoped.revoke()
            if not self._released:
                # Once, whatever interrupts the release (a second Ctrl-C).
                self._released = True
                self.log.warning("stopped before the job finished; releasing it")
                await self._shielded(partial(self._release, _release_body(job)))
            raise
        finally:
            scoped.revoke()
            watchdog.ended(self.job_id)
            if self._abandoned is None:
                metrics.job_stopped(job.type)
        if self._abandoned is not None:
            # Settled while the function ignored its cancellation.
            await self._abandoned.wait()
            return self._abandoned_later
        return await self._settle(outcome, job, started)

    async def _settle(
        self, outcome: JobOutcome | None, job: Job[JsonObject], started: float
    ) -> datetime | None:
        """Record *outcome* of a run that began at *started*; when to look again."""
        if outcome is None:
            # Another worker took the job over: the queue looks at it again
            # (and sees it held) rather than forgetting it.
            return utc_now() + timedelta(seconds=1)
        if outcome.run_at is not None:
            # The update is made once: a retried write must not add another.
            entry = new_update("rescheduled" if outcome.rescheduled else "retry", outcome.meta)
            given_back = await self._shielded(lambda: self._give_back(outcome, entry))
            if given_back is None and outcome.rescheduled:
                # Its new state could not be saved (e.g. too large): running
                # it again from an old or empty state would be wrong.
                error = JobError("the rescheduled job's new state could not be saved")
                failed = _failed(error, str(error))
                await self._write_and_file(failed, job, etag=None, owned=True)
                return None
            # Not given back (another worker owns it, or the write failed):
            # the queue looks at it again shortly.
            return outcome.run_at if given_back else utc_now() + timedelta(seconds=1)
        duration = anyio.current_time() - started
        with telemetry.step_span("file"):
            await self._write_and_file(outcome, job, etag=None, duration=duration, owned=True)
        return None

    async def _give_back(self, outcome: JobOutcome, entry: tuple[str, JsonObject]) -> bool:
        """Leave the job pending until ``outcome.run_at`` (a retry or a reschedule),
        with the update *entry*."""
        assert outcome.run_at is not None
        key, update = entry
        body: JsonObject = {
            "status": JobStatus.PENDING.value,
            "lease": None,
            "runAt": iso(outcome.run_at),
            "updates": {key: update},
        }
        if outcome.rescheduled:
            # A new step, not a failed try: it gets the type's tries afresh.
            # A PUT merges objects, so the old state is cleared first for the
            # new one to replace it rather than merge into it.
            if not await self._owned_put({"state": None}):
                return False
            body.update(state=outcome.state, tries=0)
        else:
            body["lastError"] = outcome.reason
        return await self._owned_put(body)

    async def _call(
        self,
        worker: Worker | None,
        job: Job[JsonObject],
        ctx: WorkerContext,
        scoped: OADAClient,
        claim_rev: int | None,
        started: float,
    ) -> JobOutcome | None:
        if worker is None:
            error = JobError(f"no work function is registered for job type {job.type!r}")
            self.log.error("%s", error)
            return _failed(error, str(error))
        # What the function sees: this run's try number and status.
        work_job: Job[Any] = replace(job, tries=job.tries + 1, status=JobStatus.RUNNING.value)
        if worker.config_model is not None:
            try:
                work_job = work_job.with_config(worker.config_model.model_validate(job.config))
            except ValidationError as error:
                return self._invalid(
                    error,
                    f"job config does not match {worker.config_model.__name__}",
                    INVALID_CONFIG_FAIL_TYPE,
                )

        timed_out = cancelled = lost = False
        outcome: JobOutcome | None = None
        # Cancelling it stops the work (the helpers are stopped after it).
        work_scope = anyio.CancelScope()

        loop = asyncio.get_running_loop()
        abandon_timer: asyncio.TimerHandle | None = None

        def stop_work() -> None:
            # Revoke first: from here on nothing the function still
            # tries (even in a shielded finally) reaches the job.
            nonlocal abandon_timer
            scoped.revoke()
            work_scope.cancel()
            if abandon_timer is None:
                abandon_timer = loop.call_later(self.service.config.cancel_grace, abandon)

        def stopped_outcome() -> JobOutcome | None:
            """The outcome of a run stopped by a timeout, a cancel request or a lost lease."""
            assert worker is not None
            if lost:
                self.log.error(
                    "another worker claimed the job after this one's lease ran out; leaving it"
                )
                return None
            if cancelled:
                return self._cancelled("the job was cancelled while it ran")
            message = f"job exceeded its {worker.timeout:g} s timeout and was cancelled"
            timeout_error = JobError(message, TIMEOUT_FAIL_TYPE)
            if worker.retries(TimeoutError()):
                return self._retry(timeout_error, message, None, worker, job)
            self.log.error("%s", message)
            return _failed(timeout_error, message)

        def abandon() -> None:
            # The function was told to stop cancel_grace seconds ago and
            # goes on (it shields itself, or blocks in a thread that cannot
            # be abandoned): settle the job without it, so it holds neither
            # the job nor a slot.
            if not (timed_out or cancelled or lost):
                return  # a helper failed: its error is raised once the work ends
            self._abandoned = done = anyio.Event()
            helpers.cancel()
            self.service.watchdog.ended(self.job_id)
            self.service.metrics.job_stopped(job.type)
            self.log.error(
                "the work function ignored its cancellation for %g s; settling the job without "
                "it (it goes on in the background, its client revoked)",
                self.service.config.cancel_grace,
            )

            async def settle() -> None:
                try:
                    self._abandoned_later = await self._settle(stopped_outcome(), job, started)
                finally:
                    self.release_slot()
                    done.set()

            self.queue.start_beside(settle)

        helpers = _Helpers(self.queue.start_beside, stop_work)

        def time_out() -> None:
            nonlocal timed_out
            timed_out = True
            stop_work()

        async def cancel_watch() -> None:
            nonlocal cancelled, lost
            try:
                # From the claim's rev: a request made meanwhile is replayed.
                async with self.oada.watch(self.path, rev=claim_rev) as changes:
                    async for change in changes:
                        body = change.body or {}
                        if body.get("status") == JobStatus.CANCEL_REQUESTED.value:
                            cancelled = True
                        elif _lease_taken(body.get("lease"), self.service.worker_id):
                            # This worker stalled past its lease and
                            # another claimed the job: that one owns it.
                            lost = True
                        else:
                            continue
                        stop_work()
                        return
            except OADAError as error:
                # Cancellation requests go unseen; the job itself goes on.
                self.log.warning("could not watch the job for cancellation: %s", error)

        def on_lost() -> None:
            nonlocal lost
            lost = True
            stop_work()

        # Timers rather than tasks: most jobs end before any of them
        # is due, and a timer costs far less to set and drop.
        timers = [
            loop.call_later(CANCEL_WATCH_AFTER, helpers.start, cancel_watch),
            loop.call_later(self._lease_interval(), helpers.start, self._renew_lease, on_lost),
        ]
        if worker.timeout is not None:
            timers.append(loop.call_later(worker.timeout, time_out))
        try:
            with work_scope:
                try:
                    value = await worker.work(work_job, ctx)
                    outcome = self._success(worker, value)
                except Retry as error:
                    if not (timed_out or cancelled or lost):
                        outcome = self._retry(error, error.reason, error.defer, worker, job)
                except Reschedule as error:
                    if not (timed_out or cancelled or lost):
                        outcome = self._reschedule(error)
                except Exception as error:
                    if timed_out or cancelled or lost:
                        pass
                    elif worker.retries(error):
                        reason = f"{type(error).__name__}: {error}"
                        outcome = self._retry(error, reason, None, worker, job)
                    else:
                        outcome = self._failure(error)
                except BaseException as error:
                    if not _raised_by_work(error):
                        raise
                    outcome = self._failure(error)
        finally:
            # A function that blocked the event loop past its timeout ends
            # before the timer could fire: what it returned is too late.
            if (
                worker.timeout is not None
                and not (timed_out or cancelled or lost)
                and anyio.current_time() - started >= worker.timeout
            ):
                timed_out = True
                scoped.revoke()
            for timer in timers:
                timer.cancel()
            if abandon_timer is not None:
                abandon_timer.cancel()
            await helpers.stop()
        if self._abandoned is not None:
            return None  # settled already, without waiting for the function
        if lost or cancelled or timed_out:
            return stopped_outcome()
        assert outcome is not None
        return outcome

    def _cancelled(self, message: str) -> JobOutcome:
        self.log.warning("%s", message)
        return _failed(JobCancelled(message), message)

    def _success(self, worker: Worker, value: object) -> JobOutcome:
        model = worker.result_model
        if model is not None and not isinstance(value, model):
            try:
                value = model.model_validate(value)
            except ValidationError as error:
                return self._invalid(
                    error, f"the result does not match {model.__name__}", INVALID_RESULT_FAIL_TYPE
                )
        return JobOutcome(JobStatus.SUCCESS.value, _json_result(value))

    def _invalid(self, error: ValidationError, what: str, fail_type: str) -> JobOutcome:
        """A failure carrying pydantic's exact validation errors."""
        message = f"{what}: {error.error_count()} error(s)"
        self.log.error("%s", message)
        result = {
            "name": "ValidationError",
            "message": message,
            "errors": json.loads(error.json(include_url=False)),
            "failType": fail_type,
        }
        return JobOutcome(JobStatus.FAILURE.value, result, fail_type, message)

    def _retry(
        self,
        error: BaseException,
        reason: str,
        defer: float | None,
        worker: Worker,
        job: Job[Any],
    ) -> JobOutcome:
        """Another try later, or a failure when the job used up its tries."""
        tried = job.tries + 1
        allowed = job.options.tries or worker.tries
        if tried >= allowed:
            message = f"{reason} (try {tried} of {allowed}, no tries left)"
            self.log.error("%s", message)
            result = error_result(error)
            result.update(message=message, tries=tried)
            fail_type = result.get("failType")
            if isinstance(error, Retry):
                fail_type = result["failType"] = RETRY_LIMIT_FAIL_TYPE
            return JobOutcome(JobStatus.FAILURE.value, result, fail_type, message)
        delay = worker.retry_delay_for(tried) if defer is None else defer
        self.log.info("try %d of %d failed (%s); next in %.3g s", tried, allowed, reason, delay)
        return JobOutcome(
            JobStatus.PENDING.value,
            None,
            meta=f"try {tried} of {allowed} failed: {reason}; next try in {delay:.3g} s",
            run_at=utc_now() + timedelta(seconds=delay),
            reason=reason,
        )

    def _reschedule(self, request: Reschedule) -> JobOutcome:
        try:
            state = _json_result(request.state)
        except TypeError as error:
            return self._failure(TypeError(f"the state given to Reschedule is not JSON: {error}"))
        run_at = request.at or utc_now() + timedelta(seconds=request.defer or 0)
        self.log.info("rescheduled for %s: %s", iso(run_at), request.reason)
        return JobOutcome(
            JobStatus.PENDING.value,
            None,
            meta=f"{request.reason}; next run at {iso(run_at)}",
            run_at=run_at,
            rescheduled=True,
            state=state,
        )

    def _failure(self, error: BaseException) -> JobOutcome:
        fail_type = error.fail_type if isinstance(error, JobError) else None
        if isinstance(error, ClientClosed):
            self.log.error("work function used its client after it was revoked: %s", error)
        else:
            self.log.error("work function failed: %s: %s", type(error).__name__, error)
        return JobOutcome(
            JobStatus.FAILURE.value,
            error_result(error),
            fail_type,
            meta=f"{type(error).__name__}: {error}",
        )

    def _unrecordable(self, outcome: JobOutcome, error: BaseException) -> JobOutcome:
        """The failure recorded in place of *outcome*, which could not be written (*error*)."""
        if isinstance(error, OADAError):
            why = f"the server refused it ({error.status}: {error})"
        else:
            why = f"it is not JSON ({type(error).__name__}: {error})"
        message = f"the job's {outcome.status} outcome could not be recorded: {why}"
        self.log.error("%s", message)
        return _failed(JobError(message, INVALID_RESULT_FAIL_TYPE), message)

    def _note_write(self, etag: str | None) -> None:
        if etag is not None:
            self._etag = etag

    async def _still_ours(self) -> bool:
        """Re-read the job after a 412: may this worker still write its outcome?

        Not when the job finished meanwhile or another worker holds a lease on
        it (this one stalled past its lease and the job was taken over).
        """
        response = await self.oada.get(self.path)
        try:
            job = Job.from_resource(response.data, oada_id=self.job_id, etag=response.etag)
        except InvalidJob:
            return False
        if job.finished or _lease_taken(job.raw.get("lease"), self.service.worker_id):
            return False
        self._etag = response.etag
        return True

    async def _owned_put(self, body: JsonObject) -> bool:
        """PUT *body* on the job if this worker still owns it; ``False`` if it does not."""
        while True:
            try:
                response = await self.oada.put(
                    self.path, body, content_type=JOBS_TYPE, if_match=self._etag
                )
            except PreconditionFailed:
                # Someone wrote the job since our last write: the work
                # function through ctx.oada, or another worker that took it.
                if not await self._still_ours():
                    return False
                continue
            self._note_write(response.etag)
            return True

    def _lease_interval(self) -> float:
        return max(self.service.config.lease.total_seconds() / 3, 0.05)

    async def _renew_lease(self, on_lost: Callable[[], None]) -> None:
        """Renew the lease now and every :meth:`_lease_interval` after."""
        while True:
            lease = Lease.new(self.service.worker_id, self.service.config.lease)
            try:
                if not await self._owned_put({"lease": lease.to_json()}):
                    self.log.error(
                        "another worker took the job over after this one's lease ran out; "
                        "abandoning this run"
                    )
                    on_lost()
                    return
            except OADAError as error:
                self.log.warning("could not renew the job lease: %s", error)
            await anyio.sleep(self._lease_interval())

    # --------------------------------------------------------------- finishing

    async def _shielded(self, step: Callable[[], Awaitable[T]]) -> T | None:
        """Run *step* to record an outcome; ``None`` if it could not be recorded.

        Once the work is done its outcome must be recorded even while the
        service is being cancelled, so this is shielded — and bounded by
        ``finish_timeout`` so shutdown cannot hang. Transient failures (the
        connection dropped, 5xx, 429) are retried: every step is idempotent.
        """
        delay = 0.1
        with anyio.move_on_after(self.service.config.finish_timeout, shield=True) as scope:
            while True:
                try:
                    return await step()
                except (OADATransportError, ServerError, TooManyRequests) as error:
                    self.log.warning(
                        "recording the job's outcome failed (%s); retrying in %.1f s", error, delay
                    )
                    await anyio.sleep(delay)
                    delay = min(delay * 2, 2.0)
                except OADAError as error:
                    self.log.error(
                        "could not record the job's outcome (it stays in the pending list and "
                        "will be retried): %s",
                        error,
                    )
                    return None
        if scope.cancelled_caught:
            self.log.error("recording the job's outcome took too long; it stays pending")
        return None

    async def _release(self, body: JsonObject) -> None:
        """Give the job back (*body*: made once by :func:`_release_body`, so a
        retried write adds no second ``released`` update)."""
        if not await self._owned_put(body):
            return  # another worker has it now; nothing to give back
        # Re-link the entry so other replicas' list watches see it at once
        # instead of at their next sweep.
        await self.oada.put(
            self.queue.pending_path,
            {self.key: {"_id": self.job_id}},
            content_type=JOBS_TYPE,
        )

    async def _write_and_file(
        self,
        outcome: JobOutcome,
        job: Job[Any] | None,
        *,
        etag: str | None,
        duration: float | None = None,
        owned: bool = False,
    ) -> None:
        """Write the outcome, then file the job.

        *owned*: the job was claimed by this worker; the write is conditional
        on this worker's last write and skipped if another worker owns the
        job by now. Otherwise it is conditional on *etag* (if given).
        """
        finished_at = utc_now()

        def body_of(outcome: JobOutcome) -> JsonObject:
            # Made once per outcome, so a retried write does not add a second update.
            key, update = new_update(outcome.status, outcome.meta, at=finished_at)
            return {
                "status": outcome.status,
                "result": outcome.result,
                "lease": None,
                "updates": {key: update},
            }

        body = body_of(outcome)
        written = False
        abandoned = False

        async def put(body: JsonObject) -> None:
            nonlocal abandoned
            if owned:
                abandoned = not await self._owned_put(body)
            else:
                await self.oada.put(self.path, body, content_type=JOBS_TYPE, if_match=etag)

        async def record() -> str | None:
            nonlocal written, outcome, body
            if not written:
                try:
                    await put(body)
                except (TypeError, ValueError, BadRequest, PayloadTooLarge) as error:
                    # Not JSON, or refused by the server (too deep, too large):
                    # recorded instead is a failure saying so, not the run again.
                    outcome = self._unrecordable(outcome, error)
                    body = body_of(outcome)
                    await put(body)
                if abandoned:
                    return None
                written = True
                self.release_slot()
            return await self._file(outcome.status, outcome.fail_type, finished_at)

        day_path = await self._shielded(record)
        if abandoned:
            self.log.error(
                "another worker took the job over after this one's lease ran out; not "
                "recording this run's outcome (%s)",
                outcome.status,
            )
        if day_path is None:
            return
        self.outcome = outcome
        level = logging.INFO if outcome.status == JobStatus.SUCCESS.value else logging.WARNING
        self.log.log(level, "job finished: %s", outcome.status)
        job_type = job.type if job is not None else "(invalid)"
        self.service.metrics.job_finished(job_type, outcome.status, duration)
        if job is not None:
            await self.service.report(
                job=job,
                queue=self.queue,
                status=outcome.status,
                result=outcome.result,
                path=day_path,
                duration=duration,
            )

    def _finish_time(self, job: Job[Any]) -> datetime:
        # A job finished elsewhere is filed under the day it finished.
        for update in reversed(list(job.updates.values())):
            if isinstance(update, Mapping) and update.get("status") == job.status:
                moment = parse_time(update.get("time"))
                if moment is not None:
                    return moment
        return utc_now()

    async def _file(self, status: str, fail_type: str | None, finished_at: datetime) -> str:
        """Link the job into the day list(s) and remove it from the pending list."""
        layout = self.queue.layout
        name = self.service.name
        day = finished_at.date()
        day_path = layout.day_index_path(name, status, day)
        await self.queue.link_into(day_path, self.key, self.job_id)
        if fail_type is not None:
            await self.queue.link_into(
                layout.day_index_path(name, status, day, fail_type), self.key, self.job_id
            )
        await self.oada.delete(f"{self.queue.pending_path}/{path_segment(self.key)}")
        return day_path
