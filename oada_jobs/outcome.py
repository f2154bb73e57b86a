"""How a job ends: the :class:`JobOutcome` written to it, and how one is made.

Owns the outcome record, the framework's fail types and the rules that turn
what happened in a run (a value, an exception, a ``Retry`` or
``Reschedule``, a model that did not validate, a write the server refused)
into an outcome. Pure: no I/O, no clock besides ``utc_now``, no runner,
queue or service; the runner decides *when* each rule applies and filing
writes the result.

It must not do I/O or import the runner, the queue, filing or the service.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydantic import BaseModel, ValidationError

from .client._common import dumps
from .exceptions import (
    ClientClosed,
    JobCancelled,
    JobError,
    OADAError,
    Reschedule,
    Retry,
    WaitForChild,
)
from .job import JobStatus, error_result, iso, utc_now
from .types import Json

__all__ = [
    "DUPLICATE_FAIL_TYPE",
    "EXPIRED_FAIL_TYPE",
    "INVALID_CONFIG_FAIL_TYPE",
    "INVALID_JOB_FAIL_TYPE",
    "INVALID_RESULT_FAIL_TYPE",
    "RETRY_LIMIT_FAIL_TYPE",
    "TIMEOUT_FAIL_TYPE",
    "UNSUPPORTED_VERSION_FAIL_TYPE",
    "JobOutcome",
    "cancelled",
    "failed",
    "failure",
    "invalid",
    "json_result",
    "reschedule",
    "retry",
    "success",
    "unrecordable",
    "wait_for_child",
]

#: Where outcome rules log: the run's logger (a ``JobLogAdapter``).
Log = logging.LoggerAdapter[logging.Logger]

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
#: Fail type of jobs not started by their ``expiresAt``.
EXPIRED_FAIL_TYPE = "expired"
#: Fail type of jobs whose result did not validate against the declared model.
INVALID_RESULT_FAIL_TYPE = "invalid-result"


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
    #: For a wait: the child job the job waits for (``ctx.run_job``).
    waiting_for: str | None = None


def failed(error: JobError, message: str) -> JobOutcome:
    """The failure outcome of *error*: its result and fail type, *message* as the update."""
    return JobOutcome(JobStatus.FAILURE.value, error_result(error), error.fail_type, message)


def _describe(value: object) -> str:
    return "null" if value is None else type(value).__name__


def json_result(value: object) -> Json:
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


def cancelled(log: Log, message: str) -> JobOutcome:
    """A failure for a job cancelled (before or while it ran), saying so."""
    log.warning("%s", message)
    return failed(JobCancelled(message), message)


def success(log: Log, model: type[BaseModel] | None, value: object) -> JobOutcome:
    """The work function returned *value*: success, if it is JSON and matches *model*."""
    if model is not None and not isinstance(value, model):
        try:
            value = model.model_validate(value)
        except ValidationError as error:
            return invalid(
                log, error, f"the result does not match {model.__name__}", INVALID_RESULT_FAIL_TYPE
            )
    return JobOutcome(JobStatus.SUCCESS.value, json_result(value))


def invalid(log: Log, error: ValidationError, what: str, fail_type: str) -> JobOutcome:
    """A failure carrying pydantic's exact validation errors."""
    message = f"{what}: {error.error_count()} error(s)"
    log.error("%s", message)
    result = {
        "name": "ValidationError",
        "message": message,
        "errors": json.loads(error.json(include_url=False)),
        "failType": fail_type,
    }
    return JobOutcome(JobStatus.FAILURE.value, result, fail_type, message)


def retry(
    log: Log, error: BaseException, reason: str, *, tried: int, allowed: int, delay: float
) -> JobOutcome:
    """Another try in *delay* seconds, or a failure when the job used up its tries.

    *tried*: tries made, this one included; *allowed*: how many it may make.
    """
    if tried >= allowed:
        message = f"{reason} (try {tried} of {allowed}, no tries left)"
        log.error("%s", message)
        result = error_result(error)
        result.update(message=message, tries=tried)
        fail_type = result.get("failType")
        if isinstance(error, Retry):
            fail_type = result["failType"] = RETRY_LIMIT_FAIL_TYPE
        return JobOutcome(JobStatus.FAILURE.value, result, fail_type, message)
    log.info("try %d of %d failed (%s); next in %.3g s", tried, allowed, reason, delay)
    return JobOutcome(
        JobStatus.PENDING.value,
        None,
        meta=f"try {tried} of {allowed} failed: {reason}; next try in {delay:.3g} s",
        run_at=utc_now() + timedelta(seconds=delay),
        reason=reason,
    )


def reschedule(log: Log, request: Reschedule) -> JobOutcome:
    """The work function asked to run again later with a new state; a failure
    if that state is not JSON."""
    try:
        state = json_result(request.state)
    except TypeError as error:
        return failure(log, TypeError(f"the state given to Reschedule is not JSON: {error}"))
    run_at = request.at or utc_now() + timedelta(seconds=request.defer or 0)
    log.info("rescheduled for %s: %s", iso(run_at), request.reason)
    return JobOutcome(
        JobStatus.PENDING.value,
        None,
        meta=f"{request.reason}; next run at {iso(run_at)}",
        run_at=run_at,
        rescheduled=True,
        state=state,
    )


def wait_for_child(log: Log, request: WaitForChild) -> JobOutcome:
    """The work function waits for a child job: pending, holding no slot, until
    the child is filed (or ``check_every`` seconds at the latest)."""
    run_at = utc_now() + timedelta(seconds=request.check_every)
    log.info("waiting for the child job %s", request.child_id)
    return JobOutcome(
        JobStatus.PENDING.value,
        None,
        meta=f"waiting for the child job {request.child_id}",
        run_at=run_at,
        waiting_for=request.child_id,
    )


def failure(log: Log, error: BaseException) -> JobOutcome:
    """The work function raised *error*: a failure carrying it (and its fail type)."""
    fail_type = error.fail_type if isinstance(error, JobError) else None
    if isinstance(error, ClientClosed):
        log.error("work function used its client after it was revoked: %s", error)
    else:
        log.error("work function failed: %s: %s", type(error).__name__, error)
    return JobOutcome(
        JobStatus.FAILURE.value,
        error_result(error),
        fail_type,
        meta=f"{type(error).__name__}: {error}",
    )


def unrecordable(log: Log, outcome: JobOutcome, error: BaseException) -> JobOutcome:
    """The failure recorded in place of *outcome*, which could not be written (*error*)."""
    if isinstance(error, OADAError):
        why = f"the server refused it ({error.status}: {error})"
    else:
        why = f"it is not JSON ({type(error).__name__}: {error})"
    message = f"the job's {outcome.status} outcome could not be recorded: {why}"
    log.error("%s", message)
    return failed(JobError(message, INVALID_RESULT_FAIL_TYPE), message)
