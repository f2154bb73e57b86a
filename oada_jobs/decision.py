"""What is decided about a pending job before it runs.

The scheduler decides from the list (a :class:`Decision`: a job refused
or merged for its unique key, one that cannot run at all); :func:`verdict`
decides from the job as read, right before the claim: cancelled, refused,
merged, too old a version, past its ``expiresAt``, not due yet, or started
too often without finishing. Either way a job that must not run is filed
with an outcome saying why.

Owns :class:`Decision` and :func:`verdict`. May use the job model, the
worker and the outcome rules; must not do I/O nor touch the queue, the
scheduler, the runner or the service.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from . import outcome as outcomes
from .context import JobLogAdapter
from .exceptions import JobError
from .job import Job, JobStatus, iso
from .outcome import (
    DUPLICATE_FAIL_TYPE,
    EXPIRED_FAIL_TYPE,
    RETRY_LIMIT_FAIL_TYPE,
    UNSUPPORTED_VERSION_FAIL_TYPE,
    JobOutcome,
    failed,
)
from .worker import Worker

__all__ = ["Decision", "verdict"]


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


def verdict(
    job: Job[Any],
    worker: Worker | None,
    decision: Decision,
    *,
    worker_id: str,
    log: JobLogAdapter,
) -> JobOutcome | datetime | None:
    """What to do with a pending *job* before claiming it: an outcome to file
    it with, a time to look again, or ``None`` to run it now.

    *worker* is its type's (if registered), *decision* the scheduler's,
    *worker_id* names this service instance in leases.
    """
    if job.status == JobStatus.CANCEL_REQUESTED.value:
        return outcomes.cancelled(log, "the job was cancelled before it ran")
    if decision.merged_into is not None:
        holder, outcome = decision.merged_into
        log.info("merged into %s (same unique key); taking its outcome", holder)
        return replace(outcome, meta=f"merged into {holder}: {outcome.meta}")
    if decision.duplicate_of is not None:
        message = (
            f"refused: job {decision.duplicate_of} with the same unique key "
            f"{job.options.unique_key!r} is pending or running"
        )
        log.warning("%s", message)
        details = {"duplicateOf": decision.duplicate_of}
        return failed(JobError(message, DUPLICATE_FAIL_TYPE, details=details), message)
    if worker is not None and worker.min_version is not None:
        version = job.options.effective_version
        if version < worker.min_version:
            message = (
                f"job version {version} is older than the {worker.min_version} "
                f"that job type {job.type!r} accepts"
            )
            log.error("%s", message)
            return failed(JobError(message, UNSUPPORTED_VERSION_FAIL_TYPE), message)
    if job.expired_for(worker_id):
        # Checked right before the claim, which is conditional on this
        # read: a job is never started after its expiresAt.
        assert job.options.expires_at is not None
        message = f"the job was not started by its expiresAt {iso(job.options.expires_at)}"
        log.warning("%s", message)
        return failed(JobError(message, EXPIRED_FAIL_TYPE), message)
    until = job.wait_until(worker_id)
    if until is not None:
        log.debug("job is not due or held elsewhere until %s", iso(until))
        return until
    return _too_many_tries(job, worker, log)


def _too_many_tries(job: Job[Any], worker: Worker | None, log: JobLogAdapter) -> JobOutcome | None:
    """A failure if *job* was started as often as it may be without finishing."""
    allowed = job.options.tries or (worker.tries if worker is not None else 1)
    if job.tries >= allowed:
        # Only a run that never finished leaves this (its worker died, or
        # the job itself brought it down): do not start it again forever.
        message = (
            f"the job was started {job.tries} time(s) without finishing (its worker "
            f"stopped or crashed) and may be started {allowed} time(s)"
        )
        log.error("%s", message)
        return failed(JobError(message, RETRY_LIMIT_FAIL_TYPE), message)
    return None
