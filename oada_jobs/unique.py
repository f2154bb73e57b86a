"""Unique keys taken at post time: a service's index of the keys its jobs hold.

A job posted with ``options.uniqueKey`` by :func:`oada_jobs.post_job` takes
its key in the service's index ``/bookmarks/services/<name>/unique`` before
it is linked into the pending list, so a duplicate is refused to the
requester at once (:class:`~oada_jobs.DuplicateJob`), not filed as a
``duplicate`` failure after it was accepted.

The index is one resource; each entry, under :func:`index_key` of (job type,
unique key), records the holding job::

    {"<index key>": {"job": "resources/K", "key": "K", "type": "invoice",
                     "uniqueKey": "order-42", "since": "2026-11-23T10:00:00.000Z"}}

Taking a key is a write conditional on the ETag of the index as read
(``If-Match``, which every OADA server checks; ``If-None-Match: *`` does
nothing on them), so of two requesters racing for one key exactly one wins.
An entry stops holding its key when its job is filed (the filer removes it)
and, should that removal never happen, as soon as its job is finished or
gone: such a stale entry is taken over. A job not linked into the pending
list holds its key only for :data:`LINK_GRACE` seconds after taking it (the
time to link it).

Owns the index: its path, its keys, taking and releasing entries. May use
the client, the job model and the tree; must not touch queues, runners or
the service.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from .client import OADAClient
from .exceptions import (
    BadRequest,
    Forbidden,
    InvalidJob,
    NotFound,
    OADAJobsError,
    PreconditionFailed,
)
from .job import Job, iso, parse_time, utc_now
from .tree import JOBS_TYPE, LayoutName, service_root, service_tree_with

__all__ = [
    "INDEX_WRITES",
    "LINK_GRACE",
    "index_key",
    "index_path",
    "read_index",
    "release_key",
    "take_key",
]

logger = logging.getLogger("oada_jobs.unique")

#: Conditional writes of the index tried before giving up (it kept changing).
INDEX_WRITES = 20
#: Seconds a new entry holds its key while its job is not linked yet.
LINK_GRACE = 60.0

# What an entry may name: a whole job resource and a list key (hostile input).
_JOB_ID = re.compile(r"resources/[A-Za-z0-9][A-Za-z0-9._~-]{0,199}")
_LIST_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~-]{0,199}")


def index_path(service: str) -> str:
    """``/bookmarks/services/<service>/unique``."""
    return f"{service_root(service)}/unique"


def index_key(job_type: str, unique_key: str) -> str:
    """The index entry of (*job_type*, *unique_key*): ``u-`` and a SHA-256 prefix.

    A hash, not an escaped key: any type and key (up to 500 characters of
    anything) become one short path segment that every OADA server reads the
    same; the entry itself records both as they are.
    """
    digest = hashlib.sha256(json.dumps([job_type, unique_key]).encode()).hexdigest()
    return f"u-{digest[:40]}"


async def read_index(oada: OADAClient, service: str) -> dict[str, Any]:
    """The index entries of *service* (``{}`` when it has none)."""
    try:
        data = (await oada.get(index_path(service))).data
    except NotFound:
        return {}
    if not isinstance(data, Mapping):
        return {}
    return {key: value for key, value in data.items() if not key.startswith("_")}


async def take_key(
    oada: OADAClient,
    service: str,
    job_type: str,
    unique_key: str,
    job_id: str,
    *,
    layout: LayoutName,
    pending_path: str,
) -> str | None:
    """Take *unique_key* of *job_type* for *job_id*; ``None`` when taken (or
    already held by *job_id*), else the id of the job that holds it."""
    path = index_path(service)
    name = index_key(job_type, unique_key)
    for _attempt in range(INDEX_WRITES):
        try:
            response = await oada.get(path)
        except NotFound:
            await oada.ensure(path, {}, tree=service_tree_with(layout, "unique"))
            continue
        data = response.data if isinstance(response.data, Mapping) else {}
        entry = data.get(name)
        if isinstance(entry, Mapping):
            holder = entry.get("job")
            if holder == job_id:
                return None
            if isinstance(holder, str) and await _holds(oada, entry, pending_path):
                return holder
        body = {
            name: {
                "job": job_id,
                "key": job_id.removeprefix("resources/"),
                "type": job_type,
                "uniqueKey": unique_key,
                "since": iso(utc_now()),
            }
        }
        try:
            await oada.put(path, body, content_type=JOBS_TYPE, if_match=response.etag)
        except PreconditionFailed:
            continue  # another requester (or a filer) wrote first: look again
        return None
    raise OADAJobsError(
        f"could not take unique key {unique_key!r} of {service}: its index kept changing "
        f"({INDEX_WRITES} tries)"
    )


async def _holds(oada: OADAClient, entry: Mapping[str, Any], pending_path: str) -> bool:
    """Whether *entry*'s job still holds its key: it exists, has not finished,
    and is linked into the pending list (or took the key moments ago)."""
    holder, key = entry.get("job"), entry.get("key")
    if not isinstance(holder, str) or not _JOB_ID.fullmatch(holder):
        return False
    try:
        response = await oada.get(f"/{holder}")
        job = Job.from_resource(response.data, oada_id=holder)
    except (NotFound, Forbidden, BadRequest, InvalidJob):
        return False  # gone, or not a job: it holds nothing
    if job.finished:
        return False
    if isinstance(key, str) and _LIST_KEY.fullmatch(key):
        try:
            await oada.head(f"{pending_path}/{key}")
            return True
        except (NotFound, Forbidden):
            pass
    since = parse_time(entry.get("since"))
    return since is not None and utc_now() - since < timedelta(seconds=LINK_GRACE)


async def release_key(
    oada: OADAClient, service: str, job_type: str, unique_key: str, job_id: str
) -> bool:
    """Remove the index entry of the key if *job_id* holds it; whether it did.

    Conditional on the index as read, so an entry another job took meanwhile
    is never removed.
    """
    path = index_path(service)
    name = index_key(job_type, unique_key)
    for _attempt in range(INDEX_WRITES):
        try:
            response = await oada.get(path)
        except NotFound:
            return False
        data = response.data if isinstance(response.data, Mapping) else {}
        entry = data.get(name)
        if not isinstance(entry, Mapping) or entry.get("job") != job_id:
            return False
        try:
            await oada.delete(f"{path}/{name}", if_match=response.etag)
        except PreconditionFailed:
            continue
        return True
    logger.warning("unique key %r of %s: its index kept changing; entry left", unique_key, service)
    return False
