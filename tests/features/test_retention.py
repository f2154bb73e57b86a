"""Retention: old finished jobs purged per status, by hand and once per tick over replicas."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial

import anyio
import pytest
from prometheus_client import CollectorRegistry

from oada_jobs import NotFound
from oada_jobs.client import OADAClient
from oada_jobs.cron import cron_job_key, run_cron
from oada_jobs.metrics import ServiceMetrics
from oada_jobs.requester import wait_for_outcome
from oada_jobs.retention import purge, retention_path
from oada_jobs.testing import EmbeddedServer
from oada_jobs.tree import get_layout

from .conftest import make_service
from .retention_helpers import seed
from .test_cron import FakeTime


async def exists(oada: OADAClient, path: str) -> bool:
    try:
        await oada.head(path)
    except NotFound:
        return False
    return True


@pytest.mark.parametrize("layout", ["classic", "pending"])
async def test_purge_removes_old_finished_jobs_per_status(
    oada: OADAClient, name: str, layout: str
) -> None:
    seeded = await seed(oada, name, layout)
    chosen = get_layout(layout)  # type: ignore[arg-type]
    registry = CollectorRegistry()
    metrics = ServiceMetrics(name, registry=registry)

    dry = await purge(
        oada, name, older_than={"success": 30, "failure": 30}, layout=layout, dry_run=True
    )
    assert [(item.status, item.jobs, item.kept) for item in dry.lists] == [
        ("success", 1, 0),
        ("failure", 1, 1),
    ]
    assert [await exists(oada, f"/{job}") for job in seeded.jobs.values()] == [True] * 4
    assert not await exists(oada, retention_path(name))

    # Successes older than 30 days, failures older than 60: only the old success goes.
    report = await purge(
        oada, name, older_than={"success": 30, "failure": 60}, layout=layout, metrics=metrics
    )
    assert [(i.status, i.jobs, len(i.days)) for i in report.lists] == [
        ("success", 1, 1),
        ("failure", 0, 0),
    ]
    assert not await exists(oada, f"/{seeded.jobs[('success', 40)]}")
    assert not await exists(oada, chosen.day_index_path(name, "success", seeded.day(40)))
    assert await exists(oada, f"/{seeded.jobs[('success', 2)]}")
    assert await exists(oada, f"/{seeded.jobs[('failure', 40)]}")

    report = await purge(oada, name, older_than={"failure": 30}, layout=layout, metrics=metrics)
    (failures,) = report.lists
    assert (failures.jobs, failures.kept, failures.typed_days) == (1, 1, 1)
    assert not await exists(oada, f"/{seeded.jobs[('failure', 40)]}")
    old_day = seeded.day(40)
    assert not await exists(oada, chosen.day_index_path(name, "failure", old_day))
    assert not await exists(oada, chosen.day_index_path(name, "failure", old_day, "upstream"))
    # Not this service's job: unlinked with its day list, never deleted.
    assert await exists(oada, f"/{seeded.foreign}")
    assert await exists(oada, f"/{seeded.jobs[('failure', 2)]}")
    recent = chosen.day_index_path(name, "failure", seeded.day(2), "upstream")
    assert await exists(oada, recent)
    record = (await oada.get(retention_path(name))).data["last"]
    assert record["lists"]["failure"]["jobs"] == 1
    assert record["by"] == "by hand"
    assert (
        registry.get_sample_value(
            "oada_jobs_purged_jobs_total", {"service": name, "status": "success"}
        )
        == 1
    )
    assert (
        registry.get_sample_value(
            "oada_jobs_purged_jobs_total", {"service": name, "status": "failure"}
        )
        == 1
    )


@pytest.mark.parametrize(
    ("older_than", "match"),
    [({"pending": 3}, "status"), ({"success": -1}, "integer"), ({"failure": True}, "integer")],
)
async def test_bad_purge_arguments_are_refused(
    oada: OADAClient, name: str, older_than: dict[str, int], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        await purge(oada, name, older_than=older_than)


async def test_two_replicas_purge_once_per_tick(
    server: EmbeddedServer, oada: OADAClient, name: str
) -> None:
    seeded = await seed(oada, name, "classic")
    replicas = [make_service(server, name) for _ in range(2)]
    for replica in replicas:
        replica.retain(success_days=30, failure_days=30, schedule="0 4 * * *")
    start = datetime(2026, 11, 23, 3, 59, 30, tzinfo=UTC)
    times = [FakeTime(start, limit=1) for _ in replicas]
    with anyio.fail_after(30):
        async with replicas[0], replicas[1], anyio.create_task_group() as group:
            scopes = [
                await group.start(partial(run_cron, r, clock=t.clock, sleep=t.sleep))
                for r, t in zip(replicas, times, strict=True)
            ]
            for time in times:
                await time.done.wait()
            for scope in scopes:
                scope.cancel()
            tick = datetime(2026, 11, 23, 4, 0, tzinfo=UTC)
            job = await wait_for_outcome(
                oada, f"resources/{cron_job_key(name, 'retention', tick)}", timeout=15
            )
    assert job.status == "success", job.result
    assert job.result["lists"]["success"]["jobs"] == 1
    assert job.result["lists"]["failure"]["jobs"] == 1
    assert not await exists(oada, f"/{seeded.jobs[('success', 40)]}")
    assert await exists(oada, f"/{seeded.jobs[('success', 2)]}")
    record = (await oada.get(retention_path(name))).data["last"]
    assert record["by"] == "by retention"
    # One post for the tick however many replicas: the cron state names it once.
    state = (await oada.get(f"/bookmarks/services/{name}/cron")).data
    assert state["retention"]["job"] == job.oada_id


async def test_retain_refuses_bad_days(server: EmbeddedServer, name: str) -> None:
    service = make_service(server, name)
    with pytest.raises(ValueError, match="success_days, failure_days"):
        service.retain()
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        service.retain(success_days=-1)
