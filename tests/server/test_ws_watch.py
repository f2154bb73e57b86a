"""WebSocket watches: responses, replay with x-oada-rev, live changes, sharing, teardown."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest
from ws_helpers import WS, ws_connect

import oada_jobs.server.documents as documents
import oada_jobs.server.ws as ws_module
from oada_jobs.testing import EmbeddedServer, embedded_server

SAM_BM = "resources/default:resources_bookmarks_321"


def http(server: EmbeddedServer) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.url, headers={"authorization": "Bearer god"})


def revs(msg: dict[str, Any]) -> int:
    body = msg["change"][0]["body"]
    assert isinstance(body["_rev"], int)
    return int(body["_rev"])


async def assert_quiet(ws: WS) -> None:
    """Nothing is pending on the socket: a ping is answered first."""
    rid = await ws.send("ping", "")
    msg = await ws.recv()
    assert msg == {"requestId": rid, "status": 204}, msg


async def test_watch_without_rev_then_live_change(server: EmbeddedServer) -> None:
    async with http(server) as c, ws_connect(server) as ws:
        resp = await ws.request("watch", "/bookmarks")
        assert resp["status"] == 200
        assert "data" not in resp
        assert all(isinstance(v, str) for v in resp["headers"].values())
        assert resp["headers"]["content-location"] == f"/{SAM_BM}"
        rev = int(resp["headers"]["x-oada-rev"])

        await c.put("/bookmarks/a", json={"b": 1})
        change = await ws.recv()
        assert change["requestId"] == [resp["requestId"]]
        assert change["resourceId"] == SAM_BM
        assert change["path_leftover"] == [""]
        first = change["change"][0]
        assert first["resource_id"] == SAM_BM
        assert first["path"] == ""
        assert first["type"] == "merge"
        assert first["body"]["a"] == {"b": 1}
        assert revs(change) == rev + 1


async def test_watch_inside_a_resource_covers_all_of_it(server: EmbeddedServer) -> None:
    async with http(server) as c, ws_connect(server) as ws:
        await c.put("/bookmarks/a", json={"b": 1})
        resp = await ws.request("watch", "/bookmarks/a")
        assert resp["status"] == 200
        await c.put("/bookmarks/other", json={"x": 1})
        change = await ws.recv()
        assert change["resourceId"] == SAM_BM
        assert change["change"][0]["body"]["other"] == {"x": 1}


async def test_get_watch_has_data(server: EmbeddedServer) -> None:
    async with http(server) as c, ws_connect(server) as ws:
        await c.put("/bookmarks/a", json={"b": 1})
        resp = await ws.request("get-watch", "/bookmarks/a")
        assert resp["status"] == 200
        assert resp["data"] == {"b": 1}
        resumed = await ws.request("get-watch", "/bookmarks/a", headers={"x-oada-rev": "1"})
        assert resumed["status"] == 200
        assert resumed["data"] == {"b": 1}


async def test_resume_replays_after_the_single_response(server: EmbeddedServer) -> None:
    async with http(server) as c, ws_connect(server) as ws:
        first = int((await c.put("/bookmarks/a", json={"n": 0})).headers["x-oada-rev"])
        for n in range(1, 4):
            await c.put("/bookmarks/a", json={"n": n})
        rid = await ws.send("watch", "/bookmarks", headers={"x-oada-rev": str(first)})
        resp = await ws.recv()
        assert resp["requestId"] == rid
        assert resp["status"] == 200
        assert resp["headers"]["x-oada-rev"] == str(first + 3)
        replayed = [await ws.recv() for _ in range(3)]
        assert [revs(m) for m in replayed] == [first + 1, first + 2, first + 3]
        assert all(m["requestId"] == [rid] for m in replayed)
        assert [m["change"][0]["body"]["a"]["n"] for m in replayed] == [1, 2, 3]
        # Then live changes follow.
        await c.put("/bookmarks/a", json={"n": 4})
        assert revs(await ws.recv()) == first + 4


async def test_resume_at_or_after_current_replays_nothing(server: EmbeddedServer) -> None:
    async with http(server) as c, ws_connect(server) as ws:
        rev = int((await c.put("/bookmarks/a", json={"n": 0})).headers["x-oada-rev"])
        for asked in (str(rev), str(rev + 10), "abc", ""):
            rid = await ws.send("watch", "/bookmarks", headers={"x-oada-rev": asked})
            assert (await ws.recv())["requestId"] == rid
            await assert_quiet(ws)


async def test_reference_quirk_answers_resume_twice() -> None:
    async with (
        embedded_server(quirks="reference") as server,
        http(server) as c,
        ws_connect(server) as ws,
    ):
        rev = int((await c.put("/bookmarks/a", json={"n": 0})).headers["x-oada-rev"])
        await c.put("/bookmarks/a", json={"n": 1})
        rid = await ws.send("get-watch", "/bookmarks", headers={"x-oada-rev": str(rev)})
        bare = await ws.recv()
        assert bare == {"requestId": rid, "status": 200}
        replay = await ws.recv()
        assert replay["requestId"] == [rid]
        assert revs(replay) == rev + 1
        second = await ws.recv()
        assert second["requestId"] == rid
        assert second["status"] == 200
        assert second["headers"]["x-oada-rev"] == str(rev + 1)
        assert second["data"]["a"] == {"n": 1}
        # Without an x-oada-rev there is just the one response.
        for headers in ({}, {"x-oada-rev": ""}):
            await ws.send("watch", "/bookmarks", headers=headers)
            assert (await ws.recv())["headers"]["content-location"] == f"/{SAM_BM}"
            await assert_quiet(ws)
        # One that is not a rev is refused, with one answer.
        await ws.send("watch", "/bookmarks", headers={"x-oada-rev": "abc"})
        assert (await ws.recv())["status"] == 400
        await assert_quiet(ws)


async def test_watches_on_one_resource_share_one_notifier(server: EmbeddedServer) -> None:
    async with http(server) as c, ws_connect(server) as ws:
        await c.put("/bookmarks/a", json={"b": 1})
        w1 = (await ws.request("watch", "/bookmarks"))["requestId"]
        w2 = (await ws.request("watch", "/bookmarks/a"))["requestId"]
        await c.put("/bookmarks/a", json={"b": 2})
        change = await ws.recv()
        assert sorted(change["requestId"]) == sorted([w1, w2])
        assert change["path_leftover"] == ["", ""]
        await assert_quiet(ws)  # exactly one message for both watches

        unwatch = await ws.request("unwatch", "", request_id=w1)
        assert unwatch == {"requestId": w1, "status": 200}
        await c.put("/bookmarks/a", json={"b": 3})
        assert (await ws.recv())["requestId"] == [w2]

        await ws.request("unwatch", "", request_id=w2)
        await c.put("/bookmarks/a", json={"b": 4})
        await assert_quiet(ws)


async def test_watches_on_two_sockets_each_get_changes(server: EmbeddedServer) -> None:
    async with http(server) as c, ws_connect(server) as a, ws_connect(server) as b:
        wa = (await a.request("watch", "/bookmarks"))["requestId"]
        wb = (await b.request("watch", "/bookmarks"))["requestId"]
        await c.put("/bookmarks/x", json={"y": 1})
        assert (await a.recv())["requestId"] == [wa]
        assert (await b.recv())["requestId"] == [wb]


async def test_watch_error_makes_no_watch(server: EmbeddedServer) -> None:
    async with http(server) as c, ws_connect(server) as ws:
        missing = await ws.request("watch", "/resources/nothing-here")
        assert missing["status"] == 404
        assert missing["statusText"] == "Not Found"
        await c.put(
            "/resources/nothing-here", json={"a": 1}, headers={"content-type": "application/json"}
        )
        await assert_quiet(ws)


async def test_whole_resource_delete_ends_the_watch(server: EmbeddedServer) -> None:
    async with http(server) as c, ws_connect(server) as ws:
        await c.put("/resources/doomed", json={"a": 1})
        rid = (await ws.request("watch", "/resources/doomed"))["requestId"]
        assert (await c.delete("/resources/doomed")).status_code == 204
        change = await ws.recv()
        assert change["requestId"] == [rid]
        assert change["change"] == [
            {"resource_id": "resources/doomed", "path": "", "body": None, "type": "delete"}
        ]
        # Re-created: the old watch is gone.
        await c.put("/resources/doomed", json={"a": 2})
        await assert_quiet(ws)


async def test_delete_watch_of_a_whole_resource_replays_nothing(server: EmbeddedServer) -> None:
    async with http(server) as c, ws_connect(server) as ws:
        for n in range(3):
            await c.put("/resources/dw", json={"n": n})
        assert (await ws.request("delete-watch", "/resources/dw"))["status"] == 204
        # Its answer's rev is 0: there is no history after it to send.
        await assert_quiet(ws)


async def test_rev_graph_bumps_reach_parent_watchers(server: EmbeddedServer) -> None:
    async with http(server) as c, ws_connect(server) as ws:
        await c.put("/resources/child", json={"x": 0})
        await c.put("/bookmarks/kid", json={"_id": "resources/child", "_rev": 0})
        rid = (await ws.request("watch", "/bookmarks"))["requestId"]
        await c.put("/resources/child", json={"x": 1})
        change = await ws.recv()
        assert change["requestId"] == [rid]
        paths = [(e["resource_id"], e["path"]) for e in change["change"]]
        assert paths == [(SAM_BM, ""), ("resources/child", "/kid")]
        assert change["change"][1]["body"]["x"] == 1


async def test_put_watch_forwards_status_and_watches(server: EmbeddedServer) -> None:
    async with http(server) as c, ws_connect(server) as ws:
        resp = await ws.request("put-watch", "/bookmarks/p", data={"q": 1})
        assert resp["status"] == 201
        await c.put("/bookmarks/p", json={"q": 2})
        change = await ws.recv()
        assert change["requestId"] == [resp["requestId"]]


async def test_replay_and_live_changes_never_interleave(server: EmbeddedServer) -> None:
    """Writes race with a resuming watch; the client sees every rev once, in order."""
    async with http(server) as c, ws_connect(server) as ws:
        start = int((await c.put("/bookmarks/n", json={"i": 0})).headers["x-oada-rev"])
        for i in range(1, 20):
            await c.put("/bookmarks/n", json={"i": i})
        # Each PUT makes one rev. The watch may hear of the last one before
        # the writer has its answer, so wait for the rev, not the answer.
        final = start + 59
        done = anyio.Event()
        last = 0

        async def writer() -> None:
            nonlocal last
            for i in range(20, 60):
                r = await c.put("/bookmarks/n", json={"i": i})
                last = int(r.headers["x-oada-rev"])
            done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(writer)
            rid = await ws.send("watch", "/bookmarks", headers={"x-oada-rev": str(start)})
            resp = await ws.recv()
            assert resp["requestId"] == rid
            seen: list[int] = []
            with anyio.fail_after(10):
                while not seen or seen[-1] < final:
                    seen.append(revs(await ws.recv()))
                await done.wait()
        assert last == final
        assert seen == list(range(start + 1, final + 1))


async def test_closing_the_socket_ends_its_watches(server: EmbeddedServer) -> None:
    async with http(server) as c:
        async with ws_connect(server) as ws:
            await ws.request("watch", "/bookmarks")
        # Writes after the socket closed must not fail or be held up.
        for i in range(3):
            assert (await c.put("/bookmarks/z", json={"i": i})).status_code == 201
        async with ws_connect(server) as ws2:
            await assert_quiet(ws2)


async def test_a_change_is_encoded_once_for_all_the_sockets_watching(
    server: EmbeddedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Encoded once per socket, a large change held the event loop that many times.
    encoded: list[int] = []
    dumps = documents.dumps

    def counting(value: Any) -> str:
        change = value.get("change") if isinstance(value, dict) else value
        if isinstance(change, list) and change and change[0].get("resource_id") == SAM_BM:
            encoded.append(id(change))
        return dumps(value)

    monkeypatch.setattr(documents, "dumps", counting)
    monkeypatch.setattr(ws_module, "_dumps", counting)
    async with http(server) as c, ws_connect(server) as a, ws_connect(server) as b:
        for ws in (a, b):
            assert (await ws.request("watch", "/bookmarks"))["status"] == 200
        encoded.clear()
        await c.put("/bookmarks/once", json={"big": "x" * 100_000})
        got = [await ws.recv() for ws in (a, b)]
        assert got[0]["change"] == got[1]["change"]
        assert got[0]["change"][0]["body"]["once"] == {"big": "x" * 100_000}
        assert len(encoded) == 1
