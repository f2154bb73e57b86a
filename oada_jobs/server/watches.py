"""The watches of one WebSocket: subscriptions, replays and live changes, in order.

:class:`Watches` holds the watches of one socket, a :class:`Notifier`
(one subscription to the core) per watched resource. It replays a watch's
history after the rev the client has, holding the live changes committed
meanwhile and sending those after it, so a watch's changes are never lost,
repeated or reordered. Every change, replayed or live, is authorized for
the watch's own token through :meth:`WatchSource.watch_view`; a watch whose
resource that token may no longer read ends, and so do all of a resource's
watches once it is deleted as a whole.

Owns the watches of a socket; must not send or encode a message itself (the
session's ``send_change`` does), nor import the framework or the client.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
import anyio.lowlevel

from oada_jobs.server.graph import ChangeListener

__all__ = ["REPLAY_PAGE", "Notifier", "WatchSource", "Watches"]

#: Revs a watch's replay reads from SQLite in one query (see :meth:`Watches.replay`).
REPLAY_PAGE = 64

#: Sends one change to watches: ``(request_ids, resource_id, change)``.
SendChange = Callable[[list[str], str, list[dict[str, Any]]], None]


class WatchSource(Protocol):
    """What the watches need of the core (:class:`~oada_jobs.server.core.OADACore`)."""

    def subscribe(self, resource_id: str, listener: ChangeListener) -> Callable[[], None]: ...

    def watch_view(
        self, authorization: str | None, resource_id: str, change: list[dict[str, Any]]
    ) -> list[dict[str, Any]] | None: ...

    def changes_page(
        self, resource_id: str, after: int, limit: int
    ) -> list[tuple[int, list[dict[str, Any]]]]: ...


def _is_whole_delete(change: list[dict[str, Any]]) -> bool:
    return bool(change) and change[0].get("type") == "delete" and change[0].get("body") is None


@dataclass(slots=True)
class Notifier:
    """All watches of one socket on one resource (they share one subscription)."""

    resource_id: str
    #: Watches that get live changes.
    request_ids: list[str] = field(default_factory=list)
    #: Watches whose replay is still being sent → the live changes held for
    #: them meanwhile, as ``(rev, change)``.
    replaying: dict[str, list[tuple[int, list[dict[str, Any]]]]] = field(default_factory=dict)
    #: Each watch's ``Authorization`` header: every change is authorized for it.
    authorizations: dict[str, str | None] = field(default_factory=dict)
    unsubscribe: Callable[[], None] = lambda: None


class Watches:
    """The watches of one socket.

    :param source: Subscriptions, the watch view and the change history.
    :param send_change: Sends one change to some of the watches.
    :param stopped: Whether the socket is closing (a replay then stops).
    :param replay_slice: Seconds a replay runs before it lets the event loop run.
    """

    def __init__(
        self,
        source: WatchSource,
        send_change: SendChange,
        stopped: Callable[[], bool],
        *,
        replay_slice: float,
    ) -> None:
        self._source = source
        self._send_change = send_change
        self._stopped = stopped
        self._replay_slice = replay_slice
        #: resource id → notifier
        self._notifiers: dict[str, Notifier] = {}
        #: watch request id → notifier
        self._watches: dict[str, Notifier] = {}

    def __len__(self) -> int:
        return len(self._watches)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._watches

    def open(
        self, request_id: str, resource_id: str, authorization: str | None, *, live: bool
    ) -> Notifier:
        """Watch *resource_id* under *request_id* (replacing any watch under it).

        With *live*, changes go to it from now on; otherwise :meth:`replay`
        must follow at once.
        """
        self.unwatch(request_id)
        notifier = self._notifiers.get(resource_id)
        if notifier is None:
            notifier = Notifier(resource_id)
            self._notifiers[resource_id] = notifier
            notifier.unsubscribe = self._source.subscribe(resource_id, self._listener(notifier))
        self._watches[request_id] = notifier
        notifier.authorizations[request_id] = authorization
        if live:
            notifier.request_ids.append(request_id)
        return notifier

    async def replay(
        self, request_id: str, notifier: Notifier, since: int, authorization: str | None
    ) -> bool:
        """Send the changes after *since*, then the live ones held meanwhile; then go live.

        Read from SQLite in pages of :data:`REPLAY_PAGE` revs and sent in
        slices of ``replay_slice`` seconds, letting the event loop run
        between slices: a replay of a long history does not stall other
        clients. This socket's next requests wait for it (they are read by
        the session's reader), and its live changes are held meanwhile, so
        its messages stay in order. Each change is authorized for the
        watch's token; once it may no longer read the resource, the watch
        ends. False when the watch was dropped or replaced meanwhile, or the
        socket is closing.
        """
        source, resource_id = self._source, notifier.resource_id
        held = notifier.replaying[request_id] = []
        last = since
        try:
            deadline = time.perf_counter() + self._replay_slice
            while True:
                page = source.changes_page(resource_id, last, REPLAY_PAGE)
                ended = False
                for rev, change in page:
                    if not self._deliver(request_id, resource_id, change, authorization):
                        # The watch ended there (see _deliver): nothing follows.
                        ended = True
                        break
                    last = rev
                if ended or len(page) < REPLAY_PAGE or self._stopped():
                    break
                if time.perf_counter() >= deadline:
                    await anyio.lowlevel.checkpoint()
                    deadline = time.perf_counter() + self._replay_slice
        finally:
            notifier.replaying.pop(request_id, None)
        return self._go_live(request_id, notifier, held, last, authorization)

    def _deliver(
        self,
        request_id: str,
        resource_id: str,
        change: list[dict[str, Any]],
        authorization: str | None,
    ) -> bool:
        """Send one change to one watch; False when that ended the watch.

        It ends unsent when its token may no longer read the resource, and
        after it when it is the resource's delete.
        """
        view = self._source.watch_view(authorization, resource_id, change)
        if view is None:
            self.unwatch(request_id)
            return False
        self._send_change([request_id], resource_id, view)
        if _is_whole_delete(change):
            self.unwatch(request_id)
            return False
        return True

    def _go_live(
        self,
        request_id: str,
        notifier: Notifier,
        held: list[tuple[int, list[dict[str, Any]]]],
        last: int,
        authorization: str | None,
    ) -> bool:
        """After a replay up to *last*: send the live changes *held* after it, then go live."""
        if self._watches.get(request_id) is not notifier or self._stopped():
            if not notifier.request_ids and not notifier.replaying:
                self._drop(notifier)
            return False
        # Live changes committed during the replay, after what it sent.
        for rev, change in held:
            if rev <= last:
                continue
            if not self._deliver(request_id, notifier.resource_id, change, authorization):
                break
        else:
            notifier.request_ids.append(request_id)
        return True

    def _listener(self, notifier: Notifier) -> ChangeListener:
        def on_change(resource_id: str, rev: int, change: list[dict[str, Any]]) -> None:
            for held in notifier.replaying.values():
                held.append((rev, change))
            if not notifier.request_ids:
                return
            # Watches made with different tokens may see different parts.
            by_token: dict[str | None, list[str]] = {}
            for request_id in notifier.request_ids:
                by_token.setdefault(notifier.authorizations.get(request_id), []).append(request_id)
            for authorization, request_ids in by_token.items():
                view = self._source.watch_view(authorization, resource_id, change)
                if view is None:
                    # No longer readable with that token: those watches end.
                    for request_id in request_ids:
                        self.unwatch(request_id)
                    continue
                self._send_change(request_ids, resource_id, view)
            if _is_whole_delete(change):
                # A deleted resource ends all its watches (after the delete
                # change itself was delivered); a watch still replaying ends
                # once its replay reaches the delete.
                if notifier.replaying:
                    for request_id in notifier.request_ids:
                        self._watches.pop(request_id, None)
                    notifier.request_ids.clear()
                else:
                    self._drop(notifier)

        return on_change

    def unwatch(self, request_id: str) -> None:
        """End the watch under *request_id*, if there is one."""
        notifier = self._watches.pop(request_id, None)
        if notifier is None:
            return
        if request_id in notifier.request_ids:
            notifier.request_ids.remove(request_id)
        notifier.authorizations.pop(request_id, None)
        if not notifier.request_ids and not notifier.replaying:
            self._drop(notifier)

    def _drop(self, notifier: Notifier) -> None:
        notifier.unsubscribe()
        for request_id in notifier.request_ids:
            self._watches.pop(request_id, None)
        notifier.request_ids.clear()
        notifier.authorizations.clear()
        if self._notifiers.get(notifier.resource_id) is notifier:
            del self._notifiers[notifier.resource_id]

    def drop_all(self) -> None:
        """End every watch (the socket closed)."""
        for notifier in list(self._notifiers.values()):
            self._drop(notifier)
