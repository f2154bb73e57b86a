"""Unusual jobs and work functions the framework must survive: cancelled group
members, blocking and shielded work functions, plain functions."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import anyio
import pytest
from prometheus_client import CollectorRegistry

from oada_jobs import Job, Service, ServiceState, WorkerContext
from oada_jobs.client import OADAClient
from oada_jobs.exceptions import OADATransportError
from oada_jobs.job import iso, request_cancel, utc_now
from oada_jobs.replicas import member_key, owner, workers_path, workers_tree
from oada_jobs.requester import post_job
from oada_jobs.tree import JOBS_TYPE, get_layout

from .conftest import LogWaiter, key_of, wait_for_status


async def ok(job: Job[Any], ctx: WorkerContext) -> Any:
    return {"ran": job.key}


async def test_cancelling_a_waiting_group_member_leaves_the_service_running(
    oada: OADAClient, make_service: Callable[..., Service], name: str
) -> None:
    service = make_service()
    service.on("ok", 10, ok)
    later = iso(utc_now() + timedelta(hours=1))
    async with service:
        waiting = await post_job(oada, name, "ok", options={"group": "field-7", "notBefore": later})
        with anyio.fail_after(10):
            while service.queues["_default"].scheduler.counts()["waiting"] != 1:
                await anyio.sleep(0.02)
        assert await request_cancel(oada, waiting)
        body = await wait_for_status(oada, waiting)
        assert body["result"]["failType"] == "cancelled"
        # The group still works, and so does the service.
        after = await post_job(oada, name, "ok", options={"group": "field-7"})
        assert (await wait_for_status(oada, after))["status"] == "success"
        assert service.state is ServiceState.RUNNING
        service.queues["_default"].scheduler.check_invariants()


async def test_a_function_that_blocks_the_loop_past_its_timeout_fails_and_is_named(
    oada: OADAClient, make_service: Callable[..., Service], name: str, logs: LogWaiter
) -> None:
    registry = CollectorRegistry()

    async def blocking(job: Job[Any], ctx: WorkerContext) -> Any:
        time.sleep(0.6)  # blocks the event loop: what this test is about
        return {"late": True}

    service = make_service(loop_lag_warning=0.2, metrics_registry=registry)
    service.on("blocking", 0.3, blocking)
    async with service:
        job_id = await post_job(oada, name, "blocking", key="blocker-1")
        body = await wait_for_status(oada, job_id)
        record = await logs.wait_for(lambda r: "event loop was blocked" in r.getMessage())
    # What it returned after its timeout is not a success.
    assert body["status"] == "failure"
    assert body["result"]["failType"] == "timeout"
    assert "blocker-1 (blocking)" in record.getMessage()
    assert "anyio.to_thread.run_sync" in record.getMessage()
    blocked = registry.get_sample_value("oada_jobs_loop_blocked_total", {"service": name})
    assert blocked is not None
    assert blocked >= 1


async def test_a_function_that_shields_itself_gives_up_its_job_and_slot_at_the_timeout(
    oada: OADAClient, make_service: Callable[..., Service], name: str
) -> None:
    released = anyio.Event()

    async def stubborn(job: Job[Any], ctx: WorkerContext) -> Any:
        with anyio.CancelScope(shield=True):
            await released.wait()
        return {"late": True}

    service = make_service(concurrency=1, cancel_grace=0.2)
    service.on("stubborn", 0.2, stubborn)
    service.on("ok", 10, ok)
    async with service:
        try:
            first = await post_job(oada, name, "stubborn")
            body = await wait_for_status(oada, first, timeout=5)
            assert body["result"]["failType"] == "timeout"
            # Its only slot is free again while the function still runs.
            second = await post_job(oada, name, "ok")
            assert (await wait_for_status(oada, second, timeout=5))["status"] == "success"
        finally:
            released.set()
    # Its late result changed nothing.
    assert (await oada.get(f"/{first}")).data["result"]["failType"] == "timeout"


async def test_a_plain_function_is_refused_at_registration(
    make_service: Callable[..., Service],
) -> None:
    service = make_service()
    ran: list[object] = []

    def plain(job: Job[Any], ctx: WorkerContext) -> Any:
        ran.append(job)
        return {"ok": True}

    with pytest.raises(TypeError, match=r"expected an async work function.*async def plain"):
        service.on("plain", 10, plain)
    with pytest.raises(TypeError, match=r"anyio\.to_thread\.run_sync"):
        service.on("plain", 10)(plain)
    with pytest.raises(TypeError):
        service.on("plain", 10, lambda job, ctx: None)
    assert service.worker_for("plain") is None
    assert not ran

    class Callable_:
        async def __call__(self, job: Job[Any], ctx: WorkerContext) -> Any:
            return None

    service.on("object", 10, Callable_())
    service.on("partial", 10, functools.partial(ok))
    assert service.worker_for("object") is not None
    assert service.worker_for("partial") is not None


async def test_a_backlog_starts_with_its_highest_priority_job(
    oada: OADAClient, make_service: Callable[..., Service], name: str
) -> None:
    started: list[int] = []

    async def record(job: Job[Any], ctx: WorkerContext) -> Any:
        started.append(job.config["n"])
        return None

    # Posted before the service starts; the urgent one is listed last.
    ids = [await post_job(oada, name, "record", {"n": n}) for n in range(40)]
    ids.append(await post_job(oada, name, "record", {"n": 99}, options={"priority": 10}))
    service = make_service(concurrency=1)
    service.on("record", 10, record)
    async with service:
        for job_id in ids:
            await wait_for_status(oada, job_id, timeout=30)
    assert started[0] == 99
    assert started[1:] == list(range(40))


async def test_a_replica_starts_its_share_of_a_backlog_with_its_highest_priority_job(
    oada: OADAClient, make_service: Callable[..., Service], name: str
) -> None:
    started: list[str] = []

    async def record(job: Job[Any], ctx: WorkerContext) -> Any:
        started.append(ctx.job_id)
        return None

    service = make_service(concurrency=1, steal_after=60)
    service.on("record", 10, record)
    # Another replica holds a lease for the next hour: half the jobs are its.
    me, other = member_key(service.worker_id), "other-replica"
    lease = {"worker": other, "expires": iso(utc_now() + timedelta(hours=1))}
    await oada.ensure(workers_path(name), {}, tree=workers_tree(get_layout("classic")))
    await oada.put(workers_path(name), {other: lease}, content_type=JOBS_TYPE)

    def mine(job_id: str) -> bool:
        return owner(key_of(job_id), [me, other]) == me

    plain = [await post_job(oada, name, "record", {}) for _ in range(30)]
    # Urgent jobs listed last, until one falls in this replica's share.
    urgent: list[str] = []
    while not urgent or not mine(urgent[-1]):
        urgent.append(await post_job(oada, name, "record", {}, options={"priority": 10}))
    share = [job_id for job_id in plain if mine(job_id)]
    assert share
    async with service:
        for job_id in share:
            await wait_for_status(oada, job_id, timeout=30)
        await anyio.sleep(0.2)
        service.queues["_default"].scheduler.check_invariants()
    # Its own urgent job first, though read last; then its share in order;
    # nothing of the other replica's share.
    assert started == [urgent[-1], *share]


async def test_a_release_whose_answer_is_lost_writes_one_released_update(
    domain: str, make_service: Callable[..., Service], name: str
) -> None:
    started = anyio.Event()

    async def slow(job: Job[Any], ctx: WorkerContext) -> Any:
        started.set()
        await anyio.sleep(60)

    async with OADAClient(domain, "god") as client:
        real_put = client.put
        cut: list[str] = []

        async def put(path: str, data: Any, **options: Any) -> Any:
            response = await real_put(path, data, **options)
            updates = data.get("updates") if isinstance(data, dict) else None
            if updates and not cut and "released" in str(updates):
                cut.append(path)  # written, but the answer never comes back
                raise OADATransportError("connection reset", path=path)
            return response

        client.put = put  # type: ignore[method-assign]
        service = make_service(oada=client)
        service.on("slow", 60, slow)
        await service.start()
        job_id = await post_job(client, name, "slow")
        with anyio.fail_after(10):
            await started.wait()
        await service.stop(grace=0)
        body = (await client.get(f"/{job_id}")).data
    assert cut
    statuses = [update["status"] for update in body["updates"].values()]
    assert statuses.count("released") == 1, statuses
    assert body["status"] == "pending"


@pytest.mark.parametrize("timeout", ["30s", "abc", float("inf"), float("nan"), True])
async def test_a_timeout_that_is_not_a_number_of_seconds_is_a_clear_error(
    make_service: Callable[..., Service], timeout: Any
) -> None:
    service = make_service()
    with pytest.raises(ValueError, match=r"expected timeout as a (finite )?number of seconds"):
        service.on("ok", timeout, ok)
    with pytest.raises(ValueError, match=r"expected lease as a (finite )?number of seconds"):
        service.configure(lease=timeout)


async def test_a_replica_starting_beside_a_running_group_keeps_the_group_whole(
    oada: OADAClient, make_service: Callable[..., Service], name: str
) -> None:
    gate = anyio.Event()
    running: list[str] = []

    async def member(job: Job[Any], ctx: WorkerContext) -> Any:
        running.append(job.key or "")
        assert len(running) == 1, running  # the group runs one at a time
        try:
            if job.config.get("first"):
                await gate.wait()
        finally:
            running.remove(job.key or "")
        return None

    first, second = make_service(sweep_interval=0.1), make_service(sweep_interval=0.1)
    for replica in (first, second):
        replica.on("member", 30, member)
    async with first:
        a = await post_job(oada, name, "member", {"first": True}, options={"group": "g"})
        b = await post_job(oada, name, "member", {}, options={"group": "g"})
        with anyio.fail_after(10):
            while not running:
                await anyio.sleep(0.02)
        async with second:
            await anyio.sleep(0.3)  # the replica reads both, and sweeps
            gate.set()
            for job_id in (a, b):
                assert (await wait_for_status(oada, job_id))["status"] == "success"
            for replica in (first, second):
                assert replica.state is ServiceState.RUNNING
                replica.queues["_default"].scheduler.check_invariants()


async def test_a_shielded_function_that_is_cancelled_is_filed_as_cancelled_in_time(
    oada: OADAClient, make_service: Callable[..., Service], name: str
) -> None:
    released = anyio.Event()
    started = anyio.Event()

    async def stubborn(job: Job[Any], ctx: WorkerContext) -> Any:
        started.set()
        with anyio.CancelScope(shield=True):
            await released.wait()
        return {"late": True}

    service = make_service(cancel_grace=0.2)
    service.on("stubborn", 60, stubborn)
    async with service:
        try:
            job_id = await post_job(oada, name, "stubborn")
            with anyio.fail_after(5):
                await started.wait()
            assert await request_cancel(oada, job_id)
            body = await wait_for_status(oada, job_id, timeout=5)
            assert body["result"]["failType"] == "cancelled"
        finally:
            released.set()
