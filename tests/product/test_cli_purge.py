"""``oada-jobs jobs purge``: old finished jobs removed by hand."""

from __future__ import annotations

from datetime import timedelta

from product_helpers import CLI

from oada_jobs.client import OADAClient
from oada_jobs.exceptions import NotFound
from oada_jobs.job import utc_now
from oada_jobs.tree import JOBS_TYPE, get_layout


async def exists(oada: OADAClient, path: str) -> bool:
    try:
        await oada.head(path)
    except NotFound:
        return False
    return True


async def test_purge_by_hand_with_a_dry_run_first(cli: CLI, oada: OADAClient) -> None:
    layout = get_layout("classic")
    old = utc_now().date() - timedelta(days=45)
    for status in ("success", "failure"):
        key = f"old-{status}"
        await oada.put(
            f"/resources/{key}",
            {"service": "svc", "type": "t", "status": status},
            content_type=JOBS_TYPE,
        )
        await oada.put(
            layout.day_index_path("svc", status, old),
            {key: {"_id": f"resources/{key}", "_rev": 0}},
            tree=layout.tree,
        )
    dry = await cli("jobs", "purge", "--older-than", "30d", "--dry-run", "--json")
    assert dry.exit_code == 0, dry
    assert dry.json()["dryRun"] is True
    assert dry.json()["lists"]["success"]["jobs"] == 1
    assert await exists(oada, "/resources/old-success")

    done = await cli("jobs", "purge", "--older-than", "30", "--status", "failure")
    assert done.exit_code == 0, done
    assert "failure: removed 1 job(s) in 1 day list(s)" in done.stdout
    assert not await exists(oada, "/resources/old-failure")
    assert await exists(oada, "/resources/old-success")

    for bad in (("--older-than", "a month"), ("--older-than", "30d", "--status", "pending")):
        refused = await cli("jobs", "purge", *bad)
        assert refused.exit_code == 2, refused
