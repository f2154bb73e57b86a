"""Links: resolution (§1.3), versioned/unversioned links, ignore/ensure-link, _id rules (§2)."""

from __future__ import annotations

import re

from core_helpers import SAM_BM, Caller, open_core


async def _bm_a_q(c: Caller) -> int:
    """Bookmarks BM with ``a`` → A (versioned); A holds ``{q: {r: 1}}``. Returns A's rev."""
    r = await c.ok("put", "/resources/A", {"q": {"r": 1}})
    await c.ok("put", "/bookmarks/a", {"_id": "resources/A", "_rev": 0})
    return r.rev


async def test_resolution_table_from_the_protocol() -> None:
    async with open_core() as c:
        await _bm_a_q(c)
        cases = {
            "/bookmarks": (f"/{SAM_BM}", None),
            "/bookmarks/a": ("/resources/A", None),
            "/bookmarks/a/q/r": ("/resources/A/q/r", "/q/r"),
            "/bookmarks/nope/x": (f"/{SAM_BM}/nope/x", "/nope/x"),
        }
        for path, (location, leftover) in cases.items():
            r = await c.get(path)
            assert r.location == location, path
            assert r.headers.get("x-oada-path-leftover") == leftover, path
        assert (await c.get("/bookmarks/a/q/r")).data == 1
        assert (await c.get("/bookmarks/nope/x")).status == 404


async def test_nested_links_are_returned_as_stored_never_expanded() -> None:
    async with open_core() as c:
        rev = await _bm_a_q(c)
        await c.ok("put", "/bookmarks/u", {"_id": "resources/A"})
        bm = (await c.get("/bookmarks")).data
        assert bm["a"] == {"_id": "resources/A", "_rev": rev}
        assert bm["u"] == {"_id": "resources/A"}


async def test_versioned_link_rev_is_rewritten_to_the_target_rev() -> None:
    async with open_core() as c:
        await c.ok("put", "/resources/T", {"x": 1})
        await c.ok("put", "/resources/T", {"x": 2})
        await c.ok("put", "/resources/P", {"t": {"_id": "resources/T", "_rev": 99}})
        assert (await c.get("/resources/P/t/_rev")).data == 2
        # A missing target gives 0, and the link dangles.
        await c.ok("put", "/resources/P", {"d": {"_id": "resources/gone", "_rev": 5}})
        assert (await c.get("/resources/P")).data["d"] == {"_id": "resources/gone", "_rev": 0}
        assert (await c.get("/resources/P/d")).status == 404


async def test_unversioned_links_are_followed_but_do_not_propagate() -> None:
    async with open_core() as c:
        await c.ok("put", "/resources/T", {"x": 1})
        await c.ok("put", "/resources/P", {"t": {"_id": "resources/T"}})
        before = (await c.get("/resources/P")).rev
        await c.ok("put", "/resources/P/t", {"y": 2})  # writes through the link
        assert (await c.get("/resources/T")).data["y"] == 2
        assert (await c.get("/resources/P")).rev == before


async def test_put_through_dangling_link_creates_the_target() -> None:
    async with open_core() as c:
        await c.ok("put", "/bookmarks/a", {"_id": "resources/X"})
        r = await c.put("/bookmarks/a", {"hello": 1})
        assert r.location == "/resources/X"
        assert (await c.get("/resources/X")).data["hello"] == 1
        deeper = await c.put("/bookmarks/b", {"_id": "resources/Y", "_rev": 0})
        assert deeper.status == 201
        r = await c.put("/bookmarks/b/q/r", 7)
        assert r.location == "/resources/Y/q/r"
        assert (await c.get("/resources/Y/q/r")).data == 7
        assert (await c.get("/bookmarks/b/_rev")).data == 1


async def test_ignore_links_stores_id_objects_as_plain_data() -> None:
    async with open_core() as c:
        await c.ok("put", "/resources/T", {"x": 1})
        await c.ok(
            "put",
            "/resources/P",
            {"t": {"_id": "resources/T", "_rev": 42}},
            headers={"x-oada-ignore-links": "true"},
        )
        assert (await c.get("/resources/P")).data["t"] == {"_id": "resources/T", "_rev": 42}
        # Not a link: the path stays inside P.
        r = await c.get("/resources/P/t/_id")
        assert r.location == "/resources/P/t/_id"
        assert r.data == "resources/T"
        await c.ok("put", "/resources/T", {"x": 2})
        assert (await c.get("/resources/P")).rev == 1


async def test_id_mismatch_is_422_and_store_untouched() -> None:
    async with open_core() as c:
        rev = await _bm_a_q(c)
        r = await c.put("/resources/A", {"_id": "resources/B", "x": 1})
        assert r.status == 422
        # PUT {_id} at an existing link path merges into the target: 422.
        r = await c.put("/bookmarks/a", {"_id": "resources/B"})
        assert r.status == 422
        assert r.data["statusCode"] == 422
        assert (await c.get("/resources/A")).rev == rev
        # Matching _id is fine.
        assert (await c.put("/resources/A", {"_id": "resources/A", "y": 1})).status == 201


async def test_repointing_a_link_by_delete_then_put() -> None:
    async with open_core() as c:
        await _bm_a_q(c)
        await c.ok("put", "/resources/B", {"b": 1})
        await c.ok("delete", "/bookmarks/a")
        assert (await c.get("/resources/A")).status == 200  # the target survives
        await c.ok("put", "/bookmarks/a", {"_id": "resources/B", "_rev": 0})
        assert (await c.get("/bookmarks/a/b")).data == 1
        # PUT {key: {_id}} on the parent replaces the link too.
        await c.ok("put", "/bookmarks", {"a": {"_id": "resources/A"}})
        assert (await c.get("/bookmarks/a/q/r")).data == 1


async def test_replacing_a_link_with_a_scalar_removes_the_edge() -> None:
    async with open_core() as c:
        await c.ok("put", "/resources/T", {"x": 1})
        await c.ok("put", "/resources/P", {"t": {"_id": "resources/T", "_rev": 0}})
        await c.ok("put", "/resources/P", {"t": 5})
        assert (await c.get("/resources/P/t")).data == 5
        await c.ok("put", "/resources/T", {"x": 2})
        assert (await c.get("/resources/P")).rev == 2  # no propagation any more


async def test_delete_key_holding_links_removes_their_edges() -> None:
    async with open_core() as c:
        await c.ok("put", "/resources/T", {"x": 1})
        await c.ok("put", "/resources/P", {"d": {"t": {"_id": "resources/T", "_rev": 0}}})
        await c.ok("delete", "/resources/P/d")
        await c.ok("put", "/resources/T", {"x": 2})
        assert (await c.get("/resources/P")).rev == 2


async def test_links_under_meta_are_real_links() -> None:
    async with open_core() as c:
        await c.ok("put", "/resources/J", {"x": 1})
        created = await c.ok("post", "/resources", {"rev": 0})
        persist_id = created.location[1:]
        await c.ok("put", "/resources/J/_meta/watchPersists/w1", {"_id": persist_id})
        assert (await c.get("/resources/J/_meta/watchPersists/w1")).data["rev"] == 0
        await c.ok("put", "/resources/J/_meta/watchPersists/w1/rev", 5)
        assert (await c.get(f"/{persist_id}/rev")).data == 5
        # _meta itself and _meta/_changes are not links.
        r = await c.get("/resources/J/_meta/_changes")
        assert r.location == "/resources/J/_meta/_changes"


async def test_ensure_link_versioned_and_unversioned() -> None:
    async with open_core() as c:
        r = await c.put(
            "/bookmarks/made",
            {"v": 1},
            content_type="application/vnd.made+json",
            headers={"x-oada-ensure-link": "versioned"},
        )
        assert r.status == 201
        assert r.location == f"/{SAM_BM}/made"
        link = (await c.get("/bookmarks")).data["made"]
        assert re.fullmatch(r"resources/[0-9A-Za-z]{27}", link["_id"])
        assert link["_rev"] == 1
        target = await c.get("/bookmarks/made")
        assert target.data["v"] == 1
        assert target.headers["content-type"] == "application/vnd.made+json"
        p = await c.post("/bookmarks/list", {"w": 2}, headers={"x-oada-ensure-link": "unversioned"})
        assert p.status == 201
        key = p.location.rsplit("/", 1)[1]
        entry = (await c.get("/bookmarks/list")).data[key]
        assert set(entry) == {"_id"}


async def test_ensure_link_bad_value_and_wrong_methods_are_400() -> None:
    async with open_core() as c:
        before = (await c.get("/bookmarks")).rev
        bad = await c.put("/bookmarks/x", {"a": 1}, headers={"x-oada-ensure-link": "maybe"})
        assert bad.status == 400
        assert bad.data["message"] == "Unsupported value for X-OADA-Ensure-Link"
        for method in ("get", "head", "delete"):
            r = await c.request(method, "/bookmarks", headers={"x-oada-ensure-link": "versioned"})
            assert r.status == 400, method
        assert (await c.get("/bookmarks")).rev == before
