"""Unique keys refused at post time: the service's unique index in OADA."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from oada_jobs import DuplicateJob, Job, Json, WorkerContext
from oada_jobs.client import OADAClient
from oada_jobs.requester import post_job, run_job
from oada_jobs.testing import EmbeddedServer, wait_for_job
from oada_jobs.tree import JOBS_TYPE, get_layout
from oada_jobs.unique import index_key, index_path, read_index

from .conftest import make_service


def pending(listing: Any) -> list[str]:
    return sorted(key for key in listing if not key.startswith("_"))


async def test_a_duplicate_is_refused_when_posted_and_the_key_frees_when_filed(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    first = await post_job(oada, name, "invoice", options={"uniqueKey": "order-42"})
    with pytest.raises(DuplicateJob) as refused:
        await post_job(oada, name, "invoice", {"n": 2}, options={"uniqueKey": "order-42"})
    assert refused.value.job_id == first
    assert refused.value.unique_key == "order-42"
    # Nothing of the refused job stays: one link, and the index names the first.
    listing = (await oada.get(get_layout("classic").pending_path(name))).data
    assert pending(listing) == [first.removeprefix("resources/")]
    index = await read_index(oada, name)
    assert index[index_key("invoice", "order-42")]["job"] == first
    # Another type, or another key, is not a duplicate.
    await post_job(oada, name, "refund", options={"uniqueKey": "order-42"})
    await post_job(oada, name, "invoice", options={"uniqueKey": "order-43"})
    # on_duplicate="existing" hands back the job holding the key.
    same = await post_job(
        oada, name, "invoice", options={"uniqueKey": "order-42"}, on_duplicate="existing"
    )
    assert same == first

    service = make_service(server, name)

    @service.on("invoice", 5)
    @service.on("refund", 5)
    async def work(job: Job[Json], ctx: WorkerContext) -> Json:
        return {"done": ctx.job_id}

    async with service:
        await wait_for_job(oada, first, 10, filed="classic")
        # Filed: its entry is gone and the key may be taken again.
        assert index_key("invoice", "order-42") not in await read_index(oada, name)
        again = await run_job(oada, name, "invoice", options={"uniqueKey": "order-42"}, timeout=10)
    assert isinstance(again, dict)


async def test_racing_requesters_get_exactly_one_job(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    posted: list[str] = []
    refused: list[str] = []
    async with OADAClient(server.url, server.token) as other:

        async def post(client: OADAClient) -> None:
            try:
                posted.append(
                    await post_job(client, name, "sync", options={"uniqueKey": "field-7"})
                )
            except DuplicateJob as error:
                refused.append(error.job_id)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as group:
                for n in range(8):
                    group.start_soon(post, oada if n % 2 else other)
    assert len(posted) == 1
    assert refused == posted * 7
    listing = (await oada.get(get_layout("classic").pending_path(name))).data
    assert pending(listing) == [posted[0].removeprefix("resources/")]


async def test_a_stale_entry_does_not_block(oada: OADAClient, name: str) -> None:
    holder = await post_job(oada, name, "sync", options={"uniqueKey": "k"})
    # Finished but never filed (its worker died after writing the outcome):
    await oada.put(f"/{holder}", {"status": "success", "result": {}}, content_type=JOBS_TYPE)
    second = await post_job(oada, name, "sync", options={"uniqueKey": "k"})
    assert (await read_index(oada, name))[index_key("sync", "k")]["job"] == second
    # Gone altogether:
    await oada.delete(f"/{second}")
    third = await post_job(oada, name, "sync", options={"uniqueKey": "k"})
    # Unlinked by hand long ago, never run:
    await oada.delete(
        f"{get_layout('classic').pending_path(name)}/{third.removeprefix('resources/')}"
    )
    entry = index_key("sync", "k")
    await oada.put(
        index_path(name), {entry: {"since": "2020-01-01T00:00:00.000Z"}}, content_type=JOBS_TYPE
    )
    fourth = await post_job(oada, name, "sync", options={"uniqueKey": "k"})
    assert (await read_index(oada, name))[entry]["job"] == fourth
    # A hostile entry (a path, not a job id) holds nothing either.
    await oada.put(
        index_path(name), {entry: {"job": "resources/x/../../bookmarks"}}, content_type=JOBS_TYPE
    )
    assert await post_job(oada, name, "sync", options={"uniqueKey": "k"})
