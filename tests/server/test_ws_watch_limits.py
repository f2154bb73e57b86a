"""Watches are counted: per socket (``max_watches_per_socket``) and in all (``max_watches``)."""

from __future__ import annotations

import anyio
import httpx
from ws_helpers import WS, ws_connect

from oada_jobs.testing import EmbeddedServer, embedded_server

AUTH = {"authorization": "Bearer god"}


async def watch(ws: WS, path: str, request_id: str, method: str = "watch", **kw: object) -> int:
    msg = await ws.request(method, path, request_id=request_id, **kw)  # type: ignore[arg-type]
    if msg["status"] >= 300:
        assert msg["data"]["statusCode"] == msg["status"], msg
        assert "watches" in msg["data"]["message"], msg
    return int(msg["status"])


async def make_resources(server: EmbeddedServer, n: int) -> list[str]:
    async with httpx.AsyncClient(base_url=server.url, headers=AUTH) as c:
        paths = []
        for i in range(n):
            r = await c.put(f"/resources/w{i}", json={"i": i})
            assert r.status_code == 201
            paths.append(f"/resources/w{i}")
        return paths


async def test_a_socket_holds_at_most_max_watches_per_socket() -> None:
    async with embedded_server(max_watches_per_socket=3) as server:
        paths = await make_resources(server, 5)
        async with ws_connect(server) as ws:
            assert [await watch(ws, p, f"w{i}") for i, p in enumerate(paths[:3])] == [200] * 3
            # Another watch, on another resource or on a watched one, is refused.
            assert await watch(ws, paths[3], "w3") == 429
            assert await watch(ws, paths[0], "again") == 429
            # A refused put-watch writes nothing.
            assert await watch(ws, paths[4], "w4", "put-watch", data={"x": 1}) == 429
            async with httpx.AsyncClient(base_url=server.url, headers=AUTH) as c:
                assert "x" not in (await c.get(paths[4])).json()
            # Re-watching under a held id replaces that watch: allowed.
            assert await watch(ws, paths[3], "w0") == 200
            # Unwatching makes room again.
            assert (await ws.request("unwatch", "", request_id="w1"))["status"] == 200
            assert await watch(ws, paths[4], "w4") == 200
            assert await watch(ws, paths[4], "w5") == 429
            # The refusals cost the socket nothing: it still serves requests.
            assert (await ws.request("get", paths[0]))["status"] == 200


async def test_all_sockets_together_hold_at_most_max_watches() -> None:
    async with embedded_server(max_watches_per_socket=3, max_watches=4) as server:
        paths = await make_resources(server, 4)
        async with ws_connect(server) as a:
            async with ws_connect(server) as b:
                assert [await watch(a, p, f"a{i}") for i, p in enumerate(paths[:3])] == [200] * 3
                assert await watch(b, paths[3], "b0") == 200
                assert await watch(b, paths[3], "b1") == 503
            # b's watches end with its socket (once the server has seen it close).
            async with ws_connect(server) as c:
                with anyio.fail_after(5):
                    while await watch(c, paths[3], "c0") != 200:
                        await anyio.sleep(0.02)
                assert await watch(c, paths[2], "c1") == 503
