"""GET/HEAD/PUT/POST/DELETE through OADACore.handle, with headers and bodies (§1.4, §2)."""

from __future__ import annotations

import re

import pytest
from core_helpers import SAM_BM, open_core

from oada_jobs.server.config import ServerConfig
from oada_jobs.server.core import CoreRequest, CoreState, OADACore


async def test_bookmarks_are_created_on_first_use_with_type_and_owner() -> None:
    async with open_core() as c:
        r = await c.get("/bookmarks")
        assert r.status == 200
        assert r.headers["content-type"] == "application/vnd.oada.bookmarks.1+json"
        assert r.location == f"/{SAM_BM}"
        assert "x-oada-path-leftover" not in r.headers  # empty values are left out
        assert r.headers["etag"] == f'"default:resources_bookmarks_321/{r.rev}"'
        assert r.data["_id"] == SAM_BM
        assert r.data["_type"] == "application/vnd.oada.bookmarks.1+json"
        assert r.data["_meta"] == {"_id": f"{SAM_BM}/_meta", "_rev": r.rev}
        meta = (await c.get("/bookmarks/_meta")).data
        assert meta["_owner"] == "users/default:users_sam_321"
        assert meta["_type"] == "application/vnd.oada.bookmarks.1+json"
        shares = await c.get("/shares")
        assert shares.headers["content-type"] == "application/vnd.oada.shares.1+json"


async def test_put_returns_201_with_location_rev_and_etag() -> None:
    async with open_core() as c:
        before = (await c.get("/bookmarks")).rev
        r = await c.put("/bookmarks/test/sometest", {"a": {"b": 1}})
        assert r.status == 201
        assert r.raw.body == b""
        assert r.location == f"/{SAM_BM}/test/sometest"
        assert r.headers["x-oada-path-leftover"] == "/test/sometest"
        assert r.rev == before + 1
        assert r.headers["etag"] == f'"default:resources_bookmarks_321/{before + 1}"'
        got = await c.get("/bookmarks/test")
        assert got.data == {"sometest": {"a": {"b": 1}}}
        assert got.headers["x-oada-path-leftover"] == "/test"
        assert got.headers["content-type"] == "application/vnd.oada.bookmarks.1+json"


async def test_put_deep_merges_and_never_replaces_objects() -> None:
    async with open_core() as c:
        await c.ok("put", "/resources/A", {"a": {"b": 1, "c": [1, 2]}, "s": "x"})
        await c.ok("put", "/resources/A", {"a": {"d": 2, "c": [3]}, "s": {"now": "object"}})
        await c.ok("put", "/resources/A/a/e", None)
        doc = (await c.get("/resources/A")).data
        assert doc["a"] == {"b": 1, "c": [3], "d": 2, "e": None}  # null is stored
        assert doc["s"] == {"now": "object"}
        assert doc["_rev"] == 3
        assert doc["_type"] == "application/json"


async def test_scalar_and_nested_paths_read_back_and_rev_path() -> None:
    async with open_core() as c:
        await c.ok("put", "/bookmarks/test10", "aaa")
        r = await c.get("/bookmarks/test10")
        assert r.raw.body == b'"aaa"'
        assert r.headers["content-type"] == "application/vnd.oada.bookmarks.1+json"
        rev = await c.get("/bookmarks/_rev")
        assert rev.data == rev.rev
        list_item = await c.put("/resources/L", {"items": [{"x": 1}, {"x": 2}]})
        assert list_item.status == 201
        assert (await c.get("/resources/L/items/1/x")).data == 2
        assert (await c.get("/resources/L/items/7")).status == 404


async def test_head_has_get_headers_and_no_body() -> None:
    async with open_core() as c:
        await c.ok("put", "/bookmarks/x", {"y": 1})
        g = await c.get("/bookmarks/x")
        h = await c.head("/bookmarks/x")
        assert h.status == 200
        assert h.raw.body == b""
        assert h.headers == g.headers
        assert (await c.head("/bookmarks/nope")).status == 404


async def test_missing_values_are_404() -> None:
    async with open_core() as c:
        assert (await c.get("/bookmarks/nope")).status == 404
        assert (await c.get("/resources/nope")).status == 404
        assert (await c.get("/resources/nope/x/y")).status == 404
        await c.ok("put", "/bookmarks/n", None)
        assert (await c.get("/bookmarks/n")).status == 404  # null is "nothing there"


async def test_create_resource_by_put_sets_type_meta_and_owner() -> None:
    async with open_core() as c:
        r = await c.put("/resources/k1", {"x": 1}, content_type="application/vnd.test.1+json")
        assert r.status == 201
        assert r.rev == 1
        got = await c.get("/resources/k1")
        assert got.headers["content-type"] == "application/vnd.test.1+json"
        meta = (await c.get("/resources/k1/_meta")).data
        assert meta["_id"] == "resources/k1/_meta"
        assert meta["_type"] == "application/vnd.test.1+json"
        assert meta["_owner"] == "users/default:users_sam_321"
        assert meta["stats"]["createdBy"] == "users/default:users_sam_321"
        assert isinstance(meta["stats"]["created"], float)
        assert meta["_rev"] == 1
        assert meta["_changes"] == {"_id": "resources/k1/_meta/_changes", "_rev": 1}
        assert (await c.get("/resources/k1/_meta")).headers[
            "content-type"
        ] == "application/vnd.oada.meta+json"


async def test_put_under_missing_resource_creates_it_with_nested_body() -> None:
    async with open_core() as c:
        r = await c.put("/resources/newkey/x/y", {"z": 1})
        assert r.status == 201
        assert r.location == "/resources/newkey/x/y"
        assert (await c.get("/resources/newkey")).data["x"] == {"y": {"z": 1}}


async def test_post_appends_time_ordered_keys() -> None:
    async with open_core() as c:
        await c.ok("put", "/resources/A", {"list": {}})
        locations = [(await c.ok("post", "/resources/A/list", {"n": i})).location for i in range(5)]
        keys = [loc.rsplit("/", 1)[1] for loc in locations]
        assert all(re.fullmatch(r"[0-9A-Za-z]{27}", k) for k in keys)
        assert keys == sorted(keys)
        listing = (await c.get("/resources/A/list")).data
        assert [listing[k]["n"] for k in keys] == list(range(5))


async def test_post_resources_creates_a_new_resource() -> None:
    async with open_core() as c:
        r = await c.post("/resources", {"a": 1}, content_type="application/vnd.x+json")
        assert r.status == 201
        assert re.fullmatch(r"/resources/[0-9A-Za-z]{27}", r.location)
        got = await c.get(r.location)
        assert got.data["a"] == 1
        assert got.data["_id"] == r.location[1:]
        assert got.headers["content-type"] == "application/vnd.x+json"
        assert (await c.post("/resources/", {"b": 1})).status == 201


async def test_binary_resources_store_bytes_and_return_them_with_their_type() -> None:
    async with open_core() as c:
        payload = bytes(range(256)) * 4
        r = await c.put("/resources/pdf", raw=payload, content_type="application/pdf")
        assert r.status == 201
        got = await c.get("/resources/pdf")
        assert got.raw.body == payload
        assert got.headers["content-type"] == "application/pdf"
        assert (await c.get("/resources/pdf/_meta")).data["_type"] == "application/pdf"
        text = await c.put("/resources/txt", raw=b"hello", content_type="text/plain")
        assert text.status == 201
        assert (await c.get("/resources/txt")).raw.body == b"hello"
        # A binary resource has no sub-paths (a 4xx: nothing to retry).
        assert (await c.get("/resources/txt/x")).status == 404


async def test_json_is_not_merged_into_a_resource_holding_bytes() -> None:
    # It would be acknowledged with a rev and never be readable: GET answers
    # the bytes, and a binary resource has no sub-paths.
    async with open_core() as c:
        await c.ok("put", "/resources/bin", {"before": 1})
        await c.ok("put", "/resources/bin", raw=b"bytes", content_type="application/pdf")
        rev = (await c.get("/resources/bin")).rev
        for path, body in (("/resources/bin", {"a": 1}), ("/resources/bin/x", {"b": 1})):
            refused = await c.put(path, body)
            assert refused.status == 409, refused.data
            assert "application/pdf" in refused.data["message"]
        ensure = await c.put(
            "/resources/bin/l", {"c": 1}, headers={"x-oada-ensure-link": "versioned"}
        )
        assert ensure.status == 409
        got = await c.get("/resources/bin")
        assert (got.raw.body, got.rev) == (b"bytes", rev)
        # Its _meta takes JSON; new bytes replace the old; once deleted, JSON is fine.
        await c.ok("put", "/resources/bin/_meta/note", {"n": 1})
        assert (await c.get("/resources/bin/_meta/note")).data == {"n": 1}
        await c.ok("put", "/resources/bin", raw=b"other", content_type="application/pdf")
        assert (await c.get("/resources/bin")).raw.body == b"other"
        await c.ok("delete", "/resources/bin")
        await c.ok("put", "/resources/bin", {"a": 1})
        assert (await c.get("/resources/bin/a")).data == 1


async def test_delete_key_bumps_rev_and_removes_it() -> None:
    async with open_core() as c:
        await c.ok("put", "/resources/A", {"q": {"r": 1, "s": 2}})
        r = await c.delete("/resources/A/q/r")
        assert r.status == 204
        assert r.rev == 2
        assert (await c.get("/resources/A/q")).data == {"s": 2}
        change = (await c.get("/resources/A/_meta/_changes/2")).data
        assert change[0]["type"] == "delete"
        assert change[0]["body"]["q"] == {"r": None}
        assert change[0]["body"]["_rev"] == 2


async def test_delete_missing_key_is_204_without_rev_bump() -> None:
    async with open_core() as c:
        await c.ok("put", "/resources/A", {"q": 1})
        r = await c.delete("/resources/A/nope/deeper")
        assert r.status == 204
        assert r.rev == 1
        assert (await c.get("/resources/A")).rev == 1
        missing = await c.delete("/resources/never")
        assert missing.status == 204
        assert missing.rev == 0


async def test_delete_whole_resource() -> None:
    async with open_core() as c:
        await c.ok("put", "/resources/A", {"q": 1})
        r = await c.delete("/resources/A")
        assert r.status == 204
        assert r.rev == 0
        assert (await c.get("/resources/A")).status == 404
        # The id can be used again; its revs continue after the old changes.
        again = await c.put("/resources/A", {"z": 1})
        assert again.rev == 3
        assert "q" not in (await c.get("/resources/A")).data


async def test_reserved_keys_cannot_be_deleted() -> None:
    async with open_core() as c:
        await c.ok("put", "/resources/A", {"q": 1})
        for path in ("_meta", "_rev", "_id", "_type", "_meta/_changes"):
            r = await c.delete(f"/resources/A/{path}")
            assert r.status == 403, path
        assert (await c.get("/resources/A")).rev == 1


async def test_users_me_names_the_bookmarks() -> None:
    async with open_core() as c:
        me = await c.get("/users/me")
        assert me.status == 200
        assert me.data["bookmarks"] == {"_id": SAM_BM}


async def test_core_refuses_reuse_and_answers_503_when_closed() -> None:
    core = OADACore(ServerConfig())
    async with core:
        assert core.state is CoreState.OPEN
    assert core.state is CoreState.CLOSED
    r = await core.handle(CoreRequest("get", "/bookmarks", {"authorization": "Bearer god"}))
    assert r.status == 503
    with pytest.raises(RuntimeError):
        async with core:
            pass


async def test_huge_integers_and_unicode_round_trip_exactly() -> None:
    async with open_core() as c:
        raw = b'{"big": 123456789012345678901234567890, "u64": 18446744073709551615, "t": "\xc3\xa9\xe2\x82\xac"}'
        assert (await c.put("/resources/N", raw=raw)).status == 201
        got = await c.get("/resources/N")
        assert got.data["big"] == 123456789012345678901234567890
        assert got.data["u64"] == 18446744073709551615
        assert got.data["t"] == "\u00e9\u20ac"
        assert (await c.get("/resources/N/big")).raw.body == b"123456789012345678901234567890"


async def test_numbers_beyond_a_double_are_refused_by_either_decoder() -> None:
    # A run of 19 digits sends the body to the exact (stdlib) decoder; it
    # refuses 1e400 as orjson does, rather than store an infinity.
    async with open_core() as c:
        for raw in (b'{"a": 1e400}', b'{"a": 1e400, "big": 123456789012345678901234567890}'):
            reply = await c.put("/resources/F", raw=raw)
            assert reply.status == 400, raw
            assert reply.data["message"].startswith("malformed JSON body"), reply.data
        assert (await c.get("/resources/F")).status == 404


async def test_integers_just_beyond_64_bits_round_trip_exactly() -> None:
    async with open_core() as c:
        raw = b'{"low": -9223372036854775809, "high": 18446744073709551616, "n": -1}'
        assert (await c.put("/resources/M", raw=raw)).status == 201
        got = await c.get("/resources/M")
        assert got.data["low"] == -9223372036854775809
        assert got.data["high"] == 18446744073709551616
        assert (await c.get("/resources/M/low")).raw.body == b"-9223372036854775809"
