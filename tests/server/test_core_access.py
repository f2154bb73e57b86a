"""Who may do what: recycled ids, reserved roots, creates under scopes, bookkeeping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from core_helpers import FRANK_BM, SAM_BM, open_core
from pydantic import ValidationError

from oada_jobs.server.config import ServerConfig, TokenInfo

SAM = "users/default:users_sam_321"
FRANK = "users/default:users_frank_123"
FRANK_ESCAPED = FRANK.replace("/", "~1")
SERVICES = "application/vnd.oada.services.1+json"
JOBS = "application/vnd.oada.service.jobs.1+json"


# -- a deleted id re-created by someone else ------------------------------------


async def _recycle(c: Any) -> None:
    """Sam writes secrets to R and deletes it; Frank creates R again."""
    frank = c.as_token("abc")
    await c.ok("put", "/resources/R", {"secret": "s1"})
    await c.ok("put", "/resources/R", {"secret": "s2"})
    await c.ok("delete", "/resources/R")
    created = await frank.ok("put", "/resources/R", {"mine": 1})
    assert created.rev == 4


async def _assert_only_franks_history(c: Any) -> None:
    frank = c.as_token("abc")
    listing = await frank.get("/resources/R/_meta/_changes")
    assert listing.status == 200
    assert list(listing.data) == ["4"]
    for old in (1, 2, 3):
        r = await frank.get(f"/resources/R/_meta/_changes/{old}")
        assert r.status == 404, old
    assert b"secret" not in (await frank.get("/resources/R/_meta/_changes/4")).raw.body
    feed = c.core.changes_since("resources/R", 0)
    assert [rev for rev, _ in feed] == [4]
    assert "secret" not in repr(feed)


async def test_a_recycled_id_does_not_show_the_deleted_resources_changes() -> None:
    async with open_core() as c:
        await _recycle(c)
        await _assert_only_franks_history(c)


async def test_a_recycled_id_stays_fenced_after_a_restart(tmp_path: Path) -> None:
    db = str(tmp_path / "recycled.sqlite")
    async with open_core(db=db) as c:
        await _recycle(c)
    async with open_core(db=db) as c:
        await _assert_only_franks_history(c)
        await c.as_token("abc").ok("put", "/resources/R", {"more": 2})
        assert [rev for rev, _ in c.core.changes_since("resources/R", 0)] == [4, 5]


# -- reserved roots ---------------------------------------------------------------


def _tokens() -> dict[str, TokenInfo]:
    return {
        "god": TokenInfo(user="users/sam", bookmarks="resources/sam_bm"),
        "abc": TokenInfo(user="users/frank", bookmarks="resources/frank_bm"),
    }


async def test_roots_exist_before_any_request_and_cannot_be_taken() -> None:
    async with open_core(tokens=_tokens()) as c:
        store = c.core.store
        for rid, owner in (
            ("resources/sam_bm", "users/sam"),
            ("resources/sam_bm_shares", "users/sam"),
            ("resources/frank_bm", "users/frank"),
        ):
            res = store.get(rid)
            assert res is not None, rid
            assert res.meta["_owner"] == owner
        frank = c.as_token("abc")
        # Frank cannot plant anything at Sam's bookmarks: it is Sam's already.
        grant = {"_meta": {"_permissions": {"users/sam": {"owner": True}}}}
        assert (await frank.put("/resources/sam_bm", grant)).status == 403
        assert (await frank.put("/resources/sam_bm/x", 1)).status == 403
        await c.ok("put", "/bookmarks/secret", {"s": 1})
        assert (await frank.get("/resources/sam_bm/secret")).status == 403


async def test_a_root_planted_before_its_user_came_is_never_adopted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = str(tmp_path / "planted.sqlite")
    frank_only = {"abc": TokenInfo(user="users/frank", bookmarks="resources/frank_bm")}
    async with open_core(db=db, tokens=frank_only) as c:
        frank = c.as_token("abc")
        planted = {"_meta": {"_permissions": {"users/sam": {"owner": True}}}}
        await frank.ok("put", "/resources/sam_bm", planted)
    # Sam is configured later, with the id Frank planted.
    async with open_core(db=db, tokens=_tokens()) as c:
        assert any(
            "resources/sam_bm" in rec.getMessage() and rec.levelname == "ERROR"
            for rec in caplog.records
        )
        frank = c.as_token("abc")
        r = await c.put("/bookmarks/secret", {"s": 1})
        assert r.status == 403
        assert "created by another user" in r.data["message"]
        assert (await c.get("/bookmarks")).status == 403
        assert (await frank.get("/resources/sam_bm")).status == 403
        assert (await frank.put("/resources/sam_bm", {"x": 1})).status == 403


async def test_nobody_may_create_a_reserved_id_of_another_user() -> None:
    # A root that is missing (deleted from the database by hand, say) stays
    # reserved: only its user may create it again.
    async with open_core(tokens=_tokens()) as c:
        c.core.store.delete_cached("resources/frank_bm", 0)
        r = await c.put("/resources/frank_bm", {"x": 1})
        assert r.status == 403
        assert (await c.as_token("abc").put("/resources/frank_bm", {"x": 1})).status == 201


def test_two_users_cannot_share_a_root() -> None:
    tokens = {
        "a": TokenInfo(user="users/a", bookmarks="resources/bm"),
        "b": TokenInfo(user="users/b", bookmarks="resources/bm"),
    }
    with pytest.raises(ValidationError, match="root of both"):
        ServerConfig(tokens=tokens)
    crossed = {
        "a": TokenInfo(user="users/a", bookmarks="resources/a", shares="resources/b"),
        "b": TokenInfo(user="users/b", bookmarks="resources/b"),
    }
    with pytest.raises(ValidationError, match="root of both"):
        ServerConfig(tokens=crossed)
    same = {"a": TokenInfo(user="users/a", bookmarks="resources/a", shares="resources/a")}
    with pytest.raises(ValidationError, match="both bookmarks and shares"):
        ServerConfig(tokens=same)


async def test_shares_cannot_be_written_by_any_name() -> None:
    async with open_core() as c:
        shares = "/resources/default:resources_shares_321"
        assert (await c.put(f"{shares}/x", {"a": 1})).status == 403
        assert (await c.put("/shares/x", {"a": 1})).status == 403
        assert (await c.get(shares)).status == 200


# -- creating is writing ----------------------------------------------------------


def _scoped() -> dict[str, TokenInfo]:
    def token(*scopes: str) -> TokenInfo:
        return TokenInfo(user="users/sam", bookmarks="resources/bm_sam", scopes=scopes)

    return {
        "god": token("all:all"),
        "reader": token("all:read"),
        "yield": token("oada.yield:all"),
    }


async def test_a_read_only_token_creates_nothing() -> None:
    async with open_core(tokens=_scoped()) as c:
        reader = c.as_token("reader")
        assert (await reader.put("/resources/new", {"x": 1})).status == 403
        assert (await reader.put("/resources/new/a/b", {"x": 1})).status == 403
        assert (await reader.post("/resources", {"x": 1})).status == 403
        bin_put = await reader.put("/resources/bin", raw=b"\x00", content_type="image/png")
        assert bin_put.status == 403
        r = await reader.put(
            "/bookmarks/thing", {"x": 1}, headers={"x-oada-ensure-link": "versioned"}
        )
        assert r.status == 403
        for rid in ("new", "bin"):
            assert (await c.get(f"/resources/{rid}")).status == 404
        assert (await c.get("/bookmarks")).data.keys() == {"_id", "_rev", "_type", "_meta"}
        # Reading is still fine.
        await c.ok("put", "/resources/there", {"x": 1})
        assert (await reader.get("/resources/there/x")).data == 1


async def test_a_create_needs_write_scope_for_the_type_it_will_have() -> None:
    async with open_core(tokens=_scoped()) as c:
        y = c.as_token("yield")
        assert (await y.put("/resources/jobs", {"x": 1}, content_type=JOBS)).status == 403
        r = await y.put("/resources/typed", {"_type": JOBS}, content_type=SERVICES)
        assert r.status == 403
        assert (await y.put("/resources/svc", {"x": 1}, content_type=SERVICES)).status == 201
        # Nor may a write give an existing resource a type out of scope.
        assert (await y.put("/resources/svc", {"_type": JOBS})).status == 403
        png = await y.put("/resources/svc", raw=b"\x89PNG", content_type="image/png")
        assert png.status == 403
        assert (await c.get("/resources/svc/_type")).data == SERVICES
        ensure = await y.put(
            "/resources/svc/job",
            {"x": 1},
            content_type=JOBS,
            headers={"x-oada-ensure-link": "unversioned"},
        )
        assert ensure.status == 403
        assert (await c.get("/resources/svc/job")).status == 404


# -- bookkeeping is the server's --------------------------------------------------


async def _shared_with_frank(c: Any) -> None:
    await c.ok("put", "/resources/doc", {"x": 1})
    await c.ok("put", "/resources/doc/_meta/_permissions", {FRANK: {"write": True, "read": True}})


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/resources/doc/_meta/_owner", FRANK),
        ("/resources/doc/_meta", {"_owner": FRANK}),
        ("/resources/doc", {"_meta": {"_owner": FRANK}}),
        ("/resources/doc", {"_meta": {"_owner": None}}),
        ("/resources/doc/_meta/stats", {"createdBy": FRANK}),
        ("/resources/doc/_meta/stats/created", 0),
        ("/resources/doc", {"_meta": {"stats": {"createdBy": FRANK}}}),
        ("/resources/doc/_meta/modifiedBy", FRANK),
        ("/resources/doc/_meta/modified", 0),
        ("/resources/doc/_meta/_changes", {"_id": "resources/doc/_meta/_changes", "_rev": 9}),
        ("/resources/doc/_meta/_changes/1", []),
        ("/resources/doc/_meta/_type", "text/plain"),
        ("/resources/doc/_meta/_rev", 99),
        ("/resources/doc/_meta/_id", "resources/other/_meta"),
        ("/resources/doc/_meta/created", 0),
    ],
)
async def test_bookkeeping_cannot_be_written_by_anyone(path: str, body: Any) -> None:
    async with open_core() as c:
        await _shared_with_frank(c)
        before = (await c.get("/resources/doc/_meta")).data
        for caller in (c, c.as_token("abc")):
            r = await caller.put(path, body)
            assert r.status == 403, (path, r.data)
            assert "kept by the server" in r.data["message"]
        for post in ("/resources/doc/_meta/stats", "/resources/doc/_meta/_changes"):
            assert (await c.post(post, {"x": 1})).status == 403
        assert (await c.get("/resources/doc/_meta")).data == before


@pytest.mark.parametrize(
    "path",
    [
        "_meta/_owner",
        "_meta/stats",
        "_meta/stats/created",
        "_meta/modifiedBy",
        "_meta/modified",
        "_meta/_changes",
        "_meta/_type",
        "_meta/_rev",
        "_meta/_id",
        "_meta",
        "_id",
        "_rev",
        "_type",
    ],
)
async def test_bookkeeping_cannot_be_deleted_by_anyone(path: str) -> None:
    async with open_core() as c:
        await _shared_with_frank(c)
        for caller in (c, c.as_token("abc")):
            r = await caller.delete(f"/resources/doc/{path}")
            assert r.status == 403, path
        meta = (await c.get("/resources/doc/_meta")).data
        assert meta["_owner"] == SAM
        assert (await c.as_token("abc").get("/resources/doc/x")).data == 1


async def test_only_the_owner_changes_permissions() -> None:
    async with open_core() as c:
        await _shared_with_frank(c)
        frank = c.as_token("abc")
        grant = {"users/eve": {"read": True}}
        assert (await frank.put("/resources/doc/_meta/_permissions", grant)).status == 403
        r = await frank.put("/resources/doc", {"_meta": {"_permissions": grant}})
        assert r.status == 403
        r = await frank.delete(f"/resources/doc/_meta/_permissions/{FRANK_ESCAPED}")
        assert r.status == 403
        # Other _meta keys stay writable by writers, and the owner shares.
        await frank.ok("put", "/resources/doc/_meta/watchPersists", {"w": {"n": 1}})
        await c.ok("delete", f"/resources/doc/_meta/_permissions/{FRANK_ESCAPED}")
        assert (await frank.get("/resources/doc")).status == 403


async def test_a_body_may_echo_the_meta_link_a_read_returned() -> None:
    async with open_core() as c:
        await c.ok("put", "/resources/doc", {"x": 1})
        read = (await c.get("/resources/doc")).data
        read["x"] = 2
        r = await c.put("/resources/doc", read)
        assert r.status == 201, r.data
        assert (await c.get("/resources/doc/x")).data == 2
        meta = (await c.get("/resources/doc/_meta")).data
        assert meta["_owner"] == SAM
        assert meta["_rev"] == 2
        # A creator may set permissions in the creating body.
        await c.ok("put", "/resources/new", {"_meta": {"_permissions": {FRANK: {"read": True}}}})
        assert (await c.as_token("abc").get("/resources/new")).status == 200


async def test_owners_bookmarks_are_their_own() -> None:
    async with open_core() as c:
        frank = c.as_token("abc")
        assert (await frank.get(f"/{SAM_BM}")).status == 403
        assert (await c.get(f"/{FRANK_BM}")).status == 403
