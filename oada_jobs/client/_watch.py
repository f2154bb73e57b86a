"""Watches: an async context manager around an ordered, exactly-once change stream.

Owns :class:`Watch`; it is put on and taken off a connection by the
callables its client gives it, so it must not import ``_client`` (nor the
framework or the server).
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections import deque
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any, Generic, Literal, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..exceptions import ClientClosed, OADAError
from ._common import ClosesOnExit
from ._response import Change, Response

__all__ = ["Watch", "WatchState", "WatchType"]

WatchType = Literal["single", "tree"]
T = TypeVar("T", Change, list[Change])

_serials = itertools.count(1)


class WatchState(StrEnum):
    """Where a :class:`Watch` is in its life."""

    #: created, not entered yet
    UNOPENED = "unopened"
    #: the server accepted it; changes flow
    OPEN = "open"
    #: left, failed or ended; it refuses reuse
    CLOSED = "closed"


_End = object()  # queued after a whole-resource delete: the server drops the watch


def _check_options(kind: Any, initial_method: Any, rev: Any, deadline: Any) -> None:
    """Refuse options a watch cannot have (the client passes them on as given)."""
    if kind not in ("single", "tree"):
        raise ValueError(f"expected type 'single' or 'tree', got {kind!r}")
    if initial_method not in ("head", "get"):
        raise ValueError(f"expected initial_method 'head' or 'get', got {initial_method!r}")
    if rev is not None and (not isinstance(rev, int) or isinstance(rev, bool) or rev < 0):
        raise ValueError(f"expected rev as an integer >= 0 or None, got {rev!r}")
    if not deadline > 0:
        raise ValueError(f"expected a deadline > 0 seconds, got {deadline!r}")


class Watch(ClosesOnExit, Generic[T]):
    """A watch on one OADA resource; use it as ``async with`` and iterate it.

    Iterating yields each :class:`Change` in order (``type="single"``) or each
    change array as a ``list[Change]`` (``type="tree"``). Every change is
    delivered exactly once, in rev order, even across dropped connections and
    server restarts: the watch is re-issued with ``x-oada-rev`` and replayed
    changes it already queued are dropped by rev. When the watch cannot be
    restored within ``deadline`` seconds the iteration raises
    :class:`~oada_jobs.exceptions.WatchLost`; when its client is closed or
    revoked it raises :class:`~oada_jobs.exceptions.ClientClosed`. A
    whole-resource delete is delivered and then ends the iteration (the server
    drops watches on deleted resources).

    ``rev`` is the root rev of the last change array handed out (or the rev
    the watch started from); pass it as ``rev=`` to a later watch to resume.
    ``response`` is the server's answer to the watch request (with ``data``
    when ``initial_method="get"``).
    """

    def __init__(
        self,
        path: str,
        *,
        token: str,
        open: Callable[[Watch[Any]], Awaitable[None]],
        close: Callable[[Watch[Any]], Awaitable[None]],
        rev: int | None,
        kind: WatchType,
        initial_method: Literal["head", "get"],
        deadline: float,
    ) -> None:
        _check_options(kind, initial_method, rev, deadline)
        # The client's side of the watch: put it on a connection, take it off.
        self._open = open
        self._close = close
        self.path: str = path
        self.type: WatchType = kind
        self.method: str = "watch" if initial_method == "head" else "get-watch"
        self.token = token
        self.deadline = deadline
        self.serial = next(_serials)
        self.request_id: str | None = None
        self.generation = 0
        self.response: Response | None = None
        self.state = WatchState.UNOPENED
        #: Whether the server holds this watch right now: false from the
        #: moment its connection drops until it is restored (changes made
        #: meanwhile are replayed then), and once the watch is closed.
        self.connected = False
        #: root rev of the last change array handed to the consumer
        self.rev: int | None = rev
        # root rev of the last change array queued (>= rev); replays up to it are dropped
        self._queued_rev: int | None = rev
        # Made on entry, so a watch that is never entered holds no streams.
        self._send: MemoryObjectSendStream[Any] | None = None
        self._receive: MemoryObjectReceiveStream[Any] | None = None
        self._current: deque[Change] = deque()
        self._current_rev: int | None = None
        self._ended = False

    def __repr__(self) -> str:
        return f"<Watch {self.path!r} type={self.type} rev={self.rev} state={self.state.value}>"

    # -- what the connection calls ------------------------------------------

    def request_headers(self) -> dict[str, str]:
        headers = {"authorization": f"Bearer {self.token}"}
        if self._queued_rev is not None:
            headers["x-oada-rev"] = str(self._queued_rev)
        return headers

    def opened(self, response: Response) -> None:
        self.connected = True
        if self.response is None:
            self.response = response
        if self._queued_rev is None and response.rev is not None:
            self._queued_rev = response.rev
            if self.rev is None:
                self.rev = response.rev

    def feed(self, changes: list[Change]) -> None:
        root = changes[0]
        if self._send is None or self.state is WatchState.CLOSED:
            return
        if root.path == "" and root.body is None:
            # A whole-resource delete has no rev; deliver it and end.
            self._send.send_nowait(changes)
            self._send.send_nowait(_End)
            return
        root_rev = root.rev if root.path == "" else None
        if root_rev is not None:
            if self._queued_rev is not None and root_rev <= self._queued_rev:
                return  # replayed after a reconnect, or a duplicate: already queued
            self._queued_rev = root_rev
        self._send.send_nowait(changes)

    def fail(self, error: OADAError) -> None:
        self.connected = False
        if self._send is None:
            return
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._send.send_nowait(error)

    # -- lifecycle ----------------------------------------------------------

    async def __aenter__(self) -> Watch[T]:
        if self.state is not WatchState.UNOPENED:
            raise RuntimeError(f"a watch can be entered once; this one is {self.state.value}")
        self._send, self._receive = anyio.create_memory_object_stream[Any](math.inf)
        try:
            await self._open(self)
        except BaseException:
            self.state = WatchState.CLOSED
            self.connected = False
            self._send.close()
            self._receive.close()
            raise
        self.state = WatchState.OPEN
        return self

    async def aclose(self) -> None:
        """Stop the watch and send ``unwatch``; safe to call more than once."""
        if self.state is WatchState.CLOSED:
            return
        self.state = WatchState.CLOSED
        self.connected = False
        if self._send is not None and self._receive is not None:
            self._send.close()
            self._receive.close()
        await self._close(self)

    # -- iteration ----------------------------------------------------------

    def __aiter__(self) -> Watch[T]:
        return self

    async def __anext__(self) -> T:
        if self.type == "single":
            return await self._next_single()  # type: ignore[return-value]  # T is Change here
        return await self._next_array()  # type: ignore[return-value]  # T is list[Change] here

    async def _receive_array(self) -> list[Change]:
        if self._ended or self.state is not WatchState.OPEN or self._receive is None:
            raise StopAsyncIteration
        try:
            item = await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise StopAsyncIteration from None
        if item is _End:
            self._ended = True
            raise StopAsyncIteration
        if isinstance(item, OADAError):
            self._ended = True
            if isinstance(item, ClientClosed):
                raise ClientClosed(item.message, path=self.path)
            raise item
        changes: list[Change] = item
        root = changes[0]
        if root.path == "" and root.body is not None:
            self.rev = root.rev
        return changes

    async def _next_array(self) -> list[Change]:
        return await self._receive_array()

    async def _next_single(self) -> Change:
        if not self._current:
            self._current.extend(await self._receive_array())
        return self._current.popleft()
