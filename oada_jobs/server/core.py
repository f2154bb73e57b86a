"""The transport-independent core of the embedded OADA server.

:class:`OADACore` takes a :class:`CoreRequest` (method, raw path, lower-case
headers, body bytes) and returns a :class:`CoreResponse`. It never raises for
a bad request: every error is a JSON body ``{"statusCode", "error",
"message"}``. Transports (HTTP, WebSocket) only translate to and from these
two dataclasses and implement watches on top of :meth:`OADACore.subscribe`
and :meth:`OADACore.changes_since`.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from oada_jobs.server.config import ServerConfig

__all__ = ["ChangeListener", "CoreRequest", "CoreResponse", "CoreState", "OADACore"]

#: ``(resource_id, rev, change_array)``; called synchronously after commit.
ChangeListener = Callable[[str, int, list[dict[str, Any]]], None]


@dataclass(frozen=True, slots=True)
class CoreRequest:
    """One request as the core sees it."""

    #: Lower-case method: ``get head put post delete``.
    method: str
    #: Raw request path without the query string, not percent-decoded.
    path: str
    #: Lower-case header names.
    headers: Mapping[str, str]
    body: bytes = b""


@dataclass(slots=True)
class CoreResponse:
    """One answer: lower-case header names, string values, no empty values."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    #: JSON text for JSON answers, raw bytes for binary resources.
    body: bytes = b""


class CoreState(enum.Enum):
    """Life cycle of an :class:`OADACore`."""

    #: Created, store not opened yet.
    UNOPENED = "unopened"
    #: Store open, serving requests.
    OPEN = "open"
    #: Closed; cannot be reopened.
    CLOSED = "closed"


class OADACore:
    """The OADA resource server without a transport.

    >>> async with OADACore(ServerConfig()) as core:  # doctest: +SKIP
    ...     r = await core.handle(CoreRequest("get", "/bookmarks", {"authorization": "Bearer god"}))
    """

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._state = CoreState.UNOPENED

    @property
    def state(self) -> CoreState:
        return self._state

    async def __aenter__(self) -> OADACore:
        if self._state is not CoreState.UNOPENED:
            raise RuntimeError(f"OADACore cannot be opened when {self._state.value}")
        self._state = CoreState.OPEN
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._state = CoreState.CLOSED

    async def handle(self, request: CoreRequest) -> CoreResponse:
        """Serve one request; never raises for a bad request."""
        body = json.dumps(
            {"statusCode": 503, "error": "Service Unavailable", "message": "not ready"}
        ).encode()
        return CoreResponse(503, {"content-type": "application/json"}, body)

    def subscribe(self, resource_id: str, listener: ChangeListener) -> Callable[[], None]:
        """Call *listener* after every committed change of *resource_id*.

        Returns a function that removes the listener.
        """
        return lambda: None

    def changes_since(self, resource_id: str, rev: int) -> list[tuple[int, list[dict[str, Any]]]]:
        """Every ``(rev, change_array)`` of *resource_id* after *rev*, oldest first."""
        return []

    def current_rev(self, resource_id: str) -> int:
        """The resource's ``_rev``, 0 when it does not exist."""
        return 0
