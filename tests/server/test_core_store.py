"""Durability and the store: acknowledged writes survive a crash; the change feed too."""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from core_helpers import SAM_BM, Answers, Caller, collect, open_core, request

from oada_jobs.server import core as core_module
from oada_jobs.server import graph as graph_module
from oada_jobs.server import store as store_module
from oada_jobs.server.config import ServerConfig
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
        # The old resource's changes are not the new one's history.
        assert [rev for rev, _ in c.core.changes_since("resources/D", 0)] == [3]


async def test_a_database_of_the_previous_schema_is_migrated_with_its_history(
    tmp_path: Path,
) -> None:
    db = str(tmp_path / "v0.sqlite3")
    async with open_core(db=db) as c:
        await c.ok("put", "/resources/A", {"q": 1})
        await c.ok("put", "/resources/A", {"q": 2})
        await c.ok("delete", "/resources/A/q")
    # Put the change log back into the layout of schema version 0.
    con = sqlite3.connect(db, isolation_level=None)
    con.executescript(
        """
        BEGIN;
        CREATE TABLE old (resource_id TEXT NOT NULL, rev INTEGER NOT NULL, type TEXT NOT NULL,
            body BLOB, children BLOB, PRIMARY KEY (resource_id, rev)) WITHOUT ROWID;
        INSERT INTO old SELECT resource_id, rev, type, body, children FROM changes;
        DROP TABLE changes;
        ALTER TABLE old RENAME TO changes;
        PRAGMA user_version = 0;
        COMMIT;
        """
    )
    before = con.execute("SELECT * FROM changes ORDER BY resource_id, rev").fetchall()
    con.close()

    async with open_core(db=db) as c:
        assert [rev for rev, _ in c.core.changes_since("resources/A", 0)] == [1, 2, 3]
        assert (await c.get("/resources/A")).data.get("q") is None
        assert (await c.put("/resources/A", {"q": 4})).rev == 4
    con = sqlite3.connect(db)
    (sql,) = con.execute("SELECT sql FROM sqlite_master WHERE name = 'changes'").fetchone()
    assert "WITHOUT ROWID" not in sql.upper()
    assert con.execute("PRAGMA user_version").fetchone() == (store_module.SCHEMA_VERSION,)
    after = con.execute("SELECT * FROM changes ORDER BY resource_id, rev").fetchall()
    con.close()
    assert set(before) <= set(after)


async def test_in_memory_store_is_fresh_each_time() -> None:
    async with open_core() as c:
        await c.ok("put", "/resources/A", {"x": 1})
    async with open_core() as c:
        assert (await c.get("/resources/A")).status == 404


def test_pointer_round_trip() -> None:
    for path in [(), ("a",), ("a/b", "c~d", ""), ("~1", "/")]:
        assert unpointer(pointer(path)) == path
    assert pointer(("a/b", "c~d")) == "/a~1b/c~0d"


async def _random_history(c: Caller, rng: random.Random, steps: int) -> None:
    """Many kinds of writes over a few resources linked to each other."""
    ids = [f"R{i}" for i in range(5)]
    keys = ["a", "b", "c", "_meta/extra"]
    for step in range(steps):
        rid = rng.choice(ids)
        op = rng.random()
        path = "/".join(rng.choice(keys) for _ in range(rng.randint(0, 2)))
        at = f"/resources/{rid}" + (f"/{path}" if path else "")
        value: Any = rng.choice(
            [
                {"n": step},
                step,
                None,
                [step, {"x": step}],
                "s" * rng.randint(0, 300),
                {"deep": {"er": step}},
            ]
        )
        if op < 0.45:
            await c.put(at, value if path else {"v": value})
        elif op < 0.6:
            target = rng.choice(ids)
            link = (
                {"_id": f"resources/{target}", "_rev": 0}
                if rng.random() < 0.7
                else {"_id": f"resources/{target}"}
            )
            await c.put(f"/resources/{rid}/l{rng.randint(0, 2)}", link)
        elif op < 0.7:
            await c.post(f"/resources/{rid}/list", {"n": step})
        elif op < 0.85:
            await c.delete(at) if path else await c.delete(f"/resources/{rid}/v")
        elif op < 0.9:
            await c.delete(f"/resources/{rid}/l{rng.randint(0, 2)}")
        elif op < 0.95:
            await c.put(f"/resources/{rid}/big", {str(step): "x" * 2000})
        else:
            await c.delete(f"/resources/{rid}")


async def _state(c: Caller) -> dict[str, Any]:
    out = {}
    for i in range(5):
        rid = f"resources/R{i}"
        r = await c.get(f"/{rid}")
        meta = await c.get(f"/{rid}/_meta")
        out[rid] = (r.status, r.data, meta.data, c.core.changes_since(rid, 0))
    # The links as stored; those in memory (of the documents loaded) must agree.
    stored: dict[str, dict[tuple[str, ...], tuple[str, bool]]] = {}
    for parent, path, child, versioned in c.core.store.db.execute(
        "SELECT parent, path, child, versioned FROM edges"
    ):
        stored.setdefault(parent, {})[unpointer(path)] = (child, bool(versioned))
    for parent, links in c.core.store.links.items():
        assert links.items() <= stored.get(parent, {}).items(), parent
    out["links"] = stored
    return out


@pytest.mark.parametrize("slack", [0, store_module._SNAPSHOT_SLACK])
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_documents_rebuilt_from_snapshots_and_changes_match(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int, slack: int
) -> None:
    # With no slack snapshots are rewritten now and then (once the changes
    # outweigh them); with the default, small documents are replayed from
    # their creation's snapshot.
    monkeypatch.setattr(store_module, "_SNAPSHOT_SLACK", slack)
    db = str(tmp_path / f"replay{seed}.sqlite3")
    rng = random.Random(seed)
    async with open_core(db=db) as c:
        await _random_history(c, rng, 400)
        expected = await _state(c)
        # A copy of the file holds only what was committed, as after a
        # crash (the first core never wrote its closing snapshots).
        crash = str(tmp_path / f"crash{seed}.sqlite3")
        for suffix in ("", "-wal"):
            if os.path.exists(db + suffix):
                shutil.copyfile(db + suffix, crash + suffix)
        async with open_core(db=crash) as crashed:
            assert await _state(crashed) == expected
    async with open_core(db=db) as reopened:
        assert await _state(reopened) == expected
        await _random_history(reopened, rng, 100)
        expected = await _state(reopened)
    async with open_core(db=db) as again:
        assert await _state(again) == expected


@pytest.mark.parametrize("links", [2000, 2], ids=["large", "small"])
async def test_documents_are_not_rewritten_on_every_write(tmp_path: Path, links: int) -> None:
    db = str(tmp_path / "doc.sqlite3")
    async with open_core(db=db) as c:
        await c.ok(
            "put", "/resources/L", {f"k{i}": {"_id": f"resources/j{i}"} for i in range(links)}
        )
        db_ = c.core.store.db
        rows = []
        for i in range(20):
            await c.ok("put", f"/resources/L/n{i}", {"_id": f"resources/x{i}"})
            rows.append(
                db_.execute(
                    "SELECT rev, length(doc) FROM resources WHERE id = 'resources/L'"
                ).fetchone()
            )
        if links == 2:
            # The snapshot stayed at the first revision; the changes carry the rest.
            assert [rev for rev, _ in rows] == [1] * 20
        else:
            # Keyed: only the head row (no member) is rewritten, and the new
            # member gets a row of its own.
            assert all(size < 1024 for _, size in rows)
            members = db_.execute(
                "SELECT COUNT(*) FROM members WHERE resource_id = 'resources/L'"
            ).fetchone()[0]
            assert members == links + 20
    async with open_core(db=db) as c:
        doc = (await c.get("/resources/L")).data
        assert doc["_rev"] == 21
        assert doc["n19"] == {"_id": "resources/x19"}
        assert (await c.get("/resources/L/n19")).location == "/resources/x19"


class _FailingCommits:
    """Wraps a connection so that COMMIT fails, as on a full disk."""

    def __init__(self, db: Any) -> None:
        self._db = db

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT":
            raise sqlite3.OperationalError("database or disk is full")
        return self._db.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


async def test_a_failed_commit_is_500_and_leaves_no_trace(tmp_path: Path) -> None:
    async with open_core(db=str(tmp_path / "full.sqlite3")) as c:
        await c.ok("put", "/resources/A", {"x": 1})
        await c.ok("put", "/resources/P", {"a": {"_id": "resources/A", "_rev": 0}})
        seen = collect(c.core, "resources/A")
        store = c.core.store
        links_before = {k: dict(v) for k, v in store.links.items()}
        real = store._db
        store._db = _FailingCommits(real)  # type: ignore[assignment]
        try:
            for method, path, body in [
                ("put", "/resources/A", {"x": 2}),
                ("put", "/resources/new", {"y": 1}),
                ("put", "/resources/P", {"b": {"_id": "resources/A", "_rev": 0}}),
                ("delete", "/resources/P/a", None),
                ("delete", "/resources/A", None),
            ]:
                r = await c.request(method, path, body) if body else await c.request(method, path)
                assert r.status == 500, (method, path)
                assert r.data["message"] == "the write could not be saved; nothing was changed"
        finally:
            store._db = real
        assert (await c.get("/resources/A")).data["x"] == 1
        assert (await c.get("/resources/A")).rev == 1
        assert (await c.get("/resources/new")).status == 404
        assert (await c.get("/resources/P")).rev == 1
        assert {k: dict(v) for k, v in store.links.items()} == links_before
        assert seen == []  # nothing was acknowledged, nobody was told
        await c.ok("put", "/resources/A", {"x": 3})
        assert (await c.get("/resources/P/a/_rev")).data == 2


async def test_wal_is_checkpointed_in_the_background(tmp_path: Path) -> None:
    # Commits never checkpoint by themselves below the backstop; a worker
    # thread copies the WAL into the database file while writes go on.
    db = tmp_path / "bg.sqlite3"
    async with open_core(db=str(db)) as c:
        core = c.core
        for i in range(20):
            assert (await c.put(f"/resources/bg{i}", {"i": i})).status == 201
        assert core.store.commits_since_checkpoint > 0
        with anyio.fail_after(10):
            await core._checkpointed.wait()
        # Everything written so far is in the database file itself now: a
        # copy of that file alone (without its WAL) has it.
        copy = tmp_path / "copy.sqlite3"
        copy.write_bytes(db.read_bytes())
        raw = sqlite3.connect(copy)
        try:
            (count,) = raw.execute(
                "SELECT count(*) FROM resources WHERE id LIKE 'resources/bg%'"
            ).fetchone()
        finally:
            raw.close()
        assert count == 20
        # Writes after the checkpoint still land and the core closes cleanly.
        assert (await c.put("/resources/bg-late", {"late": True})).status == 201
    async with open_core(db=str(db)) as again:
        assert (await again.get("/resources/bg-late")).data["late"] is True
        assert (await again.get("/resources/bg19")).data["i"] == 19


async def test_least_recently_used_documents_are_dropped_beyond_the_cache_size(
    tmp_path: Path,
) -> None:
    async with open_core(db=str(tmp_path / "lru.sqlite3"), document_cache_size=5) as c:
        store = c.core.store
        for rid in "ABCDEF":
            await c.ok("put", f"/resources/{rid}", {"id": rid})
        assert len(store.cached) == 5
        assert "resources/A" not in store.cached
        assert (await c.get("/resources/B")).data["id"] == "B"
        await c.ok("put", "/resources/G", {"id": "G"})
        # B was used after C, so C went first.
        assert len(store.cached) == 5
        assert "resources/B" in store.cached
        assert "resources/C" not in store.cached
        assert (await c.get("/resources/A")).data["id"] == "A"


async def test_dropped_documents_read_back_and_go_on_as_before(tmp_path: Path) -> None:
    async with open_core(db=str(tmp_path / "none.sqlite3"), document_cache_size=0) as c:
        store = c.core.store
        await c.ok("put", "/resources/A", {"x": 1})
        await c.ok("put", "/bookmarks/a", {"_id": "resources/A", "_rev": 0})
        await c.ok("put", "/resources/bin", raw=b"PNG", content_type="image/png")
        seen = collect(c.core, "resources/A")
        assert store.cached == []
        assert (await c.get("/bookmarks/a")).data["x"] == 1
        assert (await c.put("/resources/A", {"y": 2})).rev == 2
        assert store.cached == []
        assert [rev for rev, _ in seen] == [2]
        doc = (await c.get("/resources/A")).data
        assert (doc["x"], doc["y"], doc["_rev"]) == (1, 2, 2)
        # The link's _rev still follows (the link graph is never dropped).
        assert (await c.get("/bookmarks/a/_rev")).data == 2
        assert (await c.get("/resources/bin")).raw.body == b"PNG"
        assert [rev for rev, _ in c.core.changes_since("resources/A", 0)] == [1, 2]


async def test_writes_waiting_for_their_commit_are_never_dropped() -> None:
    # With no cache at all, a read in the same event-loop pass as a write
    # still sees it: documents are dropped only once nothing is uncommitted.
    async with open_core(document_cache_size=0) as c:
        await c.ok("put", "/resources/A", {})
        answers = Answers(c.core)
        answers.submit(
            request("put", "/resources/A", {"x": 1}),
            request("get", "/resources/A"),
            request("put", "/resources/A", {"y": 2}),
            request("get", "/resources/A"),
        )
        first, read, second, reread = await answers.wait()
        assert [int(r.headers["x-oada-rev"]) for r in (first, second)] == [2, 3]
        assert json.loads(read.body)["x"] == 1
        assert "y" not in json.loads(read.body)
        assert json.loads(reread.body) | {"x": 1, "y": 2} == json.loads(reread.body)
        assert c.core.store.cached == []
        doc = (await c.get("/resources/A")).data
        assert (doc["x"], doc["y"], doc["_rev"]) == (1, 2, 3)


@pytest.mark.parametrize("seed", [1, 2])
async def test_a_core_without_a_document_cache_answers_as_one_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    # The same history on both, with the clock and generated keys made
    # repeatable: every document, _meta, change feed and link is the same.
    states = []
    for size in (ServerConfig.model_fields["document_cache_size"].default, 0):
        clock = itertools.count(1_700_000_000)
        keys = (f"k{n:06d}" for n in itertools.count())
        monkeypatch.setattr(graph_module, "time", SimpleNamespace(time=clock.__next__))
        monkeypatch.setattr(core_module, "ksuid", keys.__next__)
        async with open_core(db=str(tmp_path / f"{size}.sqlite3"), document_cache_size=size) as c:
            await _random_history(c, random.Random(seed), 300)
            states.append(await _state(c))
    assert states[0] == states[1]


@pytest.mark.parametrize("cache", [0, 20_000])
async def test_a_key_deleted_inside_an_array_element_stays_deleted(
    tmp_path: Path, cache: int
) -> None:
    db = str(tmp_path / "array.sqlite3")
    async with open_core(db=db, document_cache_size=cache) as c:
        await c.ok("put", "/resources/L", {"a": [{"b": 1, "c": 2}, [{"d": 3, "e": 4}]]})
        assert (await c.delete("/resources/L/a/0/b")).status == 204
        assert (await c.delete("/resources/L/a/1/0/d")).status == 204
        await c.ok("put", "/resources/L", {"z": 1})
        assert (await c.get("/resources/L/a")).data == [{"c": 2}, [{"e": 4}]]
    async with open_core(db=db) as c:
        assert (await c.get("/resources/L/a")).data == [{"c": 2}, [{"e": 4}]]


async def test_a_resource_deleted_and_created_again_in_one_pass_goes_on_counting() -> None:
    async with open_core() as c:
        await c.ok("put", "/resources/X", {"v": 1})
        answers = Answers(c.core)
        answers.submit(
            request("delete", "/resources/X"),
            request("put", "/resources/X", {"w": 2}),
        )
        deleted, created = await answers.wait()
        assert (deleted.status, created.status) == (204, 201)
        assert created.headers["x-oada-rev"] == "3"
        # The new resource's history starts at its creation.
        feed = c.core.changes_since("resources/X", 0)
        assert [(rev, changes[0]["type"]) for rev, changes in feed] == [(3, "merge")]


async def test_a_staged_delete_is_not_forgotten_with_the_ids_known_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The ids known not to exist are forgotten beyond a limit; a resource whose
    # delete is staged is hidden only by being among them.
    monkeypatch.setattr(store_module, "_MISSING_CACHE_BYTES", 1)
    async with open_core() as c:
        await c.ok("put", "/resources/X", {"v": 1})
        answers = Answers(c.core)
        answers.submit(
            request("delete", "/resources/X"),
            request("get", "/resources/none1"),
            request("get", "/resources/none2"),
            request("get", "/resources/X"),
        )
        statuses = [r.status for r in await answers.wait()]
        assert statuses == [204, 404, 404, 404]
        assert (await c.get("/resources/X")).status == 404
