"""Running one job: read it, decide, claim it, run its work function, hand the outcome to filing.

A :class:`Runner` handles one key of a job list. In steady state a job costs
five OADA requests:

1. ``GET /<job>``;
2. the claim: ``PUT /<job>`` with ``If-Match`` on the ETag just read, writing
   ``status: running``, a worker lease and the ``started`` update
   (:mod:`oada_jobs.claim`);
3. the result: ``PUT /<job>`` with ``status``, ``result`` and the finishing
   update in one merge body;
4. the day-index link: ``PUT <list>/day-index/<date>`` (a tree PUT the first
   time a day list is used);
5. ``DELETE <pending>/<key>`` (3-5: :mod:`oada_jobs.filing`).

The claim is what lets several replicas share one queue: of two workers that
read the same ETag only one write succeeds, the other gets 412 and skips the
job. A running worker renews its lease; a job whose lease expired (its worker
died) is claimed again by a later sweep of the pending list.

Owns :class:`Runner` and :class:`RunnerSettings`. The decisions before a
run are :mod:`oada_jobs.decision` (:class:`Decision` is re-exported here),
reading is :mod:`oada_jobs.reading`, the work call itself (timeout, cancel
watch, lease renewal) is :mod:`oada_jobs.call`, and writing, filing, giving
back or releasing the job is :mod:`oada_jobs.finishing`. A runner gets the
job's key and what the scheduler decided, a client, a worker lookup, a
filer and a way to run tasks beside the jobs; it must not import the queue,
the scheduler or the service.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import anyio
from pydantic import ValidationError

from . import outcome as outcomes
from . import telemetry
from .call import Spawn, WorkCall
from .claim import Claim
from .client import OADAClient
from .context import JobLogAdapter, JobLogger, WorkerContext
from .decision import Decision, verdict
from .exceptions import BadRequest, Forbidden, InvalidJob, InvalidKey, JobError, NotFound
from .filing import Filer
from .finishing import Finisher
from .job import Job, JobStatus, error_result, utc_now
from .metrics import ServiceMetrics
from .outcome import INVALID_CONFIG_FAIL_TYPE, INVALID_JOB_FAIL_TYPE, JobOutcome, failed
from .reading import read_job
from .types import JsonObject
from .watchdog import LoopWatchdog
from .worker import Worker

__all__ = ["Decision", "Runner", "RunnerSettings"]

logger = logging.getLogger("oada_jobs")


@dataclass(frozen=True, slots=True)
class RunnerSettings:
    """What a runner needs of the service's configuration."""

    #: Names this service instance in job leases.
    worker_id: str
    #: How long a claim holds without renewal.
    lease: timedelta
    #: Seconds to wait for a resource that is not a job yet to become one.
    invalid_job_wait: float
    #: Seconds a cancelled work function has to end before its job is
    #: settled without it.
    cancel_grace: float


def _job_log(**extra: str) -> JobLogAdapter:
    """The logger of one job's run; its type and trace are bound once it is read."""
    return JobLogAdapter(logger, {**extra, "job_type": None, "trace_id": None})


class Runner:
    """Runs one job of a list (see the module docstring).

    :param decision: the job's key and id, and what the scheduler decided.
    :param oada: the queue's client.
    :param workers: the registered worker of a job type, if any.
    :param filer: writes the outcome and files the job.
    :param settings: the worker id, lease and read wait.
    :param metrics: counts running and finished jobs.
    :param watchdog: names the jobs running when the event loop lags.
    :param spawn: runs the run's watchers beside the jobs.
    :param release_slot: frees the job's concurrency slot (idempotent);
        called once the outcome is written, before filing.
    :param service: the service name, and
    :param queue: the queue's key: in every log record and span of the run.
    """

    def __init__(
        self,
        decision: Decision,
        *,
        oada: OADAClient,
        workers: Callable[[str], Worker | None],
        filer: Filer,
        settings: RunnerSettings,
        metrics: ServiceMetrics,
        watchdog: LoopWatchdog,
        spawn: Spawn,
        release_slot: Callable[[], None] = lambda: None,
        service: str,
        queue: str,
    ) -> None:
        self.decision = decision
        self.release_slot = release_slot
        self.oada = oada
        self.workers = workers
        self.filer = filer
        self.settings = settings
        self.metrics = metrics
        self.watchdog = watchdog
        # Set when a work function ignored its cancellation past
        # ``cancel_grace``: its outcome is settled without waiting for it,
        # and this is set once that is done.
        self._abandoned: anyio.Event | None = None
        self._abandoned_later: datetime | None = None
        self.spawn = spawn
        self.key = key = decision.key
        self.job_id = job_id = decision.job_id
        self.service = service
        self.queue = queue
        self.log = _job_log(service=service, queue=queue, job_id=job_id, job_key=key)
        self.claim = Claim(
            oada, job_id, worker_id=settings.worker_id, lease=settings.lease, log=self.log
        )
        #: Writes, files, gives back or releases the job.
        self.finisher = Finisher(
            key,
            job_id,
            oada=oada,
            claim=self.claim,
            filer=filer,
            workers=workers,
            service=service,
            release_slot=release_slot,
            log=self.log,
        )

    @property
    def outcome(self) -> JobOutcome | None:
        """The outcome written to the job, once it is filed here."""
        return self.finisher.outcome

    # ----------------------------------------------------------------- reading

    async def read(self) -> Job[JsonObject]:
        """Read the job (see :func:`read_job`)."""
        return await read_job(
            self.oada, self.job_id, key=self.key, wait=self.settings.invalid_job_wait
        )

    def _bind(self, job: Job[Any]) -> None:
        assert self.log.extra is not None
        extra = dict(self.log.extra)
        extra.update(job_type=job.type, trace_id=job.trace_id)
        self.log.extra = extra

    async def _read_or_file(self, job: Job[Any] | None) -> Job[Any] | None:
        """The job (*job*, else read here); ``None`` once it is filed because
        the scheduler found a problem with it, or it cannot be read."""
        try:
            if self.decision.problem is not None:
                raise self.decision.problem
            return job if job is not None else await self.read()
        except InvalidJob as error:
            self.log.error("%s", error)
            outcome = JobOutcome(
                JobStatus.FAILURE.value,
                {**error_result(error), "failType": INVALID_JOB_FAIL_TYPE},
                INVALID_JOB_FAIL_TYPE,
                meta=str(error),
            )
            await self.finisher.write_and_file(outcome, None, etag=None)
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
            await self.finisher.file_only(JobStatus.FAILURE.value, utc_now())
        return None

    # ----------------------------------------------------------------- the run

    async def run(self, job: Job[Any] | None = None) -> datetime | None:
        """Process the job (*job*: as the queue read it, else read here).

        Returns when the queue should look at the job again (it is still
        pending: a retry, a reschedule, not due yet, or running elsewhere),
        or ``None`` when it is done here (filed, or gone from the list).
        """
        job = await self._read_or_file(job)
        if job is None:
            return None
        self._bind(job)
        if job.finished:
            await self.finisher.file_finished(job)
            return None
        decided = verdict(
            job,
            self.workers(job.type),
            self.decision,
            worker_id=self.settings.worker_id,
            log=self.log,
        )
        if isinstance(decided, JobOutcome):
            # Filed without running, conditionally on the ETag read, so
            # that of several replicas only one does.
            await self.finisher.write_and_file(decided, job, etag=job.etag)
            return None
        if decided is not None:
            return decided
        with telemetry.job_span(self.service, self.queue, job):
            with telemetry.step_span("claim"):
                claimed = await self.claim.take(job)
            if claimed is None:
                self.metrics.claim_lost()
                # Someone wrote the job since it was read, most likely another
                # replica's claim. Looking again a moment later costs nothing
                # if that one files the job by then (the list watch tells).
                return utc_now() + timedelta(seconds=1)
            again = await self._execute(job, claimed)
            if self.outcome is not None:
                telemetry.set_job_outcome(self.outcome.status, self.outcome.fail_type)
            return again

    async def _execute(self, job: Job[JsonObject], claim_rev: int) -> datetime | None:
        worker = self.workers(job.type)
        started = anyio.current_time()
        self.metrics.job_started(job.type)
        scoped = self.oada.clone()
        ctx = WorkerContext(
            job_id=self.job_id,
            log=JobLogger(scoped, self.job_id, self.log, self.claim.note_write),
            oada=scoped,
            logger=self.log,
            layout=self.filer.layout.name,
        )
        outcome: JobOutcome | None = None
        self.watchdog.started(self.job_id, f"{self.key} ({job.type})")
        try:
            with telemetry.step_span("run"):
                outcome = await self._call(worker, job, ctx, scoped, claim_rev, started)
        except anyio.get_cancelled_exc_class():
            # Shutdown past its grace period: give the job back so it runs
            # again, here or on another replica.
            scoped.revoke()
            await self.finisher.release(job)
            raise
        finally:
            scoped.revoke()
            self.watchdog.ended(self.job_id)
            if self._abandoned is None:
                self.metrics.job_stopped(job.type)
        if self._abandoned is not None:
            # Settled while the function ignored its cancellation.
            await self._abandoned.wait()
            return self._abandoned_later
        return await self.finisher.settle(outcome, job, started)

    def _abandon(self, outcome: JobOutcome | None, job: Job[JsonObject], started: float) -> None:
        """The work function ignored its cancellation for ``cancel_grace``:
        settle the job with *outcome* beside it, freeing the job and its slot."""
        self._abandoned = done = anyio.Event()
        self.watchdog.ended(self.job_id)
        self.metrics.job_stopped(job.type)
        self.log.error(
            "the work function ignored its cancellation for %g s; settling the job without "
            "it (it goes on in the background, its client revoked)",
            self.settings.cancel_grace,
        )

        async def settle() -> None:
            try:
                self._abandoned_later = await self.finisher.settle(outcome, job, started)
            finally:
                self.release_slot()
                done.set()

        self.spawn(settle)

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
            return failed(error, str(error))
        # What the function sees: this run's try number and status.
        work_job: Job[Any] = replace(job, tries=job.tries + 1, status=JobStatus.RUNNING.value)
        if worker.config_model is not None:
            try:
                work_job = work_job.with_config(worker.config_model.model_validate(job.config))
            except ValidationError as error:
                return outcomes.invalid(
                    self.log,
                    error,
                    f"job config does not match {worker.config_model.__name__}",
                    INVALID_CONFIG_FAIL_TYPE,
                )
        call = WorkCall(
            self.claim,
            scoped,
            claim_rev,
            self.spawn,
            self.log,
            cancel_grace=self.settings.cancel_grace,
            on_abandon=lambda outcome: self._abandon(outcome, job, started),
        )
        return await call.run(worker, work_job, job, ctx, started)
