"""Cut the service's connections (a TCP proxy between service and server drops them)
while jobs are being posted: the service reconnects, its watches resume, and
every job ends in exactly one list."""

from __future__ import annotations

from pathlib import Path

import pytest

from oada_jobs.client import OADAClient
from oada_jobs.testing import embedded_server

from .helpers import (
    ServiceProcess,
    check_runs,
    count_lines,
    finish,
    post_in_background,
    running,
    service_name,
    wait_until,
)
from .proxy import TCPProxy

JOBS = 500
CUTS = 5


@pytest.mark.slow
@pytest.mark.parametrize(("connection", "jobs"), [("ws", JOBS), ("http", JOBS // 2)])
async def test_connections_cut_while_jobs_are_posted(
    tmp_path: Path, connection: str, jobs: int
) -> None:
    """``ws``: every request and watch over the one WebSocket; ``http``: requests
    over keep-alive HTTP connections, watches over a WebSocket; all cut."""
    record = tmp_path / "runs.txt"
    name = service_name()
    async with (
        embedded_server(subprocess=True) as server,
        TCPProxy(server.port).running() as proxy,
        OADAClient(server.url, server.token) as oada,
    ):
        service = ServiceProcess(
            f"http://127.0.0.1:{proxy.port}", server.token, name, record, "A",
            lease=3, sweep_interval=1, sleep=0.01, concurrency=20, connection=connection,
        )  # fmt: skip
        async with running(service) as tg:
            keys = post_in_background(tg, oada, name, jobs, batch=25)
            dropped = 0
            for cut in range(1, CUTS + 1):
                await wait_until(lambda c=cut: count_lines(record) >= c * jobs // 8, 60)
                await wait_until(lambda: proxy.open >= 1, 30)
                dropped += proxy.cut()
            await finish(oada, name, keys, jobs, service)
    assert dropped >= CUTS
    extra = check_runs(record, keys, max_extra=CUTS * 20)
    print(f"cut {dropped} connections in {CUTS} cuts; {extra} jobs ran again")
