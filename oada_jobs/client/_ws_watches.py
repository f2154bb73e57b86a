"""The watches on the client's WebSocket: issued, routed, and restored after a drop.

A watch is issued with its own ``requestId``, and change notifications
carrying that id are routed to it. When the socket under the watches drops,
each one is re-issued on a new socket with ``x-oada-rev`` set to the last rev
it queued, so the server replays exactly what was missed; a watch that
cannot be restored within its deadline fails with :class:`WatchLost`.

Owns the watches' routes, the watches waiting to be restored and the
reconnect loop. It reaches the socket only through :class:`Link` (connect,
round trip, start a task), so it must not import ``_ws`` or ``_client``
(nor the framework or the server).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import anyio
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    wait_exponential_jitter,
)

from ..exceptions import ClientClosed, OADAError, OADAStatusError, OADATransportError, WatchLost
from ._common import new_request_id
from ._response import Change, Response, status_error

__all__ = ["Link", "WatchKeeper", "WatchSink"]

logger = logging.getLogger("oada_jobs.client")


class WatchSink(Protocol):
    """What the keeper needs from a watch to route, restore and end it."""

    path: str
    method: str
    token: str
    request_id: str | None
    generation: int
    deadline: float
    serial: int
    #: set false by the keeper when the socket under the watch drops
    connected: bool

    def request_headers(self) -> dict[str, str]: ...
    def opened(self, response: Response) -> None: ...
    def feed(self, changes: list[Change]) -> None: ...
    def fail(self, error: OADAError) -> None: ...


class Link(Protocol):
    """What the keeper needs from the socket under the watches."""

    @property
    def generation(self) -> int | None:
        """The open socket's generation (one more per socket), ``None`` while there is none."""
        ...

    @property
    def closing(self) -> bool:
        """Whether the connection is closing for good (then nothing is restored)."""
        ...

    async def connect(self) -> None:
        """Open a socket unless one is open."""
        ...

    async def roundtrip(
        self, message: dict[str, Any], *, answer_within: float, token: str
    ) -> tuple[Response, str | None, int]:
        """Send *message*; return the answer, its status text and the socket generation."""
        ...

    def start_soon(self, task: Callable[[], Coroutine[Any, Any, None]]) -> bool:
        """Run *task* in the connection's task group; false when it has none."""
        ...


class WatchKeeper:
    """The watches on one (re-opened) WebSocket, in the order they were opened."""

    def __init__(self, link: Link, *, url: str, reissue_within: float, max_backoff: float) -> None:
        self._link = link
        #: the socket's address, for the logs
        self._url = url
        #: seconds the server has to answer a watch re-issued after a drop
        self._reissue_within = reissue_within
        self._max_backoff = max_backoff
        #: request id -> its watch (a restored watch gets a new id)
        self._routes: dict[str, WatchSink] = {}
        #: live watches, in the order they were opened
        self._watches: dict[WatchSink, None] = {}
        #: watches waiting to be re-issued -> when their socket dropped
        self._lost: dict[WatchSink, float] = {}
        self._last_restore_error = ""
        self._restoring = False

    # -- what the socket calls ------------------------------------------------

    def route(self, request_ids: list[str], changes: list[Change]) -> None:
        """Feed *changes* to the watches with these request ids (each watch once)."""
        seen: set[int] = set()
        for request_id in request_ids:
            watch = self._routes.get(request_id)
            if watch is not None and id(watch) not in seen:
                seen.add(id(watch))
                watch.feed(changes)

    def socket_lost(self, generation: int) -> None:
        """The socket of *generation* dropped: restore the watches that were on it."""
        now = anyio.current_time()
        for watch in self._watches:
            if watch.generation == generation and watch not in self._lost:
                self._lost[watch] = now
                watch.connected = False
        if self._lost:
            logger.warning(
                "WebSocket to %s dropped; restoring %d watch(es)",
                self._url,
                len(self._lost),
            )
            self._start_restore()

    def end_all(self) -> None:
        """The connection is closing: end every watch with :class:`ClientClosed`."""
        for watch in list(self._watches):
            watch.fail(ClientClosed("the client was closed", path=watch.path))
        self._watches.clear()
        self._lost.clear()
        self._routes.clear()

    # -- what the client calls ------------------------------------------------

    async def open(self, watch: WatchSink, *, answer_within: float) -> Response:
        """Issue *watch* and start routing its changes; raise if the server refuses."""
        response, generation = await self._issue(watch, answer_within=answer_within)
        self._watches[watch] = None
        if generation != self._link.generation:
            # The socket dropped between the answer and now: restore it.
            self._lost.setdefault(watch, anyio.current_time())
            self._start_restore()
        return response

    async def close(self, watch: WatchSink) -> None:
        """Stop routing *watch* and tell the server (best effort)."""
        self._watches.pop(watch, None)
        self._lost.pop(watch, None)
        request_id = watch.request_id
        if request_id is None:
            return
        self._routes.pop(request_id, None)
        if self._link.closing or watch.generation != self._link.generation:
            return
        message = {
            "requestId": request_id,
            "method": "unwatch",
            "path": watch.path,
            "headers": {"authorization": ""},
        }
        with anyio.CancelScope(shield=True), anyio.move_on_after(2):
            try:
                await self._link.roundtrip(message, answer_within=2, token=watch.token)
            except OADAError as error:
                logger.debug("unwatch failed: %s", error)

    async def _issue(self, watch: WatchSink, *, answer_within: float) -> tuple[Response, int]:
        request_id = new_request_id()
        if watch.request_id is not None:
            self._routes.pop(watch.request_id, None)
        watch.request_id = request_id
        # Route before sending: changes can follow the answer immediately.
        self._routes[request_id] = watch
        message = {
            "requestId": request_id,
            "method": watch.method,
            "path": watch.path,
            "headers": watch.request_headers(),
        }
        try:
            response, reason, generation = await self._link.roundtrip(
                message, answer_within=answer_within, token=watch.token
            )
            if response.status >= 300:
                raise status_error(
                    response, method=watch.method, path=watch.path, reason=reason, token=watch.token
                )
        except BaseException:
            self._routes.pop(request_id, None)
            raise
        watch.generation = generation
        watch.opened(response)
        return response, generation

    # -- restoring ------------------------------------------------------------

    def _start_restore(self) -> None:
        if self._restoring or self._link.closing:
            return
        self._restoring = self._link.start_soon(self._restore)

    async def _restore(self) -> None:
        try:
            retrying = AsyncRetrying(
                retry=retry_if_exception_type(OADATransportError),
                wait=wait_exponential_jitter(multiplier=0.05, max=self._max_backoff),
                stop=self._give_up,
                sleep=anyio.sleep,
                before_sleep=self._log_attempt,
                reraise=True,
            )
            try:
                async for attempt in retrying:
                    with attempt:
                        await self._restore_all()
            except OADATransportError:
                pass  # _give_up has already failed every watch it gave up on
            except ClientClosed:
                pass  # closing: the watches were ended by end_all
        except Exception as error:
            # Never let this escape into the connection's task group.
            logger.exception("restoring watches failed")
            for watch in list(self._lost):
                self._lost.pop(watch, None)
                self._watches.pop(watch, None)
                watch.fail(WatchLost(f"restoring the watch failed: {error!r}", path=watch.path))
        finally:
            self._restoring = False

    async def _restore_all(self) -> None:
        while self._lost and not self._link.closing:
            try:
                await self._link.connect()
            except OADATransportError as error:
                self._last_restore_error = str(error)
                raise
            for watch in sorted(self._lost, key=lambda w: w.serial):
                if watch not in self._watches:
                    self._lost.pop(watch, None)
                    continue
                try:
                    await self._issue(watch, answer_within=self._reissue_within)
                except OADAStatusError as error:
                    self._lost.pop(watch, None)
                    self._watches.pop(watch, None)
                    watch.fail(
                        WatchLost(
                            f"the server refused to restore the watch: {error.message}",
                            path=watch.path,
                            status=error.status,
                        )
                    )
                    continue
                except OADATransportError as error:
                    self._last_restore_error = str(error)
                    raise
                since = self._lost.pop(watch, None)
                down = anyio.current_time() - since if since is not None else 0.0
                logger.info("restored the watch on %s after %.1f s", watch.path, down)

    def _log_attempt(self, state: RetryCallState) -> None:
        """Say that a reconnect attempt failed, and when the next one is."""
        waited = anyio.current_time() - min(self._lost.values(), default=anyio.current_time())
        next_in = state.next_action.sleep if state.next_action is not None else 0.0
        logger.warning(
            "reconnecting to %s: attempt %d failed (%s); %d watch(es) down for %.1f s, "
            "next attempt in %.1f s",
            self._url,
            state.attempt_number,
            self._last_restore_error or "connection lost",
            len(self._lost),
            waited,
            next_in,
        )

    def _give_up(self, state: RetryCallState) -> bool:
        now = anyio.current_time()
        for watch, since in list(self._lost.items()):
            if now - since >= watch.deadline:
                self._lost.pop(watch, None)
                self._watches.pop(watch, None)
                if watch.request_id is not None:
                    self._routes.pop(watch.request_id, None)
                watch.fail(
                    WatchLost(
                        f"could not restore the watch within {watch.deadline}s "
                        f"({self._last_restore_error or 'connection lost'})",
                        path=watch.path,
                    )
                )
        return not self._lost or self._link.closing
