"""Reading the jobs of a list: once more if not a job yet; a type's start delay.

A job posted with a tree PUT is first an empty resource linked into the
list and only then filled in, so a first read may see ``{}``:
:func:`read_job` waits for it to change and reads once more.
:func:`read_for_queue` is what a queue's readers do: read the job and, the
first time a job of a type with a start delay is seen, write its ``runAt``
on it (so a restart keeps the delay).

Owns these two reads. May use the client, the job model and the retry
helper; must not touch the scheduler, the runner, the queue or the service.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta

import anyio

from ._retry import retry
from .client import OADAClient
from .exceptions import InvalidJob, OADATransportError, PreconditionFailed
from .job import Job, JobStatus, iso, new_update, utc_now
from .tree import JOBS_TYPE, resource_path
from .types import JsonObject

__all__ = ["START_DELAY_READS", "read_for_queue", "read_job"]

#: Reads of a job whose start-delay write keeps losing to other writers.
START_DELAY_READS = 3


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


async def read_for_queue(
    oada: OADAClient,
    job_id: str,
    *,
    key: str,
    wait: float,
    start_delay: Callable[[str], float],
) -> Job[JsonObject]:
    """Read a job for a queue's scheduler (see :func:`read_job`); the first
    time a job of a type with a *start_delay* (seconds, by type) is seen,
    write when it may start on it.

    Raises :class:`~oada_jobs.OADATransportError` if the job kept changing
    under :data:`START_DELAY_READS` reads.
    """

    async def attempt() -> Job[JsonObject]:
        job = await read_job(oada, job_id, key=key, wait=wait)
        delay = start_delay(job.type)
        if (
            not delay
            or job.tries
            or job.run_at is not None
            or job.options.not_before is not None
            or job.status not in (None, JobStatus.PENDING.value)
        ):
            return job
        # Written on the job, so a restart keeps the delay.
        run_at = utc_now() + timedelta(seconds=delay)
        update_key, update = new_update("delayed", f"start delay of {delay:g} s")
        body = {"runAt": iso(run_at), "updates": {update_key: update}}
        # Conditional: a 412 means it changed meanwhile (another replica
        # wrote the delay): read it again.
        response = await oada.put(
            resource_path(job_id), body, content_type=JOBS_TYPE, if_match=job.etag
        )
        return replace(job, run_at=run_at, etag=response.etag)

    try:
        return await retry(
            attempt,
            retryable=lambda error: isinstance(error, PreconditionFailed),
            delay=lambda error, retry: 0.0,
            retries=START_DELAY_READS - 1,
        )
    except PreconditionFailed:
        raise OADATransportError(f"job {job_id} kept changing while being read") from None
