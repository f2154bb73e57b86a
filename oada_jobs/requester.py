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

Owns posting jobs, waiting for their outcome, child jobs and progress
updates. May use the client and the job model only; a running job is seen
through the small :class:`RunningJob` protocol (what a work function's
context offers), never through the runner, queue or service.

It must not import the context, the runner, the queue or the service.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, Protocol, TypeVar, overload

import anyio
from pydantic import BaseModel

from .client import OADAClient
from .exceptions import (
    DuplicateJob,
    JobExists,
    JobFailed,
    NotFound,
    OADAError,
    OADATransportError,
    PreconditionFailed,
    WaitForChild,
)
from .job import FINISHED, Job, JobOptions, JobStatus, iso, request_cancel, touch_link, utc_now
from .tree import (
    JOBS_TYPE,
    LAYOUT_MARKER,
    LayoutName,
    get_layout,
    resource_path,
    service_root,
    validate_service_name,
)
from .types import Json, JsonObject
from .unique import take_key

logger = logging.getLogger("oada_jobs.requester")

#: What ``post_job`` does with a job's unique key: refuse a key that is held
#: (``"raise"``), hand back the job holding it (``"existing"``), or post
#: without the index and leave the check to the service (``"post"``: the
#: type's ``unique`` policy refuses, merges or allows it there).
OnDuplicate = Literal["raise", "existing", "post"]


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

# A job key becomes a resource key and a list key: one safe path segment.
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~-]{0,199}")


def _config_json(config: Mapping[str, Any] | BaseModel | None) -> JsonObject:
    if config is None:
        return {}
    if isinstance(config, BaseModel):
        return dict(config.model_dump(mode="json"))
    if not isinstance(config, Mapping):
        raise TypeError(
            f"expected the job config as an object (a mapping or a pydantic model), "
            f"got {type(config).__name__}"
        )
    return dict(config)


def _options_json(options: JobOptions | Mapping[str, Any]) -> JsonObject:
    if isinstance(options, JobOptions):
        return options.to_json()
    parsed, problems = JobOptions.parse(options)
    if problems:
        raise ValueError(f"bad job options: {'; '.join(problems)}")
    return parsed.to_json()


# The user behind each client's token, asked once per client (None: the server would not say).
_users: weakref.WeakKeyDictionary[OADAClient, str | None] = weakref.WeakKeyDictionary()


async def who_am_i(oada: OADAClient) -> str | None:
    """The user *oada*'s token belongs to (``users/<id>``), from ``GET /users/me``.

    Asked once per client and remembered; ``None`` when the server does not
    say (it has no ``/users/me``, or refuses it; asked again after no answer).
    """
    if oada in _users:
        return _users[oada]
    user: str | None = None
    try:
        data = (await oada.get("/users/me")).data
    except OADATransportError as error:
        # No answer at all: ask again next time rather than forget who posts.
        logger.debug("GET /users/me failed (%s); this job is posted without createdBy", error)
        return None
    except OADAError as error:
        logger.debug("GET /users/me failed (%s); jobs are posted without createdBy", error)
    else:
        if isinstance(data, Mapping):
            ident = data.get("_id")
            if isinstance(ident, str) and ident.startswith("users/"):
                user = ident
            elif isinstance(data.get("username"), str):
                user = f"users/{data['username']}"
    _users[oada] = user
    return user


def _with_expiry(
    options: JobOptions | Mapping[str, Any] | None, expires: float | timedelta | None
) -> JobOptions | Mapping[str, Any] | None:
    """*options* with ``expiresAt`` set *expires* (seconds or a timedelta) from now."""
    if expires is None:
        return options
    seconds = expires.total_seconds() if isinstance(expires, timedelta) else expires
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds > 0:
        raise ValueError(f"expected expires as seconds > 0 or a timedelta, got {expires!r}")
    at = iso(utc_now() + timedelta(seconds=seconds))
    base = options.to_json() if isinstance(options, JobOptions) else dict(options or {})
    return {**base, "expiresAt": at}


def _check_type(type: str) -> str:
    if not isinstance(type, str) or not type:
        raise ValueError(f"expected the job type as a non-empty string, got {type!r}")
    return type


async def post_job(
    oada: OADAClient,
    service: str,
    type: str,
    config: Mapping[str, Any] | BaseModel | None = None,
    *,
    layout: LayoutName | Literal["auto"] = "classic",
    key: str | None = None,
    extra: Mapping[str, Any] | None = None,
    options: JobOptions | Mapping[str, Any] | None = None,
    expires: float | timedelta | None = None,
    on_duplicate: OnDuplicate = "raise",
) -> str:
    """Create a job for *service* and link it into the service's pending list.

    Returns the job's resource id (``resources/<k>``); its key in the list is
    ``<k>``. *config* may be a JSON object or a pydantic model. *layout* must
    be the layout the service runs with (see ``docs/layouts.md``);
    ``"auto"`` asks the server first (:func:`detect_layout`, one or two reads)
    and raises :class:`ValueError` saying why when it cannot tell.

    *key* picks the job's key (and resource id ``resources/<key>``) instead
    of a server-made one. A key means "this job, once": it is created only
    if ``resources/<key>`` does not exist yet (a conditional PUT), so a
    requester that retries after an error does not post twice. Posting the
    same request again (service, type, config, options and *extra*) returns
    the existing job, running or finished, and writes nothing but its link
    while it is still pending; a different request raises
    :class:`~oada_jobs.JobExists` and writes nothing. *extra*
    adds keys to the job resource (e.g. a ``parent`` link). *options* (a
    :class:`~oada_jobs.JobOptions` or its camelCase JSON) says when and how the
    job runs: ``notBefore``, ``priority``, ``uniqueKey``, ``group``,
    ``version``, ``tries``, ``timeout``, ``expiresAt`` (see
    ``docs/scheduling.md``); bad options raise :class:`ValueError` before
    anything is written. *expires* (seconds or a timedelta) sets
    ``expiresAt`` that long from now: a job not started by then fails with
    ``expired`` and never runs.

    A job with ``uniqueKey`` first takes its key in the service's unique
    index (:mod:`oada_jobs.unique`): while another job of its type holds
    the key, the job is not posted and :class:`~oada_jobs.DuplicateJob`
    names the holder (``on_duplicate="existing"`` returns the holder's id
    instead, to wait on its outcome; ``"post"`` skips the index and leaves
    the key to the service's ``unique`` policy, as for a type that merges
    or allows duplicates).

    The job records who posted it, ``createdBy: "users/<id>"``, when the
    server says whose token *oada* has (:func:`who_am_i`).

    >>> job_id = await post_job(oada, "email-service", "email", {"to": "a@b.c"})  # doctest: +SKIP
    """
    validate_service_name(service)
    if on_duplicate not in ("raise", "existing", "post"):
        raise ValueError(
            f"expected on_duplicate 'raise', 'existing' or 'post', got {on_duplicate!r}"
        )
    job: JsonObject = {**(extra or {}), "service": service, "type": _check_type(type)}
    job["config"] = _config_json(config)
    options = _with_expiry(options, expires)
    parsed: JobOptions | None = None
    if options is not None:
        job["options"] = _options_json(options)
        parsed = JobOptions.model_validate(job["options"])
    if (user := await who_am_i(oada)) is not None:
        job["createdBy"] = user  # the token's user, whatever *extra* says
    if layout == "auto":
        detected, why = await detect_layout(oada, service)
        if detected is None:
            raise ValueError(f"cannot tell which layout service {service!r} reads: {why}")
        layout = detected
    chosen = get_layout(layout)
    if key is None:
        job_id = await oada.create_resource(job, content_type=JOBS_TYPE)
        key = job_id.removeprefix("resources/")
    else:
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise ValueError(
                "expected a job key of letters, digits and '.', '_', '~', '-' "
                f"(starting with a letter or digit, at most 200), got {key!r}"
            )
        job_id = f"resources/{key}"
        existing = await _create_once(oada, job_id, job)
        if existing is not None:
            _check_same(job_id, existing, job)
            if existing.get("status") in FINISHED:
                return job_id  # ran already: linking it again would only re-file it
    pending = chosen.pending_path(service)
    if parsed is not None and parsed.unique_key is not None and on_duplicate != "post":
        holder = await take_key(
            oada, service, type, parsed.unique_key, job_id, layout=chosen.name, pending_path=pending
        )
        if holder is not None:
            # Never linked: the resource goes too, so nothing of it stays behind.
            try:
                await oada.delete(resource_path(job_id))
            except OADAError as error:
                logger.warning("could not delete refused job %s: %s", job_id, error)
            if on_duplicate == "existing":
                return holder
            raise DuplicateJob(
                f"refused: job {holder} of type {type!r} holds unique key "
                f"{parsed.unique_key!r} (pending or running)",
                job_id=holder,
                unique_key=parsed.unique_key,
            )
    await oada.put(pending, {key: {"_id": job_id}}, tree=chosen.tree)
    return job_id


async def _create_once(oada: OADAClient, job_id: str, job: JsonObject) -> Mapping[str, Any] | None:
    """Create *job* at *job_id* unless that resource exists; ``None`` when this
    call created it, else the existing resource's body.

    The create is conditional on the resource not existing: ``If-Match``
    with rev 0, the rev of a resource that is not there (``If-None-Match: *``
    is a no-op on OADA servers). A server that refuses that for a missing
    resource gets a plain PUT after a GET saw nothing there.
    """
    path = resource_path(job_id)
    key = job_id.removeprefix("resources/")
    try:
        await oada.put(path, job, content_type=JOBS_TYPE, if_match=f'"{key}/0"')
        return None
    except PreconditionFailed:
        pass
    try:
        data = (await oada.get(path)).data
    except NotFound:
        await oada.put(path, job, content_type=JOBS_TYPE)
        return None
    return data if isinstance(data, Mapping) else {"": data}


def _check_same(job_id: str, existing: Mapping[str, Any], job: JsonObject) -> None:
    """Raise :class:`JobExists` unless *existing* is the job *job* asks for."""
    wanted = {name: value for name, value in job.items() if name != "options"}
    different = sorted(name for name, value in wanted.items() if existing.get(name) != value)
    stored, _problems = JobOptions.parse(existing.get("options"))
    asked, _ = JobOptions.parse(job.get("options"))
    if stored != asked:
        different.append("options")
    if different:
        raise JobExists(
            f"{job_id} already holds a different job ({', '.join(different)} differ); a job "
            "key names one job, posted once: pick another key",
            job_id=job_id,
        )


async def detect_layout(oada: OADAClient, service: str) -> tuple[LayoutName | None, str]:
    """The layout *service* reads its jobs from, and how that is known.

    A running oada-jobs service notes its layout on its service resource
    (``jobs-layout``). Otherwise the lists tell: classic keeps job links and
    ``jobs-success``/``jobs-failure`` beside them, the ``pending`` layout
    only its lists inside ``jobs``. Returns ``(None, why)`` when it cannot
    tell, e.g. when no service of that name has ever run on this server.
    """
    root = service_root(service)
    try:
        data = (await oada.get(root)).data
    except NotFound:
        return None, f"no service named {service!r} has ever run on {oada.domain}"
    if not isinstance(data, Mapping):
        return None, f"{root} is not a service resource"
    noted = data.get(LAYOUT_MARKER)
    if noted in ("classic", "pending"):
        return noted, f"the service notes it in {root}/{LAYOUT_MARKER}"
    if "jobs-success" in data or "jobs-failure" in data:
        return "classic", "the service files jobs under jobs-success/jobs-failure"
    if "jobs" not in data:
        return None, f"service {service!r} has no job list yet (it may never have run)"
    listing = (await oada.get(f"{root}/jobs")).data
    keys = (
        {key for key in listing if not key.startswith("_")}
        if isinstance(listing, Mapping)
        else set()
    )
    if keys - get_layout("classic").list_keys:
        return "classic", "its jobs list holds jobs"
    if keys:
        return "pending", "its jobs list holds the pending layout's lists"
    return "classic", "its jobs list is empty, as only a classic service leaves it"


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
    if _KEY.fullmatch(key):
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
