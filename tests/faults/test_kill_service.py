"""Stop a service process (SIGKILL, or SIGTERM) in the middle of a batch of 500 jobs,
then start a new one.

No job is lost: every job ends in exactly one of the success/failure lists.
A job runs a second time only when the killed process had started it and
could not finish it; the new process takes it over once the dead one's lease
has expired.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from oada_jobs.client import OADAClient
from oada_jobs.testing import embedded_server

from .helpers import (
    check_runs,
    count_lines,
    finish,
    fleet,
    post_in_background,
    read_runs,
    running,
    service_name,
    start_again,
    wait_until,
)

JOBS = 500
LEASE = 2.0


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
async def test_service_stopped_mid_batch_and_restarted(tmp_path: Path, how: str) -> None:
    """SIGKILL: the dead process's jobs wait for their leases to expire.
    SIGTERM: a graceful stop lets running jobs finish (or gives them back)."""
    record = tmp_path / "runs.txt"
    name = service_name()
    async with (
        embedded_server(subprocess=True) as server,
        OADAClient(server.url, server.token) as oada,
    ):
        services = fleet(
            server.url, server.token, name, record, "AB",
            lease=LEASE, sweep_interval=0.5, sleep=0.02, concurrency=20,
        )  # fmt: skip
        async with running(services["A"], later=[services["B"]]) as tg:
            keys = post_in_background(tg, oada, name, JOBS)
            # Kill while jobs are both running and still being posted.
            await wait_until(lambda: count_lines(record) >= JOBS // 4, timeout=60)
            if how == "SIGKILL":
                await services["A"].kill()
            else:
                await services["A"].stop()
            killed_at = count_lines(record)
            await start_again(tg, services["B"])
            await finish(oada, name, keys, JOBS, services["B"])

    check_runs(record, keys, max_extra=20)
    runs = read_runs(record)
    assert max(Counter((run.job, run.worker) for run in runs).values()) == 1, (
        "a process ran one job twice"
    )
    by_job: dict[str, list[str]] = {}
    for run in sorted(runs, key=lambda r: r.start):
        by_job.setdefault(run.job, []).append(run.worker)
    twice = {job: workers for job, workers in by_job.items() if len(workers) > 1}
    # Only the killed process's unfinished jobs run again, and only after it died.
    assert all(workers == ["A", "B"] for workers in twice.values()), twice
    assert killed_at < JOBS
    if how == "SIGTERM":
        assert not twice, f"{len(twice)} jobs ran again after a graceful stop"
    print(f"{how} after {killed_at} runs; {len(twice)} jobs ran again after the lease expired")
