"""Periodic jobs: no overlapping runs across replicas, seconds, time zones,
job options and versions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest

from oada_jobs import Job, Json, WorkerContext
from oada_jobs.client import OADAClient
from oada_jobs.cron import CronEntry, CronScheduler, cron_job_key, entries_of, read_state
from oada_jobs.testing import EmbeddedServer
from oada_jobs.tree import JOBS_TYPE

from .conftest import make_service

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# ------------------------------------------------------------ time zones, seconds


def test_a_schedule_in_a_time_zone_follows_its_clocks_through_dst() -> None:
    daily = CronEntry("d", "30 2 * * *", "t", timezone="Europe/Berlin")
    # Clocks go back on 2026-10-25 (03:00 CEST -> 02:00 CET): 02:30 happens
    # twice, the job runs once (at the first), and at 02:30 CET the days after.
    ticks = daily.next_ticks(utc(2026, 10, 23, 12, 0), 4)
    assert ticks == [
        utc(2026, 10, 24, 0, 30),  # 02:30 CEST
        utc(2026, 10, 25, 0, 30),  # 02:30 CEST, the first of two
        utc(2026, 10, 26, 1, 30),  # 02:30 CET
        utc(2026, 10, 27, 1, 30),
    ]
    # Clocks go forward on 2026-03-29 (02:00 CET -> 03:00 CEST): 02:30 does
    # not happen; the job runs at 03:00 CEST that day, once.
    assert daily.next_ticks(utc(2026, 3, 27, 12, 0), 3) == [
        utc(2026, 3, 28, 1, 30),
        utc(2026, 3, 29, 1, 0),
        utc(2026, 3, 30, 0, 30),
    ]
    # An hourly schedule runs every real hour, both 02:00s included.
    hourly = CronEntry("h", "0 * * * *", "t", timezone="Europe/Berlin")
    assert hourly.next_ticks(utc(2026, 10, 24, 23, 30), 3) == [
        utc(2026, 10, 25, 0, 0),  # 02:00 CEST
        utc(2026, 10, 25, 1, 0),  # 02:00 CET
        utc(2026, 10, 25, 2, 0),  # 03:00 CET
    ]
    assert daily.is_tick(utc(2026, 10, 25, 0, 30))
    assert not daily.is_tick(utc(2026, 10, 25, 1, 30))


def test_six_fields_have_seconds_first() -> None:
    entry = CronEntry("s", "*/20 * * * * *", "t")
    assert entry.seconds
    assert entry.next_ticks(utc(2026, 1, 1, 0, 0), 3) == [
        utc(2026, 1, 1, 0, 0, 20),
        utc(2026, 1, 1, 0, 0, 40),
        utc(2026, 1, 1, 0, 1, 0),
    ]
    assert entry.is_tick(utc(2026, 1, 1, 0, 0, 40))
    assert not entry.is_tick(utc(2026, 1, 1, 0, 0, 41))
    tick = utc(2026, 1, 1, 0, 0, 20)
    assert cron_job_key("svc", "s", tick, seconds=True) == "cron-svc-s-20260101T000020Z"
    assert cron_job_key("svc", "s", utc(2026, 1, 1, 0, 1), seconds=True) == (
        "cron-svc-s-20260101T0001Z"
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"timezone": "Mars/Olympus"}, "IANA time zone"),
        ({"timezone": "../../etc/passwd"}, "IANA time zone"),
        ({"timezone": ""}, "IANA time zone"),
        ({"options": {"priority": "high"}}, "bad job options"),
        ({"options": {"nope": 1}}, "bad job options"),
        ({"expires": 0}, "expires"),
        ({"version": -1}, "version"),
        ({"version": True}, "version"),
    ],
)
def test_bad_entry_options_are_refused(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CronEntry("e", "* * * * *", "t", **kwargs)


async def test_service_cron_takes_job_options(server: EmbeddedServer, name: str) -> None:
    service = make_service(server, name)
    service.cron(
        "nightly",
        "0 0 3 * * *",
        type="cleanup",
        timezone="America/New_York",
        group="cleanups",
        unique_key="nightly",
        tries=2,
        priority=7,
        timeout=120,
        expires=timedelta(hours=1),
        version=3,
    )
    (entry,) = entries_of(service)
    assert entry.timezone == "America/New_York"
    assert entry.job_options(utc(2026, 1, 1, 8, 0)) == {
        "group": "cleanups",
        "uniqueKey": "nightly",
        "tries": 2,
        "priority": 7,
        "timeout": 120,
        "version": 3,
        "expiresAt": "2026-01-01T09:00:00.000Z",
    }
    with pytest.raises(ValueError, match="bad job options"):
        service.cron("bad", "* * * * *", tries=0)


# ------------------------------------------------------------ no overlap


async def test_a_tick_is_skipped_while_the_last_ticks_job_is_unfinished_on_any_replica(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    entry = CronEntry("sync", "* * * * *", "sync")
    async with OADAClient(server.url, server.token) as other:
        one, two = CronScheduler(oada, name, [entry]), CronScheduler(other, name, [entry])
        await one.ensure_state()
        first = await one.post_tick(entry, T0)
        assert first == f"resources/{cron_job_key(name, 'sync', T0)}"
        # The other replica's next tick sees the job unfinished: skipped, and recorded.
        assert await two.post_tick(entry, T0 + timedelta(minutes=1)) is None
        assert await one.post_tick(entry, T0 + timedelta(minutes=1)) is None
        assert await one.post_tick(entry, T0 + timedelta(minutes=2)) is None
        state = (await read_state(oada, name))["sync"]
        assert state["job"] == first
        assert state["skipped"] == {
            "tick": "2026-11-23T10:02:00.000Z",
            "running": first,
            "count": 2,
        }
        # Once it finished, the next tick posts.
        await oada.put(f"/{first}", {"status": "success"}, content_type=JOBS_TYPE)
        third = await two.post_tick(entry, T0 + timedelta(minutes=3))
        assert third == f"resources/{cron_job_key(name, 'sync', T0 + timedelta(minutes=3))}"
        # overlap=True posts beside an unfinished job.
        both = CronEntry("sync", "* * * * *", "sync", overlap=True)
        assert await one.post_tick(both, T0 + timedelta(minutes=4)) is not None


async def test_two_replicas_never_run_a_periodic_job_twice_at_once(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    running: list[str] = []
    most = 0
    finished: list[str] = []

    async def slow(job: Job[Json], ctx: WorkerContext) -> Json:
        nonlocal most
        running.append(ctx.job_id)
        most = max(most, len(running))
        await anyio.sleep(2.2)  # longer than two periods
        running.remove(ctx.job_id)
        finished.append(ctx.job_id)
        return {}

    replicas = [make_service(server, name) for _ in range(2)]
    for replica in replicas:
        replica.on("slow", 10, slow)
        replica.cron("slow", "* * * * * *")  # every second
    with anyio.fail_after(30):
        async with replicas[0], replicas[1]:
            while len(finished) < 2:
                await anyio.sleep(0.1)
    state = (await read_state(oada, name))["slow"]
    assert most == 1
    assert state["skipped"]["count"] >= 2


# ------------------------------------------------------------ versions


async def test_a_newer_version_takes_the_schedule_over_from_older_replicas(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    old = CronEntry("report", "*/5 * * * *", "report", version=1, overlap=True)
    new = CronEntry("report", "*/10 * * * *", "report", version=2, overlap=True)
    scheduler = CronScheduler(oada, name, [old])
    await scheduler.ensure_state()
    assert await scheduler.post_tick(old, T0) is not None
    job = (await oada.get(f"/resources/{cron_job_key(name, 'report', T0)}")).data
    assert job["options"] == {"version": 1}
    later = T0 + timedelta(minutes=10)
    assert await scheduler.post_tick(new, later) is not None
    state = (await read_state(oada, name))["report"]
    assert (state["version"], state["schedule"]) == (2, "*/10 * * * *")
    # A replica still on version 1 posts no more of its (old) ticks.
    assert await scheduler.post_tick(old, T0 + timedelta(minutes=15)) is None
    assert await scheduler.post_tick(new, T0 + timedelta(minutes=20)) is not None
