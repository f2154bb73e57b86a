"""Authorization over WebSocket: requests and watches are judged as HTTP requests are."""

from __future__ import annotations

from typing import Any

import httpx
from ws_helpers import WS, ws_connect

from oada_jobs.server.config import TokenInfo
from oada_jobs.testing import EmbeddedServer, embedded_server

FRANK = "users/default:users_frank_123"


def http(server: EmbeddedServer, token: str = "god") -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.url, headers={"authorization": f"Bearer {token}"})


async def assert_quiet(ws: WS) -> None:
    """Nothing is pending on the socket: a ping is answered first."""
    rid = await ws.send("ping", "")
    msg = await ws.recv()
    assert msg == {"requestId": rid, "status": 204}, msg


async def test_a_recycled_id_replays_only_its_own_history(server: EmbeddedServer) -> None:
    async with http(server) as sam, http(server, "abc") as frank:
        await sam.put("/resources/R", json={"secret": "s1"})
        await sam.put("/resources/R", json={"secret": "s2"})
        await sam.delete("/resources/R")
        await frank.put("/resources/R", json={"mine": 1})
        async with ws_connect(server, "abc") as ws:
            resp = await ws.request("watch", "/resources/R", headers={"x-oada-rev": "0"})
            assert resp["status"] == 200
            replayed = await ws.recv()
            assert replayed["requestId"] == [resp["requestId"]]
            assert replayed["change"][0]["body"]["_rev"] == 4
            assert "secret" not in repr(replayed)
            await assert_quiet(ws)
            changes = await ws.request("get", "/resources/R/_meta/_changes/2")
            assert changes["status"] == 404


async def test_a_read_only_token_creates_nothing_over_ws() -> None:
    tokens = {
        "god": TokenInfo(user="users/sam", bookmarks="resources/bm_sam"),
        "reader": TokenInfo(user="users/sam", bookmarks="resources/bm_sam", scopes=("all:read",)),
    }
    async with embedded_server(tokens=tokens) as server, ws_connect(server, "reader") as ws:
        for method, path in (
            ("put", "/resources/new"),
            ("post", "/resources"),
            ("put-watch", "/resources/new2"),
            ("post-watch", "/resources"),
        ):
            resp = await ws.request(method, path, data={"x": 1})
            assert resp["status"] == 403, (method, resp)
        async with http(server) as sam:
            assert (await sam.get("/resources/new")).status_code == 404
            assert (await sam.get("/resources/new2")).status_code == 404


async def test_bookkeeping_cannot_be_written_over_ws(server: EmbeddedServer) -> None:
    async with http(server) as sam, ws_connect(server, "abc") as ws:
        await sam.put("/resources/doc", json={"x": 1})
        grant = {FRANK: {"read": True, "write": True}}
        await sam.put("/resources/doc/_meta/_permissions", json=grant)
        for method, path, data in (
            ("put", "/resources/doc/_meta/_owner", FRANK),
            ("put", "/resources/doc", {"_meta": {"_owner": FRANK}}),
            ("put", "/resources/doc/_meta/stats", {"createdBy": FRANK}),
            ("delete", "/resources/doc/_meta/_owner", None),
            ("delete", "/resources/doc/_meta", None),
            ("put", "/resources/doc/_meta/_permissions", {"users/eve": {"read": True}}),
        ):
            resp = await ws.request(method, path, data=data)
            assert resp["status"] == 403, (method, path, resp)
        meta = (await sam.get("/resources/doc/_meta")).json()
        assert meta["_owner"] == "users/default:users_sam_321"
        assert set(meta["_permissions"]) == {FRANK}


async def test_a_watch_ends_when_its_token_may_no_longer_read(server: EmbeddedServer) -> None:
    async with http(server) as sam, ws_connect(server, "abc") as ws:
        await sam.put("/resources/doc", json={"x": 1})
        await sam.put("/resources/doc/_meta/_permissions", json={FRANK: {"read": True}})
        resp = await ws.request("watch", "/resources/doc")
        assert resp["status"] == 200
        await sam.put("/resources/doc", json={"x": 2})
        change: dict[str, Any] = await ws.recv()
        assert change["change"][0]["body"]["x"] == 2
        escaped = FRANK.replace("/", "~1")
        await sam.delete(f"/resources/doc/_meta/_permissions/{escaped}")
        await sam.put("/resources/doc", json={"x": "secret"})
        await assert_quiet(ws)
        # Granted again, a new watch works; the old one stays ended.
        await sam.put("/resources/doc/_meta/_permissions", json={FRANK: {"read": True}})
        again = await ws.request("watch", "/resources/doc")
        assert again["status"] == 200
        await sam.put("/resources/doc", json={"x": 3})
        change = await ws.recv()
        assert change["requestId"] == [again["requestId"]]


async def test_a_grantee_watching_a_parent_sees_no_unreadable_child(
    server: EmbeddedServer,
) -> None:
    async with http(server) as sam, ws_connect(server, "abc") as ws:
        await sam.put("/resources/S", json={"secret": 1})
        await sam.put("/resources/P", json={"s": {"_id": "resources/S", "_rev": 0}})
        await sam.put("/resources/P/_meta/_permissions", json={FRANK: {"read": True}})
        resp = await ws.request("watch", "/resources/P")
        assert resp["status"] == 200
        await sam.put("/resources/S", json={"secret": 2})
        change = await ws.recv()
        assert [c["resource_id"] for c in change["change"]] == ["resources/P"]
        assert "secret" not in repr(change)
        got = await ws.request(
            "get", f"/resources/P/_meta/_changes/{change['change'][0]['body']['_rev']}"
        )
        assert "secret" not in repr(got)
        # With read access to S as well, its change nests as usual.
        await sam.put("/resources/S/_meta/_permissions", json={FRANK: {"read": True}})
        await sam.put("/resources/S", json={"secret": 3})
        change = await ws.recv()
        assert [c["resource_id"] for c in change["change"]] == ["resources/P", "resources/S"]
