"""SIGKILL the embedded server (a child process) in the middle of a batch, restart it
on the same port and database: the service reconnects by itself, resumes its
watches, and every job ends in exactly one list."""

from __future__ import annotations

from pathlib import Path

import pytest

from oada_jobs.client import OADAClient
from oada_jobs.testing import embedded_server

from .helpers import (
    ServiceProcess,
    check_runs,
    count_lines,
    finish,
    post_jobs,
    running,
    service_name,
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
            server.url, server.token, name, record, "A",
            lease=3, sweep_interval=1, sleep=0.02, concurrency=20,
        )  # fmt: skip
        async with running(service):
            async with OADAClient(server.url, server.token) as oada:
                keys = await post_jobs(oada, name, BEFORE)
            await wait_until(lambda: count_lines(record) >= BEFORE // 3, timeout=60)
            await server.kill()
            killed_at = count_lines(record)
            await server.restart()
            # Posted after the restart: only a resumed watch (or a sweep) sees them.
            async with OADAClient(server.url, server.token) as oada:
                keys += await post_jobs(oada, name, AFTER, first=BEFORE)
                await finish(oada, name, keys, BEFORE + AFTER, service)
    assert killed_at < BEFORE
    # A job runs again only if its outcome could not be recorded before the
    # server died: at most the jobs that were in flight then.
    extra = check_runs(record, keys, max_extra=40)
    print(f"server killed after {killed_at} runs; {extra} jobs ran again")


@pytest.mark.slow
async def test_watch_resumes_from_its_last_rev_after_a_server_restart(tmp_path: Path) -> None:
    """With no sweep at all, only the resumed list watch (replaying from the last
    rev it delivered) can see jobs posted right after the restart."""
    record = tmp_path / "runs.txt"
    name = service_name()
    async with embedded_server(subprocess=True, db=tmp_path / "oada.sqlite") as server:
        service = ServiceProcess(
            server.url, server.token, name, record, "A", sweep_interval=3600, concurrency=20
        )
        async with running(service):
            async with OADAClient(server.url, server.token) as oada:
                keys = await post_jobs(oada, name, 50)
                await finish(oada, name, keys, 50, service)
            for round_ in range(2):
                await server.kill()
                await server.restart()
                # Posted at once, most likely before the service has reconnected.
                async with OADAClient(server.url, server.token) as oada:
                    keys += await post_jobs(oada, name, 100, first=50 + 100 * round_)
                    await finish(oada, name, keys, 250 if round_ else 150, service)
    check_runs(record, keys, max_extra=0)
