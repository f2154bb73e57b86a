"""Type aliases and callable protocols shared across oada-jobs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, TypeAlias

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
    """

    async def __call__(self, job: Any, ctx: Any, /) -> Json: ...
