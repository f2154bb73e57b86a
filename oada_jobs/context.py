"""What a work function gets besides its job: the context of one run.

Owns :class:`WorkerContext` (``ctx``), :class:`JobLogger` (``ctx.log``, the
job's ``updates``), :class:`JobLogAdapter` (``ctx.logger``) and the
:class:`WorkFunction` protocol a work function follows. Progress and child
jobs are written through :mod:`oada_jobs.requester`.

May use the client, the job model and the requester side. Must not touch
the runner, the queue, filing or the service: a context knows its job and
the client scoped to it, nothing of who runs it.
"""

from __future__ import annotations

import builtins
import logging
import os
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, overload

from pydantic import BaseModel

from .client import OADAClient
from .exceptions import OADATransportError, ServerError, TooManyRequests
from .job import Job, new_update
from .requester import CHILD_CHECK_EVERY, await_child_job, post_child_job, write_progress
from .settings import LOGGING_ENV, update_levels
from .tree import JOB_TYPE, LayoutName, path_segment, resource_path
from .types import Json

ResultT = TypeVar("ResultT", bound=BaseModel)

__all__ = [
    "JobLogAdapter",
    "JobLogger",
    "WorkFunction",
    "WorkerContext",
    "enabled_levels",
]


class JobLogAdapter(logging.LoggerAdapter[logging.Logger]):
    """A :class:`logging.LoggerAdapter` adding the job's context to every record.

    Records carry ``service``, ``queue``, ``job_id``, ``job_key``, ``job_type``
    and ``trace_id`` (the config's ``traceId``) as attributes, for structured
    log handlers; the message is prefixed with ``[service/job_key]``.

    A job's messages carry text from its work function, its key and its
    config: a lone surrogate in them (a byte decoded with ``surrogateescape``)
    would make a handler that writes UTF-8 drop the record with a "Logging
    error". So the message is formatted here, such characters written as
    backslash escapes.
    """

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if not self.isEnabledFor(level):
            return
        # Formatted as logging formats it (a single mapping argument included).
        record = logging.LogRecord(self.logger.name, level, "", 0, msg, args, None)
        try:
            text = record.getMessage()
        except (TypeError, ValueError):
            text = f"{msg} {args!r}"
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
        # The record names the caller, not this method.
        kwargs["stacklevel"] = kwargs.get("stacklevel", 1) + 1
        super().log(level, text, **kwargs)

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        extra = dict(self.extra or {})
        extra.update(kwargs.get("extra") or {})
        kwargs["extra"] = extra
        return (
            f"[{extra.get('service')}/{extra.get('job_key') or extra.get('job_id')}] {msg}",
            kwargs,
        )


def enabled_levels() -> frozenset[str]:
    """The optional update levels ``OADA_JOBS_LOGGING`` asks for (``debug``, ``trace``)."""
    # Read at each call, as @oada/jobs does, by the one parser settings use.
    return update_levels(os.environ.get(LOGGING_ENV))


class JobLogger:
    """``ctx.log``: writes ``updates`` entries on the running job.

    ``info`` and ``error`` always write; ``debug`` and ``trace`` only when
    ``OADA_JOBS_LOGGING`` contains ``debug`` / ``trace``. Each call also emits
    a Python log record (with the job's context) at the matching level.

    >>> await ctx.log.info("sending", {"to": "a@example.org"})  # doctest: +SKIP
    """

    def __init__(
        self,
        oada: OADAClient,
        job_id: str,
        log: JobLogAdapter,
        on_write: Callable[[str | None], None] = lambda etag: None,
    ) -> None:
        self._oada = oada
        self._job_id = job_id
        self._log = log
        self._on_write = on_write

    async def _update(self, level: int, status: str, meta: Json) -> None:
        self._log.log(level, "update %s: %s", status, meta)
        key, body = new_update(status, meta)
        # PUT at a client-chosen KSUID key is what POST does server-side, but
        # keeps the keys time-ordered by this process's clock.
        try:
            response = await self._oada.put(
                f"{resource_path(self._job_id)}/updates/{path_segment(key)}",
                body,
                content_type=JOB_TYPE,
            )
        except (OADATransportError, ServerError, TooManyRequests) as error:
            # The client retried already; a progress note is not worth
            # failing the work for while the server is away.
            self._log.warning("update %s not written (the work goes on): %s", status, error)
            return
        self._on_write(response.etag)

    async def info(self, status: str, meta: Json = None) -> None:
        """Record an update with *status* and optional JSON *meta*."""
        await self._update(logging.INFO, status, meta)

    async def error(self, status: str, meta: Json = None) -> None:
        """Record an error update (always written)."""
        await self._update(logging.ERROR, status, meta)

    async def debug(self, status: str, meta: Json = None) -> None:
        """Record an update only when ``OADA_JOBS_LOGGING`` contains ``debug``."""
        if "debug" in enabled_levels():
            await self._update(logging.DEBUG, status, meta)

    async def trace(self, status: str, meta: Json = None) -> None:
        """Record an update only when ``OADA_JOBS_LOGGING`` contains ``trace``."""
        if "trace" in enabled_levels():
            await self._update(logging.DEBUG, status, meta)


@dataclass(frozen=True, slots=True)
class WorkerContext:
    """What a work function gets besides the job.

    ``oada`` is a client for the job's queue, scoped to this job: when the job
    finishes, times out or is cancelled it is revoked, and any further request
    through it raises :class:`~oada_jobs.ClientClosed` — so nothing a
    timed-out function still tries to write lands on the job.
    """

    #: The job resource id, ``resources/<key>``.
    job_id: str
    #: Writes updates on the job (``await ctx.log.info(status, meta)``).
    log: JobLogger
    #: The job-scoped OADA client.
    oada: OADAClient
    #: A Python logger whose records carry the job's context.
    logger: JobLogAdapter
    #: The job-list layout of the queue this job came from; follow-up jobs
    #: are posted in it unless told otherwise.
    layout: LayoutName = "classic"
    # How many children this run has awaited (names the next one).
    _awaited: list[int] = field(default_factory=lambda: [0], repr=False, compare=False)

    @overload
    async def run_job(
        self,
        service: str,
        type: str,
        config: Any = None,
        *,
        name: str | None = None,
        layout: LayoutName | None = None,
        check_every: float = CHILD_CHECK_EVERY,
        result: None = None,
    ) -> Json: ...

    @overload
    async def run_job(
        self,
        service: str,
        type: str,
        config: Any = None,
        *,
        name: str | None = None,
        layout: LayoutName | None = None,
        check_every: float = CHILD_CHECK_EVERY,
        result: builtins.type[ResultT],
    ) -> ResultT: ...

    async def run_job(
        self,
        service: str,
        type: str,
        config: Any = None,
        *,
        name: str | None = None,
        layout: LayoutName | None = None,
        check_every: float = CHILD_CHECK_EVERY,
        result: builtins.type[BaseModel] | None = None,
    ) -> Json | BaseModel:
        """Run a child job and return its result (:class:`~oada_jobs.JobFailed` if it fails).

        *result*, a pydantic model, parses the child's result into it.

        The parent does not wait in memory: while the child is not done this
        ends the run (the job goes back to pending, with ``waitingFor`` set,
        holding no slot) and the function is **called again from the top**
        once the child is filed; this time the same call returns the child's
        result at once. So the code before it runs again: keep it idempotent,
        or keep what it did in the job's ``state`` (``Reschedule``).

        Each call names its child: *name*, by default its place among this
        run's calls (``0``, ``1``, ...). The child's key is derived from the
        parent's and the name, so a run again finds the same child and never
        posts a second one; give names when the calls a run makes depend on
        what earlier children returned. *check_every*: seconds after which
        the parent looks at the child again should the wake-up be lost.

        >>> total = await ctx.run_job("billing", "sum", {"month": 11})  # doctest: +SKIP
        """
        index = self._awaited[0]
        self._awaited[0] += 1
        value = await await_child_job(
            self,
            name if name is not None else str(index),
            service,
            type,
            config,
            layout=layout,
            check_every=check_every,
        )
        return value if result is None else result.model_validate(value)

    async def post_job(
        self,
        service: str,
        type: str,
        config: Any = None,
        *,
        name: str | None = None,
        key: str | None = None,
        options: Any = None,
        layout: LayoutName | None = None,
    ) -> str:
        """Post a follow-up job linked to this one (``parent`` on it, ``children`` here).

        *layout* defaults to this job's own. With *name* (or an explicit
        *key*) the child's key is fixed, so a retried run that posts the same
        child again gets the one already posted instead of a second one.
        """
        return await post_child_job(
            self, service, type, config, name=name, key=key, options=options, layout=layout
        )

    async def progress(self, fraction: float, message: str | None = None) -> None:
        """Record progress: an update ``progress`` with meta ``{fraction, message}``."""
        await write_progress(self, fraction, message)


class WorkFunction(Protocol):
    """What ``service.on(type, timeout, fn)`` accepts.

    It gets the job and its context and returns the job's JSON ``result``.
    The job's ``config`` is a plain JSON object, or an instance of the pydantic
    model the function declares (``job: Job[EmailConfig]``)::

        async def send(job: Job, ctx: WorkerContext) -> Json:
            await ctx.log.info("started", "Job started")
            return {"sent": True}
    """

    async def __call__(self, job: Job[Any], ctx: WorkerContext, /) -> Json: ...
