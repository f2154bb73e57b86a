"""Posting a job: create its resource and link it into a service's pending list.

:func:`post_job` validates what it is given (service, type, config,
options, key) before anything is written; a job with a key is created at
most once (a conditional PUT), and one with a ``uniqueKey`` first takes its
key in the service's unique index. :func:`detect_layout` tells which layout
a service reads; :func:`who_am_i` whose token a client has (``createdBy``).

Owns the job body a requester writes and the steps of posting it. May use
the client, the job model, the trees and the unique index only; must not
import the context, the runner, the queue or the service.
:mod:`oada_jobs.requester` builds waiting, child jobs and progress on it,
and re-exports these names.
"""

from __future__ import annotations

import logging
import re
import weakref
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, Literal

from pydantic import BaseModel

from .client import OADAClient
from .exceptions import (
    DuplicateJob,
    JobExists,
    NotFound,
    OADAError,
    OADATransportError,
    PreconditionFailed,
)
from .job import FINISHED, JobOptions, iso, utc_now
from .tree import (
    JOBS_TYPE,
    LAYOUT_MARKER,
    Layout,
    LayoutName,
    get_layout,
    resource_path,
    service_root,
    validate_service_name,
)
from .types import JsonObject
from .unique import take_key

__all__ = ["JOB_KEY", "OnDuplicate", "detect_layout", "post_job", "who_am_i"]

# Named as before the requester's posting had a module of its own: logging
# configured for it keeps working.
logger = logging.getLogger("oada_jobs.requester")

#: What ``post_job`` does with a job's unique key: refuse a key that is held
#: (``"raise"``), hand back the job holding it (``"existing"``), or post
#: without the index and leave the check to the service (``"post"``: the
#: type's ``unique`` policy refuses, merges or allows it there).
OnDuplicate = Literal["raise", "existing", "post"]


# A job key becomes a resource key and a list key: one safe path segment.
JOB_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~-]{0,199}")


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
    be the layout the service runs with (see ``docs/layouts.md``); ``"auto"``
    asks the server first (:func:`detect_layout`, one or two reads) and
    raises :class:`ValueError` saying why when it cannot tell.

    *key* picks the job's key instead of a server-made one and means "this
    job, once" (a conditional PUT): the same request (service, type, config,
    options and *extra*) posted again returns the existing job, linking it
    again only while it is pending; a different one raises
    :class:`~oada_jobs.JobExists` and writes nothing. *extra* adds keys to
    the job resource (e.g. a ``parent`` link). *options* (a
    :class:`~oada_jobs.JobOptions` or its camelCase JSON, see
    ``docs/scheduling.md``) says when and how the job runs; bad options raise
    :class:`ValueError` before anything is written. *expires* (seconds or a
    timedelta) sets ``expiresAt`` that long from now.

    A job with ``uniqueKey`` first takes its key in the service's unique
    index: while another job of its type holds it, the job is not posted and
    :class:`~oada_jobs.DuplicateJob` names the holder (*on_duplicate*
    ``"existing"`` returns the holder's id instead; ``"post"`` leaves the key
    to the service's ``unique`` policy). The job records who posted it,
    ``createdBy`` (:func:`who_am_i`). More in ``docs/requesters.md``.

    >>> job_id = await post_job(oada, "email-service", "email", {"to": "a@b.c"})  # doctest: +SKIP
    """
    job, parsed = _job_body(service, type, config, extra, options, expires, on_duplicate)
    if (user := await who_am_i(oada)) is not None:
        job["createdBy"] = user  # the token's user, whatever *extra* says
    chosen = get_layout(await _layout(oada, service, layout))
    job_id, key, finished = await _create(oada, job, key)
    if finished:
        return job_id  # ran already: linking it again would only re-file it
    if parsed is not None and parsed.unique_key is not None and on_duplicate != "post":
        holder = await _take_unique_key(
            oada, service, type, parsed.unique_key, job_id, chosen, on_duplicate
        )
        if holder is not None:
            return holder
    await oada.put(chosen.pending_path(service), {key: {"_id": job_id}}, tree=chosen.tree)
    return job_id


def _job_body(
    service: str,
    type: str,
    config: Mapping[str, Any] | BaseModel | None,
    extra: Mapping[str, Any] | None,
    options: JobOptions | Mapping[str, Any] | None,
    expires: float | timedelta | None,
    on_duplicate: OnDuplicate,
) -> tuple[JsonObject, JobOptions | None]:
    """The job resource :func:`post_job` writes, and its options; every
    argument checked (:class:`ValueError`, :class:`TypeError`) before any I/O."""
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
    return job, parsed


async def _layout(
    oada: OADAClient, service: str, layout: LayoutName | Literal["auto"]
) -> LayoutName:
    """*layout*, or for ``"auto"`` the one *service* reads (:class:`ValueError` if unknown)."""
    if layout != "auto":
        return layout
    detected, why = await detect_layout(oada, service)
    if detected is None:
        raise ValueError(f"cannot tell which layout service {service!r} reads: {why}")
    return detected


async def _create(oada: OADAClient, job: JsonObject, key: str | None) -> tuple[str, str, bool]:
    """Create the job resource, under *key* if given, once; its id, its key,
    and whether it is a job posted before that has finished."""
    if key is None:
        job_id = await oada.create_resource(job, content_type=JOBS_TYPE)
        return job_id, job_id.removeprefix("resources/"), False
    if not isinstance(key, str) or not JOB_KEY.fullmatch(key):
        raise ValueError(
            "expected a job key of letters, digits and '.', '_', '~', '-' "
            f"(starting with a letter or digit, at most 200), got {key!r}"
        )
    job_id = f"resources/{key}"
    existing = await _create_once(oada, job_id, job)
    if existing is None:
        return job_id, key, False
    _check_same(job_id, existing, job)
    return job_id, key, existing.get("status") in FINISHED


async def _take_unique_key(
    oada: OADAClient,
    service: str,
    job_type: str,
    unique_key: str,
    job_id: str,
    layout: Layout,
    on_duplicate: OnDuplicate,
) -> str | None:
    """Take *unique_key* in *service*'s unique index for the job *job_id*:
    ``None`` once it holds the key. While another job holds it, this one is
    refused and its resource deleted (it is never linked): the holder's id
    for ``"existing"``, else :class:`DuplicateJob`."""
    pending = layout.pending_path(service)
    holder = await take_key(
        oada, service, job_type, unique_key, job_id, layout=layout.name, pending_path=pending
    )
    if holder is None:
        return None
    # Never linked: the resource goes too, so nothing of it stays behind.
    try:
        await oada.delete(resource_path(job_id))
    except OADAError as error:
        logger.warning("could not delete refused job %s: %s", job_id, error)
    if on_duplicate == "existing":
        return holder
    raise DuplicateJob(
        f"refused: job {holder} of type {job_type!r} holds unique key "
        f"{unique_key!r} (pending or running)",
        job_id=holder,
        unique_key=unique_key,
    )


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
