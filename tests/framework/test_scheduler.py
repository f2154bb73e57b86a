"""The scheduler on its own: queue order, priorities, groups and unique keys
decided without any I/O."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from oada_jobs import Job
from oada_jobs.listing import BadEntries, Listing
from oada_jobs.scheduler import HELD_FAILED_READS, Entry, EntryState, Scheduler
from oada_jobs.tree import get_layout
from oada_jobs.worker import Worker

from .scheduler_helpers import add, drain, job, work


def scheduler(**policy: Any) -> Scheduler:
    worker = Worker("t", work, None, **policy)
    return Scheduler(lambda type: worker, worker_id="me")


async def test_reads_coming_back_out_of_order_do_not_change_the_queue_order() -> None:
    scheduled = scheduler()
    a, b, c = (add(scheduled, key) for key in "abc")
    # b and c are read before a: nothing may start ahead of a's decision.
    scheduled.read(c, job("c", group="g"), None)
    scheduled.read(b, job("b", group="g"), None)
    assert scheduled.pop() is None
    scheduled.read(a, job("a", group="g"), None)
    assert drain(scheduled) == ["a"]
    scheduled.remove(a)
    assert drain(scheduled) == ["b"]


async def test_priority_then_queue_order() -> None:
    scheduled = scheduler(priority=1)
    for key, options in [("a", {}), ("b", {"priority": 5}), ("c", {}), ("d", {"priority": -1})]:
        scheduled.read(add(scheduled, key), job(key, **options), None)
    assert drain(scheduled) == ["b", "a", "c", "d"]


async def test_unique_keys_refuse_or_park_later_jobs() -> None:
    for policy, expected in [("refuse", EntryState.READY), ("merge", EntryState.PARKED)]:
        scheduled = scheduler(unique=policy)
        first, second = add(scheduled, "a"), add(scheduled, "b")
        scheduled.read(first, job("a", uniqueKey="k"), None)
        scheduled.read(second, job("b", uniqueKey="k"), None)
        assert second.state is expected
        if policy == "refuse":
            assert second.duplicate_of == "resources/a"
            assert second.urgent
        else:
            assert scheduled.remove(first) == [second]


async def test_the_scheduler_is_full_at_its_limit_until_a_job_is_taken() -> None:
    worker = Worker("t", work, None)
    scheduled = Scheduler(lambda type: worker, worker_id="me", keep_bodies=2)
    for key in "ab":
        scheduled.read(add(scheduled, key), job(key), None)
    assert scheduled.full
    entry = scheduled.pop()
    assert entry is not None
    taken = scheduled.take(entry)
    assert taken is not None
    assert taken.key == "a"
    assert not scheduled.full
    assert scheduled.held_jobs == 1


async def test_a_read_waiting_for_room_goes_on_when_a_job_is_taken() -> None:
    worker = Worker("t", work, None)
    scheduled = Scheduler(lambda type: worker, worker_id="me", keep_bodies=1)
    a, b = add(scheduled, "a"), add(scheduled, "b")
    async with scheduled.room(a):
        scheduled.read(a, job("a"), None)
    assert scheduled.full
    got_room = anyio.Event()

    async def read_b() -> None:
        async with scheduled.room(b):
            got_room.set()

    async with anyio.create_task_group() as group:
        group.start_soon(read_b)
        await anyio.wait_all_tasks_blocked()
        assert not got_room.is_set()
        scheduled.wait(add(scheduled, "c"), 10.0)  # other changes leave it waiting
        await anyio.wait_all_tasks_blocked()
        assert not got_room.is_set()
        entry = scheduled.pop()
        assert entry is a
        scheduled.take(entry)
        with anyio.fail_after(5):
            await got_room.wait()


async def test_a_job_leaving_the_list_during_its_first_read_releases_the_ones_after_it() -> None:
    scheduled = scheduler()
    a, b = add(scheduled, "a"), add(scheduled, "b")
    scheduled.read(b, job("b"), None)
    assert b.state is EntryState.SETTLING
    scheduled.remove(a)
    assert b.state is EntryState.READY
    assert drain(scheduled) == ["b"]


async def first_read_waits_for_room(scheduled: Scheduler, entry: Entry) -> bool:
    """Whether the first read of *entry* waits for room in *scheduled*."""
    entered = anyio.Event()

    async def read() -> None:
        async with scheduled.room(entry):
            entered.set()

    async with anyio.create_task_group() as group:
        group.start_soon(read)
        await anyio.wait_all_tasks_blocked()
        group.cancel_scope.cancel()
    return not entered.is_set()


@pytest.mark.parametrize("read_again", ["reread", "read twice", "read fails"])
async def test_a_settling_job_read_again_is_counted_once(read_again: str) -> None:
    worker = Worker("t", work, None)
    scheduled = Scheduler(lambda type: worker, worker_id="me", keep_bodies=2)
    a, b = add(scheduled, "a"), add(scheduled, "b")
    scheduled.read(b, job("b"), None)
    assert b.state is EntryState.SETTLING
    # b is read again while it waits for a's first read.
    if read_again == "read fails":
        scheduled.read_failed(b, 0.0)
        assert scheduled.due() == [b]
    if read_again != "read twice":
        scheduled.reread(b)
    scheduled.read(b, job("b"), None)
    scheduled.check_invariants()
    scheduled.read(a, job("a"), None)
    assert (a.state, b.state) == (EntryState.READY, EntryState.READY)
    scheduled.check_invariants()
    assert scheduled.full
    # No read waits for c's: it waits for room like any other first read.
    c = add(scheduled, "c")
    assert await first_read_waits_for_room(scheduled, c)


async def test_a_touched_link_of_a_settling_job_leaves_it_to_settle() -> None:
    worker = Worker("t", work, None)
    scheduled = Scheduler(lambda type: worker, worker_id="me", keep_bodies=2)
    log = logging.LoggerAdapter(logging.getLogger("oada_jobs.test"), {})
    sent: list[str] = []
    listing = Listing(
        scheduled,
        layout=get_layout("classic"),
        pending_path="/bookmarks/services/s/jobs/pending",
        bad=BadEntries(counted=lambda: None, log=log, queue="q"),
        read=lambda entry: sent.append(entry.key),
        unreadable=lambda entry, problem: None,
        left=scheduled.remove,
        log=log,
        queue="q",
    )
    links = {key: {"_id": f"resources/{key}"} for key in "ab"}
    listing.offer(links)
    a, b = (scheduled.by_key(key) for key in "ab")
    assert a is not None
    assert b is not None
    scheduled.read(b, job("b"), None)
    listing.offer({"b": links["b"]})  # b's link touched while it settles
    assert sent == ["a", "b"]
    assert b.state is EntryState.SETTLING
    scheduled.read(a, job("a"), None)
    assert (a.state, b.state) == (EntryState.READY, EntryState.READY)
    scheduled.check_invariants()
    assert await first_read_waits_for_room(scheduled, add(scheduled, "c"))


async def test_a_failed_first_read_keeps_the_group_order() -> None:
    scheduled = scheduler()
    a, b = add(scheduled, "a"), add(scheduled, "b")
    # a's read failed: it waits to be read again, and b (same group) waits for it.
    scheduled.wait(a, 0.0)
    scheduled.read(b, job("b", group="g"), None)
    assert scheduled.pop() is None
    for due in scheduled.due():
        scheduled.reread(due)
    scheduled.read(a, job("a", group="g"), None)
    assert drain(scheduled) == ["a"]


async def test_a_job_that_cannot_be_read_holds_the_queue_only_so_long() -> None:
    scheduled = scheduler()
    a = add(scheduled, "a")
    later = [add(scheduled, key) for key in "bcd"]
    assert len(later) == HELD_FAILED_READS
    for entry in later:
        # Another job's read comes back, a's fails again: a is what cannot be read.
        scheduled.read(entry, job(entry.key), None)
        assert scheduled.pop() is None  # the later jobs wait for a's first read
        scheduled.read_failed(a, 0.0)
        for due in scheduled.due():
            scheduled.reread(due)
    assert drain(scheduled) == ["b", "c", "d"]
    # Read at last, it runs too.
    scheduled.read(a, job("a"), None)
    assert drain(scheduled) == ["a"]


async def test_while_every_read_fails_the_queue_order_holds() -> None:
    # The server is away: a's reads fail with nothing read in between, so b
    # (read just before) keeps waiting for a however often a fails.
    scheduled = scheduler()
    a, b = add(scheduled, "a"), add(scheduled, "b")
    scheduled.read(b, job("b", group="g"), None)
    for _ in range(2 * HELD_FAILED_READS):
        scheduled.read_failed(a, 0.0)
        for due in scheduled.due():
            scheduled.reread(due)
        assert scheduled.pop() is None
    scheduled.read(a, job("a", group="g"), None)
    assert drain(scheduled) == ["a"]


async def test_a_late_joiner_does_not_push_a_group_past_its_limit() -> None:
    scheduled = scheduler()
    running = add(scheduled, "b")
    scheduled.read(running, job("b", group="g"), None)
    assert drain(scheduled) == ["b"]
    # A job queued before it turns up late (a sweep found it): it waits.
    late = add(scheduled, "a")
    late.seq = 0
    scheduled.read(late, job("a", group="g"), None)
    assert scheduled.pop() is None
    scheduled.remove(running)
    assert drain(scheduled) == ["a"]


async def test_jobs_that_only_need_filing_skip_the_ready_queue() -> None:
    scheduled = scheduler(min_version=2)
    old = add(scheduled, "a")
    scheduled.read(old, job("a", version=1), None)
    assert scheduled.pop() is None
    urgent = scheduled.pop_urgent()
    assert urgent is old
    zero = add(scheduled, "b")
    scheduled.read(zero, job("b", version=0), None)
    # Version 0 is older than 1, not "missing".
    assert scheduled.pop_urgent() is zero


async def test_the_timer_and_filing_signals_fire_only_for_their_own_kind_of_change() -> None:
    scheduled = scheduler(min_version=2)
    timer_added, urgent_added = scheduled.timer_added, scheduled.urgent_added
    ready = add(scheduled, "a")
    scheduled.read(ready, job("a", version=2), None)
    assert scheduled.pop() is ready
    assert not timer_added.is_set()
    assert not urgent_added.is_set()

    scheduled.wait(ready, 10.0)
    assert timer_added.is_set()
    assert not urgent_added.is_set()

    old = add(scheduled, "b")
    scheduled.read(old, job("b", version=1), None)
    assert urgent_added.is_set()
    # Each signal is renewed once set, so the next change can be waited for.
    assert not scheduled.timer_added.is_set()
    assert not scheduled.urgent_added.is_set()


def later() -> str:
    return "2999-01-01T00:00:00Z"


async def test_cancelling_a_waiting_grouped_job_keeps_the_group_count_whole() -> None:
    scheduled = scheduler()
    a = add(scheduled, "a")
    scheduled.read(a, job("a", group="g", notBefore=later()), None)
    assert a.state is EntryState.WAITING
    scheduled.check_invariants()
    # The cancel request touches its link: it is read again, now cancelled.
    scheduled.reread(a)
    cancelled = Job.from_resource(
        {"service": "s", "type": "t", "status": "cancel-requested", "options": {"group": "g"}},
        oada_id="resources/a",
        key="a",
    )
    scheduled.read(a, cancelled, None)
    assert scheduled.pop_urgent() is a
    scheduled.check_invariants()
    assert scheduled.remove(a) == []  # raised KeyError before
    scheduled.check_invariants()


async def test_a_job_only_filed_never_lowers_its_group_count() -> None:
    scheduled = scheduler()
    a, b, c = (add(scheduled, key) for key in "abc")
    scheduled.read(a, job("a", group="g"), None)
    scheduled.read(b, job("b", group="g", notBefore=later()), None)
    scheduled.read(c, job("c", group="g"), None)
    assert drain(scheduled) == ["a"]
    # b is read again and found finished elsewhere: it is only filed.
    scheduled.reread(b)
    done = Job.from_resource(
        {"service": "s", "type": "t", "status": "success", "options": {"group": "g"}},
        oada_id="resources/b",
        key="b",
    )
    scheduled.read(b, done, None)
    assert scheduled.pop_urgent() is b
    scheduled.wait(b, anyio.current_time() + 60)  # its claim was refused here
    scheduled.check_invariants()
    scheduled.remove(b)
    scheduled.check_invariants()
    # a still runs: the group limit of one holds c back.
    assert drain(scheduled) == []
    scheduled.remove(a)
    assert drain(scheduled) == ["c"]
    scheduled.check_invariants()


OPS = st.lists(
    st.tuples(
        st.sampled_from(
            ["add", "read", "fail", "pop", "urgent", "wait", "remove", "reread", "cancel"]
        ),
        st.integers(min_value=0, max_value=2),
        st.sampled_from([None, "g", "h"]),
        st.booleans(),
    ),
    max_size=60,
)


#: States a job is read again in: the queue's (its timer fired, its link was
#: touched) and, for the books alone, while it waits for an earlier first read.
REREAD = (EntryState.WAITING, EntryState.READY, EntryState.PARKED, EntryState.SETTLING)


@settings(max_examples=300, deadline=None)
@given(ops=OPS, limit=st.integers(min_value=1, max_value=2))
# A waiting group member cancelled, filed and removed (a KeyError once).
@example(
    ops=[
        ("add", 0, None, False),
        ("read", 0, "g", True),
        ("cancel", 0, "g", False),
        ("urgent", 0, None, False),
        ("remove", 0, None, False),
    ],
    limit=1,
)
# A job read again while it waits for an earlier one's first read.
@example(
    ops=[
        ("add", 0, None, False),
        ("add", 1, None, False),
        ("read", 1, None, False),
        ("reread", 1, None, False),
        ("read", 1, None, False),
        ("read", 0, None, False),
    ],
    limit=1,
)
# A read failing while the job waits for an earlier one's first read.
@example(
    ops=[
        ("add", 0, None, False),
        ("add", 1, None, False),
        ("read", 1, None, False),
        ("fail", 1, None, False),
        ("read", 0, None, False),
    ],
    limit=1,
)
def test_group_bookkeeping_holds_under_any_sequence(
    ops: list[tuple[str, int, str | None, bool]], limit: int
) -> None:
    async def main() -> None:
        scheduled = scheduler(group_limit=limit)
        entries: dict[int, Entry] = {}
        for op, index, group, delayed in ops:
            entry = entries.get(index)
            if op == "add":
                if entry is None or scheduled.get(entry.job_id) is not entry:
                    entries[index] = add(scheduled, f"k{index}-{len(entries)}")
                continue
            if entry is None or scheduled.get(entry.job_id) is not entry:
                continue
            options: dict[str, Any] = {} if group is None else {"group": group}
            if delayed:
                options["notBefore"] = later()
            if op in ("read", "cancel") and entry.state in (EntryState.WAITING, EntryState.READY):
                # A timer fired, or its link was touched: the queue reads it again.
                scheduled.reread(entry)
            if op in ("read", "cancel") and entry.state is EntryState.READING:
                body: dict[str, Any] = {"service": "s", "type": "t", "options": options}
                if op == "cancel":
                    body["status"] = "cancel-requested"
                scheduled.read(
                    entry, Job.from_resource(body, oada_id=entry.job_id, key=entry.key), None
                )
            elif op == "pop":
                scheduled.pop()
            elif op == "urgent":
                scheduled.pop_urgent()
            elif op == "wait" and entry.state is EntryState.RUNNING:
                scheduled.wait(entry, anyio.current_time() + 60)
            elif op == "remove":
                scheduled.remove(entry)
            elif op == "fail" and entry.state in (EntryState.READING, EntryState.SETTLING):
                scheduled.read_failed(entry, anyio.current_time() + 60)
            elif op == "reread" and entry.state in REREAD:
                scheduled.reread(entry)
            scheduled.check_invariants()
            running: dict[str, int] = {}
            for known in scheduled.entries():
                if known.counted and known.group is not None:
                    running[known.group] = running.get(known.group, 0) + 1
            assert all(count <= limit for count in running.values()), running

    anyio.run(main)
