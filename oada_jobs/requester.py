"""The requester side: post jobs to a service and wait for their outcome.

This is the Python counterpart of the job requester of ``@oada/client``
(``doJob``): :func:`post_job` creates a job resource and links it into the
service's pending list; :func:`run_job` posts and then waits — watching the
job, never polling — until it has succeeded (returns the result) or failed
(raises :class:`~oada_jobs.JobFailed`).

>>> async with OADAClient(domain, token) as oada:  # doctest: +SKIP
...     result = await run_job(oada, "email-service", "email", {"to": "a@b.c"}, timeout=60)

A work function starts a follow-up job with ``await ctx.post_job(...)``;
parent and child are linked to each other (``parent`` on the child,
``children/<key>`` on the parent).

Owns waiting for a job's outcome, child jobs and progress updates; posting
(:func:`post_job`, :func:`detect_layout`, :func:`who_am_i`) is
:mod:`oada_jobs.posting`'s, re-exported here. May use the client, the job
model and posting only; a running job is seen
through the small :class:`RunningJob` protocol (what a work function's
context offers), never through the runner, queue or service.

It must not import the context, the runner, the queue or the service.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, Protocol, TypeVar, overload

import anyio
from pydantic import BaseModel

from .client import OADAClient
from .exceptions import JobFailed, NotFound, PreconditionFailed, WaitForChild
from .job import FINISHED, Job, JobOptions, JobStatus, iso, request_cancel, touch_link, utc_now
from .posting import JOB_KEY, OnDuplicate, detect_layout, post_job, who_am_i
from .tree import JOBS_TYPE, LayoutName, resource_path
from .types import Json, JsonObject


class _Updates(Protocol):
    async def info(self, status: str, meta: Json = None) -> None: ...


class RunningJob(Protocol):
    """A running job as child jobs and progress need it (a ``WorkerContext`` is one)."""

    @property
    def job_id(self) -> str: ...
    @property
    def oada(self) -> OADAClient: ...
    @property
    def log(self) -> _Updates: ...
    @property
    def layout(self) -> LayoutName: ...


ResultT = TypeVar("ResultT", bound=BaseModel)

__all__ = [
    "CHILD_CHECK_EVERY",
    "PROGRESS_STATUS",
    "OnDuplicate",
    "Progress",
    "RunningJob",
    "await_child_job",
    "child_key",
    "detect_layout",
    "latest_progress",
    "post_child_job",
    "post_follow_up",
    "post_job",
    "raise_for_failure",
    "run_job",
    "wait_for_outcome",
    "wake_parent",
    "who_am_i",
    "write_progress",
]

#: The ``status`` of the job updates that record progress.
PROGRESS_STATUS = "progress"


async def wait_for_outcome(
    oada: OADAClient,
    job_id: str,
    *,
    timeout: float | None = None,  # noqa: ASYNC109 -- the requester's own bound, like doJob's
) -> Job[JsonObject]:
    """Wait until the job is ``success`` or ``failure`` and return it as read then.

    Reads the job and watches it from the rev read (so an outcome written in
    between is not missed); never polls. *timeout* (seconds, ``None`` for no
    limit) raises :class:`TimeoutError`.
    """
    with anyio.move_on_after(timeout):
        return await _read_outcome(oada, job_id)
    raise TimeoutError(f"job {job_id} had not finished after {timeout} s")


async def _read_outcome(oada: OADAClient, job_id: str) -> Job[JsonObject]:
    path = resource_path(job_id)
    response = await oada.get(path)
    job = Job.from_resource(response.data, oada_id=job_id, etag=response.etag)
    if job.finished:
        return job
    async with oada.watch(path, rev=response.rev) as changes:
        async for change in changes:
            body = change.body or {}
            if change.path in ("", "/") and body.get("status") in FINISHED:
                break
    response = await oada.get(path)
    return Job.from_resource(response.data, oada_id=job_id, etag=response.etag)


def raise_for_failure(job: Job[Any]) -> Json:
    """Return a successful *job*'s result, or raise :class:`JobFailed` for a failed one."""
    if job.status == JobStatus.SUCCESS.value:
        return job.result
    result = job.result
    message, fail_type = f"job {job.oada_id} failed", None
    if isinstance(result, Mapping):
        if isinstance(result.get("message"), str):
            message = result["message"]
        if isinstance(result.get("failType"), str):
            fail_type = result["failType"]
    raise JobFailed(message, fail_type, job_id=job.oada_id, result=result)


@overload
async def run_job(
    oada: OADAClient,
    service: str,
    type: str,
    config: Mapping[str, Any] | BaseModel | None = None,
    *,
    timeout: float | None = None,  # noqa: ASYNC109 -- the requester's own bound, like doJob's
    layout: LayoutName | Literal["auto"] = "classic",
    key: str | None = None,
    cancel_on_timeout: bool = False,
    options: JobOptions | Mapping[str, Any] | None = None,
    expires: float | timedelta | None = None,
    on_duplicate: OnDuplicate = "raise",
    result: None = None,
) -> Json: ...


@overload
async def run_job(
    oada: OADAClient,
    service: str,
    type: str,
    config: Mapping[str, Any] | BaseModel | None = None,
    *,
    timeout: float | None = None,  # noqa: ASYNC109 -- the requester's own bound, like doJob's
    layout: LayoutName | Literal["auto"] = "classic",
    key: str | None = None,
    cancel_on_timeout: bool = False,
    options: JobOptions | Mapping[str, Any] | None = None,
    expires: float | timedelta | None = None,
    on_duplicate: OnDuplicate = "raise",
    result: type[ResultT],
) -> ResultT: ...


async def run_job(
    oada: OADAClient,
    service: str,
    type: str,
    config: Mapping[str, Any] | BaseModel | None = None,
    *,
    timeout: float | None = None,  # noqa: ASYNC109 -- the requester's own bound, like doJob's
    layout: LayoutName | Literal["auto"] = "classic",
    key: str | None = None,
    cancel_on_timeout: bool = False,
    options: JobOptions | Mapping[str, Any] | None = None,
    expires: float | timedelta | None = None,
    on_duplicate: OnDuplicate = "raise",
    result: type[ResultT] | None = None,
) -> Json | BaseModel:
    """Post a job and wait for its outcome: its result, or :class:`JobFailed`.

    :class:`JobFailed` (a :class:`~oada_jobs.JobError`) carries the job's
    ``result`` (``{name, message, traceback, failType?, details?}``), its
    ``fail_type`` and ``job_id``. *timeout* (seconds) raises
    :class:`TimeoutError` while the job is still pending or running; the job
    is left as it is, unless *cancel_on_timeout* asks for it to be cancelled
    first (:func:`oada_jobs.job.request_cancel`). *options*, *expires* and
    *on_duplicate* as for :func:`post_job` (with ``"existing"``, a duplicate
    waits for the holder's outcome); *result*, a pydantic model, parses the
    result into it.

    >>> try:  # doctest: +SKIP
    ...     result = await run_job(oada, "email-service", "email", {"to": "a@b.c"}, timeout=60)
    ... except JobFailed as error:
    ...     print(error.fail_type, error.result)
    """
    job_id = await post_job(
        oada,
        service,
        type,
        config,
        layout=layout,
        key=key,
        options=options,
        expires=expires,
        on_duplicate=on_duplicate,
    )
    try:
        job = await wait_for_outcome(oada, job_id, timeout=timeout)
    except TimeoutError:
        if cancel_on_timeout:
            with anyio.CancelScope(shield=True):
                await request_cancel(oada, job_id, f"the requester gave up after {timeout} s")
        raise
    value = raise_for_failure(job)
    return value if result is None else result.model_validate(value)


def child_key(parent_id: str, name: str) -> str:
    """The key of the child called *name* of job *parent_id*: ``<parent key>-<name>``,
    or a digest of both when that is not a valid job key."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"expected a child name as a non-empty string, got {name!r}")
    key = f"{parent_id.removeprefix('resources/')}-{name}"
    if JOB_KEY.fullmatch(key):
        return key
    digest = hashlib.sha256(f"{parent_id}\0{name}".encode()).hexdigest()
    return f"child-{digest[:40]}"


async def post_child_job(
    ctx: RunningJob,
    service: str,
    type: str,
    config: Mapping[str, Any] | BaseModel | None = None,
    *,
    name: str | None = None,
    key: str | None = None,
    options: JobOptions | Mapping[str, Any] | None = None,
    layout: LayoutName | None = None,
) -> str:
    """Post a follow-up job from inside a work function (``ctx.post_job``).

    The child gets ``parent: {"_id": <this job>}``; this job gets
    ``children/<child key>: {"_id": <child>}``. Both links are unversioned,
    so neither job's updates change the other. Uses the job-scoped client,
    so after this job timed out or was cancelled nothing is posted.

    *layout* defaults to the parent's (``ctx.layout``): a service posting to
    itself posts into the list it reads. *name* gives the child a key
    derived from the parent's (:func:`child_key`), *key* an explicit one;
    either makes posting idempotent, as for :func:`post_job`, so a parent
    that runs again (a retry) finds its children instead of doubling them.
    """
    parent = ctx.job_id
    if key is not None and name is not None:
        raise ValueError("pass a child name or a key, not both")
    if name is not None:
        key = child_key(parent, name)
    child_id = await post_job(
        ctx.oada,
        service,
        type,
        config,
        layout=ctx.layout if layout is None else layout,
        key=key,
        options=options,
        extra={"parent": {"_id": parent}},
    )
    linked_key = child_id.removeprefix("resources/")
    await ctx.oada.put(
        f"{resource_path(parent)}/children", {linked_key: {"_id": child_id}}, content_type=JOBS_TYPE
    )
    return child_id


async def post_follow_up(
    oada: OADAClient,
    job_id: str,
    service: str,
    type: str,
    config: JsonObject,
    *,
    kind: str,
    layout: LayoutName = "classic",
) -> str:
    """Post the follow-up *kind* (``then`` or ``on-failure``) of the job *job_id*, once.

    Its key is derived from *job_id* and *kind* (:func:`child_key`), so
    posting it again (the filing was retried, the service restarted) finds
    the job posted before, as :func:`post_job` does for any explicit key. The follow-up gets ``followUpOf: {"_id": <job>}``, the
    job ``followUps/<key>: {"_id": <follow-up>}``.
    """
    key = child_key(job_id, kind)
    follow_up_id = await post_job(
        oada,
        service,
        type,
        config,
        layout=layout,
        key=key,
        extra={"followUpOf": {"_id": job_id}},
    )
    await oada.put(
        f"{resource_path(job_id)}/followUps", {key: {"_id": follow_up_id}}, content_type=JOBS_TYPE
    )
    return follow_up_id


#: Seconds after which a job waiting for a child looks at it again, should
#: the wake-up from the child's filing be lost (its service was down).
CHILD_CHECK_EVERY = 300.0


async def await_child_job(
    ctx: RunningJob,
    name: str,
    service: str,
    type: str,
    config: Mapping[str, Any] | BaseModel | None = None,
    *,
    layout: LayoutName | None = None,
    check_every: float = CHILD_CHECK_EVERY,
) -> Json:
    """The result of the child job *name* of the running job (``ctx.run_job``).

    The child's key is derived from the running job and ``child-<name>``
    (:func:`child_key`), so the function, run again from the top, finds the
    same child. Finished: its result (or :class:`JobFailed`). Otherwise the
    child is posted once (as :func:`post_job` with a key: the same request
    again is only linked again, a different one raises
    :class:`~oada_jobs.JobExists`) and :class:`WaitForChild` ends this run
    until the child is filed. *layout* defaults to the parent's.
    """
    parent = ctx.job_id
    key = child_key(parent, f"child-{name}")
    child_id = f"resources/{key}"
    try:
        response = await ctx.oada.get(resource_path(child_id))
        existing = Job.from_resource(response.data, oada_id=child_id)
    except NotFound:
        existing = None
    if existing is not None and existing.finished:
        return raise_for_failure(existing)
    if existing is None or existing.status is None:
        # New, or written but maybe never linked: post it (again) under its key.
        extra = {"parent": {"_id": parent}, "resumesParent": True}
        await post_job(
            ctx.oada,
            service,
            type,
            config,
            layout=ctx.layout if layout is None else layout,
            key=key,
            extra=extra,
        )
        await ctx.oada.put(
            f"{resource_path(parent)}/children", {key: {"_id": child_id}}, content_type=JOBS_TYPE
        )
    raise WaitForChild(child_id, check_every=check_every)


async def wake_parent(oada: OADAClient, parent_id: str, child_id: str) -> bool:
    """The child *child_id* is done: make its parent, if it waits for it, due now.

    Writes ``runAt`` (conditionally on the ETag read) and touches the
    parent's link in its pending list, so its queue reads it at once.
    ``False`` when the parent does not wait for this child (any more).
    """
    for _attempt in range(5):
        response = await oada.get(resource_path(parent_id))
        parent = Job.from_resource(response.data, oada_id=parent_id, etag=response.etag)
        waiting = parent.raw.get("waitingFor")
        if parent.finished or not isinstance(waiting, Mapping) or waiting.get("_id") != child_id:
            return False
        try:
            await oada.put(
                resource_path(parent_id),
                {"runAt": iso(utc_now())},
                content_type=JOBS_TYPE,
                if_match=parent.etag,
            )
        except PreconditionFailed:
            continue
        await touch_link(oada, parent)
        return True
    return False


# --------------------------------------------------------------------------
# Progress: updates with status "progress" and meta {fraction, message}.


@dataclass(frozen=True, slots=True)
class Progress:
    """The latest progress a work function reported on a job."""

    #: Done so far, from 0.0 to 1.0.
    fraction: float
    #: What the work function said, if anything.
    message: str | None
    #: When it was written (ISO text, as in the update).
    time: str | None


def _check_fraction(fraction: float) -> float:
    if (
        isinstance(fraction, bool)
        or not isinstance(fraction, int | float)
        or not math.isfinite(fraction)
        or not 0.0 <= fraction <= 1.0
    ):
        raise ValueError(f"expected a progress fraction from 0 to 1, got {fraction!r}")
    return float(fraction)


async def write_progress(ctx: RunningJob, fraction: float, message: str | None = None) -> None:
    """Record progress on the running job (what ``ctx.progress`` does).

    Writes an update ``{"status": "progress", "meta": {"fraction", "message"}}``
    through the job-scoped client, so nothing lands after a timeout or
    cancellation. A fraction outside 0..1 (or not a number) and a message
    that is not text raise :class:`ValueError` / :class:`TypeError`.

    >>> await ctx.progress(0.5, "half of the files copied")  # doctest: +SKIP
    """
    meta: JsonObject = {"fraction": _check_fraction(fraction)}
    if message is not None:
        if not isinstance(message, str):
            raise TypeError(f"expected the progress message as text, got {type(message).__name__}")
        meta["message"] = message
    await ctx.log.info(PROGRESS_STATUS, meta)


def latest_progress(job: Job[Any] | Mapping[str, Any]) -> Progress | None:
    """The last well-formed progress update of *job* (a :class:`Job` or a job body)."""
    updates = job.updates if isinstance(job, Job) else job.get("updates")
    if not isinstance(updates, Mapping):
        return None
    # Update keys are time-ordered, so the last key is the latest update.
    for key in sorted(updates, reverse=True):
        update = updates[key]
        if not isinstance(update, Mapping) or update.get("status") != PROGRESS_STATUS:
            continue
        meta = update.get("meta")
        if not isinstance(meta, Mapping):
            continue
        try:
            fraction = _check_fraction(meta.get("fraction"))  # type: ignore[arg-type]
        except ValueError:
            continue
        message = meta.get("message")
        time = update.get("time")
        return Progress(
            fraction,
            message if isinstance(message, str) else None,
            time if isinstance(time, str) else None,
        )
    return None
