"""``oada-jobs cron list|run``: a service's cron entries from the CLI, run now by hand."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from product_helpers import CLI, CLI_ENV, Result

from oada_jobs import Job, JobError, Json, WorkerContext
from oada_jobs.client import OADAClient
from oada_jobs.cron import CronEntry, CronScheduler, cron_job_key, post_now
from oada_jobs.exceptions import NotFound
from oada_jobs.job import utc_now
from oada_jobs.requester import wait_for_outcome
from oada_jobs.testing import EmbeddedServer
from oada_jobs.tree import JOBS_TYPE, get_layout, service_root

from .conftest import make_service


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's .env or OADA_* variables must not change what the CLI sees.
    monkeypatch.chdir(tmp_path)
    for variable in CLI_ENV:
        monkeypatch.delenv(variable, raising=False)


#: ``oada-jobs ARGS`` with only the variables a test gives it.
invoke = CLI({})


@dataclass
class UserCode:
    """A module in a temporary directory defining the services the CLI imports."""

    module: str
    directory: Path
    env: dict[str, str]

    def target(self, attribute: str = "service") -> str:
        return f"{self.module}:{attribute}"

    async def __call__(self, *args: str, env: Mapping[str, str] | None = None) -> Result:
        return await invoke(
            "cron", *args, "--app-dir", str(self.directory), env={**self.env, **(env or {})}
        )


@pytest.fixture
def code(server: EmbeddedServer, tmp_path: Path, name: str) -> UserCode:
    """``service`` (two entries, pending layout), ``failing``, ``bare`` (no entries)
    and ``coded`` (domain and token in the code)."""
    module = f"cron_user_{name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(
        f"""
from prometheus_client import CollectorRegistry
from oada_jobs import Service

service = Service({name!r}, layout="pending", metrics_registry=CollectorRegistry())
service.cron("cleanup", "*/5 * * * *", config={{"days": 30}})
service.cron("nightly", "0 3 * * *", type="cleanup", config={{"days": 1}})

failing = Service({name!r}, layout="pending", metrics_registry=CollectorRegistry())
failing.cron("broken", "0 0 1 1 *", type="explode")

bare = Service({name!r}, metrics_registry=CollectorRegistry())

coded = Service({name!r}, domain={server.url!r}, token={server.token!r},
                metrics_registry=CollectorRegistry())
coded.cron("cleanup", "0 0 1 1 *")
"""
    )
    return UserCode(module, tmp_path, {"OADA_DOMAIN": server.url, "OADA_TOKEN": server.token})


def worker(server: EmbeddedServer, name: str, seen: list[Json]) -> Any:
    """The service that runs the jobs: ``cleanup`` succeeds, ``explode`` fails."""
    service = make_service(server, name, layout="pending")

    async def cleanup(job: Job[Json], ctx: WorkerContext) -> Json:
        seen.append(job.config)
        return {"cleaned": job.config}

    async def explode(job: Job[Json], ctx: WorkerContext) -> Json:
        raise JobError("the disk is full", "disk")

    service.on("cleanup", 10, cleanup)
    service.on("explode", 10, explode)
    return service


def _minute(text: str) -> str:
    return f"{datetime.fromisoformat(text.replace('Z', '+00:00')):%Y-%m-%d %H:%M}"


def keys(listing: Any) -> list[str]:
    assert isinstance(listing, dict)
    return sorted(key for key in listing if not key.startswith("_") and key != "day-index")


async def test_list_shows_schedule_next_runs_and_latest_runs(
    code: UserCode, oada: OADAClient, name: str
) -> None:
    before = utc_now()
    listed = await code("list", code.target(), "--next", "2", "--json")
    assert listed.exit_code == 0, listed
    data = listed.json()
    assert data["service"] == name
    cleanup, nightly = data["entries"]
    assert cleanup["name"] == "cleanup"
    assert cleanup["schedule"] == "*/5 * * * *"
    assert (cleanup["type"], cleanup["config"]) == ("cleanup", {"days": 30})
    assert (nightly["type"], nightly["config"]) == ("cleanup", {"days": 1})
    entry = CronEntry("cleanup", "*/5 * * * *", "cleanup")
    ticks = [datetime.fromisoformat(t.replace("Z", "+00:00")) for t in cleanup["next"]]
    assert len(ticks) == 2
    assert before < ticks[0] < ticks[1]
    assert all(entry.is_tick(tick) and tick.minute % 5 == 0 for tick in ticks)
    assert [t.hour for t in (datetime.fromisoformat(n[:-1]) for n in nightly["next"])] == [3, 3]
    assert cleanup["lastTick"] is None
    assert cleanup["lastManual"] is None

    # A run by hand shows up as the entry's latest run by hand; no tick is recorded.
    posted = await code("run", code.target(), "cleanup", "--json")
    assert posted.exit_code == 0, posted
    again = (await code("list", code.target(), "--json")).json()["entries"][0]
    assert again["lastManual"]["job"] == posted.json()["id"]
    assert again["lastTick"] is None
    assert len(again["next"]) == 3

    table = await code("list", code.target())
    assert table.exit_code == 0, table
    for text in ("nightly  0 3 * * *  posts 'cleanup' {\"days\": 1}", "last tick  never"):
        assert text in table.stdout, table
    assert f"by hand    {_minute(again['lastManual']['time'])}  {posted.json()['id']}" in (
        table.stdout
    )
    assert f"oada-jobs cron run {code.target()} cleanup" in table.stdout


async def test_list_shows_a_skipped_tick(code: UserCode, oada: OADAClient, name: str) -> None:
    running = f"resources/cron-{name}-cleanup-20261123T1000Z"
    skipped = {"tick": "2026-11-23T10:05:00.000Z", "running": running, "count": 3}
    await oada.put(
        f"/bookmarks/services/{name}/cron",
        {"cleanup": {"last": skipped["tick"], "job": running, "skipped": skipped}},
        content_type=JOBS_TYPE,
    )
    listed = await code("list", code.target(), "--json")
    assert listed.exit_code == 0, listed
    assert listed.json()["entries"][0]["skipped"] == skipped
    table = await code("list", code.target())
    assert f"skipped    2026-11-23 10:05  while {running} ran (3 skipped in all)" in table.stdout


async def test_list_without_a_server_shows_the_schedule_only(code: UserCode) -> None:
    listed = await invoke("cron", "list", code.target(), "--app-dir", str(code.directory))
    assert listed.exit_code == 0, listed
    assert "*/5 * * * *" in listed.stdout
    assert "last tick" not in listed.stdout
    assert "latest runs not shown" in listed.stderr
    as_json = await invoke(
        "cron", "list", code.target(), "--app-dir", str(code.directory), "--json"
    )
    assert "lastTick" not in as_json.json()["entries"][0]


async def test_run_posts_a_job_marked_as_by_hand_that_runs_to_success(
    server: EmbeddedServer, code: UserCode, oada: OADAClient, name: str
) -> None:
    posted = await code("run", code.target(), "nightly", "--json")
    assert posted.exit_code == 0, posted
    summary = posted.json()
    job_id, key = summary["id"], summary["key"]
    assert job_id == f"resources/{key}"
    assert key.startswith(f"cron-{name}-nightly-manual-")
    assert summary["cron"] == {"entry": "nightly", "manual": True}
    assert "status" not in summary

    stored = (await oada.get(f"/{job_id}")).data
    assert (stored["service"], stored["type"], stored["config"]) == (name, "cleanup", {"days": 1})
    assert stored["cron"]["entry"] == "nightly"
    assert stored["cron"]["manual"] is True
    assert "tick" not in stored["cron"]
    [update] = stored["updates"].values()
    assert update["status"] == "manual"
    assert "nightly run now by oada-jobs cron run, not by a tick" in update["meta"]
    # Linked into the layout the service's code chose (pending), like a tick's job.
    pending_path = get_layout("pending").pending_path(name)
    assert (await oada.get(pending_path)).data[key] == {"_id": job_id}

    seen: list[Json] = []
    with anyio.fail_after(20):
        async with worker(server, name, seen):
            job = await wait_for_outcome(oada, job_id, timeout=15)
    assert job.status == "success"
    assert job.result == {"cleaned": {"days": 1}}
    assert seen == [{"days": 1}]
    assert key not in keys((await oada.get(pending_path)).data)

    # The human output names the entry and the job.
    table = await code("run", code.target(), "cleanup")
    assert table.exit_code == 0, table
    assert "posted cron entry 'cleanup' ('cleanup' job, by hand) as resources/cron-" in table.stdout


async def test_run_wait_prints_the_outcome(
    server: EmbeddedServer, code: UserCode, oada: OADAClient, name: str
) -> None:
    seen: list[Json] = []
    with anyio.fail_after(40):
        async with worker(server, name, seen):
            done = await code("run", code.target(), "cleanup", "--wait", "--json")
            shown = await code("run", code.target(), "cleanup", "--wait")
            failed = await code("run", code.target("failing"), "broken", "--wait", "--json")
    assert done.exit_code == 0, done
    assert done.json()["status"] == "success"
    assert done.json()["result"] == {"cleaned": {"days": 30}}
    assert shown.exit_code == 0, shown
    assert '"cleaned"' in shown.stdout
    assert '"success"' in shown.stdout
    assert failed.exit_code == 1, failed
    assert failed.json()["status"] == "failure"
    assert failed.json()["result"]["failType"] == "disk"
    assert "finished with status failure" in failed.stderr
    assert seen == [{"days": 30}, {"days": 30}]


async def test_run_wait_gives_up_after_the_timeout(code: UserCode, oada: OADAClient) -> None:
    # No service runs: the job stays pending and is left there.
    result = await code("run", code.target(), "cleanup", "--wait", "--timeout", "0.5", "--json")
    assert result.exit_code == 1, result
    assert "did not finish within 0.5 s" in result.stderr
    job = (await oada.get(f"/{result.json()['id']}")).data
    assert "status" not in job


async def test_a_run_by_hand_never_takes_a_tick(oada: OADAClient, name: str) -> None:
    entry = CronEntry("cleanup", "* * * * *", "cleanup")
    scheduler = CronScheduler(oada, name, [entry])
    await scheduler.ensure_state()
    now = utc_now()
    first = await post_now(oada, name, entry, clock=lambda: now)
    second = await post_now(oada, name, entry, clock=lambda: now)
    # The tick of this very minute still posts, under its own key.
    ticked = await scheduler.post_tick(entry, now)
    assert ticked == f"resources/{cron_job_key(name, 'cleanup', now)}"
    assert len({first, second, ticked}) == 3
    listing = (await oada.get(get_layout("classic").pending_path(name))).data
    assert keys(listing) == sorted(j.removeprefix("resources/") for j in (first, second, ticked))
    state = (await oada.get(f"/bookmarks/services/{name}/cron")).data
    assert state["cleanup"]["job"] == ticked
    assert state["cleanup"]["manual"]["job"] == second
    # ...and a run by hand after the tick leaves the tick recorded.
    await post_now(oada, name, entry)
    assert await scheduler.post_tick(entry, now) is None


async def test_unknown_entry_lists_the_known_ones_and_posts_nothing(
    code: UserCode, oada: OADAClient, name: str
) -> None:
    result = await code("run", code.target(), "cleanpu")
    assert result.exit_code == 2, result
    assert (
        f"service {name} has no cron entry 'cleanpu'; its entries: cleanup, nightly (did you mean 'cleanup'?)"
        in (result.stderr.replace("\n", " "))
    )
    far = await code("run", code.target(), "zzz")
    assert far.exit_code == 2, far
    assert far.stderr.strip().endswith("its entries: cleanup, nightly")
    bare = await code("run", code.target("bare"), "cleanup")
    assert bare.exit_code == 2, bare
    assert f"service {name} has no cron entries" in bare.stderr
    listed = await code("list", code.target("bare"))
    assert listed.exit_code == 0, listed
    assert f"service {name} has no cron entries" in listed.stdout
    assert (await code("list", code.target("bare"), "--json")).json()["entries"] == []
    with pytest.raises(NotFound):
        await oada.get(service_root(name))


@pytest.mark.parametrize(
    "target", ["no_such_module:service", "not a module", "cron_user_x:", "os:path"]
)
async def test_bad_module_paths_fail_as_oada_jobs_run_does(code: UserCode, target: str) -> None:
    for command in (("list", target), ("run", target, "cleanup")):
        cron = await code(*command)
        run = await invoke("run", target, "--app-dir", str(code.directory), "--check")
        assert cron.exit_code == run.exit_code, (cron, run)
        assert cron.exit_code in (1, 2)
        assert cron.stderr == run.stderr


async def test_connection_problems(code: UserCode) -> None:
    no_domain = await invoke(
        "cron", "run", code.target(), "cleanup", "--app-dir", str(code.directory), "-t", "god"
    )
    assert no_domain.exit_code == 2, no_domain
    assert "no OADA domain for" in no_domain.stderr
    refused = await code("run", code.target(), "cleanup", env={"OADA_TOKEN": "n0pe-token"})
    assert refused.exit_code == 4, refused
    assert "refused the token" in refused.stderr
    assert "n0pe-token" not in refused.stderr + refused.stdout
    unreachable = await code("list", code.target(), "-d", "http://127.0.0.1:9")
    assert unreachable.exit_code == 3, unreachable
    assert "cannot reach the OADA server" in unreachable.stderr


async def test_domain_and_token_from_the_services_code(
    code: UserCode, oada: OADAClient, name: str
) -> None:
    # As with `oada-jobs run`, what the code chose counts when nothing else is set.
    result = await invoke(
        "cron", "run", code.target("coded"), "cleanup", "--app-dir", str(code.directory), "--json"
    )
    assert result.exit_code == 0, result
    classic = get_layout("classic").pending_path(name)
    assert keys((await oada.get(classic)).data) == [result.json()["key"]]
