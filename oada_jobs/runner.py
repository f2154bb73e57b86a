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

Owns :class:`Runner`, :class:`Decision`, :class:`RunnerSettings` and
the decisions before a run; reading is :mod:`oada_jobs.reading`, the work call itself (timeout, cancel watch, lease
renewal) is :mod:`oada_jobs.call`. A runner gets the job's key and what the scheduler decided,
a client, a worker lookup, a filer and a way to run tasks beside the jobs;
it must not import the queue, the scheduler or the service.
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
from .claim import Claim, release_body
from .client import OADAClient
from .context import JobLogAdapter, JobLogger, WorkerContext
from .exceptions import (
    BadRequest,
    Forbidden,
    InvalidJob,
    InvalidKey,
    JobError,
    JobExists,
    NotFound,
    OADAError,
)
from .filing import TRANSIENT, Filer, finish_time
from .job import Job, JobStatus, error_result, iso, new_update, utc_now
from .metrics import ServiceMetrics
from .outcome import (
    DUPLICATE_FAIL_TYPE,
    EXPIRED_FAIL_TYPE,
    INVALID_CONFIG_FAIL_TYPE,
    INVALID_JOB_FAIL_TYPE,
    RETRY_LIMIT_FAIL_TYPE,
    UNSUPPORTED_VERSION_FAIL_TYPE,
    JobOutcome,
    failed,
)
from .reading import read_job
from .requester import post_follow_up, wake_parent
from .tree import JOBS_TYPE, resource_path
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


@dataclass(frozen=True, slots=True)
class Decision:
    """One job of a list and what the scheduler decided about it before it runs."""

    #: Its key in the pending list.
    key: str
    #: The job resource id.
    job_id: str
    #: Why the job cannot run (a bad job, a missing resource): it is only filed.
    problem: BaseException | None = None
    #: Refused: the job holding its unique key.
    duplicate_of: str | None = None
    #: Merged: the job it was merged into, and that job's outcome.
    merged_into: tuple[str, JobOutcome] | None = None


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
        #: The outcome written to the job, once it is filed here.
        self.outcome: JobOutcome | None = None
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
        # Whether this run gave the job back already (a stop past its grace).
        self._released = False
        self.spawn = spawn
        self.key = key = decision.key
        self.job_id = job_id = decision.job_id
        try:
            self.path = resource_path(job_id)
        except InvalidKey:
            # Never requested: the queue gave such an entry a problem, so
            # it is only moved to the failure list.
            self.path = ""
        self.service = service
        self.queue = queue
        self.log = JobLogAdapter(
            logger,
            {
                "service": service,
                "queue": queue,
                "job_id": job_id,
                "job_key": key,
                "job_type": None,
                "trace_id": None,
            },
        )
        self.claim = Claim(
            oada, job_id, worker_id=settings.worker_id, lease=settings.lease, log=self.log
        )

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

    # ----------------------------------------------------------------- the run

    async def run(self, job: Job[Any] | None = None) -> datetime | None:
        """Process the job (*job*: as the queue read it, else read here).

        Returns when the queue should look at the job again (it is still
        pending: a retry, a reschedule, not due yet, or running elsewhere),
        or ``None`` when it is done here (filed, or gone from the list).
        """
        try:
            if self.decision.problem is not None:
                raise self.decision.problem
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
            await self._file_only(JobStatus.FAILURE.value, utc_now())
            return None
        self._bind(job)
        if job.finished:
            self.log.info("job is already %s; filing it", job.status)
            assert job.status is not None
            # Its outcome was written here or elsewhere, but filing stopped
            # short: its follow-up may not be posted yet, nor its parent
            # woken (both are idempotent).
            status = job.status
            await self.filer.shielded(
                lambda: self._after_outcome(job, status, job.result, ran=True), self.log
            )
            await self._file_only(job.status, finish_time(job))
            return None
        verdict = self._verdict(job)
        if isinstance(verdict, JobOutcome):
            # Filed without running, conditionally on the ETag read, so
            # that of several replicas only one does.
            await self._write_and_file(verdict, job, etag=job.etag)
            return None
        if verdict is not None:
            return verdict
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

    def _verdict(self, job: Job[Any]) -> JobOutcome | datetime | None:
        """What to do with a pending job before claiming it: an outcome to file
        it with, a time to look again, or ``None`` to run it now."""
        worker = self.workers(job.type)
        decision = self.decision
        if job.status == JobStatus.CANCEL_REQUESTED.value:
            return outcomes.cancelled(self.log, "the job was cancelled before it ran")
        if decision.merged_into is not None:
            holder, outcome = decision.merged_into
            self.log.info("merged into %s (same unique key); taking its outcome", holder)
            return replace(outcome, meta=f"merged into {holder}: {outcome.meta}")
        if decision.duplicate_of is not None:
            message = (
                f"refused: job {decision.duplicate_of} with the same unique key "
                f"{job.options.unique_key!r} is pending or running"
            )
            self.log.warning("%s", message)
            details = {"duplicateOf": decision.duplicate_of}
            return failed(JobError(message, DUPLICATE_FAIL_TYPE, details=details), message)
        if worker is not None and worker.min_version is not None:
            version = job.options.effective_version
            if version < worker.min_version:
                message = (
                    f"job version {version} is older than the {worker.min_version} "
                    f"that job type {job.type!r} accepts"
                )
                self.log.error("%s", message)
                return failed(JobError(message, UNSUPPORTED_VERSION_FAIL_TYPE), message)
        if job.expired_for(self.settings.worker_id):
            # Checked right before the claim, which is conditional on this
            # read: a job is never started after its expiresAt.
            assert job.options.expires_at is not None
            message = f"the job was not started by its expiresAt {iso(job.options.expires_at)}"
            self.log.warning("%s", message)
            return failed(JobError(message, EXPIRED_FAIL_TYPE), message)
        until = job.wait_until(self.settings.worker_id)
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
            return failed(JobError(message, RETRY_LIMIT_FAIL_TYPE), message)
        return None

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
            if not self._released:
                # Once, whatever interrupts the release (a second Ctrl-C).
                self._released = True
                self.log.warning("stopped before the job finished; releasing it")
                body = release_body(job)
                await self.filer.shielded(lambda: self._release(body), self.log)
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
            return await self._give_back(outcome, job)
        duration = anyio.current_time() - started
        with telemetry.step_span("file"):
            await self._write_and_file(outcome, job, etag=None, duration=duration, owned=True)
        return None

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
                self._abandoned_later = await self._settle(outcome, job, started)
            finally:
                self.release_slot()
                done.set()

        self.spawn(settle)

    async def _after_outcome(self, job: Job[Any], status: str, result: Any, *, ran: bool) -> None:
        """What follows a job's outcome before it leaves the list: its follow-up
        (when it ran), and waking the parent waiting for it (``ctx.run_job``)."""
        if ran:
            await self._follow_up(job, status, result)
        parent = job.raw.get("parent")
        parent_id = parent.get("_id") if isinstance(parent, dict) else None
        if (
            job.raw.get("resumesParent") is True
            and isinstance(parent_id, str)
            and parent_id.startswith("resources/")
        ):
            try:
                if await wake_parent(self.oada, parent_id, self.job_id):
                    self.log.info("woke the parent job %s", parent_id)
            except TRANSIENT:
                raise  # retried with the filing
            except (OADAError, InvalidJob, ValueError) as error:
                # It looks at this job again by itself (check_every).
                self.log.warning("could not wake the parent job %s: %s", parent_id, error)

    async def _follow_up(self, job: Job[Any], status: str, result: Any) -> None:
        """Post the follow-up job the type declares for *status*, if any (once)."""
        worker = self.workers(job.type)
        if worker is None:
            return
        success = status == JobStatus.SUCCESS.value
        follow = worker.then if success else worker.on_failure
        if follow is None:
            return
        config = dict(result) if isinstance(result, dict) else {"result": result}
        try:
            follow_up_id = await post_follow_up(
                self.oada,
                self.job_id,
                follow.service or self.service,
                follow.type,
                config,
                kind="then" if success else "on-failure",
                layout=self.filer.layout.name,
            )
        except TRANSIENT:
            raise  # retried with the filing
        except (OADAError, JobExists, ValueError, TypeError) as error:
            self.log.error("could not post the follow-up %r: %s", follow.type, error)
            return
        self.log.info("posted the follow-up %s (%s)", follow_up_id, follow.type)

    async def _give_back(self, outcome: JobOutcome, job: Job[JsonObject]) -> datetime | None:
        """Leave the job pending until ``outcome.run_at`` (a retry or a reschedule)."""
        assert outcome.run_at is not None
        # The update is made once: a retried write must not add another.
        what = (
            "waiting" if outcome.waiting_for else "rescheduled" if outcome.rescheduled else "retry"
        )
        entry = new_update(what, outcome.meta)
        given_back = await self.filer.shielded(
            lambda: self.claim.give_back(outcome, entry), self.log
        )
        if given_back is None and outcome.rescheduled:
            # Its new state could not be saved (e.g. too large): running
            # it again from an old or empty state would be wrong.
            error = JobError("the rescheduled job's new state could not be saved")
            await self._write_and_file(failed(error, str(error)), job, etag=None, owned=True)
            return None
        if given_back and outcome.waiting_for is not None:
            # The child may have been filed before this job said it waits for
            # it: then nobody else wakes it.
            woken = await self.filer.shielded(
                lambda: self._wake_if_done(outcome.waiting_for or ""), self.log
            )
            if woken:
                return utc_now()
        # Not given back (another worker owns it, or the write failed):
        # the queue looks at it again shortly.
        return outcome.run_at if given_back else utc_now() + timedelta(seconds=1)

    async def _wake_if_done(self, child_id: str) -> bool:
        try:
            response = await self.oada.get(resource_path(child_id))
            child = Job.from_resource(response.data, oada_id=child_id)
        except (NotFound, Forbidden, InvalidJob):
            return False
        return child.finished and await wake_parent(self.oada, self.job_id, child_id)

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

    # --------------------------------------------------------------- finishing

    async def _release(self, body: JsonObject) -> None:
        if await self.claim.release(body):
            # Re-linked so other replicas' list watches see it at once.
            await self.filer.relink(self.key, self.job_id)

    async def _file_only(self, status: str, finished_at: datetime) -> None:
        """File the job under *status* without writing an outcome on it."""
        await self.filer.shielded(
            lambda: self.filer.file(self.key, self.job_id, status, None, finished_at), self.log
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

        async def conditional(body: JsonObject) -> bool:
            await self.oada.put(self.path, body, content_type=JOBS_TYPE, if_match=etag)
            return True

        self.outcome = await self.filer.write_and_file(
            outcome,
            job,
            key=self.key,
            job_id=self.job_id,
            write=self.claim.put if owned else conditional,
            log=self.log,
            duration=duration,
            written=self.release_slot,
            after_write=None
            if job is None
            else lambda written: self._after_outcome(
                job, written.status, written.result, ran=owned
            ),
        )
