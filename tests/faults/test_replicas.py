"""Three replicas of one service on one queue; one is SIGKILLed mid-batch.

No job runs twice while its lease holds: the live replicas never run a job
another live replica ran, and they take over the dead replica's unfinished
jobs only after its lease has expired.
"""

from __future__ import annotations

import time
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
async def test_three_replicas_one_killed(tmp_path: Path) -> None:
    record = tmp_path / "runs.txt"
    name = service_name()
    async with (
        embedded_server(subprocess=True) as server,
        OADAClient(server.url, server.token) as oada,
    ):
        replicas = {
            worker: ServiceProcess(
                server.url,
                server.token,
                name,
                record,
                worker,
                lease=LEASE,
                sweep_interval=0.5,
                # Long enough that the killed replica has jobs in hand.
                sleep=0.2,
                concurrency=10,
            )
            for worker in ("A", "B", "C")
        }
        try:
            async with anyio.create_task_group() as tg:
                for replica in replicas.values():
                    await replica.start()
                    tg.start_soon(replica.drain)
                keys: list[str] = []

                async def post() -> None:
                    keys.extend(await post_jobs(oada, name, JOBS))

                tg.start_soon(post)
                await wait_until(lambda: count_lines(record) >= JOBS // 3, 60)
                await replicas["B"].kill()
                killed_at = time.time()
                await wait_until(lambda: len(keys) == JOBS, 60)
                await wait_pending_empty(oada, name, timeout=120)
                await check_all_filed(oada, name, keys)
                tg.cancel_scope.cancel()
        finally:
            for replica in replicas.values():
                await replica.stop()

    runs = read_runs(record)
    assert {run.job for run in runs} == {f"resources/{key}" for key in keys}
    by_job: dict[str, list[tuple[float, str]]] = {}
    for run in runs:
        by_job.setdefault(run.job, []).append((run.start, run.worker))
    live_runs = Counter(run.job for run in runs if run.worker != "B")
    assert max(live_runs.values()) <= 1, "a job ran twice on live replicas"
    taken_over = 0
    for job, starts in by_job.items():
        if len(starts) == 1:
            continue
        starts.sort()
        (_, first), (second_at, second) = starts[0], starts[1]
        assert len(starts) == 2, (job, starts)
        assert first == "B", f"{job}: ran on {first} and again on {second}"
        assert second != "B"
        # B renewed its lease at most LEASE/3 before it died.
        assert second_at >= killed_at + LEASE * 2 / 3 - 0.1, (
            f"{job} was taken over {killed_at + LEASE - second_at:.2f} s before B's lease expired"
        )
        taken_over += 1
    b_unfinished = sum(1 for run in runs if run.worker == "B" and run.end is None)
    print(f"B left {b_unfinished} runs unfinished; {taken_over} jobs taken over after lease expiry")
    assert b_unfinished >= 1, "B had no job in hand when it was killed"
    assert taken_over >= b_unfinished
