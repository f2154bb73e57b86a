"""The server answers 503, then 429 with Retry-After, then 500, then stalls, while 500 jobs are in
flight: the service backs off, keeps running (same process, same state) and
catches up; every job ends in exactly one list."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from oada_jobs.client import OADAClient
from oada_jobs.testing import embedded_server

from .helpers import (
    ServiceProcess,
    check_runs,
    count_lines,
    finish,
    post_in_background,
    post_jobs,
    running,
    service_name,
    wait_until,
)
from .proxy import FaultProxy

JOBS = 500
#: Seconds each fault lasts.
FAULT = 1.5
#: Jobs posted once the stall has begun, so that it has requests to hold
#: even when the service got through every earlier job first.
STALLED = 25


@pytest.mark.slow
@pytest.mark.parametrize(("connection", "jobs"), [("ws", JOBS), ("http", JOBS // 2)])
async def test_errors_and_stalls_are_ridden_out(tmp_path: Path, connection: str, jobs: int) -> None:
    record = tmp_path / "runs.txt"
    name = service_name()
    async with (
        embedded_server(subprocess=True) as server,
        FaultProxy(server.url).running() as proxy,
        OADAClient(server.url, server.token) as oada,
    ):
        service = ServiceProcess(
            proxy.url, server.token, name, record, "A",
            lease=3, sweep_interval=1, sleep=0.01, concurrency=20, connection=connection,
        )  # fmt: skip
        async with running(service) as tg:
            keys = post_in_background(tg, oada, name, jobs - STALLED, batch=25)
            await wait_until(lambda: count_lines(record) >= jobs // 5, 60)
            proxy.fail(503)
            await anyio.sleep(FAULT)  # the fault lasts a while: nothing to await
            proxy.heal()
            await wait_until(lambda: count_lines(record) >= 2 * jobs // 5, 60)
            proxy.fail(429, retry_after=0.2)
            await anyio.sleep(FAULT)
            proxy.heal()
            await wait_until(lambda: count_lines(record) >= 3 * jobs // 5, 60)
            proxy.fail(500)
            await anyio.sleep(FAULT)
            proxy.heal()
            await wait_until(lambda: count_lines(record) >= 4 * jobs // 5, 60)
            proxy.stall()
            late = await post_jobs(oada, name, STALLED, batch=STALLED, first=jobs - STALLED)
            await wait_until(lambda: proxy.held >= 10, 30)
            await anyio.sleep(FAULT)
            proxy.heal()
            await wait_until(lambda: len(keys) == jobs - STALLED, 60)
            keys += late
            await finish(oada, name, keys, jobs, service)
    assert proxy.injected > 0
    extra = check_runs(record, keys, max_extra=40)
    print(f"{proxy.injected} errors injected, {proxy.held} requests stalled; {extra} extra runs")
