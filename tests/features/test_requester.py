"""The requester side: post_job / run_job / wait_for_outcome against a running Service."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from pydantic import BaseModel

from oada_jobs import (
    Job,
    JobError,
    JobExists,
    JobFailed,
    Json,
    Retry,
    WorkerContext,
    post_job,
    run_job,
    testing,
)
from oada_jobs.client import OADAClient
from oada_jobs.requester import wait_for_outcome
from oada_jobs.testing import EmbeddedServer
from oada_jobs.tree import get_layout

from .conftest import make_service


async def echo(job: Job[Json], ctx: WorkerContext) -> Json:
    return {"echo": job.config}


async def typed_failure(job: Job[Json], ctx: WorkerContext) -> Json:
    raise JobError("mailbox full", "smtp-rejected", details={"code": 552})


async def crash(job: Job[Json], ctx: WorkerContext) -> Json:
    raise RuntimeError("boom")


def test_helper_post_job_is_the_requester_one() -> None:
    assert testing.post_job is post_job


@pytest.mark.parametrize("layout", ["classic", "pending"])
async def test_run_job_returns_the_result(
    server: EmbeddedServer, oada: OADAClient, name: str, layout: Any
) -> None:
    service = make_service(server, name, layout=layout)
    service.on("echo", 10, echo)
    async with service:
        with anyio.fail_after(20):
            result = await run_job(oada, name, "echo", {"x": 1}, layout=layout, timeout=15)
    assert result == {"echo": {"x": 1}}


async def test_run_job_raises_job_failed_with_the_failure_result(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    service = make_service(server, name)
    service.on("typed", 10, typed_failure)
    service.on("crash", 10, crash)
    async with service:
        with pytest.raises(JobFailed) as typed:
            await run_job(oada, name, "typed", timeout=15)
        with pytest.raises(JobFailed) as crashed:
            await run_job(oada, name, "crash", timeout=15)
    error = typed.value
    assert isinstance(error, JobError)
    assert str(error) == "mailbox full"
    assert error.fail_type == "smtp-rejected"
    assert error.job_id.startswith("resources/")
    assert isinstance(error.result, dict)
    assert error.result["name"] == "JobError"
    assert error.result["details"] == {"code": 552}
    assert crashed.value.fail_type is None
    assert crashed.value.message == "boom"
    assert isinstance(crashed.value.result, dict)
    assert crashed.value.result["name"] == "RuntimeError"


async def test_run_job_times_out_when_nobody_runs_the_job(oada: OADAClient, name: str) -> None:
    with pytest.raises(TimeoutError):
        await run_job(oada, name, "echo", timeout=0.5)
    # The job is still posted and pending: nothing was lost.
    listing = (await oada.get(get_layout("classic").pending_path(name))).data
    assert isinstance(listing, dict)
    assert [k for k in listing if not k.startswith("_")]


async def test_run_job_can_cancel_the_job_it_gave_up_on(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    with pytest.raises(TimeoutError):
        await run_job(oada, name, "echo", timeout=0.3, cancel_on_timeout=True)
    listing = (await oada.get(get_layout("classic").pending_path(name))).data
    (key,) = [k for k in listing if not k.startswith("_")]
    assert (await oada.get(f"/resources/{key}/status")).data == "cancel-requested"
    # A service that comes up later files it as cancelled instead of running it.
    ran: list[str] = []

    async def record(job: Job[Json], ctx: WorkerContext) -> Json:
        ran.append(job.oada_id)
        return None

    service = make_service(server, name)
    service.on("echo", 10, record)
    async with service:
        job = await wait_for_outcome(oada, f"resources/{key}", timeout=15)
    assert job.status == "failure"
    assert isinstance(job.result, dict)
    assert job.result["failType"] == "cancelled"
    assert ran == []


async def test_wait_for_outcome_of_a_finished_job_returns_at_once(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    service = make_service(server, name)
    service.on("echo", 10, echo)
    async with service:
        job_id = await post_job(oada, name, "echo", {"y": 2})
        first = await wait_for_outcome(oada, job_id, timeout=15)
    # The service is stopped: a second wait must come from the read, not a watch.
    again = await wait_for_outcome(oada, job_id, timeout=2)
    assert first.status == again.status == "success"
    assert again.result == {"echo": {"y": 2}}


class Mail(BaseModel):
    to: str


async def test_post_job_with_a_key_and_a_model_config(oada: OADAClient, name: str) -> None:
    job_id = await post_job(oada, name, "email", Mail(to="a@b.c"), key="mail-1", layout="pending")
    assert job_id == "resources/mail-1"
    job = (await oada.get(f"/{job_id}")).data
    assert job["service"] == name
    assert job["type"] == "email"
    assert job["config"] == {"to": "a@b.c"}
    listing = (await oada.get(get_layout("pending").pending_path(name))).data
    assert listing["mail-1"] == {"_id": "resources/mail-1"}
    # Posting the same key again writes the same job: still one entry.
    assert await post_job(oada, name, "email", {"to": "a@b.c"}, key="mail-1", layout="pending")
    listing = (await oada.get(get_layout("pending").pending_path(name))).data
    assert [k for k in listing if not k.startswith("_")] == ["mail-1"]


@pytest.mark.parametrize(
    ("service", "type", "config", "key", "error", "match"),
    [
        ("bad name", "echo", None, None, ValueError, "expected a service name"),
        ("ok", "", None, None, ValueError, "expected the job type as a non-empty string"),
        ("ok", "echo", [1, 2], None, TypeError, "expected the job config as an object"),
        ("ok", "echo", None, "a/b", ValueError, "expected a job key"),
        ("ok", "echo", None, "_hidden", ValueError, "expected a job key"),
    ],
)
async def test_post_job_refuses_bad_input_before_writing(
    oada: OADAClient,
    service: str,
    type: str,
    config: Any,
    key: str | None,
    error: type[Exception],
    match: str,
) -> None:
    with pytest.raises(error, match=match):
        await post_job(oada, service, type, config, key=key)
    # Nothing was written.
    services = (await oada.get("/bookmarks")).data
    assert "services" not in services


async def test_child_jobs_are_linked_to_their_parent(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    children: list[str] = []

    async def parent(job: Job[Json], ctx: WorkerContext) -> Json:
        children.append(await ctx.post_job(name, "echo", {"from": "parent"}))
        return {"children": len(children)}

    service = make_service(server, name)
    service.on("parent", 10, parent)
    service.on("echo", 10, echo)
    async with service:
        parent_id = await post_job(oada, name, "parent")
        await wait_for_outcome(oada, parent_id, timeout=15)
        (child_id,) = children
        child = await wait_for_outcome(oada, child_id, timeout=15)
    assert child.status == "success"
    assert child.result == {"echo": {"from": "parent"}}
    assert child.raw["parent"] == {"_id": parent_id}
    linked = (await oada.get(f"/{parent_id}/children")).data
    assert linked[child_id.removeprefix("resources/")] == {"_id": child_id}


async def test_a_job_key_names_one_job_posted_once(oada: OADAClient, name: str) -> None:
    first = await post_job(oada, name, "echo", {"n": 1}, key="once-1", options={"priority": 2})
    # The same request again: the same job, nothing new written.
    again = await post_job(oada, name, "echo", {"n": 1}, key="once-1", options={"priority": 2})
    assert again == first
    # A different request under the same key is refused; nothing is overwritten.
    for config, options in [({"n": 2}, {"priority": 2}), ({"n": 1}, {"priority": 3})]:
        with pytest.raises(JobExists, match="already holds a different job") as refused:
            await post_job(oada, name, "echo", config, key="once-1", options=options)
        assert refused.value.job_id == first
    with pytest.raises(JobExists):
        await post_job(oada, name, "other", {"n": 1}, key="once-1", options={"priority": 2})
    stored = (await oada.get(f"/{first}")).data
    assert stored["config"] == {"n": 1}
    assert stored["type"] == "echo"
    assert stored["options"] == {"priority": 2}


async def test_run_job_with_a_used_key_never_mixes_two_jobs(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    runs: list[Json] = []

    async def counted(job: Job[Json], ctx: WorkerContext) -> Json:
        runs.append(job.config)
        return {"echo": job.config}

    service = make_service(server, name)
    service.on("echo", 10, counted)
    async with service:
        assert await run_job(oada, name, "echo", {"n": 1}, key="k-1", timeout=15) == {
            "echo": {"n": 1}
        }
        # The same job again: its outcome, without running it again.
        assert await run_job(oada, name, "echo", {"n": 1}, key="k-1", timeout=15) == {
            "echo": {"n": 1}
        }
        with pytest.raises(JobExists):
            await run_job(oada, name, "echo", {"n": 2}, key="k-1", timeout=15)
    assert runs == [{"n": 1}]
    stored = (await oada.get("/resources/k-1")).data
    assert stored["config"] == {"n": 1}
    assert stored["result"] == {"echo": {"n": 1}}


async def test_a_retried_parent_posts_its_named_child_once_in_its_own_layout(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    posted: list[str] = []

    async def parent(job: Job[Json], ctx: WorkerContext) -> Json:
        posted.append(
            await ctx.post_job(name, "echo", {"from": "parent"}, name="c1", options={"priority": 3})
        )
        if job.tries == 1:
            raise Retry(defer=0, reason="once more")
        return {"child": posted[-1]}

    service = make_service(server, name, layout="pending")
    service.on("parent", 10, parent)
    service.on("echo", 10, echo)
    async with service:
        parent_id = await post_job(oada, name, "parent", layout="pending")
        done = await wait_for_outcome(oada, parent_id, timeout=15)
        assert done.status == "success", done.result
        assert posted[0] == posted[1] == f"{parent_id}-c1"
        # Posted to the list the service reads: it runs.
        child = await wait_for_outcome(oada, posted[0], timeout=15)
    assert child.status == "success"
    assert child.raw["options"] == {"priority": 3}
    linked = (await oada.get(f"/{parent_id}/children")).data
    assert [key for key in linked if not key.startswith("_")] == [posted[0].split("/")[1]]


async def test_post_job_can_ask_which_layout_the_service_reads(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    with pytest.raises(ValueError, match="has ever run"):
        await post_job(oada, name, "echo", layout="auto")
    service = make_service(server, name, layout="pending")
    service.on("echo", 10, echo)
    async with service:
        assert await run_job(oada, name, "echo", {"n": 3}, layout="auto", timeout=15) == {
            "echo": {"n": 3}
        }
