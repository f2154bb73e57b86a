"""SIGKILL the embedded server (a child process) in the middle of a batch, restart it
on the same port and database: the service reconnects by itself, resumes its
watches, and every job ends in exactly one list."""

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

BEFORE = 300
AFTER = 200


@pytest.mark.slow
async def test_server_sigkill_mid_batch_and_restart(tmp_path: Path) -> None:
    record = tmp_path / "runs.txt"
    name = service_name()
    async with embedded_server(subprocess=True, db=tmp_path / "oada.sqlite") as server:
        service = ServiceProcess(
            server.url,
            server.token,
            name,
            record,
            "A",
            lease=3,
            sweep_interval=1,
            sleep=0.02,
            concurrency=20,
        )
        try:
            await service.start()
            async with anyio.create_task_group() as tg:
                tg.start_soon(service.drain)
                async with OADAClient(server.url, server.token) as oada:
                    keys = await post_jobs(oada, name, BEFORE)
                await wait_until(lambda: count_lines(record) >= BEFORE // 3, timeout=60)
                await server.kill()
                killed_at = count_lines(record)
                await server.restart()
                # Posted after the restart: only a resumed watch (or a sweep) sees them.
                async with OADAClient(server.url, server.token) as oada:
                    keys += await post_jobs(oada, name, AFTER, first=BEFORE)
                    await wait_pending_empty(oada, name, timeout=90)
                    await check_all_filed(oada, name, keys)
                assert service.process is not None
                assert service.process.returncode is None, "the service died with the server"
                tg.cancel_scope.cancel()
        finally:
            await service.stop()
    assert killed_at < BEFORE
    runs = read_runs(record)
    assert {run.job for run in runs} == {f"resources/{key}" for key in keys}
    # A job runs again only if its outcome could not be recorded before the
    # server died: at most the jobs that were in flight then.
    assert len(runs) - len(keys) <= 40, f"{len(runs) - len(keys)} extra runs"
