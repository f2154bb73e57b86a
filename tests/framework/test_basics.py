"""The original library's cases, end-to-end, in both list layouts."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from oada_jobs import Job, JobError, Json, Service, ServiceState, Unauthorized, WorkerContext
from oada_jobs.client import OADAClient
from oada_jobs.testing import post_job, wait_for_job
from oada_jobs.tree import JOBS_TYPE, get_layout

from .conftest import key_of, wait_for_status

LAYOUTS = ["classic", "pending"]


def register(service: Service) -> None:
    @service.on("echo", timeout=10)
    async def echo(job: Job, ctx: WorkerContext) -> Json:
        await ctx.log.info("working", "Job started")
        return {"coolThing": job.config.get("thing"), "nested": [1, {"x": None}], "s": "é"}

    @service.on("boom", 10)
    async def boom(job: Job, ctx: WorkerContext) -> Json:
        raise ValueError("it went boom")

    async def typed(job: Job, ctx: WorkerContext) -> Json:
        raise JobError("mailbox full", "smtp-rejected")

    service.on("typed", 10, typed)


@pytest.mark.parametrize("server", ["none", "reference"], indirect=True)
@pytest.mark.parametrize("layout", LAYOUTS)
async def test_a_successful_job_is_filed_with_its_result_verbatim(
    make_service: Callable[..., Service], oada: OADAClient, name: str, layout: Any
) -> None:
    service = make_service(layout=layout)
    register(service)
    lists = get_layout(layout)
    async with service:
        job_id = await post_job(oada, name, "echo", {"thing": "cool"}, layout=layout)
        job = await wait_for_job(oada, job_id, 10, filed=layout)
    assert job.status == "success"
    assert job.result == {"coolThing": "cool", "nested": [1, {"x": None}], "s": "é"}
    filed = (await oada.get(lists.day_index_path(name, "success", job_date(job)))).data
    assert filed[key_of(job_id)]["_id"] == job_id
    assert "_rev" in filed[key_of(job_id)]  # versioned link
    pending = (await oada.get(lists.pending_path(name))).data
    assert key_of(job_id) not in pending
    updates = [job.updates[key] for key in sorted(job.updates)]
    assert [update["status"] for update in updates] == ["started", "working", "success"]
    assert updates[1]["meta"] == "Job started"
    assert job.lease is None


def job_date(job: Job[Any]) -> Any:
    from oada_jobs.job import parse_time

    last = job.updates[max(job.updates)]
    moment = parse_time(last["time"])
    assert moment is not None
    return moment.date()


@pytest.mark.parametrize("layout", LAYOUTS)
async def test_a_failing_job_is_filed_as_failure_with_the_error(
    make_service: Callable[..., Service], oada: OADAClient, name: str, layout: Any
) -> None:
    service = make_service(layout=layout)
    register(service)
    lists = get_layout(layout)
    async with service:
        failed = await post_job(oada, name, "boom", {}, layout=layout)
        typed = await post_job(oada, name, "typed", {}, layout=layout)
        job = await wait_for_job(oada, failed, 10, filed=layout)
        typed_job = await wait_for_job(oada, typed, 10, filed=layout)
    assert job.status == "failure"
    assert isinstance(job.result, dict)
    assert job.result["name"] == "ValueError"
    assert job.result["message"] == "it went boom"
    assert "it went boom" in job.result["traceback"]
    failures = (await oada.get(lists.day_index_path(name, "failure", job_date(job)))).data
    assert key_of(failed) in failures
    assert key_of(typed) in failures
    assert isinstance(typed_job.result, dict)
    assert typed_job.result["failType"] == "smtp-rejected"
    by_type = lists.day_index_path(name, "failure", job_date(typed_job), "smtp-rejected")
    assert [k for k in (await oada.get(by_type)).data if not k.startswith("_")] == [key_of(typed)]
    assert [u["status"] for u in job.updates.values()][-1] == "failure"


async def test_a_resource_that_is_not_a_job_fails_with_a_clear_message(
    make_service: Callable[..., Service], oada: OADAClient, name: str
) -> None:
    service = make_service()
    register(service)
    lists = get_layout("classic")
    async with service:
        bogus = await oada.create_resource({"hello": "world"}, content_type=JOBS_TYPE)
        await oada.put(lists.pending_path(name), {key_of(bogus): {"_id": bogus}}, tree=lists.tree)
        data = await wait_for_status(oada, bogus)
    assert data["status"] == "failure"
    assert data["result"]["name"] == "InvalidJob"
    assert "'service' is missing; 'type' is missing" in data["result"]["message"]
    assert data["hello"] == "world"  # nothing of the resource is lost


@pytest.mark.parametrize("server", ["none", "reference"], indirect=True)
async def test_a_job_created_with_a_tree_put_still_runs(
    make_service: Callable[..., Service], oada: OADAClient, name: str
) -> None:
    service = make_service()
    register(service)
    lists = get_layout("classic")
    # A requester's tree that makes each job its own resource: the tree PUT
    # links an empty resource first and fills it in afterwards.
    tree = copy.deepcopy(dict(lists.tree))
    tree["bookmarks"]["services"]["*"]["jobs"]["*"] = {"_type": JOBS_TYPE}
    async with service:
        response = await oada.put(
            f"{lists.pending_path(name)}/tree-put-job",
            {"service": name, "type": "echo", "config": {"thing": "via tree"}},
            tree=tree,
        )
        # The final PUT went through the new link into the job resource.
        job_id = response.resource_id
        assert job_id is not None
        job = await wait_for_job(oada, job_id, 10, filed="classic")
    assert job.status == "success"
    assert job.result == {"coolThing": "via tree", "nested": [1, {"x": None}], "s": "é"}


async def test_an_existing_client_can_be_passed_in(
    make_service: Callable[..., Service], oada: OADAClient, name: str
) -> None:
    service = make_service(oada=oada)
    register(service)
    async with service:
        job_id = await post_job(oada, name, "echo", {"thing": 1})
        job = await wait_for_job(oada, job_id, 10, filed="classic")
    assert job.result == {"coolThing": 1, "nested": [1, {"x": None}], "s": "é"}
    # The service did not close a client it did not open.
    assert (await oada.get("/bookmarks")).status == 200


async def test_start_fails_clearly_when_the_service_token_is_refused(
    make_service: Callable[..., Service],
) -> None:
    service = make_service(token="not-a-token")
    register(service)
    with pytest.raises(Unauthorized) as info:
        await service.start()
    assert "not-a-token" not in str(info.value)
    assert service.state is ServiceState.STOPPED
