"""Scale-out benchmarks: oada-jobs replicas on one queue, dividing the work or racing for it.

Three measurements, each against the section's embedded server:

- :func:`scale_run`: *n* replicas, jobs queued at once (:func:`bench.jobs.burst_run`),
  with the jobs divided between the replicas (``BENCH_DIVIDE=1``) or every
  replica reading every job and racing to claim it (``BENCH_DIVIDE=0``, the
  behaviour before division). Requests per job, server and service CPU per
  job, jobs/s, duplicates, and the load average around the run.
- :func:`uneven_run`: one replica is handed ten long jobs first (their list
  keys are chosen to hash to it), then short jobs are queued: the time until
  every short job is done, with one replica or with two (the second steals).
- :func:`takeover_run`: three replicas; one is SIGKILLed mid-run. No job may
  be lost; the time until a job of its share starts on another replica.
"""

from __future__ import annotations

import os
import time
from typing import Any

import anyio

from oada_jobs._ksuid import ksuid
from oada_jobs.replicas import owner

from .common import BenchError, count_delta, cpu_seconds
from .jobs import (
    Harness,
    ListDrain,
    _started_at,
    burst_run,
    check_filed,
    create_jobs,
    list_path,
    members,
    new_service_name,
    wait_members,
)

#: Job lease, member lease and stealing bound of the uneven and takeover runs (seconds).
TAKEOVER_LEASE = 3
STEAL_AFTER = 1


def _load() -> float:
    return os.getloadavg()[0]


async def scale_run(h: Harness, replicas: int, jobs: int, *, divide: bool) -> dict[str, Any]:
    """*replicas* replicas, *jobs* jobs queued at once; one result row."""
    load_before = _load()
    env = {"BENCH_DIVIDE": "1" if divide else "0"}
    result = await burst_run(h, "python", jobs, replicas=replicas, extra_env=env)
    return {
        **result.as_dict(),
        "mode": "divided" if divide else "racing",
        "load_before": load_before,
        "load_after": _load(),
    }


def _keys_owned_by(member: str, keys_of: list[str], count: int) -> list[str]:
    found: list[str] = []
    while len(found) < count:
        key = ksuid()
        if owner(key, keys_of) == member:
            found.append(key)
    return found


async def uneven_run(
    h: Harness, replicas: int, *, long_jobs: int, long_ms: int, short_jobs: int
) -> dict[str, Any]:
    """Ten (*long_jobs*) long jobs handed to one replica, then short ones:
    seconds from queueing the short jobs until the last of them has started
    and the list holds only long jobs."""
    name = new_service_name("python")
    env = {"BENCH_STEAL_AFTER": str(STEAL_AFTER)}
    async with h.services("python", name, replicas=replicas, extra_env=env) as children:
        if replicas > 1:
            await wait_members(h.oada, name, replicas)
        announced = await members(h.oada, name)
        # The first child is the one handed the long jobs.
        first = next(key for key, worker in announced.items() if f":{children[0].pid}:" in worker)
        keys = sorted(announced)
        path = list_path(name)
        long_ids = await create_jobs(h.oada, name, long_jobs, config={"sleep_ms": long_ms})
        short_ids = await create_jobs(h.oada, name, short_jobs, config={"sleep_ms": 0})
        long_keys = iter(_keys_owned_by(first, keys, long_jobs))
        drain = ListDrain(h.oada, path)
        await drain.link(long_ids, keys_from=lambda: next(long_keys))
        # The long jobs hold the first replica's slots before the short ones come.
        await anyio.sleep(0.5)
        short_drain = ListDrain(h.oada, path)
        started = time.time()
        short_set = set(await short_drain.link(short_ids))
        with anyio.fail_after(long_ms / 1000 * 4 + 60):
            while True:
                listing = (await h.oada.get(path)).data
                if not short_set & listing.keys():
                    break
                await anyio.sleep(0.02)
        done = time.time() - started
        await drain.wait_gone(long_ms / 1000 * 4 + 60)
        for child in children:
            await child.stop()
    await check_filed(h.oada, name, [*long_ids, *short_ids])
    return {
        "replicas": replicas,
        "long_jobs": long_jobs,
        "long_ms": long_ms,
        "short_jobs": short_jobs,
        "short_done_s": done,
        "load": _load(),
    }


async def takeover_run(h: Harness, jobs: int, *, sleep_ms: int) -> dict[str, Any]:
    """Three replicas, one SIGKILLed mid-run: lost jobs, jobs run again, and the
    seconds until a job of the killed replica's share started elsewhere."""
    name = new_service_name("python")
    lease = str(TAKEOVER_LEASE)
    env = {"BENCH_MEMBER_LEASE": lease, "BENCH_LEASE": lease, "BENCH_STEAL_AFTER": "60"}
    path = list_path(name)
    async with h.services(
        "python", name, replicas=3, sleep_ms=sleep_ms, concurrency=5, extra_env=env
    ) as children:
        await wait_members(h.oada, name, 3)
        announced = await members(h.oada, name)
        victim = children[2]
        victim_key = next(k for k, w in announced.items() if f":{victim.pid}:" in w)
        keys = sorted(announced)
        ids = await create_jobs(h.oada, name, jobs)
        drain = ListDrain(h.oada, path)
        before = await h.server.counts()
        server_cpu = cpu_seconds(h.server.pid)
        linked = await drain.link(ids)
        # Mid-run: a third of the jobs have left the list.
        with anyio.fail_after(120):
            while len(linked.keys() & (await h.oada.get(path)).data.keys()) > jobs * 2 // 3:
                await anyio.sleep(0.05)
        victim.process.kill()
        killed_at = time.time()
        await victim.process.wait()
        await drain.wait_gone(h.timeout_for(jobs, sleep_ms, 10) + 60)
        server_cpu = cpu_seconds(h.server.pid) - server_cpu
        after = await h.server.counts()
        for child in children[:2]:
            await child.stop()
    await check_filed(h.oada, name, ids)
    share = {job_id for key, job_id in linked.items() if owner(key, keys) == victim_key}
    starts: dict[str, list[float]] = {}
    for job_id in ids:
        updates = (await h.oada.get(f"/{job_id}")).data.get("updates", {})
        starts[job_id] = sorted(
            t
            for update in updates.values()
            if isinstance(update, dict) and update.get("status") == "started"
            for t in [_started_at({"updates": {"u": update}})]
            if t is not None
        )
    taken = [t for job_id in share for t in starts[job_id] if t >= killed_at]
    if not taken:
        raise BenchError("no job of the killed replica's share started after the kill")
    return {
        "jobs": jobs,
        "sleep_ms": sleep_ms,
        "member_lease_s": TAKEOVER_LEASE,
        # check_filed raised otherwise.
        "lost": 0,
        "run_again": sum(1 for times in starts.values() if len(times) > 1),
        "takeover_s": min(taken) - killed_at,
        "share": len(share),
        "requests_per_job": count_delta(before, after, "service") / jobs,
        "server_cpu_ms_per_job": 1000 * server_cpu / jobs,
        "load": _load(),
    }
