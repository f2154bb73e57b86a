"""Jobs that name a ``group``: who is in line, and how many run here now.

Of jobs naming the same group, only the first ``group_limit`` (by queue
order) may run; the next one moves up when one leaves the list. A job joins
its group once and keeps its place through retries and re-reads.

Owns :class:`Groups`: the members of each group in queue order and the count
of each group's members running here. Sees jobs only as
:class:`~oada_jobs.entry.Entry`; is handed what to do with a member that may
now start; must not touch the scheduler's other books, the queue or the runner.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .entry import Entry, EntryState

__all__ = ["Groups"]


class Groups:
    """The groups of one queue's pending jobs.

    *push_ready* is called with a ready member that its group now lets start
    (one moved up, or a running one stopped).
    """

    def __init__(self, push_ready: Callable[[Entry], None]) -> None:
        self._push_ready = push_ready
        self._members: dict[str, list[Entry]] = {}
        # Members of each group running now (here): a late joiner queued
        # before them must not push the group past its limit.
        self._running: dict[str, int] = {}

    def join(self, entry: Entry, group: str, limit: int) -> None:
        """*entry* names *group*, of which *limit* may run at once."""
        entry.group = group
        entry.group_limit = limit
        members = self._members.setdefault(group, [])
        members.append(entry)
        members.sort(key=lambda member: member.seq)

    def may_start(self, entry: Entry) -> bool:
        """Whether *entry*'s group lets it start now (always, without a group)."""
        if entry.group is None:
            return True
        limit = entry.group_limit
        members = self._members.get(entry.group, [])
        return self._running.get(entry.group, 0) < limit and entry in members[:limit]

    def moved(self, group: str) -> None:
        """A member of *group* started or stopped: let the next ones in line go."""
        members = self._members.get(group, [])
        for member in members[: members[0].group_limit if members else 0]:
            if member.state is EntryState.READY and self.may_start(member):
                self._push_ready(member)

    def count_in(self, entry: Entry) -> None:
        """*entry* starts: count it among its group's running members, once."""
        if entry.group is not None and not entry.counted:
            entry.counted = True
            self._running[entry.group] = self._running.get(entry.group, 0) + 1

    def count_out(self, entry: Entry) -> None:
        """*entry* stops: count it out of its group's running members.

        Only an entry :meth:`count_in` counted in is counted out, once: a job
        that was only filed (cancelled, refused, bad) ran as no member of its
        group, and a count must never go below zero (a weaker group limit).
        """
        if entry.counted:
            entry.counted = False
            assert entry.group is not None
            left = self._running.get(entry.group, 0) - 1
            if left > 0:
                self._running[entry.group] = left
            else:
                self._running.pop(entry.group, None)

    def stopped(self, entry: Entry) -> None:
        """*entry* stopped running here (it waits, or is held back): count it
        out, and let the next ones in line go."""
        self.count_out(entry)
        if entry.group is not None:
            self.moved(entry.group)

    def leave(self, entry: Entry) -> None:
        """*entry* left the list: the next member of its group moves up."""
        if entry.group is None:
            return
        members = self._members.get(entry.group, [])
        if entry in members:
            members.remove(entry)
        if members:
            self.moved(entry.group)
        else:
            self._members.pop(entry.group, None)

    def check(self, known: Iterable[Entry]) -> None:
        """Raise :class:`AssertionError` unless the books agree with *known* entries.

        Every group's running count is the number of its members counted in,
        never negative nor kept at zero; every group lists exactly the known
        entries naming it, in queue order.
        """
        counted: dict[str, int] = {}
        grouped: dict[str, list[Entry]] = {}
        for entry in known:
            if entry.counted:
                assert entry.group is not None, entry
                assert entry.state is EntryState.RUNNING, entry
                counted[entry.group] = counted.get(entry.group, 0) + 1
            if entry.group is not None:
                grouped.setdefault(entry.group, []).append(entry)
        assert self._running == counted, (self._running, counted)
        assert all(count > 0 for count in self._running.values())
        assert self._members == {
            group: sorted(members, key=lambda member: member.seq)
            for group, members in grouped.items()
        }, (self._members, grouped)
