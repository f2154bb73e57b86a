"""WebSocket transport: request/response framing, invalid messages, ping, binary."""

from __future__ import annotations

import json

import httpx
import pytest
from websockets.asyncio.client import connect
from ws_helpers import WS, ws_connect

from oada_jobs.testing import EmbeddedServer, embedded_server

SAM_BM = "default:resources_bookmarks_321"


def assert_string_headers(msg: dict[str, object]) -> None:
    headers = msg["headers"]
    assert isinstance(headers, dict)
    assert all(isinstance(v, str) and v for v in headers.values()), headers


async def test_put_get_head_delete_framing(server: EmbeddedServer) -> None:
    async with ws_connect(server) as ws:
        put = await ws.request("put", "/bookmarks/a", data={"b": 1})
        assert put["status"] == 201
        assert "data" not in put
        assert "statusText" not in put
        assert_string_headers(put)
        assert put["headers"]["content-location"] == f"/resources/{SAM_BM}/a"
        assert put["headers"]["x-request-id"] == put["requestId"]
        rev = int(put["headers"]["x-oada-rev"])

        get = await ws.request("get", "/bookmarks/a")
        assert get["status"] == 200
        assert get["data"] == {"b": 1}
        assert get["headers"]["etag"] == f'"{SAM_BM}/{rev}"'
        assert_string_headers(get)

        head = await ws.request("head", "/bookmarks/a")
        assert head["status"] == 200
        assert "data" not in head
        assert head["headers"]["etag"] == get["headers"]["etag"]

        root = await ws.request("get", "/bookmarks")
        # Empty header values are left out over WebSockets.
        assert "x-oada-path-leftover" not in root["headers"]
        assert root["data"]["a"] == {"b": 1}

        deleted = await ws.request("delete", "/bookmarks/a")
        assert deleted["status"] == 204
        assert "data" not in deleted


async def test_post_over_ws(server: EmbeddedServer) -> None:
    async with ws_connect(server) as ws:
        r = await ws.request("post", "/resources", data={"x": 1})
        assert r["status"] == 201
        location = r["headers"]["content-location"]
        got = await ws.request("get", location)
        assert got["data"]["x"] == 1


async def test_errors_have_status_text_and_json_data(server: EmbeddedServer) -> None:
    async with ws_connect(server) as ws:
        missing = await ws.request("get", "/bookmarks/nope")
        assert missing["status"] == 404
        assert missing["statusText"] == "Not Found"
        assert missing["data"]["statusCode"] == 404
        assert_string_headers(missing)

        ws.token = "wrong"
        denied = await ws.request("get", "/bookmarks")
        assert denied["status"] == 401
        assert denied["statusText"] == "Unauthorized"

        ws.token = "god"
        no_type = await ws.request(
            "put", "/bookmarks/a", data={"b": 1}, headers={"content-type": ""}
        )
        assert no_type["status"] == 400


async def test_binary_get_is_refused_over_ws(server: EmbeddedServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        r = await http.put(
            "/resources/blob",
            content=b"\x89PNG",
            headers={"authorization": "Bearer god", "content-type": "image/png"},
        )
        assert r.status_code == 201
    async with ws_connect(server) as ws:
        got = await ws.request("get", "/resources/blob")
        assert got["status"] == 400
        assert got["statusText"] == "Cannot GET binary over WebSockets"
        head = await ws.request("head", "/resources/blob")
        assert head["status"] == 200
        watch = await ws.request("get-watch", "/resources/blob")
        assert watch["status"] == 400


async def test_ping_and_unknown_unwatch(server: EmbeddedServer) -> None:
    async with ws_connect(server) as ws:
        await ws.conn.send(
            json.dumps(
                {"requestId": "p1", "method": "ping", "path": "", "headers": {"authorization": ""}}
            )
        )
        assert await ws.recv() == {"requestId": "p1", "status": 204}
        await ws.conn.send(
            json.dumps(
                {
                    "requestId": "nope",
                    "method": "unwatch",
                    "path": "",
                    "headers": {"authorization": ""},
                }
            )
        )
        assert await ws.recv() == {"requestId": "nope", "status": 200}


INVALID = [
    pytest.param("not json", None, id="unparseable"),
    pytest.param("[1, 2]", None, id="not-an-object"),
    pytest.param(
        json.dumps({"method": "get", "path": "/bookmarks", "headers": {}}), None, id="no-request-id"
    ),
    pytest.param(
        json.dumps({"requestId": 5, "method": "get", "path": "/", "headers": {}}),
        None,
        id="numeric-request-id",
    ),
    pytest.param(
        json.dumps({"requestId": "x1", "method": "patch", "path": "/bookmarks", "headers": {}}),
        "x1",
        id="unknown-method",
    ),
    pytest.param(
        json.dumps({"requestId": "x2", "method": "get", "headers": {}}), "x2", id="no-path"
    ),
    pytest.param(
        json.dumps({"requestId": "x3", "method": "get", "path": "/bookmarks"}),
        "x3",
        id="no-headers",
    ),
    pytest.param(
        json.dumps(
            {
                "requestId": "x4",
                "method": "get",
                "path": "/bookmarks",
                "headers": {"authorization": 5},
            }
        ),
        "x4",
        id="non-string-header",
    ),
]


@pytest.mark.parametrize(("frame", "request_id"), INVALID)
async def test_invalid_messages_get_400(
    server: EmbeddedServer, frame: str, request_id: str | None
) -> None:
    async with ws_connect(server) as ws:
        await ws.conn.send(frame)
        msg = await ws.recv()
        assert msg["status"] == 400
        assert msg["requestId"] == (request_id if request_id is not None else ["error"])
        assert msg["headers"] == {}
        assert msg["data"]["status"] == 400
        assert msg["data"]["detail"]
        # The socket stays usable.
        ok = await ws.request("head", "/bookmarks")
        assert ok["status"] == 200


async def test_invalid_messages_use_error_id_in_reference_mode() -> None:
    async with embedded_server(quirks="reference") as server, ws_connect(server) as ws:
        await ws.conn.send(
            json.dumps({"requestId": "x1", "method": "patch", "path": "/", "headers": {}})
        )
        msg = await ws.recv()
        assert msg["requestId"] == ["error"]
        assert msg["status"] == 400


async def test_binary_frames_are_read_as_utf8_json(server: EmbeddedServer) -> None:
    async with ws_connect(server) as ws:
        frame = {
            "requestId": "b1",
            "method": "head",
            "path": "/bookmarks",
            "headers": {"authorization": "Bearer god"},
        }
        await ws.conn.send(json.dumps(frame).encode())
        msg = await ws.recv()
        assert msg["requestId"] == "b1"
        assert msg["status"] == 200


async def test_ws_only_on_root_path(server: EmbeddedServer) -> None:
    from websockets.exceptions import InvalidStatus

    with pytest.raises(InvalidStatus):
        async with connect(server.ws_url + "bookmarks"):
            pass


async def test_many_concurrent_requests_all_answered(server: EmbeddedServer) -> None:
    async with ws_connect(server) as ws:
        ids = [await ws.send("put", f"/bookmarks/k{i}", data={"i": i}) for i in range(50)]
        seen = {}
        for _ in ids:
            msg = await ws.recv()
            seen[msg["requestId"]] = msg["status"]
        assert seen == dict.fromkeys(ids, 201)


async def test_too_large_ws_body_gets_413() -> None:
    async with embedded_server(max_body_bytes=100) as server, ws_connect(server) as ws:
        r = await ws.request("put", "/bookmarks/big", data={"x": "a" * 200})
        assert r["status"] == 413


async def test_oversized_frame_gets_413_under_its_request_id_and_socket_stays() -> None:
    from oada_jobs.server.ws import FRAME_ENVELOPE

    async with embedded_server(max_body_bytes=1000) as server, ws_connect(server) as ws:
        pad = "x" * (FRAME_ENVELOPE + 5000)
        # requestId after the data: found without parsing the frame.
        frame = (
            '{"method":"put","path":"/bookmarks/big","headers":{"authorization":"Bearer god",'
            f'"content-type":"application/json"}},"data":{{"pad":"{pad}"}},"requestId":"big1"}}'
        )
        await ws.conn.send(frame)
        r = await ws.recv()
        assert r["requestId"] == "big1"
        assert r["status"] == 413
        assert "1000" in r["data"]["message"]
        # Without a findable id the answer goes to ["error"].
        await ws.conn.send('{"data":"' + pad + '"}')
        assert (await ws.recv())["requestId"] == ["error"]
        # The socket is still open and nothing was written.
        assert (await ws.request("get", "/bookmarks/big"))["status"] == 404


async def test_ws_client_sees_unused(server: EmbeddedServer) -> None:
    # The helper class is exercised with a non-default token too.
    async with ws_connect(server, token="abc") as ws:
        assert isinstance(ws, WS)
        r = await ws.request("get", "/bookmarks")
        assert r["headers"]["content-location"] == "/resources/default:resources_bookmarks_123"


def _raw_put(request_id: str, path: str, data_text: str) -> str:
    return (
        f'{{"requestId":"{request_id}","method":"put","path":"{path}",'
        f'"headers":{{"authorization":"Bearer god","content-type":"application/json"}},'
        f'"data":{data_text}}}'
    )


async def test_ws_bodies_keep_big_integers_and_non_ascii_exactly(server: EmbeddedServer) -> None:
    # Integers beyond 64 bits (and just below -2**63) must not turn into floats
    # on the way through the WebSocket parser.
    data = '{"big":123456789012345678901234567890,"neg":-9223372036854775809,"t":"\u00e9\u20ac"}'
    async with ws_connect(server) as ws:
        await ws.conn.send(_raw_put("n1", "/bookmarks/n", data))
        assert (await ws.recv())["status"] == 201
        await ws.conn.send(
            '{"requestId":"n2","method":"get","path":"/bookmarks/n",'
            '"headers":{"authorization":"Bearer god"}}'
        )
        raw = await ws.conn.recv()
        assert isinstance(raw, str)
        assert '"big":123456789012345678901234567890' in raw
        assert '"neg":-9223372036854775809' in raw
        got = json.loads(raw)
        assert got["data"]["neg"] == -9223372036854775809
        assert got["data"]["t"] == "\u00e9\u20ac"


async def test_ws_body_with_nan_is_refused_like_over_http(server: EmbeddedServer) -> None:
    async with ws_connect(server) as ws:
        await ws.conn.send(_raw_put("nan1", "/bookmarks/nan", '{"a":NaN}'))
        msg = await ws.recv()
        assert msg["requestId"] == "nan1"
        assert msg["status"] == 400
        # NaN is not JSON: the frame itself is refused, under its id.
        assert "malformed WebSocket message" in msg["data"]["detail"]
        gone = await ws.request("get", "/bookmarks/nan")
        assert gone["status"] == 404


async def test_permessage_deflate_is_accepted_when_offered(server: EmbeddedServer) -> None:
    # Node's ws offers it, and @oada/client 5.3.0 needs each message handed
    # to it on its own to see a resumed watch's replay (docs/server.md).
    async with connect(server.ws_url, compression="deflate") as ws:
        assert [type(e).__name__ for e in ws.protocol.extensions] == ["PerMessageDeflate"]
        request = {"requestId": "r1", "method": "get", "path": "/bookmarks"}
        await ws.send(json.dumps({**request, "headers": {"authorization": "Bearer god"}}))
        answer = json.loads(await ws.recv())
        assert (answer["requestId"], answer["status"]) == ("r1", 200)
