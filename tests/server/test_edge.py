"""The validation edge: strings that cannot be UTF-8, nesting, numbers, control characters.

Every hostile value is refused with 400 before the core acts on it, over
HTTP and WebSocket alike, and the server keeps serving afterwards.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import anyio
import httpx
import pytest
from websockets.asyncio.client import connect
from ws_helpers import WS, ws_connect

from oada_jobs.server.config import DEFAULT_TOKENS, ServerConfig, TokenInfo
from oada_jobs.server.runner import serve
from oada_jobs.testing import EmbeddedServer, embedded_server

READER = TokenInfo(
    user="users/reader",
    bookmarks="resources/reader_bookmarks",
    scopes=("all:read",),
)
SAM_BM = "resources/default:resources_bookmarks_321"
AUTH = {"authorization": "Bearer god"}


def http(server: EmbeddedServer, token: str = "god") -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.url, headers={"authorization": f"Bearer {token}"})


async def raw_request(ws: WS, frame: str) -> dict[str, Any]:
    """Send one hand-written frame; return the next message."""
    await ws.conn.send(frame)
    return await ws.recv()


async def still_serving(server: EmbeddedServer) -> None:
    """Writes and reads work, over HTTP and over a fresh socket."""
    async with http(server) as c:
        put = await c.put("/bookmarks/alive", json={"n": 1})
        assert put.status_code == 201, put.text
        get = await c.get("/bookmarks/alive/n")
        assert get.status_code == 200
        assert get.json() == 1
    async with ws_connect(server) as ws:
        put_ws = await ws.request("put", "/bookmarks/alive", data={"m": 2})
        assert put_ws["status"] == 201, put_ws


def frame(path: str, *, data: str | None = None, headers: str | None = None) -> str:
    """A WS frame whose path, data and headers are spliced in as raw JSON text."""
    hdrs = headers or '{"authorization":"Bearer god","content-type":"application/json"}'
    body = f',"data":{data}' if data is not None else ""
    return f'{{"requestId":"x1","method":"put","path":{path},"headers":{hdrs}{body}}}'


# -- strings that cannot be encoded as UTF-8 ------------------------------------------

SURROGATE_FRAMES = {
    "path key": frame('"/resources/sur/\\udc80"', data="{}"),
    "resource id": frame('"/resources/\\ud800x"', data="{}"),
    "data value": frame('"/bookmarks/s"', data='{"a":"\\udc80"}'),
    "data key deep": frame('"/bookmarks/s"', data='{"a":[{"b":{"\\udfff":1}}]}'),
    "content-type": frame(
        '"/resources/sur2"',
        data="{}",
        headers='{"authorization":"Bearer god","content-type":"application/\\udc80+json"}',
    ),
    "header name": frame(
        '"/bookmarks/s"',
        data="{}",
        headers='{"authorization":"Bearer god","content-type":"application/json","x\\udc80":"1"}',
    ),
    "authorization": frame(
        '"/bookmarks/s"', data="{}", headers='{"authorization":"Bearer \\udc80"}'
    ),
    "with a long number": frame(
        '"/bookmarks/s"', data='{"a":"\\udc80","n":123456789012345678901234567890}'
    ),
}


@pytest.mark.parametrize("name", list(SURROGATE_FRAMES))
async def test_ws_lone_surrogates_are_400_and_the_server_keeps_serving(name: str) -> None:
    tokens = {**DEFAULT_TOKENS, "ro": READER}
    async with embedded_server(tokens=tokens) as server:
        for token in ("god", "ro"):
            async with ws_connect(server) as ws:
                text = SURROGATE_FRAMES[name].replace("Bearer god", f"Bearer {token}")
                reply = await raw_request(ws, text)
                assert reply["status"] == 400, reply
                assert reply["requestId"] in ("x1", ["error"])
                # The socket stays open and usable.
                pong = await ws.request("ping", "")
                assert pong["status"] == 204
        await still_serving(server)
        store = server.core.store if server.core else None
        assert store is not None
        ids = [row[0] for row in store.db.execute("SELECT id FROM resources")]
        assert not any("sur" in rid for rid in ids), ids


async def test_http_lone_surrogate_in_a_body_with_a_long_number_is_400(
    server: EmbeddedServer,
) -> None:
    body = b'{"a":"\\udc80","n":123456789012345678901234567890}'
    async with http(server) as c, ws_connect(server) as ws:
        await ws.request("watch", "/bookmarks")
        put = await c.put(
            "/bookmarks/s", content=body, headers={"content-type": "application/json"}
        )
        assert put.status_code == 400, put.text
        assert "UTF-8" in put.json()["message"]
        # Long numbers without surrogates are still kept exactly.
        ok = await c.put(
            "/bookmarks/s",
            content=b'{"n":123456789012345678901234567890}',
            headers={"content-type": "application/json"},
        )
        assert ok.status_code == 201
        change = await ws.recv()
        assert change["change"][0]["body"]["s"]["n"] == 123456789012345678901234567890
    await still_serving(server)


async def test_ws_control_characters_in_paths_are_400(server: EmbeddedServer) -> None:
    async with ws_connect(server) as ws:
        for path in ("/resources/a\nb", "/bookmarks/a\rb", "/bookmarks/\x00", "/bookmarks/\x7f"):
            reply = await ws.request("put", path, data={"a": 1})
            assert reply["status"] == 400, (path, reply)
        reply = await ws.request("get", "/bookmarks", headers={"accept": "a\r\nb"})
        assert reply["status"] == 400, reply
    await still_serving(server)


async def test_a_link_to_an_id_with_control_characters_answers_over_http(
    server: EmbeddedServer,
) -> None:
    async with http(server) as c:
        put = await c.put("/bookmarks/l", json={"_id": "resources/a\nb\x7f"})
        assert put.status_code in (201, 400), put.text
        get = await c.get("/bookmarks/l")
        assert get.status_code < 500
        assert "\n" not in get.headers.get("content-location", "")
    await still_serving(server)


async def test_huge_paths_are_refused(server: EmbeddedServer) -> None:
    async with ws_connect(server) as ws:
        reply = await ws.request("put", "/bookmarks/" + "k" * 100_000, data={"a": 1})
        assert reply["status"] == 414, reply
    await still_serving(server)


# -- nesting ---------------------------------------------------------------------


@pytest.mark.parametrize("depth", [100, 300, 1100, 5000])
async def test_ws_deep_frames_are_400_and_the_socket_stays(
    server: EmbeddedServer, depth: int
) -> None:
    deep = "[" * depth + "]" * depth
    async with ws_connect(server) as ws:
        for data in (deep, '{"n":123456789012345678901234567890,"d":' + deep + "}"):
            reply = await raw_request(ws, frame('"/bookmarks/deep"', data=data))
            assert reply["status"] == 400, reply
            assert reply["requestId"] in ("x1", ["error"])
        pong = await ws.request("ping", "")
        assert pong["status"] == 204
    await still_serving(server)


@pytest.mark.parametrize("depth", [100, 300, 1100, 5000])
async def test_http_deep_bodies_are_400(server: EmbeddedServer, depth: int) -> None:
    deep = "[" * depth + "]" * depth
    async with http(server) as c:
        for body in (deep, '{"n":123456789012345678901234567890,"d":' + deep + "}"):
            put = await c.put(
                "/bookmarks/deep", content=body, headers={"content-type": "application/json"}
            )
            assert put.status_code == 400, put.text
            assert "deep" in put.json()["message"]


# -- numbers -----------------------------------------------------------------------

HUGE = "9" * 30
NOT_NUMBERS = ["+5", " 5", "5 ", "-1", "5_000", "\u0665", "0x10", "1e3", "", HUGE, "9" * 5000]


async def test_changes_rev_out_of_range_is_400(server: EmbeddedServer) -> None:
    async with http(server) as c:
        await c.put("/bookmarks/a", json={"b": 1})
        for rev in (HUGE, str(2**63), "9" * 5000, "-1", "1e3", "+1"):
            got = await c.get(f"/bookmarks/_meta/_changes/{rev}")
            assert got.status_code == 400, (rev, got.text)
            assert "rev" in got.json()["message"]
        ok = await c.get(f"/bookmarks/_meta/_changes/{2**63 - 1}")
        assert ok.status_code == 200
        assert ok.json() == []


@pytest.mark.parametrize("rev", [r for r in NOT_NUMBERS if r.strip()])
async def test_watch_with_a_bad_rev_is_one_400(server: EmbeddedServer, rev: str) -> None:
    async with ws_connect(server) as ws:
        rid = await ws.send("watch", "/bookmarks", headers={"x-oada-rev": rev})
        reply = await ws.recv()
        assert reply["requestId"] == rid
        assert reply["status"] == 400, reply
        got = await ws.request("get-watch", "/bookmarks", headers={"x-oada-rev": rev})
        assert got["status"] == 400, got
        assert "x-oada-rev" in json.dumps(got["data"])
        # Exactly one answer each: the next message is the ping's.
        pong = await ws.request("ping", "")
        assert pong["status"] == 204


@pytest.mark.parametrize("header", ["if-match", "if-none-match"])
@pytest.mark.parametrize(
    "value", ['"+5"', '" 5"', f'"{HUGE}"', f'"x/{HUGE}"', '"5_0"', '"\u00b2"', 'W/"x/9' + "9" * 40]
)
async def test_bad_etags_are_400(server: EmbeddedServer, header: str, value: str) -> None:
    async with http(server) as c:
        await c.put("/bookmarks/a", json={"b": 1})
        for method in ("GET", "PUT", "DELETE"):
            kw: dict[str, Any] = {"json": {"c": 1}} if method == "PUT" else {}
            got = await c.request(
                method, "/bookmarks/a", headers={header: value.encode("latin-1")}, **kw
            )
            assert got.status_code == 400, (method, got.text)
        assert (await c.get("/bookmarks/a")).json() == {"b": 1}


async def test_etag_lists_and_wildcards_still_work(server: EmbeddedServer) -> None:
    async with http(server) as c:
        put = await c.put("/bookmarks/a", json={"b": 1})
        etag = put.headers["etag"]
        rev = put.headers["x-oada-rev"]
        got = await c.get("/bookmarks", headers={"if-match": f'"1", {etag}'})
        assert got.status_code == 200
        got = await c.get("/bookmarks", headers={"if-none-match": f'W/"{rev}"'})
        assert got.status_code == 304


async def test_huge_array_indices_in_paths_are_not_500(server: EmbeddedServer) -> None:
    async with http(server) as c:
        await c.put("/bookmarks/list", json={"a": [1, 2, 3]})
        for index in ("9" * 5000, HUGE, "01", "-1"):
            got = await c.get(f"/bookmarks/list/a/{index}")
            assert got.status_code == 404, (index, got.text)
        assert (await c.get("/bookmarks/list/a/1")).json() == 2


async def test_ws_huge_x_oada_rev_on_a_plain_request_is_400(server: EmbeddedServer) -> None:
    async with connect(server.ws_url) as conn:
        ws = WS(conn, "god")
        reply = await ws.request("get", "/bookmarks", headers={"x-oada-rev": HUGE})
        assert reply["status"] == 400, reply


@pytest.mark.parametrize("max_depth", [64, 512])
async def test_the_depth_limit_is_the_same_over_http_and_ws(max_depth: int) -> None:
    def nested(depth: int) -> Any:
        value: Any = 1
        for _ in range(depth):
            value = {"k": value}
        return value

    async with anyio.create_task_group() as tg:
        handle = await tg.start(partial(serve, ServerConfig(max_depth=max_depth), port=0))
        url = f"http://127.0.0.1:{handle.port}"
        async with (
            httpx.AsyncClient(base_url=url, headers=AUTH) as c,
            connect(url.replace("http", "ws", 1) + "/", max_size=None) as conn,
        ):
            ws = WS(conn, "god")
            for depth, ok in ((max_depth, True), (max_depth + 1, False)):
                put = await c.put("/resources/deep", json=nested(depth))
                assert (put.status_code == 201) is ok, (depth, put.text)
                got = await ws.request("put", "/resources/deep-ws", data=nested(depth))
                assert (got["status"] == 201) is ok, (depth, got)
            back = await c.get("/resources/deep")
            assert back.status_code == 200
            value = back.json()
            for _ in range(max_depth - 1):
                value = value["k"]
            assert value == {"k": 1}
            got = await ws.request("get", "/resources/deep-ws")
            assert got["status"] == 200
        handle.shutdown()


# -- header and request id sizes ----------------------------------------------------


async def test_ws_headers_over_max_header_bytes_get_431_and_the_socket_stays() -> None:
    # HTTP bounds them on the wire; a WebSocket request only by its frame,
    # and an If-Match list of a million ETags took seconds to read.
    async with embedded_server(max_header_bytes=4096) as server:
        async with http(server) as c:
            await c.put("/bookmarks/h", json={"a": 1})
        async with ws_connect(server) as ws:
            fits = {"if-none-match": ",".join(['"x/1"'] * 100)}
            assert (await ws.request("get", "/bookmarks/h", headers=fits))["status"] == 200
            for name, value in (
                ("if-match", ",".join(['"h/1"'] * 100_000)),
                ("x-anything", "é" * 2100),  # 4,200 bytes in 2,100 characters
            ):
                reply = await ws.request(
                    "put", "/bookmarks/h", data={"b": 2}, headers={name: value}
                )
                assert reply["status"] == 431, reply
            assert (await ws.request("ping", ""))["status"] == 204
        async with http(server) as c:
            assert "b" not in (await c.get("/bookmarks/h")).json()


async def test_ws_request_ids_are_bounded(server: EmbeddedServer) -> None:
    async with ws_connect(server) as ws:
        reply = await raw_request(
            ws,
            json.dumps(
                {"requestId": "r" * 1025, "method": "watch", "path": "/bookmarks", "headers": AUTH}
            ),
        )
        assert reply["status"] == 400, reply
        assert reply["requestId"] == ["error"]
        ok = await ws.request("watch", "/bookmarks", request_id="r" * 1024)
        assert ok["status"] == 200
