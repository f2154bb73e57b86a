"""Periodic jobs: schedules, exactly one post per tick over replicas, the loop with a fake clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import anyio
import pytest

from oada_jobs import Job, Json, WorkerContext
from oada_jobs.client import OADAClient
from oada_jobs.cron import CronEntry, CronScheduler, cron_job_key, entries_of, run_cron
from oada_jobs.requester import wait_for_outcome
from oada_jobs.testing import EmbeddedServer
from oada_jobs.tree import get_layout

from .conftest import make_service

START = datetime(2026, 11, 23, 10, 3, 30, tzinfo=UTC)


class FakeTime:
    """A clock the scheduler reads and a sleep that only moves it forward.

    After *limit* sleeps it blocks until cancelled, so a test can stop the loop.
    """

    def __init__(self, start: datetime, limit: int, overshoot: timedelta = timedelta()) -> None:
        self.now = start
        self.overshoot = overshoot
        self.sleeps: list[float] = []
        self.limit = limit
        self.done = anyio.Event()

    def clock(self) -> datetime:
        return self.now

    async def sleep(self, seconds: float) -> None:
        if len(self.sleeps) >= self.limit:
            self.done.set()
            await anyio.sleep_forever()
        self.sleeps.append(seconds)
        self.now += timedelta(seconds=seconds) + self.overshoot
        await anyio.lowlevel.checkpoint()


def pending_keys(listing: Any) -> list[str]:
    assert isinstance(listing, dict)
    return sorted(k for k in listing if not k.startswith("_"))


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("bad name", "* * * * *", "t"), "expected a cron entry name"),
        (("ok", "* * *", "t"), "five fields"),
        (("ok", "61 * * * *", "t"), "invalid cron schedule"),
        (("ok", "* * * * *", ""), "expected the job type"),
    ],
)
def test_bad_entries_are_refused(args: tuple[str, str, str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CronEntry(*args)


def test_ticks_and_keys() -> None:
    entry = CronEntry("cleanup", "*/5 * * * *", "cleanup")
    assert entry.next_tick(START) == datetime(2026, 11, 23, 10, 5, tzinfo=UTC)
    assert entry.is_tick(datetime(2026, 11, 23, 10, 10, 20, tzinfo=UTC))
    assert not entry.is_tick(datetime(2026, 11, 23, 10, 11, tzinfo=UTC))
    assert cron_job_key("svc", "cleanup", START) == "cron-svc-cleanup-20261123T1003Z"
    with pytest.raises(ValueError, match="timezone-aware"):
        entry.next_tick(datetime(2026, 1, 1))


async def test_replicas_post_each_tick_exactly_once(server: EmbeddedServer, name: str) -> None:
    entries = [CronEntry("a", "* * * * *", "ta"), CronEntry("b", "* * * * *", "tb")]
    tick = datetime(2026, 11, 23, 10, 4, tzinfo=UTC)
    posted: list[str | None] = []
    async with (
        OADAClient(server.url, server.token) as one,
        OADAClient(server.url, server.token) as two,
    ):
        replicas = [CronScheduler(client, name, entries) for client in (one, two, one, two)]
        await replicas[0].ensure_state()

        async def post(scheduler: CronScheduler, entry: CronEntry) -> None:
            posted.append(await scheduler.post_tick(entry, tick))

        with anyio.fail_after(20):
            async with anyio.create_task_group() as group:
                for scheduler in replicas:
                    for entry in entries:
                        group.start_soon(post, scheduler, entry)
        listing = (await one.get(get_layout("classic").pending_path(name))).data
        job = (await one.get(f"/resources/{cron_job_key(name, 'a', tick)}")).data
        state = (await one.get(f"/bookmarks/services/{name}/cron")).data
    winners = sorted(p for p in posted if p is not None)
    assert len(posted) == 8
    assert winners == [f"resources/{cron_job_key(name, e, tick)}" for e in ("a", "b")]
    assert pending_keys(listing) == [cron_job_key(name, e, tick) for e in ("a", "b")]
    assert job["type"] == "ta"
    assert job["cron"] == {"entry": "a", "tick": "2026-11-23T10:04:00.000Z"}
    assert state["a"]["last"] == "2026-11-23T10:04:00.000Z"
    # A tick already taken is not posted again, by anyone.
    async with OADAClient(server.url, server.token) as three:
        assert await CronScheduler(three, name, entries).post_tick(entries[0], tick) is None
    # A removed state is made again on the next tick.
    async with OADAClient(server.url, server.token) as three:
        await three.delete(f"/bookmarks/services/{name}/cron")
        later = tick + timedelta(minutes=1)
        posted_again = await CronScheduler(three, name, entries).post_tick(entries[0], later)
        assert posted_again == f"resources/{cron_job_key(name, 'a', later)}"
    # An older tick is not posted after a newer one.
    async with OADAClient(server.url, server.token) as three:
        assert await CronScheduler(three, name, entries).post_tick(entries[0], tick) is None


async def test_the_loop_posts_on_schedule_with_a_fake_clock(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    time = FakeTime(START, limit=3)
    # No service runs the jobs here: overlap lets every tick post.
    entry = CronEntry("cleanup", "*/5 * * * *", "cleanup", {"days": 30}, overlap=True)
    scheduler = CronScheduler(oada, name, [entry], clock=time.clock, sleep=time.sleep)
    with anyio.fail_after(20):
        async with anyio.create_task_group() as group:
            await group.start(scheduler.run)
            await time.done.wait()
            group.cancel_scope.cancel()
    listing = (await oada.get(get_layout("classic").pending_path(name))).data
    ticks = [datetime(2026, 11, 23, 10, m, tzinfo=UTC) for m in (5, 10, 15)]
    # Slept to 10:05 and posted, to 10:10 and posted, to 10:15 and posted; the
    # fourth sleep blocked.
    assert time.sleeps == [90.0, 300.0, 300.0]
    assert pending_keys(listing) == [cron_job_key(name, "cleanup", t) for t in ticks]
    assert scheduler.state.value == "stopped"
    with pytest.raises(RuntimeError, match="runs once"):
        await scheduler.run()


async def test_a_loop_that_fell_behind_posts_only_the_latest_tick(
    oada: OADAClient, name: str
) -> None:
    # The first wait overshoots by 20 minutes (a suspended process).
    time = FakeTime(START, limit=1, overshoot=timedelta(minutes=20))
    entry = CronEntry("often", "* * * * *", "often", overlap=True)
    scheduler = CronScheduler(oada, name, [entry], clock=time.clock, sleep=time.sleep)
    with anyio.fail_after(20):
        async with anyio.create_task_group() as group:
            await group.start(scheduler.run)
            await time.done.wait()
            group.cancel_scope.cancel()
    listing = (await oada.get(get_layout("classic").pending_path(name))).data
    assert pending_keys(listing) == [
        cron_job_key(name, "often", datetime(2026, 11, 23, 10, 24, tzinfo=UTC))
    ]


async def test_service_cron_entries_run_as_normal_jobs(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    seen: list[Json] = []

    async def cleanup(job: Job[Json], ctx: WorkerContext) -> Json:
        seen.append(job.config)
        return {"cleaned": True}

    service = make_service(server, name, layout="pending")
    service.on("cleanup", 10, cleanup)
    # A yearly schedule: the service's own scheduler (real clock) stays idle
    # while the test steps a second one through the tick with a fake clock.
    service.cron("cleanup", "0 0 1 1 *", config={"days": 30})
    with pytest.raises(ValueError, match="already exists"):
        service.cron("cleanup", "* * * * *")
    with pytest.raises(TypeError, match="expected the job config as an object"):
        service.cron("other", "* * * * *", config=[1])
    with pytest.raises(ValueError, match="invalid cron schedule"):
        service.cron("other", "99 * * * *")
    assert [e.name for e in entries_of(service)] == ["cleanup"]
    time = FakeTime(datetime(2026, 12, 31, 23, 59, 30, tzinfo=UTC), limit=1)
    with anyio.fail_after(20):
        async with service:
            # Starting the service created the cron state.
            assert (await oada.get(f"/bookmarks/services/{name}/cron")).status == 200
            with pytest.raises(RuntimeError, match="before the service starts"):
                service.cron("late", "* * * * *")
            async with anyio.create_task_group() as group:
                scope = await group.start(
                    partial(run_cron, service, clock=time.clock, sleep=time.sleep)
                )
                await time.done.wait()
                scope.cancel()
            key = cron_job_key(name, "cleanup", datetime(2027, 1, 1, tzinfo=UTC))
            job = await wait_for_outcome(oada, f"resources/{key}", timeout=15)
    # Leaving the block stopped the service's own scheduler too (no hang).
    assert job.status == "success"
    assert job.result == {"cleaned": True}
    assert seen == [{"days": 30}]


async def test_run_cron_without_entries_returns_at_once(server: EmbeddedServer, name: str) -> None:
    service = make_service(server, name)
    async with service, anyio.create_task_group() as group:
        with anyio.fail_after(5):
            scope = await group.start(run_cron, service)
    assert isinstance(scope, anyio.CancelScope)


async def test_two_service_replicas_run_each_tick_once(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    runs: list[str] = []

    async def tick(job: Job[Json], ctx: WorkerContext) -> Json:
        runs.append(job.oada_id)
        return {"ok": True}

    replicas = [make_service(server, name) for _ in range(2)]
    for replica in replicas:
        replica.on("tick", 10, tick)
        # The fake clocks pass ticks faster than jobs run: overlap lets each post.
        replica.cron("tick", "0 0 1 1 *", overlap=True)
    # Each replica steps its own fake clock through the same three (yearly) ticks;
    # the service's real-clock scheduler stays idle.
    start = datetime(2026, 12, 31, 23, 59, 30, tzinfo=UTC)
    times = [FakeTime(start, limit=3) for _ in replicas]
    with anyio.fail_after(30):
        async with replicas[0], replicas[1], anyio.create_task_group() as group:
            scopes = [
                await group.start(partial(run_cron, r, clock=t.clock, sleep=t.sleep))
                for r, t in zip(replicas, times, strict=True)
            ]
            for time in times:
                await time.done.wait()
            for scope in scopes:
                scope.cancel()
            keys = [
                cron_job_key(name, "tick", datetime(y, 1, 1, tzinfo=UTC))
                for y in (2027, 2028, 2029)
            ]
            jobs = [await wait_for_outcome(oada, f"resources/{k}", timeout=15) for k in keys]
    assert [j.status for j in jobs] == ["success"] * 3
    assert sorted(runs) == sorted(f"resources/{k}" for k in keys)
