"""How one job runs: timeouts, bad input, claims, logging, typed configs, request counts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import anyio
import httpx
import pytest
from pydantic import BaseModel

from oada_jobs import ClientClosed, Job, JobError, Json, Retry, Service, WorkerContext
from oada_jobs.client import OADAClient
from oada_jobs.job import Lease, request_cancel
from oada_jobs.testing import post_job, wait_for_job
from oada_jobs.tree import JOBS_TYPE, get_layout

from .conftest import LogWaiter, key_of, wait_for_status

CLASSIC = get_layout("classic")


async def test_a_timeout_really_cancels_and_no_late_write_lands(
    make_service: Callable[..., Service], oada: OADAClient, name: str
) -> None:
    service = make_service()
    finished_sleep = False
    refused = anyio.Event()

    @service.on("slow", timeout=timedelta(milliseconds=300))
    async def slow(job: Job, ctx: WorkerContext) -> Json:
        nonlocal finished_sleep
        try:
            await anyio.sleep(30)
            finished_sleep = True
        finally:
            # A cancelled function that still tries to write (even shielded)
            # is refused: nothing lands on the job.
            with anyio.CancelScope(shield=True):
                try:
                    await ctx.oada.put(f"/{ctx.job_id}", {"late": True})
                except ClientClosed:
                    refused.set()
                with contextlib.suppress(ClientClosed):
                    await ctx.log.info("late-update")
        return {"never": True}

    async with service:
        job_id = await post_job(oada, name, "slow", {})
        job = await wait_for_job(oada, job_id, 10, filed="classic")
        with anyio.fail_after(5):
            await refused.wait()
    assert not finished_sleep
    assert job.status == "failure"
    assert isinstance(job.result, dict)
    assert job.result["failType"] == "timeout"
    assert "0.3 s timeout" in job.result["message"]
    assert "late" not in job.raw
    assert "late-update" not in [u["status"] for u in job.updates.values()]
    typed = CLASSIC.day_index_path(name, "failure", anyio_date(job), "timeout")
    assert key_of(job_id) in (await oada.get(typed)).data


def anyio_date(job: Job[Any]) -> Any:
    from oada_jobs.job import parse_time

    moment = parse_time(job.updates[max(job.updates)]["time"])
    assert moment is not None
    return moment.date()


@pytest.mark.parametrize("server", ["none", "reference"], indirect=True)
async def test_one_bad_link_does_not_stop_the_batch(
    make_service: Callable[..., Service], oada: OADAClient, name: str, logs: LogWaiter
) -> None:
    service = make_service()

    @service.on("echo", 10)
    async def echo(job: Job, ctx: WorkerContext) -> Json:
        return {"n": job.config["n"]}

    async with service:
        first = await oada.create_resource(
            {"service": name, "type": "echo", "config": {"n": 1}}, content_type=JOBS_TYPE
        )
        second = await oada.create_resource(
            {"service": name, "type": "echo", "config": {"n": 2}}, content_type=JOBS_TYPE
        )
        # One PUT, one change: good links around a non-link and a dangling link.
        await oada.put(
            CLASSIC.pending_path(name),
            {
                "a-first": {"_id": first},
                "b-garbage": "not a link",
                "c-dangling": {"_id": "resources/does-not-exist-anywhere"},
                "d-second": {"_id": second},
            },
            content_type=JOBS_TYPE,
        )
        assert (await wait_for_status(oada, first))["result"] == {"n": 1}
        assert (await wait_for_status(oada, second))["result"] == {"n": 2}
        await logs.wait_for(lambda r: "b-garbage" in r.getMessage())
        await logs.wait_for(lambda r: "does not exist" in r.getMessage())
    warning = next(r for r in logs.records if "b-garbage" in r.getMessage())
    assert warning.levelno == logging.WARNING
    assert "expected a link" in warning.getMessage()


async def test_a_job_held_by_a_live_worker_is_skipped_and_an_expired_lease_is_taken_over(
    make_service: Callable[..., Service], oada: OADAClient, name: str
) -> None:
    service = make_service(sweep_interval=0.2)
    ran: list[str] = []

    @service.on("echo", 10)
    async def echo(job: Job, ctx: WorkerContext) -> Json:
        ran.append(job.oada_id)
        return {"ok": True}

    def running(expires_in: float) -> dict[str, Any]:
        lease = Lease.new("some-other-worker", timedelta(seconds=expires_in))
        return {"service": name, "type": "echo", "status": "running", "lease": lease.to_json()}

    async with service:
        dead = await oada.create_resource(running(-5), content_type=JOBS_TYPE)
        expiring = await oada.create_resource(running(3.0), content_type=JOBS_TYPE)
        await oada.put(
            CLASSIC.pending_path(name),
            {key_of(dead): {"_id": dead}, key_of(expiring): {"_id": expiring}},
            tree=CLASSIC.tree,
        )
        # The dead worker's job is taken over at once...
        assert (await wait_for_job(oada, dead, 10)).status == "success"
        assert ran == [dead]
        # ...the live one only by a sweep after its lease ran out.
        assert (await wait_for_job(oada, expiring, 10)).status == "success"
    assert ran == [dead, expiring]


class EmailConfig(BaseModel):
    to: str
    count: int


async def test_typed_configs_are_validated_and_bad_ones_fail_with_the_errors(
    make_service: Callable[..., Service], oada: OADAClient, name: str
) -> None:
    service = make_service()
    seen: list[EmailConfig] = []

    @service.on("email", 10)
    async def send(job: Job[EmailConfig], ctx: WorkerContext) -> Json:
        seen.append(job.config)
        return {"to": job.config.to, "count": job.config.count}

    class Other(BaseModel):
        size: int

    async def explicit(job: Job, ctx: WorkerContext) -> Json:
        return {"size": job.config.size}

    service.on("explicit", 10, explicit, config=Other)

    async with service:
        good = await post_job(oada, name, "email", EmailConfig(to="a@example.org", count=2))
        bad = await post_job(oada, name, "email", {"to": "x", "count": "many"})
        other = await post_job(oada, name, "explicit", {"size": "3"})
        good_job = await wait_for_job(oada, good, 10)
        bad_job = await wait_for_job(oada, bad, 10)
        other_job = await wait_for_job(oada, other, 10)
    assert good_job.result == {"to": "a@example.org", "count": 2}
    assert isinstance(seen[0], EmailConfig)
    assert other_job.result == {"size": 3}
    assert bad_job.status == "failure"
    assert isinstance(bad_job.result, dict)
    assert bad_job.result["name"] == "ValidationError"
    assert bad_job.result["failType"] == "invalid-config"
    [error] = bad_job.result["errors"]
    assert error["loc"] == ["count"]
    assert error["type"] == "int_parsing"


async def test_logging_levels_and_log_records_carry_the_job_context(
    make_service: Callable[..., Service],
    oada: OADAClient,
    name: str,
    logs: LogWaiter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OADA_JOBS_LOGGING", "debug")
    service = make_service()

    @service.on("chatty", 10)
    async def chatty(job: Job, ctx: WorkerContext) -> Json:
        await ctx.log.info("i", "info")
        await ctx.log.debug("d", {"level": "debug"})
        await ctx.log.trace("t", "trace is off")
        await ctx.log.error("e", "an error update")
        ctx.logger.info("hello from the work function")
        return None

    async with service:
        job_id = await post_job(oada, name, "chatty", {"traceId": "trace-123"})
        job = await wait_for_job(oada, job_id, 10)
    statuses = [job.updates[k]["status"] for k in sorted(job.updates)]
    assert statuses == ["started", "i", "d", "e", "success"]
    assert job.result is None
    record = next(
        r for r in logs.records if r.getMessage().endswith("hello from the work function")
    )
    assert record.__dict__["service"] == name
    assert record.__dict__["queue"] == "_default"
    assert record.__dict__["job_id"] == job_id
    assert record.__dict__["job_type"] == "chatty"
    assert record.__dict__["trace_id"] == "trace-123"


async def test_unregistered_types_and_non_json_results_fail_clearly(
    make_service: Callable[..., Service], oada: OADAClient, name: str
) -> None:
    service = make_service()

    @service.on("odd", 10)
    async def odd(job: Job, ctx: WorkerContext) -> Json:
        return {"when": object()}  # type: ignore[dict-item]

    @service.on("gone", 10)
    async def gone(job: Job, ctx: WorkerContext) -> Json:
        return {}

    service.off("gone")
    async with service:
        odd_job = await wait_for_job(oada, await post_job(oada, name, "odd", {}), 10)
        gone_job = await wait_for_job(oada, await post_job(oada, name, "gone", {}), 10)
    assert isinstance(odd_job.result, dict)
    assert odd_job.result["name"] == "TypeError"
    assert "expected the work function to return JSON" in odd_job.result["message"]
    assert isinstance(gone_job.result, dict)
    assert "no work function is registered for job type 'gone'" in gone_job.result["message"]


async def _fail_soon() -> None:
    raise ValueError("a child task failed")


class Bail(BaseException):
    """Not an Exception: what a work function should never raise, but may."""


async def test_a_work_function_letting_a_cancellation_or_base_exception_out_only_fails_its_job(
    make_service: Callable[..., Service], oada: OADAClient, name: str
) -> None:
    service = make_service()

    @service.on("awaits-cancelled", 10)
    async def awaits_cancelled(job: Job, ctx: WorkerContext) -> Json:
        # On Python 3.11 this leaves the task's cancelling() raised, although
        # nothing cancels it (the child failed after the group's body ended).
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(_fail_soon())
        except* ValueError:
            pass
        # Not a cancellation of this job: a task it awaits was cancelled.
        task = asyncio.ensure_future(asyncio.sleep(10))
        task.cancel()
        await task
        return {}

    @service.on("bails", 10)
    async def bails(job: Job, ctx: WorkerContext) -> Json:
        raise Bail("giving up")

    @service.on("echo", 10)
    async def echo(job: Job, ctx: WorkerContext) -> Json:
        return {"ok": True}

    async with service:
        cancelled = await wait_for_job(oada, await post_job(oada, name, "awaits-cancelled", {}), 10)
        bailed = await wait_for_job(oada, await post_job(oada, name, "bails", {}), 10)
        # The queue goes on.
        after = await wait_for_job(oada, await post_job(oada, name, "echo", {}), 10)
    assert cancelled.status == "failure"
    assert isinstance(cancelled.result, dict)
    assert cancelled.result["name"] == "CancelledError"
    assert cancelled.tries == 1
    assert bailed.status == "failure"
    assert isinstance(bailed.result, dict)
    assert (bailed.result["name"], bailed.result["message"]) == ("Bail", "giving up")
    assert after.status == "success"


async def test_an_outcome_that_cannot_be_recorded_fails_the_job_once_saying_why(
    make_service: Callable[..., Service], oada: OADAClient, name: str
) -> None:
    service = make_service()
    runs: Counter[str] = Counter()

    @service.on("deep", 10)
    async def deep(job: Job, ctx: WorkerContext) -> Json:
        runs["deep"] += 1
        result: Any = "bottom"
        for _ in range(70):  # deeper than the server stores
            result = {"d": result}
        return result

    @service.on("set-details", 10)
    async def set_details(job: Job, ctx: WorkerContext) -> Json:
        runs["set-details"] += 1
        raise JobError("rejected", "smtp", details={"codes": {550, 551}})

    @service.on("surrogate", 10)
    async def surrogate(job: Job, ctx: WorkerContext) -> Json:
        runs["surrogate"] += 1
        raise ValueError(b"bad \xff byte".decode("utf-8", "surrogateescape"))

    async with service:
        ids = {
            kind: await post_job(oada, name, kind, {})
            for kind in ("deep", "set-details", "surrogate")
        }
        jobs = {kind: await wait_for_job(oada, job_id, 10) for kind, job_id in ids.items()}
    assert runs == {"deep": 1, "set-details": 1, "surrogate": 1}
    for kind, job in jobs.items():
        assert job.status == "failure", kind
        assert job.tries == 1, kind
        assert isinstance(job.result, dict)
        assert job.result["failType"] == "invalid-result", kind
        assert "outcome could not be recorded" in job.result["message"], kind
    assert "the server refused it (400" in jobs["deep"].result["message"]
    assert "it is not JSON" in jobs["set-details"].result["message"]
    assert "surrogates not allowed" in jobs["surrogate"].result["message"]


class CountingTransport(httpx.AsyncBaseTransport):
    """Counts the HTTP requests a client sends (watches use the WebSocket)."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.requests: list[tuple[str, str]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.method, request.url.path))
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_job_costs_at_most_five_requests_in_steady_state(
    make_service: Callable[..., Service], oada: OADAClient, domain: str, name: str
) -> None:
    counting = CountingTransport()
    jobs = 20
    async with OADAClient(domain, "god", connection="http", transport=counting) as counted:
        service = make_service(oada=counted)

        @service.on("echo", 10)
        async def echo(job: Job, ctx: WorkerContext) -> Json:
            return {"n": job.config["n"]}

        async with service:
            # The first job creates the day list (a tree PUT); not steady state.
            await wait_for_job(
                oada, await post_job(oada, name, "echo", {"n": -1}), 10, filed="classic"
            )
            counting.requests.clear()
            ids = [await post_job(oada, name, "echo", {"n": n}) for n in range(jobs)]
            for job_id in ids:
                await wait_for_job(oada, job_id, 10, filed="classic")
            requests = list(counting.requests)
    by_method = Counter(method for method, _ in requests)
    assert len(requests) <= 5 * jobs, requests
    assert by_method == {"GET": jobs, "PUT": 3 * jobs, "DELETE": jobs}


async def test_cancel_requests_end_pending_and_running_jobs_as_cancelled(
    make_service: Callable[..., Service], oada: OADAClient, name: str
) -> None:
    service = make_service()
    started = anyio.Event()
    ran: list[str] = []

    @service.on("wait", 30)
    async def wait(job: Job, ctx: WorkerContext) -> Json:
        ran.append(job.oada_id)
        started.set()
        await anyio.sleep_forever()
        return None

    # Cancelled before any service saw it.
    early = await post_job(oada, name, "wait", {})
    assert await request_cancel(oada, early, "changed my mind")
    async with service:
        early_job = await wait_for_job(oada, early, 10, filed="classic")
        running = await post_job(oada, name, "wait", {})
        with anyio.fail_after(10):
            await started.wait()
        assert await request_cancel(oada, running, "taking too long")
        running_job = await wait_for_job(oada, running, 10, filed="classic")
    assert ran == [running]
    for job in (early_job, running_job):
        assert job.status == "failure"
        assert isinstance(job.result, dict)
        assert job.result["name"] == "JobCancelled"
        assert job.result["failType"] == "cancelled"
        typed = CLASSIC.day_index_path(name, "failure", anyio_date(job), "cancelled")
        assert key_of(job.oada_id) in (await oada.get(typed)).data
    assert "while it ran" in str(running_job.result)
    # A finished job is never marked.
    assert not await request_cancel(oada, running)
    assert (await oada.get(f"/{running}")).data["status"] == "failure"


async def test_at_most_concurrency_jobs_run_at_once(
    make_service: Callable[..., Service], oada: OADAClient, name: str
) -> None:
    service = make_service(concurrency=3)
    active = peak = 0
    full = anyio.Event()

    @service.on("busy", 10)
    async def busy(job: Job, ctx: WorkerContext) -> Json:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        if active == 3:
            full.set()
        await full.wait()
        await anyio.sleep(0.01)
        active -= 1
        return None

    async with service:
        ids = [await post_job(oada, name, "busy", {}) for _ in range(10)]
        jobs = [await wait_for_job(oada, job_id, 10) for job_id in ids]
    assert [job.status for job in jobs] == ["success"] * 10
    assert peak == 3


async def test_a_backlog_is_read_as_room_frees_up_each_job_once(
    make_service: Callable[..., Service], oada: OADAClient, domain: str, name: str
) -> None:
    counting = CountingTransport()
    release = anyio.Event()
    running = 0
    two_running = anyio.Event()

    def job_reads() -> list[str]:
        return [
            path
            for method, path in counting.requests
            if method == "GET" and path.startswith("/resources/")
        ]

    async with OADAClient(domain, "god", connection="http", transport=counting) as counted:
        service = make_service(oada=counted, concurrency=2, keep_jobs=5)

        @service.on("hold", 10)
        async def hold(job: Job, ctx: WorkerContext) -> Json:
            nonlocal running
            running += 1
            if running == 2:
                two_running.set()
            await release.wait()
            return None

        ids = [await post_job(oada, name, "hold", {}) for _ in range(30)]
        async with service:
            scheduler = service.queues["_default"].scheduler
            with anyio.fail_after(10):
                await two_running.wait()
                while not scheduler.full:
                    await scheduler.changed.wait()
            # Two running, five read and waiting: the other 23 are not read yet.
            assert scheduler.held_jobs == 5
            assert len(job_reads()) == 2 + 5
            release.set()
            for job_id in ids:
                assert (await wait_for_job(oada, job_id, 10)).status == "success"
        assert sorted(job_reads()) == sorted(f"/{job_id}" for job_id in ids)


async def test_a_job_already_finished_is_only_filed(
    make_service: Callable[..., Service], oada: OADAClient, name: str
) -> None:
    service = make_service()
    ran: list[str] = []

    @service.on("echo", 10)
    async def echo(job: Job, ctx: WorkerContext) -> Json:
        ran.append(job.oada_id)
        return {}

    job_id = await oada.create_resource(
        {
            "service": name,
            "type": "echo",
            "status": "success",
            "result": {"done": "elsewhere"},
            "updates": {"k1": {"status": "success", "time": "2026-01-02T03:04:05.000Z"}},
        },
        content_type=JOBS_TYPE,
    )
    await oada.put(CLASSIC.pending_path(name), {key_of(job_id): {"_id": job_id}}, tree=CLASSIC.tree)
    async with service:
        job = await wait_for_job(oada, job_id, 10, filed="classic")
    assert ran == []
    assert job.result == {"done": "elsewhere"}
    from datetime import date

    # Filed under the day it finished.
    filed = (await oada.get(CLASSIC.day_index_path(name, "success", date(2026, 1, 2)))).data
    assert filed[key_of(job_id)]["_id"] == job_id


async def test_leases_are_renewed_so_a_long_job_is_not_taken_over(
    make_service: Callable[..., Service], oada: OADAClient, name: str
) -> None:
    runs: list[str] = []

    def replica() -> Service:
        service = make_service(lease=1.0, sweep_interval=0.1)

        @service.on("long", 10)
        async def long(job: Job, ctx: WorkerContext) -> Json:
            runs.append(service.worker_id)
            await anyio.sleep(2.5)  # past two lease periods: held only by renewal
            return None

        return service

    async with replica(), replica():
        job = await wait_for_job(oada, await post_job(oada, name, "long", {}), 10)
    assert job.status == "success"
    assert len(runs) == 1


async def test_a_worker_that_lost_its_lease_abandons_the_job(
    make_service: Callable[..., Service], oada: OADAClient, name: str, logs: LogWaiter
) -> None:
    service = make_service()
    started, stopped = anyio.Event(), anyio.Event()

    @service.on("long", 30)
    async def long(job: Job, ctx: WorkerContext) -> Json:
        started.set()
        try:
            await anyio.sleep(30)
        finally:
            stopped.set()
        return {"late": True}

    async with service:
        job_id = await post_job(oada, name, "long", {})
        with anyio.fail_after(10):
            await started.wait()
        # As if this worker had stalled and another one had claimed the job.
        other = Lease.new("another-worker", timedelta(seconds=60))
        await oada.put(f"/{job_id}", {"lease": other.to_json()}, content_type=JOBS_TYPE)
        with anyio.fail_after(10):
            await stopped.wait()
        await logs.wait_for(lambda r: "another worker claimed the job" in r.getMessage())
    data = (await oada.get(f"/{job_id}")).data
    assert data["status"] == "running"
    assert data["lease"]["worker"] == "another-worker"
    assert "result" not in data


async def test_retry_runs_a_job_again_later_up_to_its_tries(
    make_service: Callable[..., Service], oada: OADAClient, name: str
) -> None:
    service = make_service()
    attempts: Counter[str] = Counter()

    @service.on("flaky", 10, tries=3)
    async def flaky(job: Job, ctx: WorkerContext) -> Json:
        attempts[job.oada_id] += 1
        if attempts[job.oada_id] < job.config["succeed_on"]:
            raise Retry(defer=0.2, reason="upstream busy")
        return {"attempt": attempts[job.oada_id]}

    async with service:
        second = await post_job(oada, name, "flaky", {"succeed_on": 2})
        never = await post_job(oada, name, "flaky", {"succeed_on": 10})
        ok = await wait_for_job(oada, second, 10, filed="classic")
        failed = await wait_for_job(oada, never, 10, filed="classic")
    assert ok.result == {"attempt": 2}
    assert [ok.updates[k]["status"] for k in sorted(ok.updates)] == [
        "started",
        "retry",
        "started",
        "success",
    ]
    assert ok.raw["tries"] == 2
    assert attempts[never] == 3
    assert failed.status == "failure"
    assert isinstance(failed.result, dict)
    assert failed.result["failType"] == "retry-limit"
    assert failed.result["message"] == "upstream busy (try 3 of 3, no tries left)"
    assert failed.result["tries"] == 3
    with pytest.raises(ValueError, match="expected tries >= 1"):
        service.on("x", 1, flaky, tries=0)


async def test_links_of_jobs_finishing_together_are_written_together(
    make_service: Callable[..., Service], oada: OADAClient, domain: str, name: str
) -> None:
    counting = CountingTransport()
    started = 0
    all_started = anyio.Event()
    async with OADAClient(
        domain, "god", connection="http", transport=counting, concurrency=40
    ) as counted:
        service = make_service(oada=counted, concurrency=10)

        @service.on("together", 10)
        async def together(job: Job, ctx: WorkerContext) -> Json:
            nonlocal started
            started += 1
            if started == 10:
                all_started.set()
            await all_started.wait()
            return {"n": job.config["n"]}

        async with service:
            ids = [
                await oada.create_resource(
                    {"service": name, "type": "together", "config": {"n": n}},
                    content_type=JOBS_TYPE,
                )
                for n in range(10)
            ]
            await oada.put(
                CLASSIC.pending_path(name), {key_of(i): {"_id": i} for i in ids}, tree=CLASSIC.tree
            )
            jobs = [await wait_for_job(oada, job_id, 10, filed="classic") for job_id in ids]
    day = CLASSIC.day_index_path(name, "success", anyio_date(jobs[0]))
    link_writes = [path for method, path in counting.requests if method == "PUT" and path == day]
    assert 1 <= len(link_writes) < 10, link_writes
    filed = (await oada.get(day)).data
    assert {key_of(i) for i in ids} <= set(filed)
    assert all(filed[key_of(i)]["_id"] == i for i in ids)


async def test_an_outcome_is_not_written_over_a_job_another_worker_took_over(
    make_service: Callable[..., Service], oada: OADAClient, name: str, logs: LogWaiter
) -> None:
    service = make_service()
    started, go_on = anyio.Event(), anyio.Event()

    @service.on("slowpoke", 30)
    async def slowpoke(job: Job, ctx: WorkerContext) -> Json:
        started.set()
        await go_on.wait()
        return {"stale": True}

    async with service:
        job_id = await post_job(oada, name, "slowpoke", {})
        with anyio.fail_after(10):
            await started.wait()
        # As if this worker had stalled past its lease and another had
        # claimed, run and filed the job meanwhile.
        await oada.put(
            f"/{job_id}",
            {"status": "success", "result": {"by": "other"}, "lease": None},
            content_type=JOBS_TYPE,
        )
        go_on.set()
        await logs.wait_for(lambda r: "took the job over" in r.getMessage())
    data = (await oada.get(f"/{job_id}")).data
    assert data["result"] == {"by": "other"}
    assert data["status"] == "success"
