"""Scheduling end to end: retries with backoff, delayed starts, priority,
reschedules, unique keys, groups, job versions and typed results — including
service restarts in the middle of delays and retries."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
from pydantic import BaseModel

from oada_jobs import (
    Job,
    JobFailed,
    JobOptions,
    Json,
    Reschedule,
    Retry,
    Service,
    WorkerContext,
)
from oada_jobs.client import OADAClient
from oada_jobs.job import parse_time, request_cancel
from oada_jobs.requester import post_job, run_job
from oada_jobs.scheduler import Scheduler
from oada_jobs.testing import EmbeddedServer, wait_for_job

from .conftest import make_service


def times(job: Job[Any], status: str) -> list[datetime]:
    """When the job's updates of *status* were written, in order."""
    found = [
        parse_time(update["time"])
        for _key, update in sorted(job.updates.items())
        if update.get("status") == status
    ]
    return [moment for moment in found if moment is not None]


async def until(service: Service, predicate: Callable[[Scheduler], bool]) -> None:
    """Wait (on the scheduler's changes, not polling) until *predicate* holds for
    the service's default queue."""
    scheduler = service.queues["_default"].scheduler
    with anyio.fail_after(10):
        while not predicate(scheduler):
            await scheduler.changed.wait()


def statuses(job: Job[Any]) -> list[str]:
    return [update["status"] for _key, update in sorted(job.updates.items())]


# ------------------------------------------------------------------ retries


async def test_retries_wait_longer_each_time_and_record_every_reason(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    service = make_service(server, name)
    runs: list[float] = []

    @service.on("flaky", 10, tries=3, retry_delay=0.3, backoff=2, jitter=False)
    async def flaky(job: Job[Json], ctx: WorkerContext) -> Json:
        runs.append(anyio.current_time())
        if len(runs) < 3:
            raise Retry(reason=f"upstream busy ({len(runs)})")
        return {"runs": len(runs)}

    async with service:
        job_id = await post_job(oada, name, "flaky")
        job = await wait_for_job(oada, job_id, 15, filed="classic")
    assert job.status == "success"
    assert job.result == {"runs": 3}
    assert statuses(job) == ["started", "retry", "started", "retry", "started", "success"]
    retries = [u["meta"] for _k, u in sorted(job.updates.items()) if u["status"] == "retry"]
    assert retries == [
        "try 1 of 3 failed: upstream busy (1); next try in 0.3 s",
        "try 2 of 3 failed: upstream busy (2); next try in 0.6 s",
    ]
    # The last reason stays on the job; the waits grew 0.3 s then 0.6 s.
    assert job.raw["lastError"] == "upstream busy (2)"
    assert runs[1] - runs[0] >= 0.3
    assert runs[2] - runs[1] >= 0.6


async def test_exceptions_named_in_retry_on_are_retried_then_filed_as_failure(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    service = make_service(server, name)
    tries = 0

    @service.on("fetch", 10, tries=2, retry_on=ConnectionError, retry_delay=0.05)
    async def fetch(job: Job[Json], ctx: WorkerContext) -> Json:
        nonlocal tries
        tries += 1
        raise ConnectionError(f"refused ({tries})")

    @service.on("other", 10, tries=2, retry_on=ConnectionError, retry_delay=0.05)
    async def other(job: Job[Json], ctx: WorkerContext) -> Json:
        raise ValueError("not retried")

    async with service:
        retried = await wait_for_job(oada, await post_job(oada, name, "fetch"), 15)
        failed_at_once = await wait_for_job(oada, await post_job(oada, name, "other"), 15)
    assert tries == 2
    assert retried.status == "failure"
    assert isinstance(retried.result, dict)
    assert retried.result["name"] == "ConnectionError"
    assert retried.result["message"] == "ConnectionError: refused (2) (try 2 of 2, no tries left)"
    assert statuses(retried).count("started") == 2
    assert failed_at_once.raw["tries"] == 1
    assert isinstance(failed_at_once.result, dict)
    assert failed_at_once.result["message"] == "not retried"


async def test_a_job_may_ask_for_fewer_or_more_tries_than_its_type(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    service = make_service(server, name)

    @service.on("flaky", 10, tries=1, retry_delay=0.01)
    async def flaky(job: Job[Json], ctx: WorkerContext) -> Json:
        raise Retry(reason="again")

    async with service:
        job_id = await post_job(oada, name, "flaky", options={"tries": 3})
        job = await wait_for_job(oada, job_id, 15)
    assert job.raw["tries"] == 3
    assert isinstance(job.result, dict)
    assert job.result["failType"] == "retry-limit"


def test_retry_delays_back_off_exponentially_up_to_the_cap_with_optional_jitter() -> None:
    from oada_jobs.worker import Worker

    async def work(job: Job[Json], ctx: WorkerContext) -> Json:
        return None

    plain = Worker("t", work, None, retry_delay=1, backoff=3, max_retry_delay=20, jitter=False)
    assert [plain.retry_delay_for(n) for n in (1, 2, 3, 4)] == [1, 3, 9, 20]
    jittered = Worker("t", work, None, retry_delay=8, backoff=1, jitter=True)
    delays = {jittered.retry_delay_for(1) for _ in range(50)}
    assert all(4 <= delay <= 8 for delay in delays)
    assert len(delays) > 1


# ------------------------------------------------------------------ delayed starts


async def test_a_delayed_job_holds_no_slot_and_starts_at_its_time(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    service = make_service(server, name, concurrency=1)
    order: list[str] = []

    @service.on("step", 10)
    async def step(job: Job[Json], ctx: WorkerContext) -> Json:
        order.append(job.config["name"])
        return None

    not_before = datetime.now(UTC) + timedelta(seconds=1.5)
    async with service:
        later = await post_job(
            oada, name, "step", {"name": "later"}, options=JobOptions(not_before=not_before)
        )
        now = await post_job(oada, name, "step", {"name": "now"})
        ran_now = await wait_for_job(oada, now, 15)
        # The only slot was free for the undelayed job.
        assert ran_now.status == "success"
        assert order == ["now"]
        ran_later = await wait_for_job(oada, later, 15)
    assert order == ["now", "later"]
    assert times(ran_later, "started")[0] >= not_before - timedelta(milliseconds=1)


async def test_a_type_start_delay_is_written_on_the_job_and_kept(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    service = make_service(server, name)

    @service.on("settle", 10, start_delay=1.0)
    async def settle(job: Job[Json], ctx: WorkerContext) -> Json:
        return {"ok": True}

    async with service:
        job_id = await post_job(oada, name, "settle")
        job = await wait_for_job(oada, job_id, 15)
    assert statuses(job)[:2] == ["delayed", "started"]
    delayed, started = times(job, "delayed")[0], times(job, "started")[0]
    assert started - delayed >= timedelta(seconds=0.99)


async def test_a_delayed_job_survives_a_restart_and_runs_once_at_its_time(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    runs: list[datetime] = []

    async def work(job: Job[Json], ctx: WorkerContext) -> Json:
        runs.append(datetime.now(UTC))
        return None

    not_before = datetime.now(UTC) + timedelta(seconds=2)
    first = make_service(server, name)
    first.on("later", 10, work)
    async with first:
        job_id = await post_job(oada, name, "later", options={"notBefore": not_before.isoformat()})
        # Wait until the first service has seen the job and put it on a timer.
        await until(first, lambda s: s.counts()["waiting"] >= 1)
    assert runs == []
    second = make_service(server, name)
    second.on("later", 10, work)
    async with second:
        job = await wait_for_job(oada, job_id, 15, filed="classic")
    assert job.status == "success"
    assert len(runs) == 1
    assert runs[0] >= not_before


async def test_a_retry_survives_a_restart_in_the_middle_of_its_delay(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    tries: list[datetime] = []
    given_back = anyio.Event()

    async def flaky(job: Job[Json], ctx: WorkerContext) -> Json:
        tries.append(datetime.now(UTC))
        if job.tries == 1:
            given_back.set()
            raise Retry(defer=1.5, reason="try later")
        return {"tries": job.tries}

    first = make_service(server, name)
    first.on("flaky", 10, flaky, tries=3)
    async with first:
        job_id = await post_job(oada, name, "flaky")
        with anyio.fail_after(10):
            await given_back.wait()
        await until(first, lambda s: s.counts()["waiting"] >= 1)
    pending = (await oada.get(f"/{job_id}")).data
    assert pending["status"] == "pending"
    run_at = parse_time(pending["runAt"])
    assert run_at is not None
    second = make_service(server, name)
    second.on("flaky", 10, flaky, tries=3)
    async with second:
        job = await wait_for_job(oada, job_id, 15, filed="classic")
    assert job.status == "success"
    assert job.result == {"tries": 2}
    assert len(tries) == 2
    assert tries[1] >= run_at


# ------------------------------------------------------------------ priority


async def test_higher_priority_jobs_run_first(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    service = make_service(server, name, concurrency=1)
    gate = anyio.Event()
    holding = anyio.Event()
    order: list[str] = []

    @service.on("hold", 10)
    async def hold(job: Job[Json], ctx: WorkerContext) -> Json:
        holding.set()
        await gate.wait()
        return None

    @service.on("work", 10, priority=1)
    async def work(job: Job[Json], ctx: WorkerContext) -> Json:
        order.append(job.config["name"])
        return None

    async with service:
        await post_job(oada, name, "hold")
        with anyio.fail_after(10):
            await holding.wait()
        ids = [
            await post_job(oada, name, "work", {"name": "low"}, options={"priority": -5}),
            await post_job(oada, name, "work", {"name": "default"}),
            await post_job(oada, name, "work", {"name": "high"}, options={"priority": 10}),
            await post_job(oada, name, "work", {"name": "default-2"}),
        ]
        await until(service, lambda s: s.counts()["ready"] >= 4)
        gate.set()
        for job_id in ids:
            await wait_for_job(oada, job_id, 15)
    # Ties (the type's default 1) keep the order they were queued in.
    assert order == ["high", "default", "default-2", "low"]


# ------------------------------------------------------------------ reschedule


async def test_a_long_task_runs_in_steps_with_new_state(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    service = make_service(server, name)
    seen: list[Any] = []

    @service.on("crawl", 10, tries=1)
    async def crawl(job: Job[Json], ctx: WorkerContext) -> Json:
        seen.append(job.state)
        page = (job.state or {}).get("page", 0)
        if page < 2:
            # The new state replaces the old one (no merging of keys).
            state = {"page": page + 1} if page else {"page": 1, "cursor": "x"}
            raise Reschedule(defer=0.1, state=state)
        return {"pages": page}

    async with service:
        job = await wait_for_job(oada, await post_job(oada, name, "crawl"), 15)
    assert job.status == "success"
    assert job.result == {"pages": 2}
    assert seen == [None, {"page": 1, "cursor": "x"}, {"page": 2}]
    assert statuses(job).count("rescheduled") == 2
    # A step is not a failed try: tries=1 did not stop it.
    assert job.raw["tries"] == 1


def test_reschedule_needs_exactly_one_time() -> None:
    with pytest.raises(ValueError, match="exactly one of defer= or at="):
        Reschedule()
    with pytest.raises(ValueError, match="timezone-aware"):
        Reschedule(at=datetime(2030, 1, 1))


# ------------------------------------------------------------------ unique keys


async def test_a_duplicate_unique_key_is_refused_while_the_first_is_pending(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    service = make_service(server, name)
    gate = anyio.Event()
    started = anyio.Event()

    @service.on("invoice", 10)
    async def invoice(job: Job[Json], ctx: WorkerContext) -> Json:
        started.set()
        await gate.wait()
        return {"sent": job.config["n"]}

    async with service:
        first = await post_job(oada, name, "invoice", {"n": 1}, options={"uniqueKey": "inv-42"})
        with anyio.fail_after(10):
            await started.wait()
        # Posted past the unique index, as a requester without one would.
        second = await post_job(
            oada, name, "invoice", {"n": 2}, options={"uniqueKey": "inv-42"}, on_duplicate="post"
        )
        refused = await wait_for_job(oada, second, 15, filed="classic")
        other_key = await post_job(oada, name, "invoice", {"n": 3}, options={"uniqueKey": "inv-7"})
        gate.set()
        assert (await wait_for_job(oada, other_key, 15)).status == "success"
        assert (await wait_for_job(oada, first, 15, filed="classic")).status == "success"
        # Once the first left the queue, the key is free again.
        third = await post_job(oada, name, "invoice", {"n": 4}, options={"uniqueKey": "inv-42"})
        assert (await wait_for_job(oada, third, 15)).result == {"sent": 4}
    assert refused.status == "failure"
    assert isinstance(refused.result, dict)
    assert refused.result["failType"] == "duplicate"
    assert refused.result["details"] == {"duplicateOf": first}
    failed = await oada.get(
        f"/bookmarks/services/{name}/jobs-failure/day-index/{datetime.now(UTC).date().isoformat()}"
    )
    assert second.removeprefix("resources/") in failed.data


async def test_a_merged_duplicate_ends_with_the_first_jobs_outcome(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    service = make_service(server, name)
    gate = anyio.Event()
    started = anyio.Event()
    runs = 0

    @service.on("report", 10, unique="merge")
    async def report(job: Job[Json], ctx: WorkerContext) -> Json:
        nonlocal runs
        runs += 1
        started.set()
        await gate.wait()
        return {"rows": 12}

    async with service:
        first = await post_job(oada, name, "report", options={"uniqueKey": "daily"})
        with anyio.fail_after(10):
            await started.wait()
        second = await post_job(
            oada, name, "report", options={"uniqueKey": "daily"}, on_duplicate="post"
        )
        await until(service, lambda s: s.counts()["parked"] >= 1)
        gate.set()
        # The requester of the second job gets the first one's result.
        merged = await wait_for_job(oada, second, 15, filed="classic")
    assert runs == 1
    assert merged.status == "success"
    assert merged.result == {"rows": 12}
    assert f"merged into {first}" in merged.updates[sorted(merged.updates)[-1]]["meta"]


async def test_unique_allow_runs_duplicates(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    service = make_service(server, name)

    @service.on("ping", 10, unique="allow")
    async def ping(job: Job[Json], ctx: WorkerContext) -> Json:
        return {"n": job.config["n"]}

    async with service:
        ids = [
            await post_job(
                oada, name, "ping", {"n": n}, options={"uniqueKey": "same"}, on_duplicate="post"
            )
            for n in range(3)
        ]
        jobs = [await wait_for_job(oada, job_id, 15) for job_id in ids]
    assert [job.result for job in jobs] == [{"n": 0}, {"n": 1}, {"n": 2}]


# ------------------------------------------------------------------ groups


async def test_a_group_runs_one_at_a_time_in_order_while_others_run_beside_it(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    service = make_service(server, name, concurrency=4)
    active: dict[str, int] = {}
    peak: dict[str, int] = {}
    order: list[str] = []
    other_ran = anyio.Event()
    first_running = anyio.Event()

    @service.on("edit", 10)
    async def edit(job: Job[Json], ctx: WorkerContext) -> Json:
        group = job.config["group"]
        active[group] = active.get(group, 0) + 1
        peak[group] = max(peak.get(group, 0), active[group])
        order.append(job.config["name"])
        if job.config["name"] == "a1":
            first_running.set()
            # Field b's job runs while field a's first one is still running.
            await other_ran.wait()
        if group == "b":
            other_ran.set()
        await anyio.sleep(0.05)
        active[group] -= 1
        return None

    async with service:
        ids = [
            await post_job(
                oada, name, "edit", {"group": group, "name": label}, options={"group": group}
            )
            for group, label in [("a", "a1"), ("a", "a2"), ("a", "a3"), ("b", "b1")]
        ]
        for job_id in ids:
            assert (await wait_for_job(oada, job_id, 15)).status == "success"
    assert peak == {"a": 1, "b": 1}
    assert [label for label in order if label.startswith("a")] == ["a1", "a2", "a3"]
    assert order.index("b1") < order.index("a2")


async def test_a_group_limit_lets_that_many_run_at_once(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    service = make_service(server, name, concurrency=10)
    active = peak = 0
    two_running = anyio.Event()

    @service.on("edit", 10, group_limit=2)
    async def edit(job: Job[Json], ctx: WorkerContext) -> Json:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        if active == 2:
            two_running.set()
        with anyio.fail_after(10):
            await two_running.wait()
        active -= 1
        return None

    async with service:
        ids = [await post_job(oada, name, "edit", options={"group": "g"}) for _ in range(5)]
        for job_id in ids:
            assert (await wait_for_job(oada, job_id, 15)).status == "success"
    assert peak == 2


async def test_a_group_waits_for_a_member_that_is_retrying(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    service = make_service(server, name)
    order: list[str] = []

    @service.on("edit", 10, retry_delay=0.3, jitter=False)
    async def edit(job: Job[Json], ctx: WorkerContext) -> Json:
        order.append(job.config["name"])
        if job.config["name"] == "first" and job.tries == 1:
            raise Retry(reason="locked")
        return None

    async with service:
        ids = [
            await post_job(oada, name, "edit", {"name": label}, options={"group": "field-1"})
            for label in ("first", "second")
        ]
        for job_id in ids:
            await wait_for_job(oada, job_id, 15)
    assert order == ["first", "first", "second"]


# ------------------------------------------------------------------ versions and typed results


async def test_jobs_older_than_the_types_minimum_version_fail_fast(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    service = make_service(server, name)
    ran: list[int | None] = []

    @service.on("export", 10, min_version=2)
    async def export(job: Job[Json], ctx: WorkerContext) -> Json:
        ran.append(job.options.version)
        return None

    async with service:
        unversioned = await wait_for_job(oada, await post_job(oada, name, "export"), 15)
        old = await wait_for_job(
            oada, await post_job(oada, name, "export", options={"version": 1}), 15
        )
        new = await wait_for_job(
            oada, await post_job(oada, name, "export", options={"version": 2}), 15
        )
    assert ran == [2]
    assert new.status == "success"
    for job in (unversioned, old):
        assert job.status == "failure"
        assert isinstance(job.result, dict)
        assert job.result["failType"] == "unsupported-version"
        assert job.result["message"] == (
            "job version 1 is older than the 2 that job type 'export' accepts"
        )
        assert "started" not in statuses(job)


class Totals(BaseModel):
    count: int
    total: float


async def test_a_result_model_checks_what_the_function_returns(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    service = make_service(server, name)

    @service.on("sum", 10, result=Totals)
    async def add(job: Job[Json], ctx: WorkerContext) -> Json:
        numbers = job.config["numbers"]
        if job.config.get("broken"):
            return {"count": "many"}
        return {"count": len(numbers), "total": sum(numbers)}

    async with service:
        totals = await run_job(oada, name, "sum", {"numbers": [1, 2.5]}, timeout=15, result=Totals)
        with pytest.raises(JobFailed) as failed:
            await run_job(oada, name, "sum", {"numbers": [], "broken": True}, timeout=15)
    assert totals == Totals(count=2, total=3.5)
    assert failed.value.fail_type == "invalid-result"
    assert isinstance(failed.value.result, dict)
    fields = {tuple(error["loc"]) for error in failed.value.result["errors"]}
    assert fields == {("count",), ("total",)}


# ------------------------------------------------------------------ bad options


async def test_bad_options_fail_the_job_with_the_exact_problem(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    service = make_service(server, name)

    @service.on("noop", 10)
    async def noop(job: Job[Json], ctx: WorkerContext) -> Json:
        return None

    bad = {
        "priority": ({"priority": "high"}, "'options.priority': Input should be a valid integer"),
        "when": ({"notBefore": "tomorrow"}, "'options.notBefore'"),
        "typo": ({"priorty": 1}, "'options.priorty': Extra inputs are not permitted"),
        "shape": ([1], "'options' must be an object, got a list"),
    }
    async with service:
        ids = {}
        for label, (options, _) in bad.items():
            job_id = await oada.create_resource(
                {"service": name, "type": "noop", "options": options},
                content_type="application/vnd.oada.service.jobs.1+json",
            )
            key = job_id.removeprefix("resources/")
            await oada.put(f"/bookmarks/services/{name}/jobs", {key: {"_id": job_id}})
            ids[label] = job_id
        good = await post_job(oada, name, "noop")
        assert (await wait_for_job(oada, good, 15)).status == "success"
        for label, (_, expected) in bad.items():
            job = await wait_for_job(oada, ids[label], 15)
            assert job.status == "failure", label
            assert isinstance(job.result, dict)
            assert job.result["failType"] == "invalid-job"
            assert expected in job.result["message"], (label, job.result["message"])


async def test_post_job_refuses_bad_options_before_writing(oada: OADAClient, name: str) -> None:
    with pytest.raises(ValueError, match=r"'options\.priority'"):
        await post_job(oada, name, "noop", options={"priority": 1.5})
    assert (await oada.get("/bookmarks")).data.get("services", {}).get(name) is None


def test_service_on_refuses_bad_policies() -> None:
    from oada_jobs import Service

    service = Service("policy-check", domain="http://127.0.0.1:1", token="t")

    async def work(job: Job[Json], ctx: WorkerContext) -> Json:
        return None

    for options, message in [
        ({"backoff": 0.5}, "expected backoff >= 1"),
        ({"group_limit": 0}, "expected group_limit >= 1"),
        ({"unique": "maybe"}, "expected unique to be"),
        ({"retry_on": (ValueError, "x")}, "expected exception classes"),
        ({"retry_delay": -1}, "expected retry_delay >= 0"),
        ({"result": dict}, "expected result to be a pydantic model"),
    ]:
        with pytest.raises(ValueError, match=message):
            service.on("t", 1, work, **options)


async def test_two_replicas_keep_a_groups_order_between_them(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    active = peak = 0
    order: list[int] = []

    async def edit(job: Job[Json], ctx: WorkerContext) -> Json:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        order.append(job.config["n"])
        await anyio.sleep(0.02)
        active -= 1
        return None

    replicas = [make_service(server, name, concurrency=5) for _ in range(2)]
    for replica in replicas:
        replica.on("edit", 10, edit)
    ids = [
        await post_job(oada, name, "edit", {"n": n}, options={"group": "field-9"}) for n in range(6)
    ]
    async with replicas[0], replicas[1]:
        for job_id in ids:
            assert (await wait_for_job(oada, job_id, 30)).status == "success"
    assert peak == 1
    assert order == list(range(6))


async def test_cancelling_a_delayed_job_files_it_at_once(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    service = make_service(server, name)
    ran = False

    @service.on("later", 10)
    async def later(job: Job[Json], ctx: WorkerContext) -> Json:
        nonlocal ran
        ran = True
        return None

    async with service:
        job_id = await post_job(oada, name, "later", options={"notBefore": "2099-01-01T00:00:00Z"})
        await until(service, lambda s: s.counts()["waiting"] >= 1)
        assert await request_cancel(oada, job_id, "not needed any more")
        job = await wait_for_job(oada, job_id, 15, filed="classic")
    assert not ran
    assert job.status == "failure"
    assert isinstance(job.result, dict)
    assert job.result["failType"] == "cancelled"


async def test_a_large_group_behind_a_retrying_head_does_not_stall_the_queue(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    # More group members than the queue holds in memory, and the head retries.
    service = make_service(server, name, concurrency=2, keep_jobs=2)
    order: list[str] = []

    @service.on("edit", 10, retry_delay=0.2, jitter=False)
    async def edit(job: Job[Json], ctx: WorkerContext) -> Json:
        order.append(job.config["name"])
        if job.config["name"] == "g0" and job.tries == 1:
            raise Retry(reason="locked")
        return None

    ids = [
        await post_job(oada, name, "edit", {"name": f"g{n}"}, options={"group": "g"})
        for n in range(6)
    ]
    other = await post_job(oada, name, "edit", {"name": "other"})
    async with service:
        for job_id in [*ids, other]:
            assert (await wait_for_job(oada, job_id, 20)).status == "success"
    assert [label for label in order if label != "other"] == [
        "g0",
        "g0",
        "g1",
        "g2",
        "g3",
        "g4",
        "g5",
    ]


async def test_a_job_taken_off_the_list_while_it_runs_is_not_run_again(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    service = make_service(server, name)
    started = anyio.Event()
    go_on = anyio.Event()
    runs = 0

    @service.on("flaky", 10, retry_delay=0.1, jitter=False)
    async def flaky(job: Job[Json], ctx: WorkerContext) -> Json:
        nonlocal runs
        runs += 1
        started.set()
        await go_on.wait()
        raise Retry(reason="again")

    async with service:
        job_id = await post_job(oada, name, "flaky")
        with anyio.fail_after(10):
            await started.wait()
        await oada.delete(f"/bookmarks/services/{name}/jobs/{job_id.removeprefix('resources/')}")
        entry = service.queues["_default"].scheduler.get(job_id)
        assert entry is not None
        await until(service, lambda s: entry.gone)
        go_on.set()
        await until(service, lambda s: s.get(job_id) is None)
    assert runs == 1


async def test_a_cancelled_merged_job_is_cancelled_not_merged(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    service = make_service(server, name, concurrency=1)
    gate = anyio.Event()
    started = anyio.Event()

    @service.on("report", 10, unique="merge")
    async def report(job: Job[Json], ctx: WorkerContext) -> Json:
        started.set()
        await gate.wait()
        return {"rows": 1}

    async with service:
        first = await post_job(oada, name, "report", options={"uniqueKey": "k"})
        with anyio.fail_after(10):
            await started.wait()
        second = await post_job(
            oada, name, "report", options={"uniqueKey": "k"}, on_duplicate="post"
        )
        await until(service, lambda s: s.counts()["parked"] >= 1)
        # Filed at once although the only slot is busy: filing needs none.
        assert await request_cancel(oada, second, "not wanted")
        cancelled = await wait_for_job(oada, second, 15, filed="classic")
        assert not gate.is_set()
        gate.set()
        assert (await wait_for_job(oada, first, 15)).status == "success"
    assert isinstance(cancelled.result, dict)
    assert cancelled.result["failType"] == "cancelled"


async def test_a_job_that_keeps_killing_its_worker_fails_after_its_tries(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    service = make_service(server, name)
    ran = False

    @service.on("crash", 10, tries=2)
    async def crash(job: Job[Json], ctx: WorkerContext) -> Json:
        nonlocal ran
        ran = True
        return None

    # What two workers that died mid-run leave behind: tries 2, lease expired.
    job_id = await post_job(oada, name, "crash")
    await oada.put(
        f"/{job_id}",
        {
            "status": "running",
            "tries": 2,
            "lease": {"worker": "gone", "expires": "2020-01-01T00:00:00Z"},
        },
        content_type="application/vnd.oada.service.jobs.1+json",
    )
    async with service:
        job = await wait_for_job(oada, job_id, 15)
    assert not ran
    assert job.status == "failure"
    assert isinstance(job.result, dict)
    assert job.result["failType"] == "retry-limit"
    assert "started 2 time(s) without finishing" in job.result["message"]
