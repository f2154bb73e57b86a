"""The server answers 503, then 429 with Retry-After, then stalls, while 500 jobs are in
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
    check_all_filed,
    count_lines,
    post_jobs,
    read_runs,
    service_name,
    wait_pending_empty,
    wait_until,
)
from .proxy import FaultProxy

JOBS = 500
#: Seconds each fault lasts.
FAULT = 1.5


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
            proxy.url,
            server.token,
            name,
            record,
            "A",
            lease=3,
            sweep_interval=1,
            sleep=0.01,
            concurrency=20,
            connection=connection,
        )
        try:
            await service.start()
            async with anyio.create_task_group() as tg:
                tg.start_soon(service.drain)
                keys: list[str] = []

                async def post() -> None:
                    keys.extend(await post_jobs(oada, name, jobs, batch=25))

                tg.start_soon(post)
                await wait_until(lambda: count_lines(record) >= jobs // 5, 60)
                proxy.fail(503)
                await anyio.sleep(FAULT)  # the fault lasts a while: nothing to await
                proxy.heal()
                await wait_until(lambda: count_lines(record) >= 2 * jobs // 5, 60)
                proxy.fail(429, retry_after=0.2)
                await anyio.sleep(FAULT)
                proxy.heal()
                await wait_until(lambda: count_lines(record) >= 3 * jobs // 5, 60)
                proxy.stall()
                await wait_until(lambda: proxy.held >= 10, 30)
                await anyio.sleep(FAULT)
                proxy.heal()
                await wait_until(lambda: len(keys) == jobs, 60)
                await wait_pending_empty(oada, name, timeout=90)
                await check_all_filed(oada, name, keys)
                assert service.process is not None
                assert service.process.returncode is None
                tg.cancel_scope.cancel()
        finally:
            await service.stop()
    assert proxy.injected > 0
    runs = read_runs(record)
    assert {run.job for run in runs} == {f"resources/{key}" for key in keys}
    extra = len(runs) - len(keys)
    print(f"{proxy.injected} errors injected, {proxy.held} requests stalled; {extra} extra runs")
    assert extra <= 40, f"{extra} extra runs"
