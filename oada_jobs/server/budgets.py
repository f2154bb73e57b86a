"""The limits all the WebSocket sockets of one server share: bytes waiting and watches held.

:class:`SendBudget` holds the bytes waiting to be sent on every socket to
``ws_send_buffer_total_bytes``, closing the sockets furthest behind past
it; :class:`WatchLimits` holds the watches to ``max_watches_per_socket``
and ``max_watches``. Each session joins both when its socket opens and
leaves them when it closes.

Owns the shared limits; must not hold a socket or a request, nor import
the core, the framework or the client.
"""

from __future__ import annotations

import logging
from typing import Protocol

__all__ = ["SendBudget", "WatchLimits"]

# The WebSocket transport's logger: what is logged here is about its sockets.
logger = logging.getLogger("oada_jobs.server.ws")

_SERVER_FULL = "server send buffers full; this client is furthest behind"


class _Sender(Protocol):
    """What :class:`SendBudget` needs of a session."""

    def waiting_bytes(self) -> int:
        """Bytes waiting to be sent on the session's socket now."""
        ...

    def shed(self, waiting: int, reason: str) -> None:
        """Close the socket as too slow (with 1013 and *reason*)."""
        ...


class SendBudget:
    """The bytes waiting on every socket of one server, held to one budget.

    Each session says what waits on its socket whenever it sends. When the
    sum passes *limit*, every socket is measured afresh (sockets drain
    without saying so) and, while the sum is still over, the one furthest
    behind is closed with 1013. The figures of sockets that drained since
    they last sent are too high until then, never too low.

    >>> budget = SendBudget(256 * 1024 * 1024)  # one per server  # doctest: +SKIP
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._waiting: dict[_Sender, int] = {}
        self._total = 0

    @property
    def total(self) -> int:
        """The bytes waiting on all sockets, as last reported."""
        return self._total

    @property
    def senders(self) -> int:
        """How many sockets share the budget."""
        return len(self._waiting)

    def join(self, sender: _Sender) -> None:
        """Count *sender*'s socket from now on (nothing waits on it yet)."""
        self._waiting.setdefault(sender, 0)

    def leave(self, sender: _Sender) -> None:
        """Stop counting *sender*'s socket (it closed, or is closing); idempotent."""
        self._total -= self._waiting.pop(sender, 0)

    def report(self, sender: _Sender, waiting: int) -> None:
        """*sender* has *waiting* bytes waiting now; shed sockets if that is too many."""
        waiting_before = self._waiting.get(sender)
        if waiting_before is None:
            return
        self._waiting[sender] = waiting
        self._total += waiting - waiting_before
        if self._total > self.limit:
            self._shed()

    def _shed(self) -> None:
        figures = self._waiting
        for sender in figures:
            figures[sender] = sender.waiting_bytes()
        self._total = sum(figures.values())
        while self._total > self.limit and figures:
            sender = max(figures, key=figures.__getitem__)
            waiting = figures.pop(sender)
            self._total -= waiting
            logger.warning(
                "WebSocket send buffers hold %d bytes (ws_send_buffer_total_bytes is %d)",
                self._total + waiting,
                self.limit,
            )
            sender.shed(waiting, _SERVER_FULL)


class _Watcher(Protocol):
    """What :class:`WatchLimits` needs of a session."""

    def watch_count(self) -> int:
        """How many watches the session's socket holds now."""
        ...


class WatchLimits:
    """The watches of one server's sockets, held to a count per socket and in all.

    A watch costs memory for as long as it lasts (its subscription, its
    notifier, its request id), whether or not anything is sent on it, so
    their number is bounded, not only the bytes waiting to be sent.

    >>> limits = WatchLimits(per_socket=1_000, total=100_000)  # one per server  # doctest: +SKIP
    """

    def __init__(self, *, per_socket: int, total: int) -> None:
        self.per_socket = per_socket
        self.total = total
        self._watchers: set[_Watcher] = set()

    def join(self, watcher: _Watcher) -> None:
        """Count *watcher*'s watches from now on."""
        self._watchers.add(watcher)

    def leave(self, watcher: _Watcher) -> None:
        """Stop counting *watcher*'s watches (its socket closed); idempotent."""
        self._watchers.discard(watcher)

    def held(self) -> int:
        """The watches held on all sockets now."""
        return sum(watcher.watch_count() for watcher in self._watchers)

    def refusal(self, watcher: _Watcher) -> tuple[int, str] | None:
        """Why *watcher* may not add a watch now (status, message), or None if it may."""
        if watcher.watch_count() >= self.per_socket:
            return (
                429,
                f"this socket already holds {self.per_socket} watches "
                "(max_watches_per_socket); unwatch one first",
            )
        if self.held() >= self.total:
            return (
                503,
                f"the server already holds {self.total} watches (max_watches); try again later",
            )
        return None
