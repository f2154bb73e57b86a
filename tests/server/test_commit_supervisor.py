"""Any failure of the commit machinery fails the requests it holds, never the core.

Failures are injected at every step of a group commit (writing, committing,
notifying, answering, propagating) with exceptions SQLite never raises; the
held requests get a JSON error, the cached state is what is on disk, and the
next writes are committed as usual.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from core_helpers import Answers, Caller, collect, open_core, request

from oada_jobs.server.core import CoreResponse, OADACore

UNSAVED = "the write could not be saved; nothing was changed"


class _FailingConnection:
    """Wraps a connection so that statements starting with *prefix* raise *exc*, once."""

    def __init__(self, db: Any, prefix: str, exc: BaseException) -> None:
        self._db = db
        self.prefix = prefix
        self.exc: BaseException | None = exc

    def _maybe_fail(self, sql: str) -> None:
        if self.exc is not None and sql.startswith(self.prefix):
            exc, self.exc = self.exc, None
            raise exc

    def execute(self, sql: str, *args: Any) -> Any:
        self._maybe_fail(sql)
        return self._db.execute(sql, *args)

    def executemany(self, sql: str, *args: Any) -> Any:
        self._maybe_fail(sql)
        return self._db.executemany(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


def _is_error(response: CoreResponse, status: int) -> None:
    assert response.status == status, (response.status, response.body)
    body = json.loads(response.body)
    assert body["statusCode"] == status


async def _still_commits(c: Caller) -> None:
    put = await c.ok("put", "/resources/after", {"ok": True})
    assert (await c.get("/resources/after")).data["ok"] is True
    assert put.status == 201


FAILURES = [
    ("INSERT", UnicodeEncodeError("utf-8", "\udc80", 0, 1, "surrogates not allowed")),
    ("INSERT", RuntimeError("injected")),
    ("COMMIT", OverflowError("Python int too large to convert to SQLite INTEGER")),
    ("BEGIN", ValueError("injected")),
]


@pytest.mark.parametrize(
    ("prefix", "exc"), FAILURES, ids=[f"{p}-{type(e).__name__}" for p, e in FAILURES]
)
async def test_a_failing_commit_fails_its_group_and_commits_the_next(
    tmp_path: Path, prefix: str, exc: BaseException
) -> None:
    async with open_core(db=str(tmp_path / "s.sqlite3")) as c:
        await c.ok("put", "/resources/L", {"kept": 1})
        seen = collect(c.core, "resources/L")
        store = c.core.store
        real = store._db
        store._db = _FailingConnection(real, prefix, exc)  # type: ignore[assignment]
        try:
            answers = Answers(c.core)
            answers.submit(
                request("put", "/resources/L", {"lost": 1}),
                request("get", "/resources/L"),
                request("put", "/resources/M", {"lost": 2}),
            )
            responses = await answers.wait()
        finally:
            store._db = real
        for response in responses:
            _is_error(response, 500)
            assert json.loads(response.body)["message"] == UNSAVED
        assert seen == []
        # The cached documents are what is on disk.
        doc = (await c.get("/resources/L")).data
        assert doc["kept"] == 1
        assert "lost" not in doc
        assert (await c.get("/resources/M")).status == 404
        assert store.db.in_transaction is False
        await _still_commits(c)
        again = await c.ok("put", "/resources/L", {"more": 1})
        assert again.rev == 2


async def test_a_failing_notification_still_answers_and_keeps_committing() -> None:
    async with open_core() as c:
        await c.ok("put", "/resources/L", {})
        core: OADACore = c.core
        graph = core._graph
        real = graph.notify

        def broken(changes: Any) -> None:
            raise RuntimeError("injected into notify")

        graph.notify = broken  # type: ignore[method-assign]
        try:
            answers = Answers(core)
            answers.submit(request("put", "/resources/L", {"a": 1}), request("get", "/resources/L"))
            responses = await answers.wait()
        finally:
            graph.notify = real  # type: ignore[method-assign]
        # The writes were committed: their answers say so.
        assert [r.status for r in responses] == [201, 200]
        assert (await c.get("/resources/L")).data["a"] == 1
        await _still_commits(c)


async def test_a_failing_answer_does_not_keep_the_others_from_theirs() -> None:
    async with open_core() as c:
        got: list[int] = []

        def explode(response: CoreResponse) -> None:
            raise RuntimeError("injected into an answer")

        c.core.submit(request("put", "/resources/A", {"a": 1}), explode)
        answers = Answers(c.core)
        answers.submit(request("put", "/resources/B", {"b": 1}))
        got = [r.status for r in await answers.wait()]
        assert got == [201]
        await _still_commits(c)


async def test_a_failure_outside_the_transaction_is_survived(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with open_core() as c:
        core = c.core
        calls = 0
        real_trim = core.store.trim

        def trim() -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("injected into trim")
            real_trim()

        monkeypatch.setattr(core.store, "trim", trim)
        answers = Answers(core)
        answers.submit(request("put", "/resources/A", {"a": 1}))
        responses = await answers.wait()
        # Committed before the failure: the answer is the write's own.
        assert [r.status for r in responses] == [201]
        await _still_commits(c)
        assert (await c.get("/resources/A")).data["a"] == 1


async def test_a_failing_deferred_propagation_is_survived() -> None:
    async with open_core(quirks="reference") as c:
        await c.ok("put", "/resources/child", {"n": 0})
        await c.ok("put", "/resources/parent", {"c": {"_id": "resources/child", "_rev": 0}})
        graph = c.core._graph
        real = graph.propagate
        failed = False

        def broken(batch: Any, roots: Any) -> None:
            nonlocal failed
            if not failed:
                failed = True
                raise RuntimeError("injected into propagation")
            real(batch, roots)

        graph.propagate = broken  # type: ignore[method-assign]
        try:
            await c.ok("put", "/resources/child", {"n": 1})
            await c.ok("put", "/resources/child", {"n": 2})
        finally:
            graph.propagate = real  # type: ignore[method-assign]
        assert failed
        await _still_commits(c)
        # Later propagation works again.
        await c.ok("put", "/resources/child", {"n": 3})
        await c.ok("get", "/resources/child")
        parent = (await c.get("/resources/parent")).data
        assert parent["c"]["_rev"] >= 3
