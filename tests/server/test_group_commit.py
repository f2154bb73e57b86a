"""The writes of one event-loop pass are committed together, and answered after it."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from core_helpers import Answers, Caller, collect, open_core, request

from oada_jobs.server.config import ServerConfig
from oada_jobs.server.core import OADACore
from oada_jobs.server.graph import ResourceGraph

UNSAVED = "the write could not be saved; nothing was changed"


class _CountingCommits:
    """Wraps a connection to count COMMITs, optionally failing them as on a full disk."""

    def __init__(self, db: Any, *, fail: bool = False) -> None:
        self._db = db
        self.commits = 0
        self.fail = fail

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT":
            self.commits += 1
            if self.fail:
                raise sqlite3.OperationalError("database or disk is full")
        return self._db.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


async def test_one_pass_of_writes_is_one_transaction(tmp_path: Path) -> None:
    db = str(tmp_path / "g.sqlite3")
    async with open_core(db=db) as c:
        await c.ok("put", "/resources/L", {})
        store = c.core.store
        real = store._db
        counting = _CountingCommits(real)
        store._db = counting  # type: ignore[assignment]
        try:
            answers = Answers(c.core)
            answers.submit(*(request("put", "/resources/L", {f"k{i}": i}) for i in range(5)))
            # Nothing is answered before the commit, which comes in a later pass.
            assert answers.log == []
            responses = await answers.wait()
        finally:
            store._db = real
        assert counting.commits == 1
        assert [r.status for r in responses] == [201] * 5
        assert [int(r.headers["x-oada-rev"]) for r in responses] == [2, 3, 4, 5, 6]
    async with open_core(db=db) as c:
        doc = (await c.get("/resources/L")).data
        assert doc["_rev"] == 6
        assert [doc[f"k{i}"] for i in range(5)] == list(range(5))


async def test_answers_follow_their_own_change_notifications_in_order() -> None:
    async with open_core() as c:
        await c.ok("put", "/resources/A", {})
        await c.ok("put", "/resources/B", {})
        answers = Answers(c.core)
        for rid in ("resources/A", "resources/B"):
            c.core.subscribe(
                rid, lambda rid, rev, changes: answers.log.append(("change", rid, rev))
            )
        answers.submit(
            request("put", "/resources/A", {"x": 1}),
            request("get", "/resources/A"),
            request("put", "/resources/B", {"x": 1}),
            request("put", "/resources/A", {"x": 2}),
        )
        await answers.wait()
        assert answers.log == [
            ("change", "resources/A", 2),
            ("answer", 0),
            ("answer", 1),
            ("change", "resources/B", 2),
            ("answer", 2),
            ("change", "resources/A", 3),
            ("answer", 3),
        ]


async def test_a_failed_group_fails_every_request_that_saw_it(tmp_path: Path) -> None:
    async with open_core(db=str(tmp_path / "full.sqlite3")) as c:
        await c.ok("put", "/resources/A", {"x": 1})
        seen = collect(c.core, "resources/A")
        store = c.core.store
        real = store._db
        store._db = _CountingCommits(real, fail=True)  # type: ignore[assignment]
        try:
            answers = Answers(c.core)
            answers.submit(
                request("put", "/resources/A", {"x": 2}),
                # Served from the uncommitted write, so it must not stand either.
                request("get", "/resources/A"),
                request("put", "/resources/new", {"y": 1}),
                request("delete", "/resources/A/x"),
            )
            responses = await answers.wait()
        finally:
            store._db = real
        for response in responses:
            assert response.status == 500
            assert json.loads(response.body)["message"] == UNSAVED
        assert seen == []
        assert (await c.get("/resources/A")).data["x"] == 1
        assert (await c.get("/resources/A")).rev == 1
        assert (await c.get("/resources/new")).status == 404
        # The next pass commits normally.
        assert (await c.put("/resources/A", {"x": 3})).rev == 2


async def test_a_request_failing_halfway_fails_the_writes_staged_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = str(tmp_path / "half.sqlite3")
    async with open_core(db=db) as c:
        await c.ok("put", "/resources/P", {"a": 1})
        real_propagate = ResourceGraph.propagate

        def propagate(self: ResourceGraph, batch: Any, roots: Any) -> None:
            if any(rec.resource_id == "resources/Q" for rec in roots):
                raise RuntimeError("a bug halfway through a write")
            real_propagate(self, batch, roots)

        monkeypatch.setattr(ResourceGraph, "propagate", propagate)
        answers = Answers(c.core)
        answers.submit(
            request("put", "/resources/P", {"a": 2}),
            # Changes its cached document, then fails before it is staged.
            request("put", "/resources/Q", {"q": 1}),
            request("put", "/resources/P", {"a": 3}),
        )
        first, failed, third = await answers.wait()
        monkeypatch.setattr(ResourceGraph, "propagate", real_propagate)
        # P's first write shared the pass with the failure: it was dropped
        # with it. The write after the failure starts a new group.
        assert (first.status, json.loads(first.body)["message"]) == (500, UNSAVED)
        assert failed.status == 500
        assert third.status == 201
        assert int(third.headers["x-oada-rev"]) == 2
        assert (await c.get("/resources/P")).data["a"] == 3
        assert (await c.get("/resources/Q")).status == 404
    async with open_core(db=db) as c:
        assert (await c.get("/resources/P")).rev == 2
        assert (await c.get("/resources/Q")).status == 404


async def test_a_resource_deleted_and_made_again_in_one_pass(tmp_path: Path) -> None:
    db = str(tmp_path / "again.sqlite3")
    async with open_core(db=db) as c:
        await c.ok("put", "/resources/T", {})
        answers = Answers(c.core)
        answers.submit(
            request("put", "/resources/X", raw=b"\x00binary"),
            request("put", "/resources/L", {"t": {"_id": "resources/T"}}),
            request("delete", "/resources/X"),
            request("delete", "/resources/L"),
            request("put", "/resources/X", {"json": True}),
            request("put", "/resources/L", {"u": 1}),
        )
        assert [r.status for r in await answers.wait()] == [201, 201, 204, 204, 201, 201]
    async with open_core(db=db) as c:
        x = await c.get("/resources/X")
        assert x.headers["content-type"].startswith("application/json")
        assert x.data["json"] is True
        assert "t" not in (await c.get("/resources/L")).data
        assert c.core.store.links.get("resources/L") is None


async def test_closing_commits_and_answers_what_is_staged(tmp_path: Path) -> None:
    config = ServerConfig(db=str(tmp_path / "close.sqlite3"))
    async with OADACore(config) as core:
        answers = Answers(core)
        answers.submit(request("put", "/resources/A", {"x": 1}))
    assert [r.status for r in await answers.wait()] == [201]
    async with OADACore(config) as core:
        assert (await Caller(core).get("/resources/A")).data["x"] == 1
