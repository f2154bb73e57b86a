"""Who posted a job: ``createdBy`` from the token's user, shown and reported."""

from __future__ import annotations

from oada_jobs import Job, Json, WorkerContext
from oada_jobs.client import OADAClient
from oada_jobs.job import Job as JobModel
from oada_jobs.job import utc_now
from oada_jobs.reports import collect_jobs
from oada_jobs.requester import post_job, who_am_i
from oada_jobs.testing import EmbeddedServer, wait_for_job

from .conftest import make_service

SAM = "users/default:users_sam_321"
FRANK = "users/default:users_frank_123"


async def test_jobs_record_who_posted_them(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    service = make_service(server, name)

    @service.on("task", 5)
    async def task(job: Job[Json], ctx: WorkerContext) -> Json:
        return {"by": job.created_by}

    async with OADAClient(server.url, "abc") as frank:
        assert await who_am_i(frank) == FRANK
        # Frank posts into sam's service list: sam shares nothing, so frank
        # posts into his own store's list; the job records him either way.
        by_frank = await post_job(frank, name, "task")
        stored = JobModel.from_resource((await frank.get(f"/{by_frank}")).data, oada_id=by_frank)
    assert stored.created_by == FRANK

    by_sam = await post_job(oada, name, "task")
    async with service:
        done = await wait_for_job(oada, by_sam, 10, filed="classic")
    assert done.raw["createdBy"] == SAM
    assert done.result == {"by": SAM}
    day = utc_now().date()
    records = await collect_jobs(oada, name, day.replace(day=1), day)
    assert [r.created_by for r in records if r.id == by_sam] == [SAM]


async def test_created_by_is_the_tokens_user_whatever_extra_says(
    oada: OADAClient, name: str
) -> None:
    job_id = await post_job(oada, name, "task", extra={"createdBy": "users/someone-else"})
    assert (await oada.get(f"/{job_id}/createdBy")).data == SAM
