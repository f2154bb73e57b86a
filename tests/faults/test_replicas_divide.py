"""Replicas dividing one queue's jobs: requests per job, no duplicates,
stealing, and a replica's share moving on when it is killed or stopped.

The request counts come from the embedded server itself: every request it
serves (HTTP or WebSocket message) with the services' token is counted.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path
from typing import Any, Literal

import anyio
import pytest

from oada_jobs import Job, Json, Service, WorkerContext
from oada_jobs._ksuid import ksuid
from oada_jobs.client import OADAClient
from oada_jobs.replicas import member_key, owner, workers_path
from oada_jobs.requester import post_job
from oada_jobs.server.core import CoreRequest
from oada_jobs.testing import EmbeddedServer, embedded_server, wait_for_job
from oada_jobs.tree import JOBS_TYPE

from .helpers import (
    LAYOUT,
    check_all_filed,
    fleet,
    make_service,
    pending_path,
    post_jobs,
    read_runs,
    running,
    service_name,
    wait_pending_empty,
    wait_until,
)

HARNESS, SERVICES = "harness-token", "services-token"
JOBS = 60


@contextmanager
def counting(server: EmbeddedServer) -> Iterator[Counter[str]]:
    """Count the requests the in-process server serves, by bearer token."""
    core = server.core
    assert core is not None
    counts: Counter[str] = Counter()
    serve = core._serve

    def counted(request: CoreRequest) -> Any:
        counts[request.headers.get("authorization", "").removeprefix("Bearer ")] += 1
        return serve(request)

    core._serve = counted  # type: ignore[method-assign]
    try:
        yield counts
    finally:
        core._serve = serve  # type: ignore[method-assign]


def replicas(server: EmbeddedServer, name: str, count: int, **options: Any) -> list[Service]:
    return [make_service(name, server, SERVICES, **options) for _ in range(count)]


async def all_see(services: Sequence[Service], count: int) -> None:
    await wait_until(lambda: all(len(s.shares.members) == count for s in services), 10)  # type: ignore[union-attr]


async def queue_keys(oada: OADAClient, name: str, keys: list[str], config: dict[str, Any]) -> None:
    """Create a job resource per key and link them all into the list in one PUT."""
    for key in keys:
        body = {"service": name, "type": "work", "config": config}
        await oada.put(f"/resources/{key}", body, content_type=JOBS_TYPE)
    links = {key: {"_id": f"resources/{key}"} for key in keys}
    await oada.put(pending_path(name), links, tree=LAYOUT.tree)


def sample(service: Service, name: str, **labels: str) -> float:
    """A metric's value in *service*'s registry (0 if never set)."""
    value = service.metrics.registry.get_sample_value(name, {"service": service.name, **labels})
    return value or 0.0


async def requests_per_job(
    count: int, *, quirks: Literal["none", "reference"] = "none", **options: Any
) -> tuple[float, Counter[str]]:
    """Run *count* replicas over :data:`JOBS` jobs queued at once: (requests/job, runs)."""
    name = service_name()
    ran: Counter[str] = Counter()

    async def work(job: Job[Json], ctx: WorkerContext) -> Json:
        ran[ctx.job_id] += 1
        return {"n": job.config["n"]}

    async with (
        embedded_server(tokens=[HARNESS, SERVICES], quirks=quirks) as server,
        OADAClient(server.url, HARNESS) as oada,
        AsyncExitStack() as stack,
    ):
        services = replicas(server, name, count, concurrency=5, steal_after=30, **options)
        for service in services:
            service.on("noop", 10, work)
            await stack.enter_async_context(service)
        if options.get("divide_work", True):
            await all_see(services, count)
        with counting(server) as counts:
            keys = await post_jobs(oada, name, JOBS, batch=JOBS)
            await wait_pending_empty(oada, name, timeout=60)
        await check_all_filed(oada, name, keys)
        if options.get("divide_work", True):
            # Each replica's share on /metrics: together, every job once.
            owned = [sample(s, "oada_jobs_share_reads_total", kind="owned") for s in services]
            print(f"jobs read per replica: {owned}")
            assert sum(owned) == JOBS
            assert all(sample(s, "oada_jobs_replicas") == count for s in services)
            assert sum(sample(s, "oada_jobs_claims_lost_total") for s in services) == 0
    return counts[SERVICES] / JOBS, ran


async def test_three_replicas_cost_the_server_what_one_does() -> None:
    one, ran_one = await requests_per_job(1)
    three, ran_three = await requests_per_job(3)
    print(f"requests per job: {one:.2f} with one replica, {three:.2f} with three")
    assert max(ran_one.values()) == max(ran_three.values()) == 1, "a job ran twice"
    assert len(ran_three) == JOBS
    assert three <= one * 1.10


async def test_replicas_divide_the_work_on_a_server_with_the_reference_quirks() -> None:
    # Membership uses only PUT, GET, DELETE and a watch, as the reference server has them.
    three, ran = await requests_per_job(3, quirks="reference")
    assert len(ran) == JOBS
    assert max(ran.values()) == 1
    assert three < 5


async def test_replicas_racing_for_every_job_cost_more() -> None:
    # The same measurement with work not divided: what the division saves.
    one, _ = await requests_per_job(1, divide_work=False)
    three, ran = await requests_per_job(3, divide_work=False)
    print(f"requests per job, racing: {one:.2f} with one replica, {three:.2f} with three")
    assert max(ran.values()) == 1
    assert three > one * 1.25


def keys_of(member: str, members: Sequence[str], count: int) -> list[str]:
    """*count* fresh list keys that *member* owns among *members*."""
    keys: list[str] = []
    while len(keys) < count:
        key = ksuid()
        if owner(key, members) == member:
            keys.append(key)
    return keys


async def test_an_idle_replica_steals_jobs_waiting_in_a_busy_ones_share() -> None:
    name = service_name()
    finished: dict[str, float] = {}
    started: set[str] = set()

    async def work(job: Job[Json], ctx: WorkerContext) -> Json:
        started.add(ctx.job_id)
        await anyio.sleep(job.config["sleep"])
        finished[ctx.job_id] = time.monotonic()
        return None

    async with (
        embedded_server(tokens=[HARNESS, SERVICES]) as server,
        OADAClient(server.url, HARNESS) as oada,
    ):
        busy, idle = replicas(server, name, 2, concurrency=2, steal_after=0.5)
        for service in (busy, idle):
            service.on("work", 30, work)
        async with busy, idle:
            await all_see((busy, idle), 2)
            members = busy.shares.members
            mine = member_key(busy.worker_id)
            long_keys = keys_of(mine, members, 2)
            short_keys = keys_of(mine, members, 10)
            queued = time.monotonic()
            # The busy replica's two slots go to 4 s jobs; its short jobs wait.
            await queue_keys(oada, name, long_keys, {"sleep": 4})
            await wait_until(lambda: len(started) >= 2, 10)
            await queue_keys(oada, name, short_keys, {"sleep": 0.01})
            await wait_until(lambda: all(f"resources/{k}" in finished for k in short_keys), 20)
            short_done = max(finished[f"resources/{k}"] for k in short_keys) - queued
            await wait_pending_empty(oada, name, timeout=20)
    print(f"short jobs done {short_done:.2f} s after queueing, the long ones took 4 s")
    assert short_done < 3.0, "the short jobs waited for the busy replica's slots"
    assert all(finished[f"resources/{k}"] - queued >= 3.9 for k in long_keys)


async def members_by_pid(oada: OADAClient, name: str) -> dict[int, str]:
    """The member key of each service process, by its pid (in its worker id)."""
    listing = (await oada.get(workers_path(name))).data
    found = {}
    for key, value in listing.items():
        if not key.startswith("_") and isinstance(value, dict):
            found[int(str(value["worker"]).split(":")[-2])] = key
    return found


async def share_moves(tmp_path: Path, *, kill: bool) -> tuple[float, list[Any]]:
    """Three replicas; one is killed (or stopped) mid-run. Returns the seconds
    until the first job of its share started elsewhere, and all runs."""
    record = tmp_path / "runs.txt"
    name = service_name()
    lease = 2.0
    async with (
        embedded_server(subprocess=True) as server,
        OADAClient(server.url, server.token) as oada,
    ):
        options = {
            "lease": lease,
            "member_lease": lease,
            "steal_after": 60,
            "sweep_interval": 30,
            "concurrency": 3,
            "sleep": 0.3,
        }
        fleet_ = fleet(server.url, server.token, name, record, "ABV", **options)
        async with running(*fleet_.values()):
            await wait_until(lambda: _count_members(oada, name, 3), 15)
            by_pid = await members_by_pid(oada, name)
            members = sorted(by_pid.values())
            victim_process = fleet_["V"].process
            assert victim_process is not None
            victim = by_pid[victim_process.pid]
            keys = await post_jobs(oada, name, 120, batch=120)
            share = {f"resources/{k}" for k in keys if owner(k, members) == victim}
            await wait_until(lambda: sum(r.worker == "V" for r in read_runs(record)) >= 3, 30)
            if kill:
                await fleet_["V"].kill()
            else:
                assert fleet_["V"].process is not None
                fleet_["V"].process.terminate()
            moved_at = time.time()
            await wait_pending_empty(oada, name, timeout=90)
            await check_all_filed(oada, name, keys)
            # A killed replica's key is deleted by a live one a lease after it expired.
            await wait_until(lambda: _count_members(oada, name, 2), 3 * lease + 5)
    runs = read_runs(record)
    taken = [r.start for r in runs if r.job in share and r.worker != "V" and r.start >= moved_at]
    assert taken, "no job of the share was run by another replica"
    return min(taken) - moved_at, runs


async def _count_members(oada: OADAClient, name: str, count: int) -> bool:
    try:
        listing = (await oada.get(workers_path(name))).data
    except Exception:
        return False
    return sum(1 for key in listing if not key.startswith("_")) == count


@pytest.mark.slow
async def test_a_killed_replicas_share_runs_again_within_its_lease(tmp_path: Path) -> None:
    after, runs = await share_moves(tmp_path, kill=True)
    print(f"the killed replica's share ran again {after:.2f} s after the kill")
    # Its member lease is 2 s: renewed at most that long before the kill.
    assert after <= 2.0 + 1.0
    live = Counter(run.job for run in runs if run.worker != "V")
    assert max(live.values()) == 1, "a job ran twice on live replicas"


@pytest.mark.slow
async def test_a_stopped_replica_hands_its_share_over_at_once(tmp_path: Path) -> None:
    after, runs = await share_moves(tmp_path, kill=False)
    print(f"the stopped replica's share ran again {after:.2f} s after SIGTERM")
    # Well within its 2 s member lease: it deleted its key as it stopped.
    assert after < 1.0
    assert max(Counter(run.job for run in runs).values()) == 1, "a job ran twice"


async def test_groups_and_unique_keys_hold_across_shares() -> None:
    # Replicas already dividing when the jobs come: each grouped or unique-key
    # job's place is decided with the jobs of other shares queued before it.
    name = service_name()
    active: Counter[str] = Counter()
    peak: Counter[str] = Counter()
    order: dict[str, list[int]] = {"a": [], "b": []}
    ran: Counter[str] = Counter()

    async def edit(job: Job[Json], ctx: WorkerContext) -> Json:
        ran[ctx.job_id] += 1
        group = job.options.group
        if group is not None:
            active[group] += 1
            peak[group] = max(peak[group], active[group])
            order[group].append(job.config["n"])
        await anyio.sleep(job.config.get("sleep", 0.02))
        if group is not None:
            active[group] -= 1
        return None

    async with (
        embedded_server(tokens=[HARNESS, SERVICES]) as server,
        OADAClient(server.url, HARNESS) as oada,
        AsyncExitStack() as stack,
    ):
        services = replicas(server, name, 3, concurrency=5, steal_after=30)
        for service in services:
            service.on("edit", 10, edit)
            await stack.enter_async_context(service)
        await all_see(services, 3)
        grouped, plain, unique = [], [], []
        for n in range(24):
            if n % 3 == 2:
                plain.append(await post_job(oada, name, "edit", {"n": n}))
            else:
                group = "a" if n % 3 == 0 else "b"
                options = {"group": group}
                grouped.append(await post_job(oada, name, "edit", {"n": n}, options=options))
        for n in range(3):
            options = {"uniqueKey": "nightly"}
            config = {"n": 100 + n, "sleep": 1.0}
            # Past the requester's unique index: the queues' check across shares is tested.
            unique.append(
                await post_job(oada, name, "edit", config, options=options, on_duplicate="post")
            )
        statuses = [(await wait_for_job(oada, job_id, 30)).status for job_id in unique]
        for job_id in [*grouped, *plain]:
            assert (await wait_for_job(oada, job_id, 30)).status == "success"
    assert dict(peak) == {"a": 1, "b": 1}
    assert order == {"a": list(range(0, 24, 3)), "b": list(range(1, 24, 3))}
    # The first holds the key (for a second); the two queued meanwhile are refused.
    assert statuses == ["success", "failure", "failure"]
    assert max(ran.values()) == 1
