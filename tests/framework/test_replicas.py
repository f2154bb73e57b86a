"""Dividing a queue's jobs between replicas: the hashing, and the scheduler's
side of it (other shares unread, context reads for groups, stealing, shares
moving), without any I/O."""

from __future__ import annotations

from collections import Counter
from typing import Any

import anyio
from hypothesis import given, settings
from hypothesis import strategies as st

from oada_jobs import Job
from oada_jobs.replicas import member_key, owner
from oada_jobs.scheduler import Entry, EntryState, Scheduler
from oada_jobs.tree import path_segment
from oada_jobs.worker import Worker

from .scheduler_helpers import add, drain, job, work

KEYS = st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=60, unique=True)
MEMBERS = st.lists(
    st.text(alphabet="abcdefghijklmnop0123456789-", min_size=1, max_size=12),
    min_size=2,
    max_size=9,
    unique=True,
)


def test_owner_is_one_of_the_members_whatever_their_order() -> None:
    members = ["host-1-a", "host-2-b", "host-3-c"]
    for n in range(200):
        key = f"2bA{n:05d}"
        found = owner(key, members)
        assert found in members
        assert owner(key, list(reversed(members))) == found
    assert owner("k", []) is None


def test_owner_spreads_keys_evenly() -> None:
    members = [f"replica-{n}" for n in range(8)]
    counts = Counter(owner(f"job-{n}", members) for n in range(8000))
    assert set(counts) == set(members)
    # 1000 expected each; a fair hash stays well within +-15 %.
    assert all(850 <= count <= 1150 for count in counts.values()), counts


@settings(max_examples=200, deadline=None)
@given(keys=KEYS, members=MEMBERS, data=st.data())
def test_a_member_leaving_moves_only_its_own_keys(
    keys: list[str], members: list[str], data: st.DataObject
) -> None:
    gone = data.draw(st.sampled_from(members))
    rest = [member for member in members if member != gone]
    for key in keys:
        before, after = owner(key, members), owner(key, rest)
        if before != gone:
            assert after == before, (key, before, after)
        else:
            assert after in rest


@settings(max_examples=200, deadline=None)
@given(keys=KEYS, members=MEMBERS, newcomer=st.text(min_size=1, max_size=12))
def test_a_member_joining_takes_keys_only_for_itself(
    keys: list[str], members: list[str], newcomer: str
) -> None:
    grown = [*members, newcomer]
    for key in keys:
        after = owner(key, grown)
        assert after in (owner(key, members), newcomer)


def test_member_keys_are_one_safe_path_segment() -> None:
    assert member_key("host.example:1234:2bAbCdEfGh") == "host.example-1234-2bAbCdEfGh"
    for hostile in ["../x", "a/b", "_meta", ".", "", "a b\n", "ünï"]:
        key = member_key(hostile)
        assert key
        assert "/" not in key
        assert not key.startswith(("_", "."))
        assert all(c.isascii() and (c.isalnum() or c in "._~-") for c in key)
        assert path_segment(key)  # nameable in a request, once escaped


# ------------------------------------------------------------ the scheduler's side


class Share:
    """The keys this replica owns, changeable by the test."""

    def __init__(self, keys: str) -> None:
        self.keys = set(keys)

    def owns(self, key: str) -> bool:
        return key in self.keys


def scheduler(share: Share, reads: list[str], **policy: Any) -> Scheduler:
    worker = Worker("t", work, None, **policy)
    return Scheduler(
        lambda type: worker,
        worker_id="me",
        owns=share.owns,
        want_read=lambda entry: reads.append(entry.key),
    )


async def test_jobs_of_other_shares_are_neither_read_nor_started() -> None:
    reads: list[str] = []
    scheduled = scheduler(Share("ac"), reads)
    a, b, c = (add(scheduled, key) for key in "abc")
    assert (a.state, b.state, c.state) == (
        EntryState.READING,
        EntryState.ELSEWHERE,
        EntryState.READING,
    )
    # b is unread, yet c (its own) does not wait for it: no group ties them.
    scheduled.read(c, job("c"), None)
    scheduled.read(a, job("a"), None)
    assert drain(scheduled) == ["a", "c"]
    assert reads == []
    assert not scheduled.busy()


async def test_a_grouped_job_reads_the_earlier_jobs_of_other_shares_first() -> None:
    reads: list[str] = []
    scheduled = scheduler(Share("c"), reads)
    a, b, c = (add(scheduled, key) for key in "abc")
    scheduled.read(c, job("c", group="g"), None)
    # c's place in group g depends on a and b: read them, run nothing yet.
    assert c.state is EntryState.CATCHING_UP
    assert sorted(reads) == ["a", "b"]
    assert drain(scheduled) == []
    scheduled.read(b, job("b"), None)
    assert drain(scheduled) == []
    scheduled.read(a, job("a", group="g"), None)
    # a (another share's, first in the group) goes first: c waits, a is not run here.
    assert drain(scheduled) == []
    assert b.state is EntryState.ELSEWHERE
    assert a.state is EntryState.READY
    scheduled.remove(a)  # a was filed by its owner
    assert drain(scheduled) == ["c"]
    # Each earlier job was read once.
    assert sorted(reads) == ["a", "b"]


async def test_a_unique_key_held_in_another_share_refuses_this_ones_job() -> None:
    reads: list[str] = []
    scheduled = scheduler(Share("b"), reads, unique="refuse")
    a, b = add(scheduled, "a"), add(scheduled, "b")
    scheduled.read(b, job("b", uniqueKey="k"), None)
    assert reads == ["a"]
    scheduled.read(a, job("a", uniqueKey="k"), None)
    assert b.duplicate_of == "resources/a"
    # Filed here (urgent); a itself is its owner's.
    assert scheduled.pop_urgent() is b
    assert scheduled.pop_urgent() is None


async def test_a_share_moving_here_is_read_and_one_moving_away_is_not_started() -> None:
    reads: list[str] = []
    share = Share("a")
    scheduled = scheduler(share, reads)
    a, b = add(scheduled, "a"), add(scheduled, "b")
    scheduled.read(a, job("a"), None)
    share.keys = {"b"}  # the replicas changed
    assert scheduled.reown() == [b]
    assert drain(scheduled) == []  # a is another replica's now
    scheduled.read(b, job("b"), None)
    assert drain(scheduled) == ["b"]
    share.keys = {"a", "b"}
    scheduled.reown()
    assert drain(scheduled) == ["a"]


async def test_stealing_takes_the_newest_of_the_jobs_that_waited_too_long() -> None:
    reads: list[str] = []
    scheduled = scheduler(Share(""), reads)
    entries = [add(scheduled, key) for key in "abcd"]
    now = anyio.current_time()
    assert scheduled.steal(2, now - 60) == []  # none waited that long
    taken = scheduled.steal(2, now + 1)
    assert [entry.key for entry in taken] == ["d", "c"]
    assert all(entry.stolen and entry.state is EntryState.READING for entry in taken)
    for entry in taken:
        scheduled.read(entry, job(entry.key), None)
    assert drain(scheduled) == ["c", "d"]
    assert entries[0].state is EntryState.ELSEWHERE


async def test_the_first_reads_hold_waits_for_this_share_only() -> None:
    # The dispatcher holds its first start while reading_first() is true.
    reads: list[str] = []
    scheduled = scheduler(Share("bc"), reads)
    a, b, c = (add(scheduled, key) for key in "abc")
    assert scheduled.reading_first()
    scheduled.read(b, job("b"), None)
    assert scheduled.reading_first()  # c is unread; a, unread too, is not this share's
    scheduled.read(c, job("c", group="g", priority=5), None)
    # c is read but not placed: its group's order waits for a, read as context.
    assert c.state is EntryState.CATCHING_UP
    assert reads == ["a"]
    assert scheduled.reading_first()
    scheduled.read(a, job("a"), None)
    assert not scheduled.reading_first()
    assert drain(scheduled) == ["c", "b"]
    scheduled.check_invariants()
    # Jobs of other shares alone never hold it.
    alone = scheduler(Share("e"), [])
    add(alone, "d")
    e = add(alone, "e")
    alone.read(e, job("e"), None)
    assert not alone.reading_first()


SHARE_OPS = st.lists(
    st.tuples(
        st.sampled_from(
            ["add", "read", "pop", "urgent", "wait", "left", "reread", "cancel", "move", "steal"]
        ),
        st.integers(min_value=0, max_value=3),
        st.sampled_from([None, "g", "h", "unique"]),
        st.booleans(),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops=SHARE_OPS, limit=st.integers(min_value=1, max_value=2))
def test_group_bookkeeping_holds_as_shares_move_and_jobs_are_stolen(
    ops: list[tuple[str, int, str | None, bool]], limit: int
) -> None:
    async def main() -> None:
        share = Share("")
        scheduled = scheduler(share, [], group_limit=limit, unique="merge")
        entries: dict[int, Entry] = {}
        for op, index, tie, flag in ops:
            entry = entries.get(index)
            if op == "add":
                if entry is None or scheduled.get(entry.job_id) is not entry:
                    key = f"k{index}-{len(entries)}"
                    if flag:
                        share.keys.add(key)
                    entries[index] = add(scheduled, key)
                continue
            if entry is None or scheduled.get(entry.job_id) is not entry:
                continue
            options: dict[str, Any] = {}
            if tie == "unique":
                options["uniqueKey"] = "k"
            elif tie is not None:
                options["group"] = tie
            if op in ("read", "cancel") and entry.state in (EntryState.WAITING, EntryState.READY):
                scheduled.reread(entry)  # a timer fired, or its link was touched
            if op in ("read", "cancel") and entry.state is EntryState.READING:
                body: dict[str, Any] = {"service": "s", "type": "t", "options": options}
                if op == "cancel":
                    body["status"] = "cancel-requested"
                elif flag:
                    body["options"]["notBefore"] = "2999-01-01T00:00:00Z"
                scheduled.read(
                    entry, Job.from_resource(body, oada_id=entry.job_id, key=entry.key), None
                )
            elif op == "pop":
                popped = scheduled.pop()
                assert popped is None or scheduled.mine(popped)
            elif op == "urgent":
                popped = scheduled.pop_urgent()
                assert popped is None or scheduled.mine(popped)
            elif op == "wait" and entry.state is EntryState.RUNNING:
                scheduled.wait(entry, anyio.current_time() + 60)
            elif op == "left" and entry.state is not EntryState.RUNNING:
                # Filed elsewhere: as the dispatcher settles it.
                scheduled.unpark(scheduled.keep_mine(scheduled.remove(entry)))
            elif op == "reread" and entry.state in (EntryState.WAITING, EntryState.READY):
                scheduled.reread(entry)
            elif op == "move":
                share.keys ^= {entry.key}  # the replicas changed
                scheduled.reown()
            elif op == "steal":
                scheduled.steal(2, anyio.current_time() + 1)
            scheduled.check_invariants()
            running = Counter(known.group for known in scheduled.entries() if known.counted)
            assert all(count <= limit for count in running.values()), running

    anyio.run(main)
