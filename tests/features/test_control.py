"""Live control from OADA, across two replicas of one service on one embedded
server: pausing types and the whole queue, per-type settings overriding the
code's (invalid ones refused and reported), per-type concurrency and rate
limits."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

import anyio
import pytest

from oada_jobs import Job, Json, Service, WorkerContext
from oada_jobs.client import OADAClient
from oada_jobs.control import (
    CONTROL_CONTENT_TYPE,
    Control,
    TypeSettings,
    control_path,
    control_tree,
    parse_control,
)
from oada_jobs.job import iso, parse_time, utc_now
from oada_jobs.limits import limits_path
from oada_jobs.requester import post_job
from oada_jobs.scheduler import EntryState
from oada_jobs.testing import EmbeddedServer, wait_for_job

from .conftest import make_service


@asynccontextmanager
async def running(*services: Service) -> AsyncIterator[None]:
    async with AsyncExitStack() as stack:
        for service in services:
            await stack.enter_async_context(service)
        yield


async def wait_for(predicate: Callable[[], bool], timeout: float = 10) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.02)


def held(service: Service) -> int:
    return service.queues["_default"].scheduler.counts()[EntryState.HELD.value]


async def put_control(oada: OADAClient, name: str, body: dict[str, Any]) -> None:
    await oada.put(control_path(name), body, content_type=CONTROL_CONTENT_TYPE)


def replicas(server: EmbeddedServer, name: str, **options: Any) -> tuple[Service, Service]:
    return make_service(server, name, **options), make_service(server, name, **options)


async def test_a_paused_type_stays_pending_on_every_replica_until_resumed(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    ran: list[str] = []
    one, two = replicas(server, name)
    for service in (one, two):

        @service.on("report", 10)
        async def report(job: Job[Json], ctx: WorkerContext) -> Json:
            ran.append("report")
            return {}

        @service.on("mail", 10)
        async def mail(job: Job[Json], ctx: WorkerContext) -> Json:
            ran.append("mail")
            return {}

    async with running(one, two):
        await put_control(oada, name, {"paused": {"types": {"report": True}}})
        await wait_for(lambda: one.control.paused("report") and two.control.paused("report"))
        reports = [await post_job(oada, name, "report") for _ in range(3)]
        mail = await post_job(oada, name, "mail")
        await wait_for_job(oada, mail, 10, filed="classic")
        await wait_for(lambda: held(one) == 3 and held(two) == 3)
        assert ran == ["mail"]
        for job_id in reports:
            assert (await oada.get(f"/{job_id}")).data.get("status") is None

        # The whole queue: nothing starts, not even a type not named.
        await put_control(oada, name, {"paused": {"all": True, "types": {"report": False}}})
        await wait_for(lambda: one.control.paused_all and two.control.paused_all)
        other = await post_job(oada, name, "mail")
        await wait_for(lambda: held(one) == 4 and held(two) == 4)
        assert ran == ["mail"]

        await put_control(oada, name, {"paused": {"all": False}})
        for job_id in [*reports, other]:
            job = await wait_for_job(oada, job_id, 10, filed="classic")
            assert job.status == "success"
    assert sorted(ran) == ["mail", "mail", "report", "report", "report"]


async def test_a_running_job_of_a_paused_type_finishes(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    service = make_service(server, name)
    started, go = anyio.Event(), anyio.Event()

    @service.on("long", 10)
    async def long(job: Job[Json], ctx: WorkerContext) -> Json:
        started.set()
        await go.wait()
        return {"done": True}

    async with service:
        job_id = await post_job(oada, name, "long")
        await started.wait()
        await put_control(oada, name, {"paused": {"all": True}})
        await wait_for(lambda: service.control.paused_all)
        go.set()
        job = await wait_for_job(oada, job_id, 10, filed="classic")
    assert job.result == {"done": True}


async def test_type_settings_override_the_code_live_and_bad_ones_are_refused(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    service = make_service(server, name)

    @service.on("nap", 10, tries=2)
    async def nap(job: Job[Json], ctx: WorkerContext) -> Json:
        await anyio.sleep(1)
        return {}

    async with service:
        # Refused: the code's values stay, and the service says why.
        await put_control(oada, name, {"types": {"nap": {"tries": 0, "timeout": "soon"}}})
        await wait_for(lambda: "types/nap" in service.control_errors)
        status = (await oada.get(f"{control_path(name)}/status")).data
        assert status["ok"] is False
        assert "tries" in status["errors"]["types/nap"]
        assert "timeout" in status["errors"]["types/nap"]
        worker = service.worker_for("nap")
        assert worker is not None
        assert worker.tries == 2
        assert worker.timeout == 10

        await put_control(oada, name, {"types": {"nap": {"timeout": 0.2, "tries": 1}}})
        await wait_for(lambda: not service.control_errors)
        worker = service.worker_for("nap")
        assert worker is not None
        assert worker.timeout == 0.2
        assert worker.tries == 1
        status = (await oada.get(f"{control_path(name)}/status")).data
        assert status["ok"] is True
        assert status["errors"] == {}
        job = await wait_for_job(oada, await post_job(oada, name, "nap"), 10, filed="classic")
    assert job.status == "failure"
    assert job.result["failType"] == "timeout"


async def test_type_concurrency_holds_over_two_replicas(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    now_running, most = 0, 0
    one, two = replicas(server, name, concurrency=5)
    for service in (one, two):

        @service.on("scan", 10, concurrency=2)
        async def scan(job: Job[Json], ctx: WorkerContext) -> Json:
            nonlocal now_running, most
            now_running += 1
            most = max(most, now_running)
            await anyio.sleep(0.3)
            now_running -= 1
            return {}

    async with running(one, two):
        jobs = [await post_job(oada, name, "scan") for _ in range(8)]
        for job_id in jobs:
            assert (await wait_for_job(oada, job_id, 30, filed="classic")).status == "success"
    assert most == 2

    # Raised live from OADA: more at once.
    now_running, most = 0, 0
    one, two = replicas(server, name, concurrency=5)
    for service in (one, two):
        service.on("scan", 10, scan, concurrency=2)
    async with running(one, two):
        await put_control(oada, name, {"types": {"scan": {"concurrency": 4}}})
        await wait_for(lambda: all(s.worker_for("scan").concurrency == 4 for s in (one, two)))  # type: ignore[union-attr]
        jobs = [await post_job(oada, name, "scan") for _ in range(8)]
        for job_id in jobs:
            await wait_for_job(oada, job_id, 30, filed="classic")
    assert most == 4


async def test_rate_limit_holds_over_two_replicas(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    starts: list[float] = []
    one, two = replicas(server, name)
    for service in (one, two):

        @service.on("call", 10, rate_limit=(3, 1.0))
        async def call(job: Job[Json], ctx: WorkerContext) -> Json:
            starts.append(time.monotonic())
            return {}

    async with running(one, two):
        jobs = [await post_job(oada, name, "call") for _ in range(7)]
        for job_id in jobs:
            assert (await wait_for_job(oada, job_id, 30, filed="classic")).status == "success"
    starts.sort()
    assert len(starts) == 7
    # Any four starts span a full period (less the time from admission to
    # the call, which is a few requests).
    for first, fourth in zip(starts, starts[3:], strict=False):
        assert fourth - first >= 0.9
    assert starts[-1] - starts[0] >= 1.9


@pytest.mark.parametrize(
    "body",
    [
        {"paused": {"all": "yes"}},
        {"paused": ["a"]},
        {"paused": {"types": {"a": 1}}},
        {"paused": {"types": {"a": False}, "other": 1}},
    ],
)
def test_a_bad_pause_keeps_the_pause_before(body: dict[str, Any]) -> None:
    before = Control(False, frozenset({"a"}))
    after, errors = parse_control(body, before)
    assert list(errors) == ["paused"]
    assert after.paused("a")


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"types": {"a": {"rateLimit": {"limit": 0, "period": 1}}}}, "types/a"),
        ({"types": {"a": {"concurrency": True}}}, "types/a"),
        ({"types": {"a": {"tries": "3"}}}, "types/a"),
        ({"types": {"a": {"timeout": float("inf")}}}, "types/a"),
        ({"types": {"a": {"timeout": -1}}}, "types/a"),
        ({"types": {"a": {"unknown": 1}}}, "types/a"),
        ({"types": ["a"]}, "types"),
    ],
)
def test_bad_type_settings_keep_the_settings_before(body: dict[str, Any], where: str) -> None:
    before = Control(types={"a": TypeSettings(tries=4)})
    after, errors = parse_control(body, before)
    assert list(errors) == [where]
    assert after.settings("a") == TypeSettings(tries=4)


def test_good_settings_replace_and_removed_ones_go_back_to_the_code() -> None:
    before = Control(types={"a": TypeSettings(tries=4), "b": TypeSettings(priority=2)})
    body = {"types": {"a": {"tries": 2, "rateLimit": {"limit": 5, "period": 60}}, "b": None}}
    after, errors = parse_control(body, before)
    assert errors == {}
    settings = after.settings("a")
    assert settings is not None
    assert settings.tries == 2
    assert settings.rate_limit is not None
    assert settings.rate_limit.limit == 5
    assert after.settings("b") is None


async def test_a_slot_of_a_dead_replica_frees_when_it_expires(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    service = make_service(server, name)
    started: list[datetime] = []

    @service.on("scan", 10, concurrency=1)
    async def scan(job: Job[Json], ctx: WorkerContext) -> Json:
        started.append(utc_now())
        return {}

    # The only slot, taken by a replica that is gone, for 1.5 s more.
    expires = utc_now() + timedelta(seconds=1.5)
    dead = {"job": "resources/gone", "worker": "dead", "expires": iso(expires)}
    await oada.ensure(limits_path(name), {}, tree=control_tree())
    await oada.put(
        limits_path(name), {"scan": {"slots": {"0": dead}}}, content_type=CONTROL_CONTENT_TYPE
    )
    async with service:
        job_id = await post_job(oada, name, "scan")
        job = await wait_for_job(oada, job_id, 10, filed="classic")
    assert job.status == "success"
    assert started[0] >= expires
    slots = (await oada.get(limits_path(name))).data["scan"]["slots"]
    assert slots["0"] is None  # freed when the job ended


async def test_a_slot_is_renewed_while_its_job_finishes_during_a_stop(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    service = make_service(server, name, lease=0.6, shutdown_grace=5)
    started, finish = anyio.Event(), anyio.Event()
    seen: list[datetime] = []

    @service.on("scan", 10, concurrency=1)
    async def scan(job: Job[Json], ctx: WorkerContext) -> Json:
        started.set()
        await finish.wait()
        return {}

    async def check_then_finish() -> None:
        # Three leases into the stop's grace period, the slot still holds.
        await anyio.sleep(1.8)
        slot = (await oada.get(limits_path(name))).data["scan"]["slots"]["0"]
        seen.append(parse_time(slot["expires"]))  # type: ignore[arg-type]
        seen.append(utc_now())
        finish.set()

    async with anyio.create_task_group() as group:
        async with service:
            job_id = await post_job(oada, name, "scan")
            await started.wait()
            group.start_soon(check_then_finish)
            stopping = anyio.current_time()
        stopped = anyio.current_time() - stopping
    expires, now = seen
    assert expires > now
    # The stop ended with the job, not at the end of the grace period.
    assert stopped < 4
    assert (await oada.get(f"/{job_id}")).data["status"] == "success"
