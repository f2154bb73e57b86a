"""Documents not used lately stay cached encoded: the garbage collector skips them."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
from core_helpers import open_core

from oada_jobs.server import store as store_module
from oada_jobs.server.cache import SizedLRU
from oada_jobs.server.store import Resource


async def test_documents_beyond_the_hot_ones_are_cached_encoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "HOT_DOCUMENTS", 5)
    async with open_core(db=str(tmp_path / "cold.sqlite3")) as c:
        for i in range(20):
            await c.ok("put", f"/resources/d{i}", {"n": i, "nested": {"list": [i, {"x": i}]}})
        await c.get("/resources/d19")  # the next request trims
        store = c.core.store
        docs = store._docs
        objects = [rid for rid in store.cached if isinstance(docs.peek(rid), Resource)]
        assert len(objects) <= 5
        cold = [docs.peek(f"resources/d{i}") for i in range(10)]
        assert all(isinstance(entry, tuple) for entry in cold)
        gc.collect()
        assert not any(gc.is_tracked(entry) for entry in cold)
        # Used again, an encoded document reads and writes as before.
        assert (await c.get("/resources/d3")).data["nested"] == {"list": [3, {"x": 3}]}
        await c.ok("put", "/resources/d3/nested", {"y": 1})
        body = (await c.get("/resources/d3")).data
        assert body["nested"] == {"list": [3, {"x": 3}], "y": 1}
        assert body["_rev"] == 2
    async with open_core(db=str(tmp_path / "cold.sqlite3")) as c:
        assert (await c.get("/resources/d3")).data["nested"]["y"] == 1


def test_a_sized_lru_replaces_in_place_and_names_what_it_drops() -> None:
    cache = SizedLRU[str, str](300)
    for key in "abc":
        cache.put(key, key, 100)
    cache.replace("a", "A", 50)
    assert list(cache) == ["a", "b", "c"]
    assert (cache.peek("a"), cache.bytes) == ("A", 250)
    cache.put("d", "d", 100)
    dropped: list[tuple[str, str]] = []
    assert cache.evict(lambda key, value: dropped.append((key, value))) == 1
    assert dropped == [("a", "A")]
