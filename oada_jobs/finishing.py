"""Finishing one job: what a runner does once it knows what came of the job.

A :class:`Finisher` writes the outcome on the job and files it (through the
queue's :class:`~oada_jobs.filing.Filer`), gives the job back for a retry or
a reschedule, releases it when the service stops before it finished, or
files it without an outcome (a list entry that is no job, a job finished
elsewhere). Before a job with an outcome leaves the list, its follow-up job
is posted and a parent waiting for it is woken; both are idempotent, so
they are retried with the filing.

Owns :class:`Finisher`. Gets the job's key and id, the queue's client, the
job's claim, a filer, a worker lookup and the slot's release; must not
touch the queue, the scheduler, the work call or the service.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import anyio

from . import telemetry
from .claim import Claim, release_body
from .client import OADAClient
from .context import JobLogAdapter
from .exceptions import (
    Forbidden,
    InvalidJob,
    InvalidKey,
    JobError,
    JobExists,
    NotFound,
    OADAError,
)
from .filing import TRANSIENT, Filer, finish_time
from .job import Job, JobStatus, new_update, utc_now
from .outcome import JobOutcome, failed
from .requester import post_follow_up, wake_parent
from .tree import JOBS_TYPE, resource_path
from .types import JsonObject
from .worker import Worker

__all__ = ["Finisher"]


class Finisher:
    """Finishes one job of a list (see the module docstring).

    :param key: the job's key in the pending list; *job_id* its resource id.
    :param oada: the queue's client.
    :param claim: the job's claim (writes while this worker holds the job).
    :param filer: writes the outcome and files the job.
    :param workers: the registered worker of a job type (for follow-ups).
    :param service: the service name (where follow-ups go by default).
    :param release_slot: frees the job's concurrency slot (idempotent);
        called once the outcome is written, before filing.
    :param log: the job's logger.
    """

    def __init__(
        self,
        key: str,
        job_id: str,
        *,
        oada: OADAClient,
        claim: Claim,
        filer: Filer,
        workers: Callable[[str], Worker | None],
        service: str,
        release_slot: Callable[[], None],
        log: JobLogAdapter,
    ) -> None:
        self.key = key
        self.job_id = job_id
        try:
            self.path = resource_path(job_id)
        except InvalidKey:
            # Never requested: the queue gave such an entry a problem, so
            # it is only moved to the failure list.
            self.path = ""
        self.oada = oada
        self.claim = claim
        self.filer = filer
        self.workers = workers
        self.service = service
        self.release_slot = release_slot
        self.log = log
        #: The outcome written to the job, once it is filed here.
        self.outcome: JobOutcome | None = None
        # Whether the job was given back already (a stop past its grace).
        self._released = False

    async def settle(
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
            await self.write_and_file(outcome, job, etag=None, duration=duration, owned=True)
        return None

    async def write_and_file(
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

    async def file_only(self, status: str, finished_at: datetime) -> None:
        """File the job under *status* without writing an outcome on it."""
        await self.filer.shielded(
            lambda: self.filer.file(self.key, self.job_id, status, None, finished_at), self.log
        )

    async def file_finished(self, job: Job[Any]) -> None:
        """File *job*, whose outcome was written here or elsewhere (filing
        stopped short): its follow-up may not be posted yet, nor its parent
        woken (both are idempotent)."""
        status = job.status
        assert status is not None
        self.log.info("job is already %s; filing it", status)
        await self.filer.shielded(
            lambda: self._after_outcome(job, status, job.result, ran=True), self.log
        )
        await self.file_only(status, finish_time(job))

    async def release(self, job: Job[JsonObject]) -> None:
        """Give the job back so it runs again, here or on another replica
        (the service stops past its grace); once, whatever interrupts it."""
        if self._released:
            return
        self._released = True
        self.log.warning("stopped before the job finished; releasing it")
        body = release_body(job)

        async def release() -> None:
            if await self.claim.release(body):
                # Re-linked so other replicas' list watches see it at once.
                await self.filer.relink(self.key, self.job_id)

        await self.filer.shielded(release, self.log)

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
            await self.write_and_file(failed(error, str(error)), job, etag=None, owned=True)
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
