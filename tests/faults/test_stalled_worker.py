"""A worker whose event loop blocks past its lease loses the job to another
replica. When it wakes up, the job has already been run and filed by the
other replica; the stale worker's outcome must not file the job a second time
(it would then be in both the success and the failure list)."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from oada_jobs.client import OADAClient
from oada_jobs.testing import embedded_server

from .helpers import (
    ServiceProcess,
    collect,
    count_lines,
    fleet,
    post_jobs,
    running,
    service_name,
    start_again,
    wait_pending_empty,
    wait_until,
)
from .proxy import TCPProxy

LEASE = 1.0
STALL = 4.0


@pytest.mark.slow
async def test_worker_stalled_past_its_lease_does_not_file_twice(tmp_path: Path) -> None:
    record = tmp_path / "runs.txt"
    name = service_name()
    async with (
        embedded_server(subprocess=True) as server,
        OADAClient(server.url, server.token) as oada,
    ):
        replicas = fleet(
            server.url, server.token, name, record, "AB", lease=LEASE, sweep_interval=0.3
        )
        async with running(replicas["A"], later=[replicas["B"]]) as tg:
            # A takes the job, stalls past its lease, then fails it; B runs it fine.
            config = {"stall_worker": "A", "stall": STALL, "fail_worker": "A"}
            keys = await post_jobs(oada, name, 1, config=config)
            await wait_until(lambda: count_lines(record) >= 1, 30)
            await start_again(tg, replicas["B"])
            await wait_pending_empty(oada, name, timeout=30)
            # B has filed the job; A wakes up once its stall is over.
            await wait_until(lambda: count_lines(record, "fail") >= 1, 30)
            await anyio.sleep(1.0)  # room for A's late writes: nothing to await
            outcome = await collect(oada, name, keys)
    runs = record.read_text().split()
    assert runs.count("start") == 2, "the job was not taken over after A's lease expired"
    (key,) = keys
    lists = [status for status in ("success", "failure") if key in getattr(outcome, status)]
    assert lists == ["success"], f"the job is filed in {lists} (A's stale outcome was filed too)"
    body = outcome.bodies[key]
    assert body["status"] == "success", (
        f"A's stale outcome overwrote B's: status {body['status']}, result {body['result']}"
    )


@pytest.mark.slow
async def test_worker_partitioned_past_its_lease_does_not_file_twice(tmp_path: Path) -> None:
    """The same with a network partition: A finishes its work while it cannot reach
    the server; B takes the job over; A's outcome, retried once the partition
    heals, is dropped."""
    record = tmp_path / "runs.txt"
    name = service_name()
    async with (
        embedded_server(subprocess=True) as server,
        TCPProxy(server.port).running() as proxy,
        OADAClient(server.url, server.token) as oada,
    ):
        a = ServiceProcess(
            f"http://127.0.0.1:{proxy.port}", server.token, name, record, "A",
            lease=LEASE, sweep_interval=0.3,
        )  # fmt: skip
        (b,) = fleet(
            server.url, server.token, name, record, "B", lease=LEASE, sweep_interval=0.3
        ).values()
        async with running(a, later=[b]) as tg:
            config = {"sleep": 1.5, "fail_worker": "A"}
            keys = await post_jobs(oada, name, 1, config=config)
            await wait_until(lambda: count_lines(record) >= 1, 30)
            proxy.partition()
            await start_again(tg, b)
            await wait_pending_empty(oada, name, timeout=30)
            await wait_until(lambda: count_lines(record, "fail") >= 1, 30)
            proxy.mend()
            # A reconnects and tries to record its failure: nothing to await.
            await anyio.sleep(3 * LEASE)
            outcome = await collect(oada, name, keys)
    (key,) = keys
    lists = [status for status in ("success", "failure") if key in getattr(outcome, status)]
    assert lists == ["success"], f"the job is filed in {lists} (A's stale outcome was filed too)"
    assert outcome.bodies[key]["status"] == "success", outcome.bodies[key].get("result")
