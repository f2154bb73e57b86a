"""Old and recent finished jobs filed by hand, for the retention tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta

from oada_jobs.client import OADAClient
from oada_jobs.job import utc_now
from oada_jobs.tree import JOBS_TYPE, get_layout


@dataclass
class Seeded:
    """What :func:`seed` filed: job ids by (status, age in days), and a foreign one."""

    jobs: dict[tuple[str, int], str] = field(default_factory=dict)
    foreign: str = ""

    def day(self, age: int) -> date:
        return utc_now().date() - timedelta(days=age)


async def seed(oada: OADAClient, service: str, layout: str) -> Seeded:
    """File a success and a typed failure 40 and 2 days ago; link another
    service's job into the oldest failure day too."""
    chosen = get_layout(layout)  # type: ignore[arg-type]
    seeded = Seeded()
    for status in ("success", "failure"):
        for age in (40, 2):
            key = f"{service}-{status}-{age}"
            job = {"service": service, "type": "t", "config": {}, "status": status}
            if status == "failure":
                job["result"] = {"failType": "upstream"}
            await oada.put(f"/resources/{key}", job, content_type=JOBS_TYPE)
            day = seeded.day(age)
            link = {key: {"_id": f"resources/{key}", "_rev": 0}}
            await oada.put(chosen.day_index_path(service, status, day), link, tree=chosen.tree)
            if status == "failure":
                typed = chosen.day_index_path(service, status, day, "upstream")
                await oada.put(typed, link, tree=chosen.tree)
            seeded.jobs[(status, age)] = f"resources/{key}"
    foreign = f"{service}-foreign"
    await oada.put(
        f"/resources/{foreign}",
        {"service": "someone-else", "type": "t", "status": "failure"},
        content_type=JOBS_TYPE,
    )
    old_failures = chosen.day_index_path(service, "failure", seeded.day(40))
    await oada.put(old_failures, {foreign: {"_id": f"resources/{foreign}", "_rev": 0}})
    seeded.foreign = f"resources/{foreign}"
    return seeded
