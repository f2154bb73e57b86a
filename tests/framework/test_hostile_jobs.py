"""Unusual jobs and work functions the framework must survive: cancelled group
members, blocking and shielded work functions, plain functions."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import anyio

from oada_jobs import Job, Service, ServiceState, WorkerContext
from oada_jobs.client import OADAClient
from oada_jobs.job import iso, request_cancel, utc_now
from oada_jobs.requester import post_job

from .conftest import wait_for_status


async def ok(job: Job[Any], ctx: WorkerContext) -> Any:
    return {"ran": job.key}


async def test_cancelling_a_waiting_group_member_leaves_the_service_running(
    oada: OADAClient, make_service: Callable[..., Service], name: str
) -> None:
    service = make_service()
    service.on("ok", 10, ok)
    later = iso(utc_now() + timedelta(hours=1))
    async with service:
        waiting = await post_job(oada, name, "ok", options={"group": "field-7", "notBefore": later})
        with anyio.fail_after(10):
            while service.queues["_default"].scheduler.counts()["waiting"] != 1:
                await anyio.sleep(0.02)
        assert await request_cancel(oada, waiting)
        body = await wait_for_status(oada, waiting)
        assert body["result"]["failType"] == "cancelled"
        # The group still works, and so does the service.
        after = await post_job(oada, name, "ok", options={"group": "field-7"})
        assert (await wait_for_status(oada, after))["status"] == "success"
        assert service.state is ServiceState.RUNNING
        service.queues["_default"].scheduler.check_invariants()
