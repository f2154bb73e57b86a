"""Tokens, ownership, scopes (§6) and preconditions (§2.6)."""

from __future__ import annotations

import pytest
from core_helpers import FRANK_BM, SAM_BM, collect, open_core

from oada_jobs.server.auth import may_access, scope_allows
from oada_jobs.server.config import TokenInfo


@pytest.mark.parametrize(
    "authorization", [None, "", "Bearer", "Bearer nope", "Basic god", "god", "Bearer  "]
)
async def test_missing_or_bad_token_is_401_json(authorization: str | None) -> None:
    async with open_core() as c:
        headers = {} if authorization is None else {"authorization": authorization}
        r = await c.as_token(None).get("/bookmarks", headers=headers)
        assert r.status == 401
        assert r.headers["content-type"] == "application/json"
        assert r.data["statusCode"] == 401
        assert r.data["error"] == "Unauthorized"
        assert "nope" not in r.raw.body.decode()


async def test_bearer_scheme_is_case_insensitive() -> None:
    async with open_core() as c:
        r = await c.as_token(None).get("/bookmarks", headers={"authorization": "bearer god"})
        assert r.status == 200


async def test_each_token_has_its_own_bookmarks() -> None:
    async with open_core() as c:
        frank = c.as_token("abc")
        assert (await frank.get("/bookmarks")).location == f"/{FRANK_BM}"
        assert (await c.get("/bookmarks")).location == f"/{SAM_BM}"


async def test_other_users_resources_are_403_for_read_and_write() -> None:
    async with open_core() as c:
        frank = c.as_token("abc")
        await c.ok("put", "/resources/samdoc", {"secret": 1})
        assert (await frank.get("/resources/samdoc")).status == 403
        assert (await frank.head("/resources/samdoc")).status == 403
        assert (await frank.get(f"/{SAM_BM}")).status == 403
        r = await frank.put("/resources/samdoc", {"secret": 2})
        assert r.status == 403
        assert r.data["message"] == "User does not have write permission for this resource"
        assert (await frank.delete("/resources/samdoc/secret")).status == 403
        assert (await frank.delete("/resources/samdoc")).status == 403
        assert (await frank.post("/resources/samdoc/list", {"x": 1})).status == 403
        assert (await c.get("/resources/samdoc")).data["secret"] == 1
        assert (await c.get("/resources/samdoc")).rev == 1


async def test_links_do_not_grant_access_permission_is_on_the_resolved_resource() -> None:
    async with open_core() as c:
        frank = c.as_token("abc")
        await c.ok("put", "/resources/samdoc", {"secret": 1})
        # Frank may link to it (targets are not checked) but not read through it.
        await frank.ok("put", "/bookmarks/stolen", {"_id": "resources/samdoc", "_rev": 0})
        assert (await frank.get("/bookmarks/stolen")).status == 403
        assert (await frank.get("/bookmarks/stolen/secret")).status == 403
        assert (await frank.put("/bookmarks/stolen/secret", 2)).status == 403
        # Deleting the link modifies Frank's own bookmarks, which is allowed.
        assert (await frank.delete("/bookmarks/stolen")).status == 204
        assert (await c.get("/resources/samdoc/secret")).data == 1


async def test_permission_grants_in_meta() -> None:
    async with open_core() as c:
        frank = c.as_token("abc")
        await c.ok("put", "/resources/shared", {"x": 1})
        frank_id = "users/default:users_frank_123"
        await c.ok("put", "/resources/shared/_meta/_permissions", {frank_id: {"read": True}})
        assert (await frank.get("/resources/shared/x")).data == 1
        assert (await frank.put("/resources/shared/x", 2)).status == 403
        escaped = frank_id.replace("/", "~1")  # JSON-pointer escape
        await c.ok("put", f"/resources/shared/_meta/_permissions/{escaped}", {"write": True})
        assert (await frank.put("/resources/shared/x", 2)).status == 201


async def test_anyone_may_create_an_unused_id_and_then_owns_it() -> None:
    async with open_core() as c:
        frank = c.as_token("abc")
        await frank.ok("put", "/resources/franks", {"x": 1})
        assert (await c.get("/resources/franks")).status == 403
        meta = (await frank.get("/resources/franks/_meta")).data
        assert meta["_owner"] == "users/default:users_frank_123"


async def test_shares_are_read_only_and_bookmarks_cannot_be_deleted() -> None:
    async with open_core() as c:
        assert (await c.get("/shares")).status == 200
        assert (await c.put("/shares/x", {"a": 1})).status == 403
        assert (await c.post("/shares", {"a": 1})).status == 403
        assert (await c.delete("/shares/x")).status == 403
        assert (await c.delete("/bookmarks")).status == 403
        assert (await c.delete(f"/{SAM_BM}")).status == 403
        assert (await c.delete("/resources/default:resources_shares_321")).status == 403
        assert (await c.delete("/shares")).status == 403
        assert (await c.get("/bookmarks")).status == 200


async def test_scopes_are_checked_against_the_resource_type() -> None:
    jobs = "application/vnd.oada.service.jobs.1+json"
    tokens = {
        "god": TokenInfo(user="users/sam", bookmarks="resources/bm_sam"),
        "yield": TokenInfo(
            user="users/sam", bookmarks="resources/bm_sam", scopes=("oada.yield:read",)
        ),
        "trellis": TokenInfo(
            user="users/sam", bookmarks="resources/bm_sam", scopes=("trellisfw:all",)
        ),
        "odd": TokenInfo(user="users/sam", bookmarks="resources/bm_sam", scopes=("nope:all",)),
    }
    async with open_core(tokens=tokens) as c:
        await c.ok("put", "/resources/J", {"x": 1}, content_type=jobs)
        await c.ok(
            "put", "/resources/S", {"x": 1}, content_type="application/vnd.oada.services.1+json"
        )
        y, t, odd = c.as_token("yield"), c.as_token("trellis"), c.as_token("odd")
        assert (await y.get("/resources/S")).status == 200
        assert (await y.put("/resources/S", {"x": 2})).status == 403  # read only
        r = await y.get("/resources/J")
        assert r.status == 403
        assert r.data["message"] == "Token does not have required scope"
        assert (await t.get("/resources/J")).status == 200
        assert (await t.put("/resources/J", {"x": 2})).status == 201
        assert (await odd.get("/resources/J")).status == 403
        # Missing resources skip the scope check.
        assert (await odd.get("/resources/nothing")).status == 404


def test_scope_allows_table() -> None:
    assert scope_allows(["all:all"], None, write=True)
    assert scope_allows(["all:read"], "application/pdf", write=False)
    assert not scope_allows(["all:read"], "application/pdf", write=True)
    assert scope_allows(["oada.yield:write"], "application/json", write=True)
    assert not scope_allows(["oada.yield:all"], None, write=False)
    assert scope_allows(
        ["trellisfw:read"], "application/vnd.trellisfw.document.1+json", write=False
    )
    assert not scope_allows(["unknown:all"], "application/json", write=False)
    assert not scope_allows([], "application/json", write=False)


async def test_get_if_none_match_is_304_and_if_match_412() -> None:
    async with open_core() as c:
        r = await c.ok("put", "/resources/A", {"x": 1})
        etag = r.headers["etag"]
        assert (await c.get("/resources/A", headers={"if-none-match": etag})).status == 304
        assert (await c.get("/resources/A", headers={"if-none-match": '"A/9"'})).status == 200
        assert (await c.get("/resources/A", headers={"if-none-match": "*"})).status == 200
        assert (await c.get("/resources/A", headers={"if-match": etag})).status == 200
        assert (await c.get("/resources/A", headers={"if-match": '"A/9"'})).status == 412
        # Stale ETag for the same resource is not "not modified".
        await c.ok("put", "/resources/A", {"x": 2})
        assert (await c.get("/resources/A", headers={"if-none-match": etag})).status == 200


async def test_write_if_match_forms() -> None:
    async with open_core() as c:
        await c.ok("put", "/resources/A", {"x": 1})
        ok_forms = ['"A/1"', 'W/"A/1"', '"1"', '"B/7", "A/1"']
        rev = 1
        for form in ok_forms:
            r = await c.put(
                "/resources/A", {"x": rev}, headers={"if-match": form.replace("1", str(rev))}
            )
            assert r.status == 201, form
            rev += 1
        for form in ['"A/1"', '"B/5"', "garbage", '"A/x"']:
            r = await c.put("/resources/A", {"x": 0}, headers={"if-match": form})
            assert r.status == 412, form
            assert r.data["message"] == "If-Match header does not match current resource _rev"
        assert (await c.get("/resources/A")).rev == rev


async def test_bare_unquoted_rev_in_if_match_matches_any_id() -> None:
    # @oada/client 1.1.4 echoes x-oada-rev as If-Match: 5 (no quotes, no id).
    async with open_core() as c:
        await c.ok("put", "/resources/A", {"x": 1})
        assert (await c.put("/resources/A", {"x": 2}, headers={"if-match": "1"})).status == 201
        assert (await c.put("/resources/A", {"x": 3}, headers={"if-match": "1"})).status == 412
        assert (await c.get("/resources/A", headers={"if-match": "2"})).status == 200


async def test_write_if_none_match_and_delete_if_match() -> None:
    async with open_core() as c:
        await c.ok("put", "/resources/A", {"x": 1})
        r = await c.put("/resources/A", {"x": 2}, headers={"if-none-match": '"A/1"'})
        assert r.status == 412
        assert (
            await c.put("/resources/A", {"x": 2}, headers={"if-none-match": '"A/5"'})
        ).status == 201
        assert (await c.delete("/resources/A/x", headers={"if-match": '"A/1"'})).status == 412
        assert (await c.delete("/resources/A/x", headers={"if-match": '"A/2"'})).status == 204
        assert (await c.delete("/resources/A", headers={"if-match": '"A/2"'})).status == 412
        assert (await c.get("/resources/A")).status == 200
        # Nothing there matches no rev but 0, as for a PUT that would create it.
        gone = {"if-match": '"none/1"'}
        assert (await c.delete("/resources/none", headers=gone)).status == 412
        assert (await c.put("/resources/none", {"x": 1}, headers=gone)).status == 412
        assert (await c.delete("/resources/none")).status == 204


async def test_change_arrays_do_not_leak_other_users_changes_through_links() -> None:
    async with open_core() as c:
        frank = c.as_token("abc")
        await c.ok("put", "/resources/S", {"secret": 1})
        await frank.ok("put", "/resources/F", {"s": {"_id": "resources/S", "_rev": 0}})
        seen = collect(c.core, "resources/F")
        await c.ok("put", "/resources/S", {"secret": 2})
        rev, changes = seen[0]
        # Frank's resource follows the link rev, but Sam's change stays hidden
        # from Frank, watching or reading the change.
        view = c.core.watch_view("Bearer abc", "resources/F", changes)
        assert view is not None
        assert [ch["resource_id"] for ch in view] == ["resources/F"]
        assert view[0]["body"]["s"] == {"_rev": 2}
        assert (await frank.get(f"/resources/F/_meta/_changes/{rev}")).data == view
        assert b"secret" not in (await frank.get(f"/resources/F/_meta/_changes/{rev}")).raw.body
        # With a read grant the child change nests as usual.
        frank_id = "users/default:users_frank_123"
        await c.ok("put", "/resources/S/_meta/_permissions", {frank_id: {"read": True}})
        await c.ok("put", "/resources/S", {"secret": 3})
        view = c.core.watch_view("Bearer abc", "resources/F", seen[-1][1])
        assert view is not None
        assert [ch["resource_id"] for ch in view] == ["resources/F", "resources/S"]
        # Sam may not read Frank's resource at all: no view.
        assert c.core.watch_view("Bearer god", "resources/F", seen[-1][1]) is None


def test_may_access_table() -> None:
    sam, frank = "users/sam", "users/frank"
    assert may_access({"_owner": sam}, sam, write=True)
    assert not may_access({"_owner": sam}, frank, write=False)
    assert not may_access({}, frank, write=False)
    assert not may_access({"_owner": sam, "_permissions": "all"}, frank, write=False)
    assert not may_access({"_owner": sam, "_permissions": {frank: True}}, frank, write=False)
    grants = {"_owner": sam, "_permissions": {frank: {"read": True}}}
    assert may_access(grants, frank, write=False)
    assert not may_access(grants, frank, write=True)
    owner = {"_owner": sam, "_permissions": {frank: {"owner": True}}}
    assert may_access(owner, frank, write=True)
    assert not may_access(
        {"_owner": sam, "_permissions": {frank: {"read": "yes"}}}, frank, write=False
    )
