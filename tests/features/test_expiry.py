"""Job expiry: a job not started by its ``expiresAt`` fails with ``expired`` and never runs."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import anyio
import pytest

from oada_jobs import Job, Json, WorkerContext
from oada_jobs.client import OADAClient
from oada_jobs.job import iso, utc_now
from oada_jobs.requester import post_job
from oada_jobs.testing import EmbeddedServer, wait_for_job

from .conftest import make_service


def assert_expired(job: Job[Any]) -> None:
    assert job.status == "failure"
    assert job.result["failType"] == "expired"
    assert "not started by its expiresAt" in job.result["message"]
    assert "started" not in [u["status"] for u in job.updates.values()]


async def test_a_job_past_its_expiry_never_runs(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    service = make_service(server, name)
    ran: list[str] = []

    @service.on("task", 5)
    async def task(job: Job[Json], ctx: WorkerContext) -> Json:
        ran.append(ctx.job_id)
        return {}

    past = iso(utc_now() - timedelta(seconds=1))
    late = await post_job(oada, name, "task", options={"expiresAt": past})
    fresh = await post_job(oada, name, "task", expires=60)
    async with service:
        expired = await wait_for_job(oada, late, 10, filed="classic")
        done = await wait_for_job(oada, fresh, 10, filed="classic")
    assert_expired(expired)
    assert done.status == "success"
    assert ran == [fresh]
    typed = f"/bookmarks/services/{name}/jobs-typed-failure/expired/day-index"
    days = (await oada.get(typed)).data
    assert any(not key.startswith("_") for key in days)


async def test_a_job_expiring_while_it_waits_for_its_start_is_filed_then(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    service = make_service(server, name)

    @service.on("task", 5)
    async def task(job: Job[Json], ctx: WorkerContext) -> Json:
        raise AssertionError("an expired job ran")

    not_before = iso(utc_now() + timedelta(seconds=30))
    async with service:
        started = anyio.current_time()
        job_id = await post_job(oada, name, "task", options={"notBefore": not_before}, expires=0.8)
        job = await wait_for_job(oada, job_id, 10, filed="classic")
        waited = anyio.current_time() - started
    assert_expired(job)
    # Filed when it expired, not when its start came.
    assert 0.5 < waited < 10


async def test_a_job_expiring_behind_its_group_is_filed_while_the_group_runs(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    service = make_service(server, name)
    release = anyio.Event()
    ran: list[str] = []

    @service.on("task", 30)
    async def task(job: Job[Json], ctx: WorkerContext) -> Json:
        ran.append(ctx.job_id)
        await release.wait()
        return {}

    async with service:
        first = await post_job(oada, name, "task", options={"group": "g"})
        second = await post_job(oada, name, "task", options={"group": "g"}, expires=0.8)
        job = await wait_for_job(oada, second, 10, filed="classic")
        assert ran == [first]  # the first still runs: the second expired behind it
        release.set()
        assert (await wait_for_job(oada, first, 10)).status == "success"
    assert_expired(job)
    assert ran == [first]


async def test_a_job_expiring_while_waiting_for_a_slot_is_refused_at_claim(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    service = make_service(server, name, concurrency=1)
    release = anyio.Event()
    ran: list[str] = []

    @service.on("task", 30)
    async def task(job: Job[Json], ctx: WorkerContext) -> Json:
        ran.append(ctx.job_id)
        await release.wait()
        return {}

    async with service:
        blocker = await post_job(oada, name, "task")
        with anyio.fail_after(10):
            while not ran:
                await anyio.sleep(0.05)
        waiting = await post_job(oada, name, "task", expires=0.5)
        await anyio.sleep(1.0)  # past its expiry while the only slot is taken
        release.set()
        job = await wait_for_job(oada, waiting, 10, filed="classic")
        assert (await wait_for_job(oada, blocker, 10)).status == "success"
    assert_expired(job)
    assert ran == [blocker]


@pytest.mark.parametrize("expires", [0, -1, "soon", True])
async def test_bad_expiry_is_refused_before_posting(
    oada: OADAClient, name: str, expires: Any
) -> None:
    with pytest.raises(ValueError, match="expires"):
        await post_job(oada, name, "task", expires=expires)


async def test_two_replicas_file_each_expired_job_once_and_run_none(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    ran: list[str] = []
    replicas = [make_service(server, name) for _ in range(2)]
    for replica in replicas:

        @replica.on("task", 5)
        async def task(job: Job[Json], ctx: WorkerContext) -> Json:
            ran.append(ctx.job_id)
            return {}

    past = iso(utc_now() - timedelta(seconds=1))
    expired = [await post_job(oada, name, "task", options={"expiresAt": past}) for _ in range(6)]
    fresh = [await post_job(oada, name, "task", expires=60) for _ in range(4)]
    async with replicas[0], replicas[1]:
        jobs = [await wait_for_job(oada, job_id, 15, filed="classic") for job_id in expired]
        done = [await wait_for_job(oada, job_id, 15, filed="classic") for job_id in fresh]
    for job in jobs:
        assert_expired(job)
        finishing = [u for u in job.updates.values() if u["status"] == "failure"]
        assert len(finishing) == 1, job.updates
    assert [job.status for job in done] == ["success"] * 4
    assert sorted(ran) == sorted(fresh)
