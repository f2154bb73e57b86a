"""``oada-jobs queues``: add, list and remove queue entries; tokens never printed."""

from __future__ import annotations

import anyio
import pytest
from product_helpers import CLI
from prometheus_client import CollectorRegistry

from oada_jobs import Job, Service, WorkerContext
from oada_jobs.client import OADAClient
from oada_jobs.testing import EmbeddedServer, embedded_server, post_job, wait_for_job

SECRET = "queue-s3cret"


def store(server: EmbeddedServer) -> dict[str, str]:
    return {"OADA_DOMAIN": server.url, "OADA_TOKEN": server.token, "OADA_JOBS_SERVICE": "svc"}


async def test_add_list_remove(cli: CLI, oada: OADAClient) -> None:
    empty = await cli("queues", "list", "--json")
    assert empty.exit_code == 0, empty
    assert empty.json() == {"service": "svc", "queues": []}
    assert "no extra queues" in (await cli("queues", "list")).stdout

    added = await cli("queues", "add", "other.example.org:8443", "--token", SECRET, "--json")
    assert added.exit_code == 0, added
    queue_id = added.json()["id"]
    assert added.json()["domain"] == "https://other.example.org:8443"
    stored = (await oada.get(f"/bookmarks/services/svc/queues/{queue_id}")).data
    assert stored == {"domain": "https://other.example.org:8443", "token": SECRET}

    listed = await cli("queues", "list", "--json")
    assert listed.json()["queues"] == [
        {"id": queue_id, "domain": "https://other.example.org:8443", "token": "***", "valid": True}
    ]
    table = await cli("queues", "list")
    assert queue_id in table.stdout
    for result in (added, listed, table):
        assert SECRET not in result.stdout + result.stderr

    removed = await cli("queues", "remove", queue_id, "--json")
    assert removed.exit_code == 0, removed
    assert (await cli("queues", "list", "--json")).json()["queues"] == []


async def test_token_is_asked_for_when_not_given(cli: CLI, oada: OADAClient) -> None:
    added = await cli("queues", "add", "https://other.example.org", "--json", input=SECRET + "\n")
    assert added.exit_code == 0, added
    assert SECRET not in added.stdout
    queue_id = added.json()["id"]
    stored = (await oada.get(f"/bookmarks/services/svc/queues/{queue_id}")).data
    assert stored["token"] == SECRET


async def test_invalid_entries_are_listed_as_ignored(cli: CLI, oada: OADAClient) -> None:
    await cli("queues", "list")  # nothing there yet: fine
    await oada.put(
        "/bookmarks/services/svc/queues",
        {"broken": {"domain": 5, "token": SECRET}},
        content_type="application/vnd.oada.service.queues.1+json",
    )
    listed = await cli("queues", "list", "--json")
    (row,) = listed.json()["queues"]
    assert row["id"] == "broken"
    assert row["valid"] is False
    assert "'domain' must be a string" in row["problem"]
    assert SECRET not in listed.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("add", "ftp://x.org", "--token", "t"), "bad DOMAIN"),
        (("add", "https://x.org", "--token", "   "), "bad queue"),
        (("remove", "_id"), "expected a queue id"),
    ],
)
async def test_bad_input(cli: CLI, args: tuple[str, ...], message: str) -> None:
    result = await cli("queues", *args)
    assert result.exit_code == 2, result
    assert message in result.stderr


async def test_removing_an_unknown_queue(cli: CLI) -> None:
    result = await cli("queues", "remove", "nope")
    assert result.exit_code == 1
    assert "has no queue 'nope'" in result.stderr


async def test_connection_flags_are_named_oada(server: EmbeddedServer) -> None:
    result = await CLI({})(
        "queues", "list", "-s", "svc", "--oada-domain", server.url, "--oada-token", "wrong"
    )
    assert result.exit_code == 4
    assert "wrong" not in result.stderr


async def test_a_running_service_takes_jobs_from_an_added_queue(
    cli: CLI, server: EmbeddedServer
) -> None:
    seen = anyio.Event()

    async def work(job: Job[dict[str, object]], ctx: WorkerContext) -> object:
        seen.set()
        return {"from": job.config.get("where")}

    service = Service(
        "svc", domain=server.url, token=server.token, metrics_registry=CollectorRegistry()
    )
    service.on("ok", 5, work)
    async with embedded_server() as other, service:
        added = await cli("queues", "add", other.url, "--token", other.token, "--json")
        queue_id = added.json()["id"]
        with anyio.fail_after(10):
            await service.wait_for_queues(lambda queues: queue_id in queues)
        async with OADAClient(other.url, other.token) as remote:
            job_id = await post_job(remote, "svc", "ok", {"where": "other"})
            job = await wait_for_job(remote, job_id, 10)
        assert job.status == "success"
        assert job.result == {"from": "other"}

        await cli("queues", "remove", queue_id)
        with anyio.fail_after(10):
            await service.wait_for_queues(lambda queues: queue_id not in queues)
