"""Where a job goes once its first read has settled.

A job that only needs filing (a problem reading it, finished, cancel
requested, below its type's ``min_version``, expired, refused for its unique
key) goes first, as it comes; one merged into the job holding its unique
key is parked; one not due yet (or running elsewhere) waits on a timer; the
rest are ready, by priority, as far as their group lets them start.

Owns :class:`Placement`: the decision, and the unique-key holders (of jobs
with the same type and ``uniqueKey``, the first one queued holds the key
until it leaves the list). Writes to the groups, timers and run order it is
handed; sees a job type's defaults only through :class:`Policy`; must not
touch the list's entries by key or id, nor the queue, the runner or the service.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from .entry import URGENT, Entry, EntryState, clock_at
from .groups import Groups
from .job import Job, JobStatus
from .run_order import RunOrder
from .timers import Timers
from .types import UniquePolicy

__all__ = ["Placement", "Policy"]


class Policy(Protocol):
    """A job type's scheduling defaults (a registered ``Worker`` is one)."""

    @property
    def priority(self) -> int: ...
    @property
    def group_limit(self) -> int: ...
    @property
    def unique(self) -> UniquePolicy: ...
    @property
    def min_version(self) -> int | None: ...


class Placement:
    """Places the settled jobs of one queue.

    *policy_for* gives a job type's :class:`Policy`, or ``None``; *mine*
    tells whether an entry is this replica's to run; *drop_body* forgets a
    job held in memory; *catch_up* holds a job of this share back until the
    earlier jobs of other shares are read (``True`` if it must wait);
    *notify* is called on a change.
    """

    def __init__(
        self,
        policy_for: Callable[[str], Policy | None],
        books: tuple[Groups, Timers, RunOrder],
        *,
        worker_id: str,
        mine: Callable[[Entry], bool],
        drop_body: Callable[[Entry], None],
        catch_up: Callable[[Entry], bool],
        notify: Callable[[], None],
    ) -> None:
        self._policy_for = policy_for
        self._groups, self._timers, self._order = books
        self._worker_id = worker_id
        self._mine = mine
        self._drop_body = drop_body
        self._catch_up = catch_up
        self._notify = notify
        self._holders: dict[tuple[str, str], Entry] = {}

    def settle(self, entry: Entry) -> None:
        """*entry*'s first read settled (or it was read as context): decide it."""
        job = entry.job
        # A problem (it is only filed), or not read: its runner reads it.
        if entry.problem is not None or job is None:
            self.make_ready(entry, URGENT)
            return
        policy = self._policy_for(job.type)
        if job.finished or job.status == JobStatus.CANCEL_REQUESTED.value:
            self.make_ready(entry, URGENT)
            return
        minimum = policy.min_version if policy is not None else None
        if minimum is not None and job.options.effective_version < minimum:
            self.make_ready(entry, URGENT)
            return
        options = job.options
        ordered = options.group is not None or options.unique_key is not None
        if not self._mine(entry) and not ordered:
            # Another share's job that no group or unique key ties to ours.
            self._drop_body(entry)
            entry.state = EntryState.ELSEWHERE
            return
        if ordered and self._mine(entry) and not entry.caught_up and self._catch_up(entry):
            return
        self._place(entry, job, policy)

    def place(self, entry: Entry, job: Job[Any]) -> None:
        """Place *entry*, read as *job*, after its wait for other shares."""
        self._place(entry, job, self._policy_for(job.type))

    def _place(self, entry: Entry, job: Job[Any], policy: Policy | None) -> None:
        options = job.options
        entry.job_type = job.type
        entry.duplicate_of = None
        entry.expires_at = None
        if job.expired_for(self._worker_id):
            # Never started: its runner files it as expired, holding no key or group place.
            self.make_ready(entry, URGENT)
            return
        if self._duplicate(entry, job, policy):
            return
        # Group: joins once, keeping its place through retries and re-reads.
        if options.group is not None and entry.group is None:
            limit = policy.group_limit if policy is not None else 1
            self._groups.join(entry, options.group, limit)
        until = job.wait_until(self._worker_id)
        if until is not None:
            # Not due yet, or running elsewhere (until its lease would run out).
            self.wait(entry, clock_at(until))
            return
        priority = options.priority
        if priority is None:
            priority = policy.priority if policy is not None else 0
        self.make_ready(entry, priority)
        if (
            options.expires_at is not None
            and entry.state is EntryState.READY
            and not self._groups.may_start(entry)
        ):
            # Ready but held behind its group: read again when it expires, to be filed.
            entry.expires_at = at = clock_at(options.expires_at)
            self._timers.add(entry, at)

    def _duplicate(self, entry: Entry, job: Job[Any], policy: Policy | None) -> bool:
        """Whether *entry* is merged or refused: another job holds its unique key.

        The first job queued holds the key while it is in the list."""
        unique_key = job.options.unique_key
        mode = policy.unique if policy is not None else "refuse"
        if entry.unique is not None or unique_key is None or mode == "allow":
            return False
        wanted = (job.type, unique_key)
        holder = self._holders.setdefault(wanted, entry)
        if holder is entry:
            entry.unique = wanted
            return False
        if mode == "merge":
            self._drop_body(entry)
            entry.state = EntryState.PARKED
            entry.parked_on = holder
            holder.merged.append(entry)
            self._notify()
        else:
            entry.duplicate_of = holder.job_id
            self.make_ready(entry, URGENT)
        return True

    def make_ready(self, entry: Entry, priority: float) -> None:
        """*entry* is ready at *priority*: queued if it is this share's and its group lets it."""
        entry.state = EntryState.READY
        entry.priority = priority
        if not self._mine(entry):
            # Another share's: kept for its place in a group or unique key only.
            self._drop_body(entry)
        elif entry.urgent:
            self._order.push_urgent(entry)
        elif self._groups.may_start(entry):
            self._order.push(entry)
        else:
            # Blocked behind its group: holds no room; read again when it runs.
            self._drop_body(entry)

    def wait(self, entry: Entry, at: float) -> None:
        """*entry* waits on a timer until *at* (anyio clock), holding no room."""
        self._drop_body(entry)
        entry.state = EntryState.WAITING
        entry.wake_at = at
        self._notify()
        self._timers.add(entry, at)

    def unpark(self, entry: Entry) -> None:
        """*entry* is to be decided again: it leaves the job it was merged into."""
        if entry.parked_on is not None:
            if entry in entry.parked_on.merged:
                entry.parked_on.merged.remove(entry)
            entry.parked_on = None

    def left(self, entry: Entry) -> list[Entry]:
        """*entry* left the list: it leaves the job it was merged into, and the
        unique key it holds is free; returns the jobs merged into it (unparked)."""
        if entry.parked_on is not None and entry in entry.parked_on.merged:
            entry.parked_on.merged.remove(entry)
        if entry.unique is not None and self._holders.get(entry.unique) is entry:
            del self._holders[entry.unique]
        merged, entry.merged = entry.merged, []
        for member in merged:
            member.parked_on = None
        return merged

    def check(self, known: Callable[[Entry], bool]) -> None:
        """Raise :class:`AssertionError` unless every unique key is held by a
        *known* entry naming it."""
        assert all(
            known(holder) and holder.unique == unique for unique, holder in self._holders.items()
        ), self._holders
