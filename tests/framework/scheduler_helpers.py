"""What the scheduler's tests share: a no-op work function, jobs and entries by key."""

from __future__ import annotations

from typing import Any

from oada_jobs import Job, Json, WorkerContext
from oada_jobs.scheduler import Entry, Scheduler


async def work(job: Job[Json], ctx: WorkerContext) -> Json:
    return None


def job(key: str, **options: Any) -> Job[Any]:
    return Job.from_resource(
        {"service": "s", "type": "t", "options": options}, oada_id=f"resources/{key}", key=key
    )


def add(scheduled: Scheduler, key: str) -> Entry:
    entry = scheduled.add(key, f"resources/{key}")
    assert entry is not None
    return entry


def drain(scheduled: Scheduler) -> list[str]:
    started = []
    while (entry := scheduled.pop()) is not None:
        started.append(entry.key)
    return started
