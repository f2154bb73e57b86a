"""Slow work functions with short timeouts, at full concurrency: every one is
cancelled, fails with type ``timeout``, and nothing it still tries writes to
its job after the timeout (checked after the work would have ended)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import anyio
import pytest

from oada_jobs import Job, WorkerContext
from oada_jobs.client import OADAClient
from oada_jobs.exceptions import ClientClosed
from oada_jobs.testing import embedded_server
from oada_jobs.tree import JOBS_TYPE

from .helpers import (
    LAYOUT,
    check_all_filed,
    list_keys,
    make_service,
    post_jobs,
    service_name,
    wait_pending_empty,
)

JOBS = 100
CONCURRENCY = 20
TIMEOUT = 0.2
#: How long the work would take without its timeout.
WORK = 1.5


@pytest.mark.slow
async def test_timeouts_cancel_every_job_and_nothing_writes_late() -> None:
    name = service_name()
    refused: list[str] = []
    started: list[str] = []

    async def slow(job: Job[Any], ctx: WorkerContext) -> Any:
        await ctx.log.info("working", "before the timeout")
        started.append(job.oada_id)
        try:
            await anyio.sleep(WORK)
        finally:
            # Code that outlives its cancellation and still tries to write.
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.05)
                for attempt in (
                    lambda: ctx.oada.put(f"/{job.oada_id}", {"late": True}, content_type=JOBS_TYPE),
                    lambda: ctx.log.info("late", "after the timeout"),
                ):
                    try:
                        await attempt()
                    except ClientClosed:
                        refused.append(job.oada_id)
        return {"n": job.config["n"]}

    async with (
        embedded_server(subprocess=True) as server,
        OADAClient(server.url, server.token) as oada,
    ):
        service = make_service(name, server, concurrency=CONCURRENCY)
        service.on("noop", TIMEOUT, slow)
        async with service:
            keys = await post_jobs(oada, name, JOBS)
            await wait_pending_empty(oada, name, timeout=60)
        # Past the point where every work function would have ended and written.
        await anyio.sleep(WORK)
        outcome = await check_all_filed(oada, name, keys, expect_failures=keys)
        typed = await list_keys(
            oada, LAYOUT.day_index_path(name, "failure", datetime.now(UTC).date(), "timeout")
        )
    assert typed == set(keys)
    assert sorted(started) == sorted(f"resources/{k}" for k in keys)
    assert len(refused) == 2 * JOBS, "a late write was not refused"
    for key, body in outcome.bodies.items():
        assert "late" not in body, f"{key}: a late write landed"
        assert body["result"]["failType"] == "timeout"
        statuses = [u["status"] for _, u in sorted(body["updates"].items())]
        assert "late" not in statuses, f"{key}: a late update landed: {statuses}"
        assert statuses[-1] == "failure", statuses
