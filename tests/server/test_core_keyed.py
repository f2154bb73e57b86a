"""Long lists are stored keyed: a write costs the same whatever the list's length."""

from __future__ import annotations

import sys
from pathlib import Path

from core_helpers import collect, open_core

from oada_jobs.server.keyed import KeyedDoc
from oada_jobs.server.store import KEYED_MEMBERS

#: Links in the lists of these tests: enough to be stored keyed.
N = 8 * KEYED_MEMBERS


def _links(n: int, *, versioned: bool = True) -> dict[str, dict[str, object]]:
    return {
        f"k{i:05d}": {"_id": f"resources/j{i}", **({"_rev": 0} if versioned else {})}
        for i in range(n)
    }


def _members(c: object, rid: str) -> int:
    store = c.core.store  # type: ignore[attr-defined]
    row = store.db.execute("SELECT COUNT(*) FROM members WHERE resource_id = ?", (rid,)).fetchone()
    return int(row[0])


async def test_a_long_list_is_keyed_and_reads_back_whole(tmp_path: Path) -> None:
    db = str(tmp_path / "keyed.sqlite3")
    async with open_core(db=db) as c:
        await c.ok("put", "/resources/L", _links(N))
        await c.ok("put", "/resources/L", {"extra": {"_id": "resources/x", "_rev": 0}})
        assert _members(c, "resources/L") == N + 1
        await c.ok("delete", "/resources/L/k00007")
        before = (await c.get("/resources/L")).data
    async with open_core(db=db) as c:
        store = c.core.store
        # Nothing is loaded at start-up.
        assert store.links == {}
        whole = (await c.get("/resources/L")).data
        assert whole == before
        assert "k00007" not in whole
        assert whole["extra"] == {"_id": "resources/x", "_rev": 0}
        assert len([k for k in whole if not k.startswith("_")]) == N
        res = store.get("resources/L")
        assert res is not None
        assert isinstance(res.doc, KeyedDoc)
        # Reading it whole kept no member in memory.
        assert res.doc.members_in_memory() == []


async def test_a_write_into_a_keyed_list_loads_only_what_it_touches(tmp_path: Path) -> None:
    db = str(tmp_path / "keyed.sqlite3")
    async with open_core(db=db) as c:
        await c.ok("put", "/resources/L", _links(N))
    async with open_core(db=db) as c:
        store = c.core.store
        await c.ok("put", "/resources/L", {"new": {"_id": "resources/n", "_rev": 0}})
        await c.ok("delete", "/resources/L/k00003")
        res = store.get("resources/L")
        assert res is not None
        assert isinstance(res.doc, KeyedDoc)
        # Written and dropped again: memory holds the head and the links of no member.
        assert res.doc.members_in_memory() == []
        assert all(not path or path[0].startswith("_") for path in store.links.get(res.id, {}))
        assert (await c.get("/resources/L/k00003")).status == 404
        assert res.doc["new"] == {"_id": "resources/n", "_rev": 0}
        rows = store.db.execute(
            "SELECT path FROM edges WHERE parent = 'resources/L' AND path IN ('/k00003', '/new')"
        ).fetchall()
        assert rows == [("/new",)]
        assert _members(c, "resources/L") == N


async def test_links_in_members_not_in_memory_are_followed_and_propagate(tmp_path: Path) -> None:
    db = str(tmp_path / "keyed.sqlite3")
    async with open_core(db=db) as c:
        await c.ok("put", "/resources/child", {"a": 1})
        body = _links(N)
        body["k00042"] = {"_id": "resources/child", "_rev": 0}
        await c.ok("put", "/resources/L", body)
    async with open_core(db=db) as c:
        rev = (await c.get("/resources/L")).rev
        seen = collect(c.core, "resources/L")
        # A path through the member's link reaches the child.
        assert (await c.get("/resources/L/k00042/a")).data == 1
        # Trimmed after that read; a child write still bumps the list.
        await c.ok("put", "/resources/child", {"a": 2})
        after = await c.get("/resources/L")
        assert after.rev == rev + 1
        assert after.data["k00042"]["_rev"] == 2
        rev_seen, changes = seen[-1]
        assert rev_seen == rev + 1
        assert [(ch["resource_id"], ch["path"]) for ch in changes] == [
            ("resources/L", ""),
            ("resources/child", "/k00042"),
        ]
        assert changes[1]["body"]["a"] == 2


async def test_a_member_link_overwritten_with_a_value_is_no_link(tmp_path: Path) -> None:
    db = str(tmp_path / "keyed.sqlite3")
    async with open_core(db=db) as c:
        await c.ok("put", "/resources/child", {"a": 1})
        body = _links(N)
        body["k00042"] = {"_id": "resources/child", "_rev": 0}
        await c.ok("put", "/resources/L", body)
    async with open_core(db=db) as c:
        # The member is not in memory when it is replaced by a plain value.
        await c.ok("put", "/resources/L", {"k00042": 5})
        assert (await c.get("/resources/L/k00042")).data == 5
        assert (await c.get("/resources/L/k00042/a")).status == 404
        await c.ok("put", "/resources/child", {"a": 2})
        assert (await c.get("/resources/L/k00042")).data == 5
        rows = c.core.store.db.execute(
            "SELECT COUNT(*) FROM edges WHERE parent = 'resources/L' AND path = '/k00042'"
        ).fetchone()
        assert rows == (0,)


async def test_a_keyed_list_deleted_whole_leaves_no_rows(tmp_path: Path) -> None:
    async with open_core(db=str(tmp_path / "keyed.sqlite3")) as c:
        await c.ok("put", "/resources/L", _links(N, versioned=False))
        await c.ok("delete", "/resources/L")
        assert _members(c, "resources/L") == 0
        await c.ok("put", "/resources/L", {"a": 1})
        data = (await c.get("/resources/L")).data
        assert data["a"] == 1
        assert "k00001" not in data


async def test_a_child_first_seen_unlinked_propagates_once_linked(tmp_path: Path) -> None:
    async with open_core(db=str(tmp_path / "keyed.sqlite3")) as c:
        await c.ok("put", "/resources/child", {"a": 1})
        await c.ok("put", "/resources/child", {"a": 2})  # no parent yet: remembered
        await c.ok("put", "/resources/P", {"x": {"_id": "resources/child", "_rev": 0}})
        rev = (await c.get("/resources/P")).rev
        await c.ok("put", "/resources/child", {"a": 3})
        assert (await c.get("/resources/P")).rev == rev + 1
        assert (await c.get("/resources/P/x/_rev")).data == 3


def test_unloading_members_gives_back_the_table_they_grew() -> None:
    def keyed() -> KeyedDoc:
        return KeyedDoc({"_id": "resources/list", "_rev": 3}, lambda key: (False, None), list)

    doc, empty = keyed(), sys.getsizeof(keyed())
    for i in range(20_000):
        doc[f"k{i}"] = {"_id": f"resources/job{i}"}
    assert sorted(doc.unload()) == sorted(f"k{i}" for i in range(20_000))
    # Every write walks the dict's table: it must be as small as the head's.
    assert sys.getsizeof(doc) <= empty
    assert dict(doc) == {"_id": "resources/list", "_rev": 3}
