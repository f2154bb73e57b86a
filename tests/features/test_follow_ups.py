"""Follow-up jobs declared with ``service.on(..., then=, on_failure=)``: posted
with the result as config, linked both ways, and posted once even when
filing is done again."""

from __future__ import annotations

import anyio

from oada_jobs import FollowUp, Job, JobError, Json, WorkerContext
from oada_jobs.client import OADAClient
from oada_jobs.requester import post_job
from oada_jobs.testing import EmbeddedServer, wait_for_job
from oada_jobs.tree import JOBS_TYPE, get_layout

from .conftest import make_service


async def test_success_posts_then_with_the_result_and_links_both_ways(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    service = make_service(server, name)
    mailed: list[Json] = []

    @service.on("invoice", 10, then="email", on_failure=FollowUp("alert"))
    async def invoice(job: Job[Json], ctx: WorkerContext) -> Json:
        if job.config.get("bad"):  # type: ignore[union-attr]
            raise JobError("no customer", "no-customer")
        return {"to": "a@example.org", "total": 12}

    @service.on("email", 10)
    async def email(job: Job[Json], ctx: WorkerContext) -> Json:
        mailed.append(job.config)
        return {"sent": True}

    @service.on("alert", 10)
    async def alert(job: Job[Json], ctx: WorkerContext) -> Json:
        return {"alerted": job.config["failType"]}  # type: ignore[index]

    async with service:
        first = await post_job(oada, name, "invoice")
        done = await wait_for_job(oada, first, 10, filed="classic")
        (key, link), *others = done.raw["followUps"].items()
        assert not others
        assert key == f"{first.removeprefix('resources/')}-then"
        follow = await wait_for_job(oada, link["_id"], 10, filed="classic")
        assert follow.type == "email"
        assert follow.raw["followUpOf"] == {"_id": first}
        assert follow.result == {"sent": True}
        assert mailed == [{"to": "a@example.org", "total": 12}]

        bad = await post_job(oada, name, "invoice", {"bad": True})
        failed = await wait_for_job(oada, bad, 10, filed="classic")
        assert failed.status == "failure"
        (link,) = failed.raw["followUps"].values()
        alerted = await wait_for_job(oada, link["_id"], 10, filed="classic")
        assert alerted.type == "alert"
        assert alerted.result == {"alerted": "no-customer"}

        # Filed again (e.g. the service stopped between writing the outcome
        # and filing): the job is filed, its follow-up not posted twice.
        pending = get_layout("classic").pending_path(name)
        await oada.put(pending, {"again": {"_id": first}}, content_type=JOBS_TYPE)
        with anyio.fail_after(10):
            while "again" in (await oada.get(pending)).data:
                await anyio.sleep(0.05)
        again = (await oada.get(f"/{first}")).data
        assert list(again["followUps"]) == [key]
        assert (await oada.get(f"/{link['_id']}")).data["status"] == "success"
    assert len(mailed) == 1
