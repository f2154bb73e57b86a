"""The job model: parsing and validating OADA job resources.

A job is an OADA resource like::

    {"service": "email-service", "type": "email", "config": {...},
     "status": "success", "result": {...},
     "updates": {"<ksuid>": {"status": "started", "time": "2026-...Z", "meta": "..."}}}

``service`` and ``type`` are required strings; ``config`` (an object) is what
the work function gets. The framework adds ``status``, ``result``, ``updates``
and, while a worker runs it, a ``lease`` (see ``docs/concepts.md``).

Owns the job model, its statuses and updates, and ``request_cancel``. May
use the client; must not touch queues, runners or the service.
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Generic

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    StrictInt,
    ValidationError,
)
from pydantic.alias_generators import to_camel
from typing_extensions import TypeVar

from ._ksuid import ksuid
from .client import OADAClient
from .exceptions import (
    Forbidden,
    InvalidJob,
    JobError,
    NotFound,
    OADAJobsError,
    PreconditionFailed,
)
from .tree import JOBS_TYPE, get_layout, resource_path
from .types import Json, JsonObject

__all__ = [
    "ConfigT",
    "Job",
    "JobOptions",
    "JobStatus",
    "Lease",
    "error_result",
    "new_update",
    "request_cancel",
    "touch_link",
    "utc_now",
]

#: The type of :attr:`Job.config`: a JSON object, or a pydantic model when the
#: work function declares one.
ConfigT = TypeVar("ConfigT", default=dict[str, Any])


class JobStatus(StrEnum):
    """Values the framework writes to a job's top-level ``status``."""

    #: Waiting for a worker; also what a stopped worker leaves behind.
    PENDING = "pending"
    #: Claimed by a worker that holds a current lease.
    RUNNING = "running"
    #: Finished; ``result`` is the work function's return value.
    SUCCESS = "success"
    #: Finished; ``result`` is the serialised error.
    FAILURE = "failure"
    #: A requester asked to cancel the job; the runner files it as a failure
    #: of type ``cancelled`` (at once if pending, within about a second if running).
    CANCEL_REQUESTED = "cancel-requested"


#: Statuses after which a job only needs to be filed, never run.
FINISHED = frozenset({JobStatus.SUCCESS.value, JobStatus.FAILURE.value})


def utc_now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    """ISO-8601 UTC to the millisecond with a ``Z``, as ``@oada/jobs`` writes times."""
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    # Ends in "+00:00" now; cut, not searched and replaced (three a job).
    return moment.isoformat(timespec="milliseconds")[:-6] + "Z"


def parse_time(value: object) -> datetime | None:
    """Parse an ISO-8601 time written by any OADA job tool; ``None`` if it is not one."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def new_update(
    status: str, meta: Json = None, *, at: datetime | None = None
) -> tuple[str, JsonObject]:
    """A job ``updates`` entry: its time-ordered key and body."""
    body: JsonObject = {"status": status, "time": iso(at or utc_now())}
    if meta is not None:
        body["meta"] = meta
    return ksuid(), body


@dataclass(frozen=True, slots=True)
class Lease:
    """A worker's claim on a running job: who holds it and until when."""

    worker: str
    expires: datetime

    def to_json(self) -> JsonObject:
        return {"worker": self.worker, "expires": iso(self.expires)}

    @classmethod
    def from_json(cls, value: object) -> Lease | None:
        if not isinstance(value, Mapping):
            return None
        worker, expires = value.get("worker"), parse_time(value.get("expires"))
        if not isinstance(worker, str) or expires is None:
            return None
        return cls(worker, expires)

    @classmethod
    def new(cls, worker: str, duration: timedelta) -> Lease:
        return cls(worker, utc_now() + duration)

    def expired(self, now: datetime | None = None) -> bool:
        return (now or utc_now()) >= self.expires


_NAMES: dict[type, str] = {
    dict: "an object",
    list: "a list",
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
}


def _describe(value: object) -> str:
    if value is None:
        return "null"
    return _NAMES.get(type(value), f"a {type(value).__name__}")


class JobOptions(BaseModel):
    """A job's ``options`` object: how and when the queue runs it.

    Every field is optional; the job type's defaults (``service.on(...)``)
    fill in what a job leaves out. Written and read in camelCase::

        {"options": {"notBefore": "2026-11-23T12:00:00Z", "priority": 5,
                     "uniqueKey": "invoice-42", "group": "field-7", "version": 2,
                     "expiresAt": "2026-11-23T18:00:00Z"}}
    """

    model_config = ConfigDict(
        frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True
    )

    #: Not started before this time (timezone-aware).
    not_before: AwareDatetime | None = None
    #: Among jobs ready to run, higher runs first (default: the type's, else 0).
    priority: StrictInt | None = None
    #: While a job of the same type with this key is pending or running in the
    #: queue, this one is refused or merged (see docs/scheduling.md).
    unique_key: str | None = Field(default=None, min_length=1, max_length=500)
    #: Jobs with the same group run one at a time (or the type's
    #: ``group_limit`` at a time), in the order they were queued.
    group: str | None = Field(default=None, min_length=1, max_length=500)
    #: The job's version; a type may require a minimum (default 1).
    version: StrictInt | None = Field(default=None, ge=0)
    #: How many times the job may be started in all (default: the type's ``tries``).
    tries: StrictInt | None = Field(default=None, ge=1)
    #: Seconds one run may take; it can only shorten the type's timeout.
    timeout: FiniteFloat | None = Field(default=None, gt=0)
    #: Not started by this time, the job fails with ``expired`` and never runs.
    expires_at: AwareDatetime | None = None

    @property
    def effective_version(self) -> int:
        """The job's version; 1 when it names none."""
        return 1 if self.version is None else self.version

    def expired(self, now: datetime | None = None) -> bool:
        """Whether the job's ``expiresAt`` has passed."""
        return self.expires_at is not None and (now or utc_now()) >= self.expires_at

    def to_json(self) -> JsonObject:
        """The ``options`` object as written on the job (only the fields set)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    @classmethod
    def parse(cls, value: object) -> tuple[JobOptions, list[str]]:
        """Options from a job's ``options`` value, and what is wrong with it."""
        if value is None:
            return cls(), []
        if not isinstance(value, Mapping):
            return cls(), [f"'options' must be an object, got {_describe(value)}"]
        try:
            return cls.model_validate(value), []
        except ValidationError as error:
            return cls(), [
                f"'options.{'.'.join(str(part) for part in problem['loc'])}': {problem['msg']}"
                for problem in error.errors(include_url=False)
            ]


@dataclass(frozen=True)
class Job(Generic[ConfigT]):
    """One job, as read from OADA.

    ``config`` is the job's config object, or an instance of the pydantic model
    the work function declared for it (``Job[EmailConfig]``).
    """

    #: The job resource id, ``resources/<key>``.
    oada_id: str
    #: The job's key in the list it was found in (``None`` outside a queue).
    key: str | None
    #: The service the job is for.
    service: str
    #: The job type; selects the work function.
    type: str
    #: The job's configuration.
    config: ConfigT
    #: The top-level ``status`` (``None`` before a worker touched it).
    status: str | None = None
    #: ``updates`` entries keyed by time-ordered ids.
    updates: Mapping[str, Any] = field(default_factory=dict)
    #: The ``result`` of a finished job.
    result: Json = None
    #: The current worker lease, if any.
    lease: Lease | None = None
    #: The ETag the job was read at (for conditional writes).
    etag: str | None = None
    #: How many times a worker has started the job.
    tries: int = 0
    #: Not to be run before this time: set by the framework for retries,
    #: reschedules and a type's start delay (top-level ``runAt``).
    run_at: datetime | None = None
    #: The job's ``options`` (see :class:`JobOptions`).
    options: JobOptions = field(default_factory=JobOptions)
    #: What the previous run left for the next one (``raise Reschedule(state=...)``).
    state: Json = None
    #: The whole resource as read.
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def job_id(self) -> str:
        """Alias of :attr:`oada_id`."""
        return self.oada_id

    @property
    def due(self) -> datetime | None:
        """When the job may start: the later of ``options.notBefore`` and ``runAt``."""
        times = [t for t in (self.options.not_before, self.run_at) if t is not None]
        return max(times) if times else None

    @property
    def finished(self) -> bool:
        """Whether the job is already marked ``success`` or ``failure``."""
        return self.status in FINISHED

    @property
    def trace_id(self) -> str | None:
        """The config's ``traceId``, if it has one (used in log records)."""
        raw_config = self.raw.get("config")
        value = raw_config.get("traceId") if isinstance(raw_config, Mapping) else None
        return value if isinstance(value, str) else None

    def claimable_by(self, worker: str, now: datetime | None = None) -> bool:
        """Whether *worker* may claim the job: not finished, due, and no live lease of another."""
        return not self.finished and self.wait_until(worker, now) is None

    def wait_until(self, worker: str, now: datetime | None = None) -> datetime | None:
        """When *worker* may look at the job again, if it may not claim it now:
        its due time, or when another worker's lease on it runs out."""
        now = now or utc_now()
        if self.held_elsewhere(worker, now):
            assert self.lease is not None
            return self.lease.expires
        if self.due is not None and now < self.due:
            # Looked at again when it expires, if that comes first: it is filed then.
            expires = self.options.expires_at
            return min(self.due, expires) if expires is not None else self.due
        return None

    def held_elsewhere(self, worker: str, now: datetime | None = None) -> bool:
        """Whether another worker holds a live lease on the job (it runs there)."""
        lease = self.lease
        return lease is not None and lease.worker != worker and not lease.expired(now)

    def expired_for(self, worker: str, now: datetime | None = None) -> bool:
        """Whether the job's ``expiresAt`` has passed before it could start here.

        Never for a finished job, nor one another worker runs right now
        (it started in time; its worker files it).
        """
        now = now or utc_now()
        return (
            not self.finished and self.options.expired(now) and not self.held_elsewhere(worker, now)
        )

    @property
    def created_by(self) -> str | None:
        """Who posted the job (``users/<id>``), as the requester recorded it."""
        value = self.raw.get("createdBy")
        return value if isinstance(value, str) else None

    def with_config(self, config: Any) -> Job[Any]:
        """A copy of this job with *config* (e.g. a validated model) in place."""
        return replace(self, config=config)

    @classmethod
    def from_resource(
        cls,
        data: object,
        *,
        oada_id: str,
        key: str | None = None,
        etag: str | None = None,
    ) -> Job[JsonObject]:
        """Build a job from a resource body, or raise :class:`InvalidJob` saying what is wrong."""
        if not isinstance(data, Mapping):
            raise InvalidJob(
                f"{oada_id} is not a job: expected a job object with 'service' and 'type', "
                f"got {_describe(data)}",
                job_id=oada_id,
                key=key,
            )
        problems = []
        for name in ("service", "type"):
            value = data.get(name)
            if value is None:
                problems.append(f"'{name}' is missing")
            elif not isinstance(value, str) or not value:
                problems.append(f"'{name}' must be a non-empty string, got {_describe(value)}")
        config = data.get("config", {})
        if config is None:
            config = {}
        if not isinstance(config, Mapping):
            problems.append(f"'config' must be an object, got {_describe(config)}")
        updates = data.get("updates") or {}
        if not isinstance(updates, Mapping):
            problems.append(f"'updates' must be an object, got {_describe(updates)}")
        status = data.get("status")
        if status is not None and not isinstance(status, str):
            problems.append(f"'status' must be a string, got {_describe(status)}")
        options, option_problems = JobOptions.parse(data.get("options"))
        if not (isinstance(status, str) and status in FINISHED):
            # Options only matter while the job has yet to run; a finished
            # job with bad ones (failed for them) is still readable.
            problems.extend(option_problems)
        if problems:
            raise InvalidJob(
                f"{oada_id} is not a job: {'; '.join(problems)}", job_id=oada_id, key=key
            )
        return Job(
            oada_id=oada_id,
            key=key,
            service=data["service"],
            type=data["type"],
            config=dict(config),
            status=status,
            updates=dict(updates),
            result=data.get("result"),
            lease=Lease.from_json(data.get("lease")),
            etag=etag,
            tries=tries if isinstance(tries := data.get("tries"), int) and tries >= 0 else 0,
            run_at=parse_time(data.get("runAt")),
            options=options,
            state=data.get("state"),
            raw=dict(data),
        )


def error_result(error: BaseException, *, fail_type: str | None = None) -> JsonObject:
    """Serialise *error* as a failed job's ``result``: name, message, traceback.

    A :class:`JobError`'s ``fail_type`` and ``details`` are included.
    """
    result: JsonObject = {
        "name": type(error).__name__,
        "message": getattr(error, "message", None) or str(error) or type(error).__name__,
        "traceback": "".join(traceback.format_exception(error)),
    }
    if isinstance(error, JobError):
        fail_type = fail_type or error.fail_type
        if error.details is not None:
            result["details"] = error.details
    if fail_type is not None:
        result["failType"] = fail_type
    return result


async def request_cancel(oada: OADAClient, job_id: str, reason: str = "cancelled") -> bool:
    """Ask the service running *job_id* to cancel it.

    Writes ``status: cancel-requested`` and an update entry, conditionally on
    the ETag just read so a job that finishes meanwhile is never marked.
    Returns ``False`` when the job had already finished (nothing written).
    The runner then files the job as a failure of type ``cancelled``: within
    about a second if it was running. For a job not running, its link in the
    service's pending list is touched as well, so the queue reads it again at
    once (even one waiting for a delayed start or a retry).
    """
    for _attempt in range(5):
        response = await oada.get(resource_path(job_id))
        job = Job.from_resource(response.data, oada_id=job_id, etag=response.etag)
        if job.finished:
            return False
        key, update = new_update(JobStatus.CANCEL_REQUESTED.value, reason)
        body = {"status": JobStatus.CANCEL_REQUESTED.value, "updates": {key: update}}
        try:
            await oada.put(resource_path(job_id), body, content_type=JOBS_TYPE, if_match=job.etag)
        except PreconditionFailed:
            continue  # claimed, logged or finished meanwhile: look again
        if job.status != JobStatus.RUNNING.value:
            await touch_link(oada, job)
        return True
    raise OADAJobsError(f"could not cancel {job_id}: it kept changing (5 tries)")


async def touch_link(oada: OADAClient, job: Job[Any]) -> None:
    """Re-write the job's link in its service's pending list (either layout)."""
    for layout in (get_layout("classic"), get_layout("pending")):
        path = layout.pending_path(job.service)
        try:
            listing = (await oada.get(path)).data
        except (NotFound, Forbidden):
            continue
        if not isinstance(listing, Mapping):
            continue
        for key, value in listing.items():
            if isinstance(value, Mapping) and value.get("_id") == job.oada_id:
                await oada.put(path, {key: {"_id": job.oada_id}}, content_type=JOBS_TYPE)
