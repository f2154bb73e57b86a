"""Rev propagation (§3), change arrays (§4.1), listeners and replay."""

from __future__ import annotations

import json
from typing import Any

from core_helpers import Caller, collect, open_core


async def _tmb(c: Caller) -> None:
    """T --middle--> M --bottom--> B, both versioned."""
    await c.ok("put", "/resources/B", {"x": 0})
    await c.ok("put", "/resources/M", {"bottom": {"_id": "resources/B", "_rev": 0}})
    await c.ok("put", "/resources/T", {"middle": {"_id": "resources/M", "_rev": 0}})


async def test_cascade_bumps_each_parent_with_its_own_rev() -> None:
    async with open_core() as c:
        await _tmb(c)
        b0, m0, t0 = (c.core.current_rev(f"resources/{k}") for k in "BMT")
        r = await c.put("/resources/B", {"x": 1})
        assert r.rev == b0 + 1
        assert c.core.current_rev("resources/M") == m0 + 1
        assert c.core.current_rev("resources/T") == t0 + 1
        assert (await c.get("/resources/M/bottom/_rev")).data == b0 + 1
        assert (await c.get("/resources/T/middle/_rev")).data == m0 + 1
        # Parent writes are recorded as the rev-graph user.
        meta = (await c.get("/resources/T/_meta")).data
        assert meta["modifiedBy"] == "system/rev_graph_update"


async def test_change_array_nests_descendants_by_depth() -> None:
    async with open_core() as c:
        await _tmb(c)
        await c.ok("put", "/resources/B", {"x": 1})
        t_rev = c.core.current_rev("resources/T")
        m_rev = c.core.current_rev("resources/M")
        b_rev = c.core.current_rev("resources/B")
        changes = (await c.get(f"/resources/T/_meta/_changes/{t_rev}")).data
        assert [(ch["resource_id"], ch["path"], ch["type"]) for ch in changes] == [
            ("resources/T", "", "merge"),
            ("resources/M", "/middle", "merge"),
            ("resources/B", "/middle/bottom", "merge"),
        ]
        t, m, b = (ch["body"] for ch in changes)
        assert t["middle"] == {"_rev": m_rev}
        assert t["_rev"] == t_rev
        assert t["_meta"]["modifiedBy"] == "system/rev_graph_update"
        assert t["_meta"]["_rev"] == t_rev
        assert isinstance(t["_meta"]["modified"], float)
        assert m["bottom"] == {"_rev": b_rev}
        assert b["x"] == 1
        assert b["_rev"] == b_rev
        assert b["_meta"]["modifiedBy"] == "users/default:users_sam_321"


async def test_cycle_bumps_the_other_resource_once_and_stops() -> None:
    async with open_core() as c:
        await c.ok("put", "/resources/B", {"x": 0})
        await c.ok("put", "/resources/M", {"b": {"_id": "resources/B", "_rev": 0}})
        await c.ok("put", "/resources/B", {"m": {"_id": "resources/M", "_rev": 0}})
        b0 = c.core.current_rev("resources/B")
        m0 = c.core.current_rev("resources/M")
        await c.ok("put", "/resources/B", {"x": 1})
        assert c.core.current_rev("resources/B") == b0 + 1
        assert c.core.current_rev("resources/M") == m0 + 1
        # A self link does not loop either.
        await c.ok("put", "/resources/S", {"me": {"_id": "resources/S", "_rev": 0}})
        await c.ok("put", "/resources/S", {"y": 1})
        assert c.core.current_rev("resources/S") == 2


async def test_one_parent_linking_two_changed_children_and_diamonds() -> None:
    async with open_core() as c:
        await c.ok("put", "/resources/B", {"x": 0})
        await c.ok("put", "/resources/M1", {"b": {"_id": "resources/B", "_rev": 0}})
        await c.ok(
            "put",
            "/resources/T",
            {"m1": {"_id": "resources/M1", "_rev": 0}, "b": {"_id": "resources/B", "_rev": 0}},
        )
        await c.ok("put", "/resources/B", {"x": 1})
        t = (await c.get("/resources/T")).data
        # Every link ends up at its target's current rev.
        assert t["b"]["_rev"] == c.core.current_rev("resources/B")
        assert t["m1"]["_rev"] == c.core.current_rev("resources/M1")


async def test_listeners_get_every_changed_resource_including_parents() -> None:
    async with open_core() as c:
        await _tmb(c)
        seen = {k: collect(c.core, f"resources/{k}") for k in "BMT"}
        await c.ok("put", "/resources/B", {"x": 1})
        for k in "BMT":
            assert len(seen[k]) == 1, k
            rev, changes = seen[k][0]
            assert rev == c.core.current_rev(f"resources/{k}")
            assert changes[0]["resource_id"] == f"resources/{k}"
            assert changes[0]["path"] == ""
            assert changes[0]["body"]["_rev"] == rev
        assert len(seen["T"][0][1]) == 3


async def test_unsubscribe_stops_notifications() -> None:
    async with open_core() as c:
        seen: list[Any] = []
        unsubscribe = c.core.subscribe("resources/A", lambda *a: seen.append(a))
        await c.ok("put", "/resources/A", {"x": 1})
        unsubscribe()
        unsubscribe()  # idempotent
        await c.ok("put", "/resources/A", {"x": 2})
        assert len(seen) == 1


async def test_failing_listener_does_not_break_the_write() -> None:
    async with open_core() as c:

        def boom(*_: Any) -> None:
            raise RuntimeError("listener bug")

        c.core.subscribe("resources/A", boom)
        seen = collect(c.core, "resources/A")
        assert (await c.put("/resources/A", {"x": 1})).status == 201
        assert len(seen) == 1


async def test_changes_since_replays_every_rev_after() -> None:
    async with open_core() as c:
        for i in range(5):
            await c.ok("put", "/resources/A", {"n": i})
        replay = c.core.changes_since("resources/A", 2)
        assert [rev for rev, _ in replay] == [3, 4, 5]
        assert [changes[0]["body"]["n"] for _, changes in replay] == [2, 3, 4]
        assert c.core.changes_since("resources/A", 5) == []
        assert c.core.changes_since("resources/nope", 0) == []


async def test_changes_listing_names_only_the_latest_max_changes_listed_revs() -> None:
    # A history grows with every write; listing all of it in one pass of the
    # event loop would stall every other client for as long.
    async with open_core(max_changes_listed=3) as c:
        key = 'q"\\é\u2028'
        for n in range(6):
            await c.ok("put", f"/resources/{key}", {"n": n})
        raw = (await c.get(f"/resources/{key}/_meta/_changes")).raw.body
        rid = f"resources/{key}"
        expected = {str(r): {"_rev": r, "_id": f"{rid}/_meta/_changes/{r}"} for r in (4, 5, 6)}
        assert json.loads(raw) == expected
        assert raw == json.dumps(expected, separators=(",", ":"), ensure_ascii=False).encode()
        # Older revs are still there, one by one.
        first = (await c.get(f"/resources/{key}/_meta/_changes/1")).data
        assert first[0]["body"]["n"] == 0


async def test_changes_listing_and_special_revs() -> None:
    async with open_core() as c:
        await c.ok("put", "/resources/A", {"n": 1})
        await c.ok("put", "/resources/A", {"n": 2})
        listing = (await c.get("/resources/A/_meta/_changes")).data
        assert listing == {
            "1": {"_rev": 1, "_id": "resources/A/_meta/_changes/1"},
            "2": {"_rev": 2, "_id": "resources/A/_meta/_changes/2"},
        }
        first = (await c.get("/resources/A/_meta/_changes/1")).data
        assert first[0]["body"]["_type"] == "application/json"  # creating write
        assert first[0]["body"]["_meta"]["_owner"] == "users/default:users_sam_321"
        assert (await c.get("/resources/A/_meta/_changes/9")).data == []
        assert (await c.get("/resources/A/_meta/_changes/0")).data == [
            {"resource_id": "resources/A", "path": "", "body": None, "type": "delete"}
        ]
        assert (await c.get("/resources/A/_meta/_changes/x")).status == 404


async def test_whole_resource_delete_change_and_parent_link_rev_zero() -> None:
    async with open_core() as c:
        await _tmb(c)
        seen_b = collect(c.core, "resources/B")
        seen_m = collect(c.core, "resources/M")
        await c.ok("delete", "/resources/B")
        assert seen_b == [
            (
                seen_b[0][0],
                [{"resource_id": "resources/B", "path": "", "body": None, "type": "delete"}],
            )
        ]
        assert (await c.get("/resources/M")).data["bottom"] == {"_id": "resources/B", "_rev": 0}
        _, m_changes = seen_m[0]
        assert m_changes[0]["type"] == "merge"
        assert m_changes[0]["body"]["bottom"] == {"_rev": 0}
        assert m_changes[1] == {
            "resource_id": "resources/B",
            "path": "/bottom",
            "body": None,
            "type": "delete",
        }
        # The delete is also in the replay feed.
        assert c.core.changes_since("resources/B", 1)[-1][1][0]["body"] is None
        assert c.core.current_rev("resources/B") == 0


async def test_key_delete_propagates_as_merge_to_parents() -> None:
    async with open_core() as c:
        await _tmb(c)
        await c.ok("put", "/resources/B", {"k": 1})
        seen = collect(c.core, "resources/M")
        await c.ok("delete", "/resources/B/k")
        changes = seen[0][1]
        assert changes[0]["type"] == "merge"
        assert changes[1]["type"] == "delete"
        assert changes[1]["body"]["k"] is None


async def test_tree_put_sequence_from_the_protocol() -> None:
    """§5.3: client tree PUT with If-Match, then a stale If-Match gets 412."""
    s_type = "application/vnd.oada.services.1+json"
    sv_type = "application/vnd.oada.service.1+json"
    j_type = "application/vnd.oada.service.jobs.1+json"
    async with open_core() as c:
        await c.ok("put", "/resources/S", {}, content_type=s_type)
        await c.ok("put", "/bookmarks/services", {"_id": "resources/S", "_rev": 0})
        assert (await c.head("/bookmarks/services/svc1/jobs/pending")).status == 404
        await c.ok("put", "/resources/k1", {}, content_type=j_type)
        assert (await c.head("/bookmarks/services/svc1/jobs")).status == 404
        await c.ok(
            "put", "/resources/k2", {"pending": {"_id": "resources/k1"}}, content_type=j_type
        )
        assert (await c.head("/bookmarks/services/svc1")).status == 404
        await c.ok("put", "/resources/k3", {"jobs": {"_id": "resources/k2"}}, content_type=sv_type)
        head = await c.head("/bookmarks/services")
        assert head.status == 200
        etag = head.headers["etag"]
        assert etag == f'"S/{head.rev}"'
        link = {"_id": "resources/k3", "_rev": 0}
        r = await c.put(
            "/bookmarks/services/svc1", link, content_type=s_type, headers={"if-match": etag}
        )
        assert r.status == 201
        final = await c.put("/bookmarks/services/svc1/jobs/pending", {}, content_type=j_type)
        assert final.status == 201
        assert final.location == "/resources/k1"
        got = await c.get("/bookmarks/services/svc1/jobs/pending")
        assert got.headers["content-type"] == j_type
        # A concurrent client that saw the old ETag loses the race.
        stale = await c.put(
            "/bookmarks/services/svc2",
            {"_id": "resources/k9", "_rev": 0},
            content_type=s_type,
            headers={"if-match": etag},
        )
        assert stale.status == 412
        assert "svc2" not in (await c.get("/bookmarks/services")).data


async def test_deleting_under_meta_is_in_the_change_body() -> None:
    async with open_core() as c:
        await c.ok("put", "/resources/A", {"x": 1})
        await c.ok("put", "/resources/A/_meta/watchPersists/w", {"_id": "resources/P"})
        seen = collect(c.core, "resources/A")
        await c.ok("delete", "/resources/A/_meta/watchPersists/w")
        body = seen[0][1][0]["body"]
        assert body["_meta"]["watchPersists"] == {"w": None}
        assert body["_meta"]["_rev"] == body["_rev"] == 3
        assert (await c.get("/resources/A/_meta/watchPersists")).data == {}


async def test_a_rev_written_into_a_link_by_a_client_does_not_stop_propagation() -> None:
    async with open_core() as c:
        await c.ok("put", "/resources/C", {"n": 1})
        await c.ok("put", "/resources/Q", {"a": {"_id": "resources/C", "_rev": 0}})
        await c.ok("put", "/resources/Q", {"a": {"_rev": 999}})
        before = (await c.get("/resources/Q")).rev
        child = (await c.put("/resources/C", {"n": 2})).rev
        assert (await c.get("/resources/Q")).rev == before + 1
        assert (await c.get("/resources/Q/a/_rev")).data == child
