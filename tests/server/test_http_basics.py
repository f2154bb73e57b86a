"""HTTP transport: headers, bodies, status codes, CORS, raw paths, body limit."""

from __future__ import annotations

import anyio
import httpx

from oada_jobs.testing import EmbeddedServer, embedded_server

AUTH = {"authorization": "Bearer god"}
SAM_BM = "default:resources_bookmarks_321"


def client(server: EmbeddedServer, token: str | None = "god") -> httpx.AsyncClient:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(base_url=server.url, headers=headers)


async def test_put_then_get_headers_and_body(server: EmbeddedServer) -> None:
    async with client(server) as c:
        put = await c.put("/bookmarks/a", json={"b": 1})
        assert put.status_code == 201
        assert put.content == b""
        assert put.headers["content-location"] == f"/resources/{SAM_BM}/a"
        assert put.headers["x-oada-path-leftover"] == "/a"
        rev = int(put.headers["x-oada-rev"])
        assert put.headers["etag"] == f'"{SAM_BM}/{rev}"'
        assert put.headers["x-request-id"]

        got = await c.get("/bookmarks/a")
        assert got.status_code == 200
        assert got.json() == {"b": 1}
        assert got.headers["content-type"] == "application/vnd.oada.bookmarks.1+json"
        assert got.headers["x-oada-rev"] == str(rev)
        assert got.headers["etag"] == f'"{SAM_BM}/{rev}"'
        assert got.headers["content-length"] == str(len(got.content))

        root = await c.get("/bookmarks")
        # Resolved at the root: the leftover header is present and empty.
        assert root.headers["x-oada-path-leftover"] == ""
        assert root.json()["_meta"] == {"_id": f"resources/{SAM_BM}/_meta", "_rev": rev}


async def test_head_has_get_headers_and_no_body(server: EmbeddedServer) -> None:
    async with client(server) as c:
        await c.put("/bookmarks/a", json={"b": 1})
        got = await c.get("/bookmarks/a")
        head = await c.head("/bookmarks/a")
        assert head.status_code == 200
        assert head.content == b""
        for name in ("content-type", "content-location", "x-oada-rev", "etag"):
            assert head.headers[name] == got.headers[name]


async def test_request_id_is_echoed_when_sent(server: EmbeddedServer) -> None:
    async with client(server) as c:
        r = await c.get("/bookmarks", headers={"x-request-id": "abc123"})
        assert r.headers["x-request-id"] == "abc123"
        other = await c.get("/bookmarks")
        assert other.headers["x-request-id"] not in ("", "abc123")


async def test_delete_answers_204_without_body(server: EmbeddedServer) -> None:
    async with client(server) as c:
        await c.put("/bookmarks/a", json={"b": 1})
        r = await c.delete("/bookmarks/a")
        assert r.status_code == 204
        assert r.content == b""
        assert "content-length" not in r.headers or r.headers["content-length"] == "0"
        assert (await c.get("/bookmarks/a")).status_code == 404


async def test_post_creates_resource(server: EmbeddedServer) -> None:
    async with client(server) as c:
        r = await c.post("/resources", json={"x": 1})
        assert r.status_code == 201
        location = r.headers["content-location"]
        assert location.startswith("/resources/")
        assert (await c.get(location)).json()["x"] == 1


async def test_error_statuses_carry_json_bodies(server: EmbeddedServer) -> None:
    async with client(server) as c, client(server, None) as anonymous:
        cases = [
            (await anonymous.get("/bookmarks"), 401),
            (await c.get("/bookmarks/missing"), 404),
            (await c.get("/nowhere"), 404),
            (await c.put("/bookmarks/a", content=b"{}"), 400),  # no content type
            (
                await c.put(
                    "/bookmarks/a", content=b"{nope", headers={"content-type": "application/json"}
                ),
                400,
            ),
            (await c.put("/bookmarks", json={"_id": "resources/other"}), 422),
            (await c.put("/bookmarks/a", json={"b": 1}, headers={"if-match": '"x/99"'}), 412),
            (await c.delete("/bookmarks"), 403),
            (await c.request("PATCH", "/bookmarks"), 405),
            (await c.get("/bookmarks", headers={"accept": "text/html"}), 406),
        ]
        for response, status in cases:
            assert response.status_code == status, (response.request.url, response.text)
            body = response.json()
            assert body["statusCode"] == status
            assert body["message"]
            assert response.headers["content-type"] == "application/json"


async def test_frank_cannot_read_sams_resource(server: EmbeddedServer) -> None:
    async with client(server) as sam, client(server, "abc") as frank:
        r = await sam.post("/resources", json={"secret": 1})
        location = r.headers["content-location"]
        assert (await frank.get(location)).status_code == 403


async def test_raw_path_is_not_percent_decoded(server: EmbeddedServer) -> None:
    async with client(server) as c:
        r = await c.put("/bookmarks/a%20b", json={"v": 1})
        assert r.status_code == 201
        assert r.headers["content-location"].endswith("/a%20b")
        # The key is stored literally, so the decoded spelling is a different key.
        assert (await c.get("/bookmarks")).json()["a%20b"] == {"v": 1}
        assert (await c.get("/bookmarks/a%20b/v")).json() == 1


async def test_query_string_is_ignored(server: EmbeddedServer) -> None:
    async with client(server) as c:
        await c.put("/bookmarks/a", json={"b": 1})
        r = await c.get("/bookmarks/a?x=1")
        assert r.status_code == 200
        assert r.json() == {"b": 1}


async def test_cors_simple_and_preflight(server: EmbeddedServer) -> None:
    async with client(server) as c:
        r = await c.get("/bookmarks", headers={"origin": "https://app.example"})
        assert r.headers["access-control-allow-origin"] == "*"
        exposed = {h.strip() for h in r.headers["access-control-expose-headers"].split(",")}
        assert {"x-oada-rev", "x-oada-path-leftover", "location", "content-location"} <= exposed

        pre = await c.options(
            "/bookmarks/a",
            headers={
                "origin": "https://app.example",
                "access-control-request-method": "PUT",
                "access-control-request-headers": "authorization, content-type",
            },
        )
        assert pre.status_code == 200
        assert pre.headers["access-control-allow-origin"] == "*"
        assert "PUT" in pre.headers["access-control-allow-methods"]
        allowed = pre.headers["access-control-allow-headers"].lower()
        assert "authorization" in allowed
        assert "content-type" in allowed


async def test_body_limit_gives_413_and_stores_nothing() -> None:
    async with embedded_server(max_body_bytes=1000) as server, client(server) as c:
        big = {"x": "a" * 2000}
        r = await c.put("/bookmarks/big", json=big)
        assert r.status_code == 413
        assert "1000" in r.json()["message"]
        # A large declared upload is refused without being read, and the
        # client still gets the answer.
        huge = await c.put(
            "/bookmarks/big", content=b"x" * 5_000_000, headers={"content-type": "text/plain"}
        )
        assert huge.status_code == 413

        # Without a declared length (chunked upload) the limit holds while reading.
        async def chunks():  # type: ignore[no-untyped-def]
            for _ in range(10):
                yield b"a" * 200

        r = await c.put("/bookmarks/big", content=chunks(), headers={"content-type": "text/plain"})
        assert r.status_code == 413
        assert (await c.get("/bookmarks/big")).status_code == 404
        # A body right at the limit is fine.
        ok = await c.put(
            "/bookmarks/ok", content=b"1" * 10, headers={"content-type": "application/json"}
        )
        assert ok.status_code == 201


async def test_binary_round_trip(server: EmbeddedServer) -> None:
    async with client(server) as c:
        data = bytes(range(256))
        r = await c.put("/resources/blob1", content=data, headers={"content-type": "image/png"})
        assert r.status_code == 201
        got = await c.get("/resources/blob1")
        assert got.content == data
        assert got.headers["content-type"] == "image/png"


async def test_well_known_uses_request_scheme_and_host(server: EmbeddedServer) -> None:
    async with client(server) as c:
        r = await c.get("/.well-known/oada-configuration")
        if r.status_code in (301, 302):
            r = await c.get(r.headers["location"])
        assert r.status_code == 200
        assert r.json()["oada_base_uri"] == server.url


async def test_reprs_hold_no_tokens() -> None:
    async with embedded_server(tokens=["very-secret-token"]) as server:
        assert "very-secret-token" not in repr(server)


async def test_not_modified_and_not_implemented(server: EmbeddedServer) -> None:
    async with client(server) as c:
        r = await c.put("/bookmarks/a", json={"b": 1})
        etag = r.headers["etag"]
        same = await c.get("/bookmarks/a", headers={"if-none-match": etag})
        assert same.status_code == 304
        assert same.content == b""
        assert same.headers["etag"] == etag

        await c.put("/resources/bin", content=b"abc", headers={"content-type": "image/png"})
        sub = await c.get("/resources/bin/x")
        assert sub.status_code == 404
        assert "no sub-paths" in sub.json()["message"]


async def test_non_ascii_raw_path_is_a_clear_400(server: EmbeddedServer) -> None:
    stream = await anyio.connect_tcp("127.0.0.1", server.port)
    async with stream:
        await stream.send(
            "GET /bookmarks/\u20ac HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer god\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        answer = b""
        with anyio.fail_after(5):
            try:
                while True:
                    answer += await stream.receive()
            except anyio.EndOfStream:
                pass
    # Refused by the HTTP parser (httptools) or, with h11, by the endpoint.
    assert answer.startswith(b"HTTP/1.1 400"), answer


async def test_non_latin1_key_from_ws_is_served_over_http(server: EmbeddedServer) -> None:
    from ws_helpers import ws_connect

    async with ws_connect(server) as ws:
        r = await ws.request("put", "/bookmarks/\u20ac", data={"v": 1})
        assert r["status"] == 201
    async with client(server) as c:
        got = await c.get("/bookmarks/%E2%82%AC")
        # Percent escapes are not decoded: that is a different (missing) key.
        assert got.status_code == 404
        root = await c.get("/bookmarks")
        assert root.json()["\u20ac"] == {"v": 1}
