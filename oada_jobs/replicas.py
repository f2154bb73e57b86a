"""Replicas of one service dividing its queues' jobs: who is alive, and whose job is which.

Every running instance of a service (a *replica*) announces itself with a
lease under its own key in ``/bookmarks/services/<name>/workers``, renews it
every third of :attr:`~oada_jobs.config.ServiceConfig.member_lease`, watches
that resource, and deletes its key when it stops. A replica whose lease ran
out (it was killed, or lost the server) is no longer a member.

A job belongs to the live member that :func:`owner` picks for its list key
(rendezvous, or highest-random-weight, hashing): each replica reads and
claims only its own share, and when a member comes or goes only the keys
that member held (or now holds) change hands. The claim's ``If-Match`` stays
the safety net for the moments two replicas disagree about the members.

Owns :func:`owner`, :class:`Membership` (the service's view of its replicas)
and :class:`WholeQueue` (one replica that owns everything, when work is not
divided). May use the client, the job lease and the tree; must not touch the
queues, the scheduler or the service.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from enum import Enum
from typing import Any, Protocol

import anyio
from anyio.abc import TaskStatus

from ._retry import exponential, retry
from .client import OADAClient
from .exceptions import NotFound, OADAError
from .job import Lease, utc_now
from .tree import JOBS_TYPE, Layout, path_segment, service_root
from .types import Tree

__all__ = ["Membership", "MembershipState", "Shares", "WholeQueue", "member_key", "owner"]

logger = logging.getLogger("oada_jobs")

#: Seconds allowed for deleting this replica's key when it stops.
LEAVE_TIMEOUT = 5.0
#: Keys whose ownership a replica remembers between membership changes.
OWNED_CACHE = 100_000


def _weight(member: str, key: str) -> int:
    digest = hashlib.blake2b(f"{member}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(key: str, members: Iterable[str]) -> str | None:
    """The member that owns *key*: the one with the highest hash of (member, key).

    Deterministic for a given set of members, whatever their order; removing
    a member moves only the keys it owned, adding one moves only the keys it
    now wins. ``None`` if there are no members.

    >>> owner("job-1", ["a", "b"]) == owner("job-1", ["b", "a"])
    True
    """
    best: tuple[int, str] | None = None
    for member in members:
        candidate = (_weight(member, key), member)
        if best is None or candidate > best:
            best = candidate
    return None if best is None else best[1]


def member_key(worker_id: str) -> str:
    """The key a worker id is announced under: one path segment once escaped
    (:func:`~oada_jobs.tree.path_segment`, like every key put in a path)."""
    cleaned = re.sub(r"[^A-Za-z0-9._~-]", "-", worker_id).lstrip("._")
    return cleaned or "-"


def workers_path(service: str) -> str:
    """``/bookmarks/services/<name>/workers``: the service's live replicas."""
    return f"{service_root(service)}/workers"


def workers_tree(layout: Layout) -> Tree:
    """The service tree with the ``workers`` resource under each service."""
    tree: dict[str, Any] = {**layout.tree}
    bookmarks = {**tree["bookmarks"]}
    services = {**bookmarks["services"]}
    services["*"] = {**services["*"], "workers": {"_type": JOBS_TYPE}}
    bookmarks["services"] = services
    tree["bookmarks"] = bookmarks
    return tree


class Shares(Protocol):
    """What a queue asks about how work is divided."""

    def owns(self, key: str) -> bool:
        """Whether the job at list key *key* is this replica's to read and claim."""
        ...

    @property
    def changed(self) -> anyio.Event:
        """Set when the members next change (shares move)."""
        ...


class WholeQueue:
    """Work not divided: this replica owns every job (the behaviour of one replica)."""

    def __init__(self) -> None:
        self._never = anyio.Event()

    def owns(self, key: str) -> bool:
        return True

    @property
    def changed(self) -> anyio.Event:
        return self._never


class MembershipState(Enum):
    """Lifecycle of a :class:`Membership`."""

    #: Made, not yet announced.
    CREATED = "created"
    #: Announced, renewing its lease and following the others.
    RUNNING = "running"
    #: Left (its key deleted) or stopped; cannot run again.
    CLOSED = "closed"


class Membership:
    """This replica's lease in the service's ``workers`` resource, and the live members.

    :param oada: the service's client (on the store its lists are on).
    :param service: the service name.
    :param worker_id: this replica's worker id (as in job leases).
    :param lease: how long an announcement holds without renewal.
    :param layout: the service's job-list layout (for the tree).
    :param on_change: called with the number of live members after each change.

    ``await task_group.start(membership.run)`` returns once this replica is
    announced and the members are known; cancelling it deletes this
    replica's key, so the others take its share over at once.
    """

    def __init__(
        self,
        oada: OADAClient,
        service: str,
        *,
        worker_id: str,
        lease: timedelta,
        layout: Layout,
        backoff: tuple[float, float] = (0.2, 5.0),
        on_change: Callable[[int], None] | None = None,
    ) -> None:
        self.oada = oada
        self.path = workers_path(service)
        self.key = member_key(worker_id)
        self.worker_id = worker_id
        self.lease = lease
        self._tree = workers_tree(layout)
        self._backoff = backoff
        self._on_change = on_change
        self.state = MembershipState.CREATED
        # Live members' keys, with when (wall clock) each one's lease runs out.
        self._leases: dict[str, Lease] = {}
        self._members: tuple[str, ...] = (self.key,)
        # owns() by key, for the current members (asked several times a job).
        self._owned: dict[str, bool] = {}
        self._changed = anyio.Event()
        self._expiry_moved = anyio.Event()
        self.log = logging.LoggerAdapter(logger, {"service": service, "member": self.key})

    # ------------------------------------------------------------ the view

    @property
    def members(self) -> tuple[str, ...]:
        """The live members' keys, this replica's always among them (sorted)."""
        return self._members

    def owns(self, key: str) -> bool:
        members = self._members
        if len(members) == 1:
            return True
        owned = self._owned.get(key)
        if owned is None:
            if len(self._owned) >= OWNED_CACHE:
                self._owned.clear()
            owned = self._owned[key] = owner(key, members) == self.key
        return owned

    @property
    def changed(self) -> anyio.Event:
        return self._changed

    def _recompute(self) -> None:
        now = utc_now()
        live = {member for member, lease in self._leases.items() if not lease.expired(now)}
        live.add(self.key)
        members = tuple(sorted(live))
        if members != self._members:
            self._members = members
            self._owned.clear()
            self.log.info("replicas of the service now: %d (%s)", len(members), ", ".join(members))
            self._changed.set()
            self._changed = anyio.Event()
            if self._on_change is not None:
                self._on_change(len(members))
        self._expiry_moved.set()
        self._expiry_moved = anyio.Event()

    def _take(self, listing: object, *, whole: bool) -> None:
        if not isinstance(listing, Mapping):
            return
        if whole:
            self._leases.clear()
        for key, value in listing.items():
            if not isinstance(key, str) or key == self.key or member_key(key) != key:
                continue  # not a member key (reserved, or not one this code writes)
            lease = Lease.from_json(value)
            if lease is None:
                self._leases.pop(key, None)
            else:
                self._leases[key] = lease
        self._recompute()

    # ------------------------------------------------------------ the run

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Announce, follow the members and renew until cancelled; then leave.

        Ready once the members are known, or once a first attempt failed:
        until the server answers, this replica owns every job (as a single
        replica would) and the claims keep each job to one runner.
        """
        if self.state is not MembershipState.CREATED:
            raise RuntimeError(f"a membership runs once; this one is {self.state.value}")
        self.state = MembershipState.RUNNING
        try:
            async with anyio.create_task_group() as group:
                await group.start(self._follow)
                group.start_soon(self._renew)
                group.start_soon(self._expire)
                task_status.started()
        finally:
            self.state = MembershipState.CLOSED
            with anyio.CancelScope(shield=True), anyio.move_on_after(LEAVE_TIMEOUT):
                await self._leave()

    async def _announce(self) -> None:
        lease = Lease.new(self.worker_id, self.lease)
        await self.oada.put(self.path, {self.key: lease.to_json()}, content_type=JOBS_TYPE)

    async def _leave(self) -> None:
        try:
            await self.oada.delete(f"{self.path}/{path_segment(self.key)}")
        except NotFound:
            pass
        except OADAError as error:
            self.log.warning("could not delete this replica's key: %s", error)

    async def _renew(self) -> None:
        interval = max(self.lease.total_seconds() / 3, 0.05)
        while True:
            await anyio.sleep(interval)
            try:
                await self._announce()
            except OADAError as error:
                self.log.warning("could not renew this replica's lease: %s", error)

    async def _expire(self) -> None:
        """Drop members whose lease ran out (a killed replica deletes nothing),
        and, a lease later, delete their keys (see :meth:`_sweep_dead`)."""
        while True:
            moved = self._expiry_moved
            now = utc_now()
            soonest = min(
                (
                    lease.expires if not lease.expired(now) else lease.expires + self.lease
                    for lease in self._leases.values()
                ),
                default=None,
            )
            wait = math.inf if soonest is None else max((soonest - now).total_seconds(), 0.0)
            with anyio.move_on_after(wait + 0.01 if wait != math.inf else math.inf):
                await moved.wait()
            self._recompute()
            await self._sweep_dead()

    async def _sweep_dead(self) -> None:
        """Delete the keys of members dead for a lease or more, so killed
        replicas do not pile up in the resource. Of the live members, the
        owner of the dead key does it (one delete, not one per replica)."""
        now = utc_now()
        for key, lease in list(self._leases.items()):
            if lease.expires + self.lease > now or owner(key, self._members) != self.key:
                continue
            self._leases.pop(key, None)
            try:
                await self.oada.delete(f"{self.path}/{path_segment(key)}")
            except NotFound:
                pass
            except OADAError as error:
                self.log.warning("could not delete the key of dead replica %s: %s", key, error)

    async def _follow(self, *, task_status: TaskStatus[None]) -> None:
        """Announce, read the members, then watch them from that rev; re-open
        a lost watch (announcing again)."""
        started = False
        initial, longest = self._backoff

        def ready() -> None:
            nonlocal started
            if not started:
                started = True
                task_status.started()

        async def once() -> None:
            await self.oada.ensure(self.path, {}, tree=self._tree)
            await self._announce()
            response = await self.oada.get(self.path)
            self._take(response.data, whole=True)
            async with self.oada.watch(self.path, rev=response.rev) as changes:
                ready()
                async for change in changes:
                    if change.path in ("", "/"):
                        # A deleted key comes as null: no lease, no member.
                        self._take(change.body, whole=False)

        def failed(error: BaseException, delay: float) -> None:
            self.log.warning("following the replicas failed: %s; retrying in %.1f s", error, delay)
            ready()  # the service starts meanwhile

        while True:
            await retry(
                once,
                retryable=lambda error: isinstance(error, OADAError),
                delay=exponential(initial, longest),
                on_retry=failed,
            )
