"""The store's caches are bounded in bytes: what they hold, what goes first."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from core_helpers import open_core

from oada_jobs.server.cache import SizedLRU
from oada_jobs.server.changelog import ChangeLog, ChangeRow
from oada_jobs.server.store import ENTRY_BYTES

KIB = 1024


def test_a_sized_lru_drops_large_entries_first_then_the_least_recently_used() -> None:
    cache = SizedLRU[str, str](1600)
    for key in "abcd":
        cache.put(key, key, 50)
    cache.put("big", "big", 400)  # over 1600 // 16: large
    cache.put("e", "e", 50)
    cache.get("a")
    assert cache.bytes == 650
    assert cache.evict() == 0
    cache.put("huge", "huge", 1000)
    # 1650 bytes: the least recently used large entry goes, small ones stay.
    assert cache.evict() == 1
    assert list(cache) == ["b", "c", "d", "e", "a", "huge"]
    assert cache.bytes == 1250
    cache.put("f", "f", 1500)
    # Both large entries go before any small one.
    assert cache.evict() == 2
    assert list(cache) == ["b", "c", "d", "e", "a"]
    assert cache.bytes == 250
    # An entry that grows large is dropped before the small ones too.
    cache.resize("b", 1500)
    assert cache.evict() == 1
    assert list(cache) == ["c", "d", "e", "a"]
    assert cache.bytes == 200


def test_a_sized_lru_also_holds_a_count_and_drops_what_exceeds_the_whole_budget() -> None:
    cache = SizedLRU[int, int](100, max_entries=3)
    for n in range(5):
        cache.put(n, n, 5)
    assert cache.evict() == 2
    assert list(cache) == [2, 3, 4]
    cache.put(9, 9, 101)
    cache.evict()
    assert 9 not in cache
    assert cache.bytes == 15
    assert cache.pop(3) == 3
    assert cache.pop(3) is None
    assert cache.bytes == 10


@contextmanager
def tracked_objects_added() -> Iterator[Callable[[], int]]:
    """How many objects the garbage collector tracks more than at the start (none collected)."""
    gc.collect()
    gc.disable()
    try:
        before = len(gc.get_objects())
        yield lambda: len(gc.get_objects()) - before
    finally:
        gc.enable()


def test_cached_bytes_under_str_keys_give_the_collector_nothing_to_go_through() -> None:
    cache = SizedLRU[str, bytes](1 << 30)
    keys = [f"k{n}" for n in range(10_000)]
    values = [b"v%d" % n for n in range(10_000)]
    with tracked_objects_added() as added:
        for key, value in zip(keys, values, strict=True):
            cache.put(key, value, 10)
        cache.evict()
        assert added() < 100


def test_cached_change_records_give_the_collector_nothing_to_go_through() -> None:
    log = ChangeLog(lambda: None, 1 << 30)  # type: ignore[arg-type,return-value]
    rows: list[ChangeRow] = [
        (f"resources/r{n}", n, "merge", b'{"n":%d}' % n, None) for n in range(10_000)
    ]
    with tracked_objects_added() as added:
        log.committed(rows)
        assert added() < 100
    assert log.cached[:2] == [("resources/r0", 0), ("resources/r1", 1)]
    record = log.change("resources/r7", 7)
    assert record is not None
    assert (record.type, record.body, record.children) == ("merge", {"n": 7}, [])


async def test_documents_are_held_to_their_byte_budget(tmp_path: Path) -> None:
    budget = 64 * KIB
    async with open_core(db=str(tmp_path / "docs.sqlite3"), document_cache_bytes=budget) as c:
        store = c.core.store
        for n in range(40):
            await c.ok("put", f"/resources/d{n}", {"blob": "x" * 3 * KIB})
            assert store.document_bytes <= budget
        held = len(store.cached)
        # Not a count: about budget / (3 KiB + what an entry costs) documents.
        assert 10 < held < 20
        assert "resources/d39" in store.cached
        assert "resources/d0" not in store.cached
        # Evicted documents read back from SQLite.
        assert (await c.get("/resources/d0")).data["blob"] == "x" * 3 * KIB
        assert store.document_bytes <= budget


async def test_a_get_body_kept_for_the_next_get_is_accounted(tmp_path: Path) -> None:
    async with open_core(db=str(tmp_path / "get.sqlite3")) as c:
        store = c.core.store
        await c.ok("put", "/resources/g", {"blob": "y" * 10 * KIB})
        before = store.document_bytes
        assert (await c.get("/resources/g")).status == 200
        assert store.document_bytes >= before + 10 * KIB


async def test_a_large_document_goes_before_the_small_ones(tmp_path: Path) -> None:
    budget = 256 * KIB
    async with open_core(db=str(tmp_path / "large.sqlite3"), document_cache_bytes=budget) as c:
        store = c.core.store
        await c.ok("put", "/resources/big", {"blob": "z" * 100 * KIB})
        for n in range(100):
            await c.ok("put", f"/resources/s{n}", {"n": n, "pad": "p" * KIB})
        # The big document was used after s0 .. s99 were not yet there, but it
        # is the one that goes: every small document is still cached.
        assert "resources/big" not in store.cached
        assert all(f"resources/s{n}" in store.cached for n in range(100))
        assert store.document_bytes <= budget


async def test_change_records_are_held_to_their_byte_budget(tmp_path: Path) -> None:
    budget = 64 * KIB
    async with open_core(db=str(tmp_path / "changes.sqlite3"), change_cache_bytes=budget) as c:
        store = c.core.store
        for n in range(1, 41):
            await c.ok("put", "/resources/c", {"n": n, "blob": "x" * 3 * KIB})
            assert store.change_bytes <= budget
        cached = [rev for rid, rev in store.cached_changes if rid == "resources/c"]
        assert 10 < len(cached) < 20
        assert cached[-1] == 40
        # The change feed still has every rev, from SQLite.
        revs = [rev for rev, _ in c.core.changes_since("resources/c", 0)]
        assert revs == list(range(1, 41))
        assert store.change_bytes <= budget


async def test_a_large_change_goes_before_the_small_ones(tmp_path: Path) -> None:
    budget = 256 * KIB
    async with open_core(db=str(tmp_path / "big.sqlite3"), change_cache_bytes=budget) as c:
        store = c.core.store
        await c.ok("put", "/resources/big", {"blob": "z" * 100 * KIB})
        for n in range(300):
            await c.ok("put", "/resources/small", {"n": n})
        assert ("resources/big", 1) not in store.cached_changes
        small = [rev for rid, rev in store.cached_changes if rid == "resources/small"]
        assert small == list(range(1, 301))
        assert store.change_bytes <= budget
        # A record bigger than the whole budget is not kept at all.
        await c.ok("put", "/resources/huge", {"blob": "h" * 300 * KIB})
        assert all(rid != "resources/huge" for rid, _ in store.cached_changes)
        small = [rev for rid, rev in store.cached_changes if rid == "resources/small"]
        assert small == list(range(1, 301))


async def test_the_accounting_returns_to_zero_when_the_caches_are_emptied(
    tmp_path: Path,
) -> None:
    async with open_core(
        db=str(tmp_path / "zero.sqlite3"), document_cache_size=0, change_cache_bytes=0
    ) as c:
        store = c.core.store
        for n in range(5):
            await c.ok("put", f"/resources/z{n}", {"blob": "x" * KIB})
            await c.get(f"/resources/z{n}")
        assert store.cached == []
        assert store.cached_changes == []
        assert (store.document_bytes, store.change_bytes) == (0, 0)
    assert ENTRY_BYTES > 0
