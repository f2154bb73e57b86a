"""Bad input: each gets a clear JSON error and leaves the store exactly as it was (§8)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from core_helpers import SAM_BM, Answers, Caller, open_core, request

from oada_jobs.server import graph as graph_module
from oada_jobs.server.core import CoreRequest


def snapshot(c: Caller) -> list[Any]:
    db = c.core.store.db
    return [
        db.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
        for table in ("resources", "changes", "edges")
    ]


async def _seeded(c: Caller) -> list[Any]:
    await c.ok("put", "/resources/A", {"q": {"r": 1}})
    await c.ok("put", "/bookmarks/a", {"_id": "resources/A", "_rev": 0})
    await c.as_token("abc").ok("get", "/bookmarks")
    return snapshot(c)


def assert_error(r: Any, status: int, fragment: str = "") -> None:
    assert r.status == status, (r.status, r.raw.body)
    assert r.headers["content-type"] == "application/json"
    body = json.loads(r.raw.body)
    assert set(body) == {"statusCode", "error", "message"}
    assert body["statusCode"] == status
    assert fragment in body["message"]


BAD_WRITES: list[tuple[str, dict[str, Any], int, str]] = [
    ("missing content type", {"raw": b'{"a":1}', "content_type": None}, 400, "No content type"),
    ("blank content type", {"raw": b'{"a":1}', "content_type": " "}, 400, "No content type"),
    ("malformed JSON", {"raw": b'{"a":'}, 400, "malformed JSON"),
    ("trailing garbage", {"raw": b'{"a":1} x'}, 400, "malformed JSON"),
    ("empty JSON body", {"raw": b""}, 400, "empty body"),
    ("whitespace JSON body", {"raw": b"  \n"}, 400, "empty body"),
    ("NaN", {"raw": b'{"a": NaN}'}, 400, "malformed JSON"),
    ("invalid UTF-8", {"raw": b'{"a": "\xff"}'}, 400, "malformed JSON"),
    ("array at root", {"raw": b"[1,2]"}, 400, "expected a JSON object"),
    ("scalar at root", {"raw": b"5"}, 400, "expected a JSON object"),
    ("null at root", {"raw": b"null"}, 400, "got null"),
    ("too deep", {"raw": b'{"a":' * 70 + b"1" + b"}" * 70}, 400, "nested more than"),
    ("very deep", {"raw": b"[" * 100_000 + b"]" * 100_000}, 400, "nested"),
    ("deep arrays", {"raw": b'{"a":' + b"[" * 70 + b"]" * 70 + b"}"}, 400, "nested more than"),
    ("_meta not an object at root", {"raw": b'{"_meta": 5}'}, 400, "_meta must be an object"),
    ("_type not a string at root", {"raw": b'{"_type": 5}'}, 400, "_type must be a string"),
]


@pytest.mark.parametrize(
    ("name", "kw", "status", "message"), BAD_WRITES, ids=[b[0] for b in BAD_WRITES]
)
async def test_bad_write_bodies(name: str, kw: dict[str, Any], status: int, message: str) -> None:
    async with open_core() as c:
        before = await _seeded(c)
        for path in ("/resources/A", "/bookmarks/a", "/resources/new"):
            for method in ("put", "post"):
                if method == "post" and "root" in name:
                    continue  # POST always writes below the path
                r = await c.request(method, path, **kw)
                assert_error(r, status, message)
        assert snapshot(c) == before


async def test_body_over_the_limit_is_413() -> None:
    async with open_core(max_body_bytes=1000) as c:
        before = await _seeded(c)
        big = json.dumps({"x": "y" * 2000}).encode()
        assert_error(await c.put("/resources/A", raw=big), 413, "at most 1000")
        assert_error(await c.put("/resources/bin", raw=b"0" * 1001, content_type="image/png"), 413)
        assert snapshot(c) == before
        assert (await c.put("/resources/A", raw=b'{"x":1}')).status == 201


async def test_depth_counts_the_path_inside_the_resource() -> None:
    async with open_core(max_depth=8) as c:
        await c.ok("put", "/resources/A", {"a": {"b": {"c": 1}}})
        before = snapshot(c)
        path = "/resources/A/" + "/".join("k" * 6)
        assert_error(await c.put(path, {"x": {"y": {"z": 1}}}), 400, "nested more than 8")
        assert snapshot(c) == before
        assert (await c.put(path, {"x": 1})).status == 201


async def test_binary_below_a_resource_root_is_400() -> None:
    async with open_core() as c:
        before = await _seeded(c)
        r = await c.put("/bookmarks/pdf", raw=b"%PDF", content_type="application/pdf")
        assert_error(r, 400, "resource root")
        assert snapshot(c) == before


async def test_unknown_routes_are_fastify_404() -> None:
    async with open_core() as c:
        before = await _seeded(c)
        r = await c.get("/x")
        assert_error(r, 404)
        assert r.data["message"] == "Route GET:/x not found"
        assert_error(await c.put("/nope/a", {"a": 1}), 404, "Route PUT:/nope/a not found")
        assert_error(await c.get("/"), 404, "Route GET:/ not found")
        assert_error(await c.get("/Bookmarks"), 404)
        assert_error(await c.get("/users/someone"), 404)
        assert_error(await c.get("/authorizations"), 404)
        assert_error(await c.get("/resources"), 404)
        assert_error(await c.put("/resources", {"a": 1}), 404)
        r = await c.core.handle(CoreRequest("get", "relative", {}))
        assert r.status == 404
        assert snapshot(c) == before


async def test_unsupported_methods_are_405() -> None:
    async with open_core() as c:
        before = await _seeded(c)
        for method in ("patch", "options", "trace", "watch", "PROPFIND"):
            r = await c.request(method, "/bookmarks/a", {"x": 1})
            assert_error(r, 405)
            assert "allow" in r.headers
        assert snapshot(c) == before


async def test_upper_case_methods_work() -> None:
    async with open_core() as c:
        assert (await c.request("GET", "/bookmarks")).status == 200
        assert (await c.request("PUT", "/bookmarks/x", {"a": 1})).status == 201


@pytest.mark.parametrize(
    "path",
    [
        "/resources/../resources/default:resources_bookmarks_321",
        "/bookmarks/./a",
        "/bookmarks/../../resources/A",
        "/bookmarks//a",
        "//resources/A",
        "/resources//A",
        "/bookmarks/a/..",
    ],
)
async def test_navigation_segments_are_400(path: str) -> None:
    async with open_core() as c:
        before = await _seeded(c)
        for method in ("get", "put", "delete"):
            r = await (c.put(path, {"x": 1}) if method == "put" else c.request(method, path))
            assert_error(r, 400, "not allowed")
        assert snapshot(c) == before


async def test_no_spelling_of_a_path_reaches_another_users_resource() -> None:
    async with open_core() as c:
        await _seeded(c)
        frank = c.as_token("abc")
        sam_key = SAM_BM.removeprefix("resources/")
        spellings = [
            f"/resources/{sam_key}",
            f"/resources/{sam_key}/",
            f"/resources/{sam_key}///",
            f"/resources/{sam_key}/a",
            f"/resources/{sam_key}/a/q/r",
            "/resources/A",
            "/resources/A/q",
            "/resources/A/_meta",
            "/resources/A/_meta/_changes/1",
            "/resources/A/_rev",
        ]
        for path in spellings:
            for method in ("get", "head"):
                assert (await frank.request(method, path)).status == 403, (method, path)
            assert (await frank.put(path, {"x": 1})).status in (403, 422), path
            assert (await frank.delete(path)).status == 403, path
        # Encoded slashes and tildes are literal keys, never separators.
        for path in (
            f"/resources/{sam_key}%2Fa",
            "/resources/A%2Fq",
            "/bookmarks%2F..%2Fresources%2FA",
        ):
            r = await frank.get(path)
            assert r.status in (404, 403), path
            assert b"secret" not in r.raw.body
        assert (await frank.get("/resources/A~1q")).status in (400, 404)


async def test_percent_escapes_are_not_decoded_and_tilde_escapes_are() -> None:
    async with open_core() as c:
        await c.ok("put", "/resources/A", {"a%20b": 1, "c/d": 2, "e~f": 3})
        assert (await c.get("/resources/A/a%20b")).data == 1
        assert (await c.get("/resources/A/c~1d")).data == 2
        assert (await c.get("/resources/A/e~0f")).data == 3
        r = await c.put("/resources/A/x~1y", 4)
        assert r.location == "/resources/A/x~1y"
        assert (await c.get("/resources/A")).data["x/y"] == 4


async def test_accept_header_that_excludes_the_type_is_406() -> None:
    async with open_core() as c:
        await c.ok("put", "/resources/A", {"x": 1})
        assert (await c.get("/resources/A", headers={"accept": "application/json"})).status == 200
        assert (await c.get("/resources/A", headers={"accept": "*/*"})).status == 200
        assert_error(await c.get("/resources/A", headers={"accept": "text/html"}), 406)


async def test_well_known_documents() -> None:
    async with open_core() as c:
        headers = {"host": "oada.example.org:8443", "x-forwarded-proto": "https"}
        for name in ("oada-configuration", "openid-configuration"):
            r = await c.as_token(None).get(f"/.well-known/{name}", headers=headers)
            assert r.status == 200
            assert r.data["oada_base_uri"] == "https://oada.example.org:8443"
            for key in ("authorization_endpoint", "token_endpoint", "registration_endpoint"):
                assert r.data[key].startswith("https://oada.example.org:8443/")
            assert r.data["token_endpoint_auth_signing_alg_values_supported"]
        assert_error(await c.get("/.well-known/nope"), 404)
        assert_error(await c.put("/.well-known/oada-configuration", {"a": 1}), 405)


async def test_failed_ensure_link_leaves_nothing_behind() -> None:
    async with open_core(max_depth=8) as c:
        await c.ok("put", "/resources/A", {"x": 1})
        before = snapshot(c)
        ensure = {"x-oada-ensure-link": "versioned"}
        # At a resource root there is no place for the link.
        assert_error(await c.put("/resources/A", {"y": 1}, headers=ensure), 422)
        assert_error(
            await c.put("/resources/A/l", {"y": 1}, headers={**ensure, "if-match": '"A/9"'}), 412
        )
        # The link write fails after the new resource was prepared: both are dropped.
        deep = "/resources/A/" + "/".join("k" * 8)
        assert_error(await c.put(deep, {"y": 1}, headers=ensure), 400, "nested")
        assert snapshot(c) == before
        assert len(c.core.store.links) == 0
        assert (await c.get("/resources/A")).data["x"] == 1


async def test_a_refused_ensure_link_fails_no_other_write_of_its_pass() -> None:
    async with open_core(max_depth=8) as c:
        await c.ok("put", "/resources/A", {"x": 1})
        headers = {
            "authorization": "Bearer god",
            "content-type": "application/json",
            "x-oada-ensure-link": "versioned",
        }
        deep = "/resources/A/" + "/".join("k" * 8)
        answers = Answers(c.core)
        answers.submit(
            request("put", "/resources/A", {"x": 2}),
            CoreRequest("put", deep, headers, b'{"y": 1}'),
            request("put", "/resources/A", {"x": 3}),
        )
        assert [r.status for r in await answers.wait()] == [201, 400, 201]
        assert (await c.get("/resources/A")).data["x"] == 3
        assert len(c.core.store.links) == 0


async def test_a_create_that_fails_halfway_leaves_no_resource(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The new resource is visible to the rest of the pass from early on; a
    # failure after that (here, copying the body into it) must drop it again.
    def failing_copy(value: Any) -> Any:
        raise RuntimeError("copy failed")

    async with open_core() as c:
        await c.ok("get", "/bookmarks")  # the user's root resources exist
        with monkeypatch.context() as patch:
            patch.setattr(graph_module, "copy_json", failing_copy)
            assert (await c.put("/resources/G", {"a": 1})).status == 500
        assert (await c.get("/resources/G")).status == 404
        assert (await c.put("/resources/G", {"b": 2})).status == 201
        meta = (await c.get("/resources/G/_meta")).data
        assert meta["_owner"] == "users/default:users_sam_321"
