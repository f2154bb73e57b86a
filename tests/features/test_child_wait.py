"""A parent waiting for its children with ``await ctx.run_job(...)``: no slot is
held while waiting, the parent is run again from the top with the child's
result, and the wait survives a restart of the parent's service."""

from __future__ import annotations

from typing import Any

import anyio
from pydantic import BaseModel

from oada_jobs import Job, JobFailed, Json, WorkerContext
from oada_jobs.client import OADAClient
from oada_jobs.requester import post_job
from oada_jobs.testing import EmbeddedServer, wait_for_job
from oada_jobs.tree import JOBS_TYPE

from .conftest import make_service


class Number(BaseModel):
    n: int


def statuses(job: Job[Any]) -> list[str]:
    return [update["status"] for _key, update in sorted(job.updates.items())]


async def test_a_parent_waits_for_two_children_without_holding_its_slot(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    # One slot: a parent holding it while waiting would never see its child run.
    service = make_service(server, name, concurrency=1)
    calls: list[str] = []

    @service.on("total", 10)
    async def total(job: Job[Json], ctx: WorkerContext) -> Json:
        calls.append("total")
        first = await ctx.run_job(name, "double", {"n": 2}, check_every=300, result=Number)
        second = await ctx.run_job(name, "double", first, check_every=300, result=Number)
        return {"sum": first.n + second.n}

    @service.on("double", 10)
    async def double(job: Job[Json], ctx: WorkerContext) -> Json:
        calls.append("double")
        return {"n": job.config["n"] * 2}  # type: ignore[index]

    async with service:
        parent = await post_job(oada, name, "total")
        job = await wait_for_job(oada, parent, 15, filed="classic")
    assert job.status == "success"
    assert job.result == {"sum": 12}
    # Entered three times: posts the first child, the second, then returns.
    assert calls == ["total", "double", "total", "double", "total"]
    assert statuses(job).count("waiting") == 2
    assert job.raw.get("waitingFor") is None
    key = parent.removeprefix("resources/")
    assert sorted(job.raw["children"]) == [f"{key}-child-0", f"{key}-child-1"]
    child = (await oada.get(f"/resources/{key}-child-0")).data
    assert child["parent"] == {"_id": parent}
    assert child["result"] == {"n": 4}


async def test_a_failed_child_raises_in_the_parent(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    service = make_service(server, name)

    @service.on("parent", 10)
    async def parent(job: Job[Json], ctx: WorkerContext) -> Json:
        try:
            await ctx.run_job(name, "broken", name="only", check_every=300)
        except JobFailed as error:
            return {"child failed": error.message}
        return {"child failed": None}

    @service.on("broken", 10)
    async def broken(job: Job[Json], ctx: WorkerContext) -> Json:
        raise RuntimeError("no disk")

    async with service:
        job = await wait_for_job(oada, await post_job(oada, name, "parent"), 15, filed="classic")
    assert job.result == {"child failed": "no disk"}


async def test_the_wait_survives_a_restart_of_the_parents_service(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    children = f"{name}-kids"
    runs: list[Json] = []

    def parent_service() -> Any:
        service = make_service(server, name)

        @service.on("parent", 10)
        async def parent(job: Job[Json], ctx: WorkerContext) -> Json:
            result = await ctx.run_job(children, "child", {"x": 1}, check_every=300)
            runs.append(result)
            return {"got": result}

        return service

    first = parent_service()
    async with first:
        parent_id = await post_job(oada, name, "parent")
        with anyio.fail_after(10):
            while not (await oada.get(f"/{parent_id}")).data.get("waitingFor"):
                await anyio.sleep(0.05)
    # The parent's service is down; the child's service runs the child.
    kids = make_service(server, children)

    @kids.on("child", 10)
    async def child(job: Job[Json], ctx: WorkerContext) -> Json:
        return {"x": job.config["x"] + 1}  # type: ignore[index]

    async with kids:
        waited = (await oada.get(f"/{parent_id}")).data
        child_id = waited["waitingFor"]["_id"]
        assert (await wait_for_job(oada, child_id, 10, filed="classic")).status == "success"
    assert runs == []
    # Woken while its service was down: due now, not in check_every seconds.
    async with parent_service():
        job = await wait_for_job(oada, parent_id, 10, filed="classic")
    assert job.result == {"got": {"x": 2}}
    assert runs == [{"x": 2}]


async def test_a_child_filed_after_a_crash_still_wakes_its_parent(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    children = f"{name}-kids"
    parents = make_service(server, name)

    @parents.on("parent", 10)
    async def parent(job: Job[Json], ctx: WorkerContext) -> Json:
        return {"got": await ctx.run_job(children, "child", check_every=300)}

    kids = make_service(server, children)

    @kids.on("child", 10)
    async def child(job: Job[Json], ctx: WorkerContext) -> Json:
        raise AssertionError("the child ran already")

    async with parents:
        parent_id = await post_job(oada, name, "parent")
        with anyio.fail_after(10):
            while not (waiting := (await oada.get(f"/{parent_id}")).data.get("waitingFor")):
                await anyio.sleep(0.05)
        # Its worker wrote the outcome and stopped before filing it.
        await oada.put(
            f"/{waiting['_id']}",
            {"status": "success", "result": {"done": 1}},
            content_type=JOBS_TYPE,
        )
        async with kids:
            job = await wait_for_job(oada, parent_id, 10, filed="classic")
    assert job.result == {"got": {"done": 1}}
