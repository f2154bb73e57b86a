"""Durability: every acknowledged write survives SIGKILL, with its change feed."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx
import pytest
from ws_helpers import ws_connect

from oada_jobs.testing import embedded_server

pytestmark = pytest.mark.slow

AUTH = {"authorization": "Bearer god"}


async def test_acknowledged_writes_survive_sigkill(tmp_path: Path) -> None:
    acked: dict[str, int] = {}  # key -> rev the server acknowledged
    async with embedded_server(subprocess=True, db=tmp_path / "oada.sqlite") as server:
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=10) as c:
            r = await c.put("/resources/dur", json={"start": True})
            assert r.status_code == 201
            first_rev = int(r.headers["x-oada-rev"])
            killed = anyio.Event()

            async def writer(worker: int) -> None:
                for i in range(10_000):
                    key = f"w{worker}_{i}"
                    try:
                        r = await c.put(f"/resources/dur/{key}", json={"v": i})
                    except httpx.TransportError:
                        return  # the kill cut this one off: not acknowledged
                    assert r.status_code == 201
                    acked[key] = int(r.headers["x-oada-rev"])
                    if len(acked) == 200:
                        killed.set()

            async with anyio.create_task_group() as tg:
                for worker in range(4):
                    tg.start_soon(writer, worker)
                with anyio.fail_after(60):
                    await killed.wait()
                # Writes are still in flight when the process dies.
                await server.kill()

        await server.restart()
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=10) as c:
            doc = (await c.get("/resources/dur")).json()
            last = doc["_rev"]
            for key, rev in acked.items():
                assert doc.get(key) == {"v": int(key.split("_")[1])}, key
                assert rev <= last
            changes = (await c.get("/resources/dur/_meta/_changes")).json()
            assert {int(k) for k in changes} >= set(range(first_rev, last + 1))
            sample = max(acked.values())
            arr = (await c.get(f"/resources/dur/_meta/_changes/{sample}")).json()
            assert arr[0]["body"]["_rev"] == sample

        # The change feed replays everything after a restart.
        async with ws_connect(server) as ws:
            rid = await ws.send("watch", "/resources/dur", headers={"x-oada-rev": str(first_rev)})
            assert (await ws.recv())["requestId"] == rid
            replayed = [
                (await ws.recv())["change"][0]["body"]["_rev"] for _ in range(last - first_rev)
            ]
            assert replayed == list(range(first_rev + 1, last + 1))


async def test_restart_keeps_data_with_default_db() -> None:
    async with embedded_server(subprocess=True) as server:
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH) as c:
            assert (await c.put("/bookmarks/keep", json={"x": 1})).status_code == 201
        port = server.port
        await server.kill()
        await server.restart()
        assert server.port == port
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH) as c:
            assert (await c.get("/bookmarks/keep")).json() == {"x": 1}
        # Restarting a running server stops it gracefully first.
        await server.restart()
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH) as c:
            assert (await c.get("/bookmarks/keep")).json() == {"x": 1}


async def test_kill_and_restart_need_subprocess_mode() -> None:
    async with embedded_server() as server:
        with pytest.raises(RuntimeError, match="subprocess=True"):
            await server.kill()


async def test_subprocess_server_takes_a_token_mapping() -> None:
    from oada_jobs.server.config import TokenInfo

    tokens = {"carol-token": TokenInfo(user="users/carol", bookmarks="resources/carol_bm")}
    async with (
        embedded_server(subprocess=True, tokens=tokens) as server,
        httpx.AsyncClient(base_url=server.url) as c,
    ):
        assert server.token == "carol-token"
        r = await c.get("/bookmarks", headers={"authorization": "Bearer carol-token"})
        assert r.headers["content-location"] == "/resources/carol_bm"
