"""Cut the service's connections (a TCP proxy between service and server drops them)
while jobs are being posted: the service reconnects, its watches resume, and
every job ends in exactly one list."""

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
from .proxy import TCPProxy

JOBS = 500
CUTS = 5


@pytest.mark.slow
@pytest.mark.parametrize(("connection", "jobs"), [("ws", JOBS), ("http", JOBS // 2)])
async def test_connections_cut_while_jobs_are_posted(
    tmp_path: Path, connection: str, jobs: int
) -> None:
    """``ws``: every request and watch over the one WebSocket; ``http``: requests
    over keep-alive HTTP connections, watches over a WebSocket; all cut."""
    record = tmp_path / "runs.txt"
    name = service_name()
    async with (
        embedded_server(subprocess=True) as server,
        TCPProxy(server.port).running() as proxy,
        OADAClient(server.url, server.token) as oada,
    ):
        service = ServiceProcess(
            f"http://127.0.0.1:{proxy.port}",
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
                dropped = 0
                for cut in range(1, CUTS + 1):
                    await wait_until(lambda c=cut: count_lines(record) >= c * jobs // 8, 60)
                    dropped += proxy.cut()
                await wait_until(lambda: len(keys) == jobs, 60)
                await wait_pending_empty(oada, name, timeout=90)
                await check_all_filed(oada, name, keys)
                assert service.process is not None
                assert service.process.returncode is None
                tg.cancel_scope.cancel()
        finally:
            await service.stop()
    assert dropped >= CUTS
    runs = read_runs(record)
    assert {run.job for run in runs} == {f"resources/{key}" for key in keys}
    extra = len(runs) - len(keys)
    print(f"cut {dropped} connections in {CUTS} cuts; {extra} jobs ran twice")
    assert extra <= CUTS * 20, f"{extra} extra runs"
