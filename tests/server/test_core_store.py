"""Durability and the store: acknowledged writes survive a crash; the change feed too."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from core_helpers import SAM_BM, open_core

from oada_jobs.server.store import pointer, unpointer

_WRITER = textwrap.dedent(
    """
    import os, sys, anyio
    from oada_jobs.server.config import ServerConfig
    from oada_jobs.server.core import CoreRequest, OADACore

    async def main():
        core = OADACore(ServerConfig(db=sys.argv[1]))
        await core.__aenter__()
        h = {"authorization": "Bearer god", "content-type": "application/json"}
        await core.handle(CoreRequest("put", "/resources/B", h, b'{"x":1}'))
        await core.handle(CoreRequest("put", "/bookmarks/b", h, b'{"_id":"resources/B","_rev":0}'))
        await core.handle(CoreRequest("put", "/resources/B", h, b'{"x":2}'))
        await core.handle(CoreRequest("put", "/resources/bin", {**h, "content-type": "image/png"}, b"PNG"))
        r = await core.handle(CoreRequest("delete", "/bookmarks/gone", h))
        assert r.status == 204
        print("written", flush=True)
        os._exit(0)  # no close, no checkpoint: like a crash right after the acks

    anyio.run(main)
    """
)


async def test_acknowledged_writes_survive_a_crash(tmp_path: Path) -> None:
    db = tmp_path / "crash.sqlite3"
    done = subprocess.run(
        [sys.executable, "-c", _WRITER, str(db)], capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip() == "written", done.stderr
    async with open_core(db=str(db)) as c:
        assert (await c.get("/resources/B/x")).data == 2
        assert (await c.get("/bookmarks/b/x")).data == 2
        bm = (await c.get("/bookmarks")).data
        assert bm["b"] == {"_id": "resources/B", "_rev": 2}
        assert (await c.get("/resources/bin")).raw.body == b"PNG"
        feed = c.core.changes_since("resources/B", 0)
        assert [rev for rev, _ in feed] == [1, 2]
        bm_feed = c.core.changes_since(SAM_BM, 0)
        last = bm_feed[-1][1]
        assert [ch["resource_id"] for ch in last] == [SAM_BM, "resources/B"]
        # The link graph came back too: writes still propagate.
        await c.ok("put", "/resources/B", {"x": 3})
        assert (await c.get("/bookmarks/b/_rev")).data == 3


async def test_reopen_after_clean_close_keeps_everything(tmp_path: Path) -> None:
    db = str(tmp_path / "clean.sqlite3")
    async with open_core(db=db) as c:
        await c.ok("put", "/resources/A", {"q": {"r": 1}})
        await c.ok("put", "/resources/A/_meta/watchPersists/w", {"_id": "resources/P"})
        await c.ok("put", "/resources/P", {"rev": 4})
        await c.ok("delete", "/resources/A/q/r")
        await c.ok("put", "/resources/D", {"d": 1})
        await c.ok("delete", "/resources/D")
    async with open_core(db=db) as c:
        assert (await c.get("/resources/A/q")).data == {}
        assert (await c.get("/resources/A/_meta/watchPersists/w/rev")).data == 4
        assert (await c.get("/resources/D")).status == 404
        assert (await c.put("/resources/D", {"again": 1})).rev == 3
        assert c.core.changes_since("resources/D", 1)[0][1][0]["body"] is None


async def test_in_memory_store_is_fresh_each_time() -> None:
    async with open_core() as c:
        await c.ok("put", "/resources/A", {"x": 1})
    async with open_core() as c:
        assert (await c.get("/resources/A")).status == 404


def test_pointer_round_trip() -> None:
    for path in [(), ("a",), ("a/b", "c~d", ""), ("~1", "/")]:
        assert unpointer(pointer(path)) == path
    assert pointer(("a/b", "c~d")) == "/a~1b/c~0d"
