"""Type aliases and callable protocols shared across oada-jobs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

if TYPE_CHECKING:
    from .job import Job
    from .runner import WorkerContext

__all__ = ["Json", "JsonObject", "Tree", "WorkFunction"]

#: Any JSON value as decoded by :mod:`json`.
Json: TypeAlias = dict[str, Any] | list[Any] | str | int | float | bool | None

#: A JSON object.
JsonObject: TypeAlias = dict[str, Any]

#: An OADA tree: nested keys, ``"*"`` for any key, ``_type`` marking a
#: resource boundary and ``_rev`` a versioned link (see docs/client.md).
Tree: TypeAlias = Mapping[str, Any]


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
