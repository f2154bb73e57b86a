"""``quirks="reference"``: 403 for missing /resources/<id> and deferred rev propagation."""

from __future__ import annotations

from typing import Any

import anyio
from core_helpers import open_core

from oada_jobs.server.config import ServerConfig
from oada_jobs.server.core import CoreRequest, OADACore


async def test_missing_resource_read_is_403_in_reference_mode_only() -> None:
    async with open_core(quirks="reference") as c:
        for method in ("get", "head"):
            r = await c.request(method, "/resources/missing")
            assert r.status == 403, method
        assert (await c.get("/resources/missing/x")).status == 403
        # Missing keys and dangling links elsewhere are still 404.
        assert (await c.get("/bookmarks/missing")).status == 404
        await c.ok("put", "/bookmarks/d", {"_id": "resources/gone"})
        assert (await c.get("/bookmarks/d")).status == 404
    async with open_core() as c:
        assert (await c.get("/resources/missing")).status == 404


async def test_parent_revs_follow_after_the_child_write_is_acknowledged() -> None:
    async with open_core(quirks="reference") as c:
        await c.ok("put", "/resources/B", {"x": 0})
        await c.ok("put", "/resources/M", {"b": {"_id": "resources/B", "_rev": 0}})
        await c.ok("put", "/resources/T", {"m": {"_id": "resources/M", "_rev": 0}})
        t_done = anyio.Event()
        seen: list[Any] = []

        def on_t(rid: str, rev: int, changes: list[dict[str, Any]]) -> None:
            seen.append((rev, changes))
            if changes[-1]["resource_id"] == "resources/B":
                t_done.set()

        c.core.subscribe("resources/T", on_t)
        m_before = c.core.current_rev("resources/M")
        r = await c.put("/resources/B", {"x": 1})
        assert r.status == 201
        # Acknowledged before the parents were bumped.
        assert c.core.current_rev("resources/M") == m_before
        with anyio.fail_after(5):
            await t_done.wait()
        assert c.core.current_rev("resources/M") == m_before + 1
        assert (await c.get("/resources/M/b/_rev")).data == r.rev
        assert (await c.get("/resources/T/m/_rev")).data == c.core.current_rev("resources/M")
        rev, changes = seen[-1]
        assert [ch["path"] for ch in changes] == ["", "/m", "/m/b"]
        assert changes[0]["body"]["_rev"] == rev


async def test_closing_waits_for_pending_propagation(tmp_path: Any) -> None:
    config = ServerConfig(db=str(tmp_path / "q.sqlite3"), quirks="reference")
    god = {"authorization": "Bearer god", "content-type": "application/json"}
    async with OADACore(config) as core:
        await core.handle(CoreRequest("put", "/resources/B", god, b'{"x":0}'))
        link = b'{"b":{"_id":"resources/B","_rev":0}}'
        await core.handle(CoreRequest("put", "/resources/M", god, link))
        await core.handle(CoreRequest("put", "/resources/B", god, b'{"x":1}'))
    async with OADACore(config) as core:
        # M was created linking B at rev 1, so only B's rev 2 bumps it.
        assert core.current_rev("resources/M") == 2
        link = await core.handle(CoreRequest("get", "/resources/M/b/_rev", god))
        assert link.body == b"2"
