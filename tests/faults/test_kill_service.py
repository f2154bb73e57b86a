"""SIGKILL a service process in the middle of a batch of 500 jobs, then restart it.

No job is lost: every job ends in exactly one of the success/failure lists.
A job runs a second time only when the killed process had started it and
could not finish it; the new process takes it over once the dead one's lease
has expired.
"""

from __future__ import annotations

from collections import Counter
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

JOBS = 500
LEASE = 2.0


@pytest.mark.slow
async def test_service_sigkill_mid_batch_and_restart(tmp_path: Path) -> None:
    record = tmp_path / "runs.txt"
    name = service_name()
    async with (
        embedded_server(subprocess=True) as server,
        OADAClient(server.url, server.token) as oada,
    ):
        options = {"lease": LEASE, "sweep_interval": 0.5, "sleep": 0.02, "concurrency": 20}
        first = ServiceProcess(server.url, server.token, name, record, "A", **options)
        second = ServiceProcess(server.url, server.token, name, record, "B", **options)
        try:
            await first.start()
            async with anyio.create_task_group() as tg:
                tg.start_soon(first.drain)
                keys: list[str] = []

                async def post() -> None:
                    keys.extend(await post_jobs(oada, name, JOBS))

                tg.start_soon(post)
                # Kill while jobs are both running and still being posted.
                await wait_until(lambda: count_lines(record) >= JOBS // 4, timeout=60)
                await first.kill()
                killed_at = count_lines(record)
                await second.start()
                tg.start_soon(second.drain)
                await wait_pending_empty(oada, name, timeout=90)
                await check_all_filed(oada, name, keys)
                tg.cancel_scope.cancel()
        finally:
            await first.stop()
            await second.stop()

    runs = read_runs(record)
    per_worker = Counter((run.job, run.worker) for run in runs)
    assert max(per_worker.values()) == 1, "a process ran one job twice"
    by_job: dict[str, list[str]] = {}
    for run in sorted(runs, key=lambda r: r.start):
        by_job.setdefault(run.job, []).append(run.worker)
    twice = {job: workers for job, workers in by_job.items() if len(workers) > 1}
    # Only the killed process's unfinished jobs run again, and only after it died.
    assert all(workers == ["A", "B"] for workers in twice.values()), twice
    assert len(twice) <= 20, f"{len(twice)} jobs ran twice; at most the 20 in flight may"
    assert len(by_job) == JOBS
    assert killed_at < JOBS
