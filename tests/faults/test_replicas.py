"""Three replicas of one service on one queue; one is SIGKILLed mid-batch.

No job runs twice while its lease holds: the live replicas never run a job
another live replica ran, and they take over the dead replica's unfinished
jobs only after its lease has expired.
"""

from __future__ import annotations

import time
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
        options = {"lease": LEASE, "sweep_interval": 0.5, "concurrency": 10}
        replicas = fleet(server.url, server.token, name, record, "AC", sleep=0.05, **options)
        # The victim holds each job for 3 s, so it surely has jobs in hand when killed.
        replicas |= fleet(server.url, server.token, name, record, "B", sleep=3, **options)
        async with running(*replicas.values()) as tg:
            keys = post_in_background(tg, oada, name, JOBS)

            def victim_busy() -> bool:
                unfinished = [r for r in read_runs(record) if r.worker == "B" and r.end is None]
                return count_lines(record) >= JOBS // 3 and len(unfinished) >= 1

            await wait_until(victim_busy, 60)
            await replicas["B"].kill()
            killed_at = time.time()
            await finish(oada, name, keys, JOBS, replicas["A"], replicas["C"], timeout=120)

    check_runs(record, keys, max_extra=10)
    runs = read_runs(record)
    live_runs = Counter(run.job for run in runs if run.worker != "B")
    assert max(live_runs.values()) <= 1, "a job ran twice on live replicas"
    by_job: dict[str, list[tuple[float, str]]] = {}
    for run in runs:
        by_job.setdefault(run.job, []).append((run.start, run.worker))
    taken_over = 0
    for job, starts in by_job.items():
        if len(starts) == 1:
            continue
        starts.sort()
        (first_at, first), (second_at, second) = starts[0], starts[1]
        assert len(starts) == 2, (job, starts)
        assert first == "B", f"{job}: ran on {first} and again on {second}"
        assert second != "B"
        # Not while B lived (it renewed its lease), and never before the lease
        # B took with its claim (just before its start) could have expired.
        assert second_at >= killed_at, f"{job} was taken over while B was alive"
        assert second_at >= first_at + LEASE - 0.05, f"{job} was taken over within B's lease"
        taken_over += 1
    b_unfinished = sum(1 for run in runs if run.worker == "B" and run.end is None)
    print(f"B left {b_unfinished} runs unfinished; {taken_over} jobs taken over after lease expiry")
    assert b_unfinished >= 1, "B had no job in hand when it was killed"
    assert taken_over >= b_unfinished
