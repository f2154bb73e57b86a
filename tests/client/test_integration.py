"""The client against the real embedded server: every call, both connection modes,
TLS, the reference quirks, dropped sockets and a killed server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from proxy import relay

from oada_jobs.client import Change, OADAClient, Watch
from oada_jobs.exceptions import (
    Forbidden,
    NotFound,
    PreconditionFailed,
    Unauthorized,
)
from oada_jobs.testing import embedded_server

BM = "application/vnd.oada.bookmarks.1+json"
S = "application/vnd.oada.services.1+json"
SV = "application/vnd.oada.service.1+json"
J = "application/vnd.oada.service.jobs.1+json"
TREE: dict[str, Any] = {
    "bookmarks": {
        "_type": BM,
        "services": {
            "_type": S,
            "_rev": 0,
            "*": {"_type": SV, "_rev": 0, "jobs": {"_type": J, "_rev": 0, "*": {}}},
        },
    }
}


@pytest.fixture(params=["ws", "http"])
async def oada(request: pytest.FixtureRequest) -> AsyncIterator[OADAClient]:
    async with (
        embedded_server() as server,
        OADAClient(server.url, server.token, connection=request.param, max_backoff=0.05) as client,
    ):
        yield client


async def take(watch: Watch[Any], count: int, limit: float = 15) -> list[Any]:
    items: list[Any] = []
    if count == 0:
        return items
    with anyio.fail_after(limit):
        async for item in watch:
            items.append(item)
            if len(items) == count:
                break
    return items


def revs(changes: list[Change]) -> list[int]:
    return [change.rev for change in changes]


async def test_every_request_kind(oada: OADAClient) -> None:
    put = await oada.put("/bookmarks/it/a", {"x": 1, "nested": {"y": [1, 2]}})
    assert put.status in (200, 201, 204)
    assert put.rev is not None
    assert put.content_location is not None
    assert put.content_location.endswith("/it/a")
    got = await oada.get("/bookmarks/it/a")
    assert got.data == {"x": 1, "nested": {"y": [1, 2]}}
    head = await oada.head("/bookmarks/it")
    assert head.data is None
    assert head.etag is not None
    assert head.rev == got.rev

    posted = await oada.post("/bookmarks/it/list", {"k": "v"})
    assert posted.content_location is not None
    key = posted.content_location.rsplit("/", 1)[1]
    assert (await oada.get(f"/bookmarks/it/list/{key}")).data == {"k": "v"}

    rid = await oada.create_resource({"made": True}, content_type=J)
    assert rid.startswith("resources/")
    made = await oada.get(f"/{rid}")
    assert made.data["made"] is True
    assert made.data["_type"] == J
    assert made.headers["content-type"].startswith(J)

    # Binary bodies travel over HTTP even in ws mode (the socket carries JSON only).
    await oada.put("/resources/blob", b"\x00\x01raw", content_type="application/octet-stream")
    blob = await oada.get("/resources/blob")
    assert blob.data == b"\x00\x01raw"
    assert blob.headers["content-type"] == "application/octet-stream"

    deleted = await oada.delete("/bookmarks/it/a/x")
    assert deleted.status in (200, 204)
    with pytest.raises(NotFound):
        await oada.get("/bookmarks/it/a/x")

    stale = head.etag
    await oada.put("/bookmarks/it/b", 1)
    with pytest.raises(PreconditionFailed):
        await oada.put("/bookmarks/it/c", 2, if_match=stale)
    fresh = await oada.head("/bookmarks/it")
    await oada.put("/bookmarks/it/c", 2, if_match=fresh.etag)

    with pytest.raises(Unauthorized):
        await oada.clone("not-a-token").get("/bookmarks")
    with pytest.raises(Forbidden):
        # frank ("abc") may not read sam's resources.
        await oada.clone("abc").get(f"/{rid}")


async def test_tree_put_get_and_ensure(oada: OADAClient) -> None:
    path = "/bookmarks/services/svc1/jobs/job1"
    await oada.put(path, {"status": "new"}, tree=TREE)
    services = await oada.get("/bookmarks/services")
    link = services.data["svc1"]
    assert set(link) == {"_id", "_rev"}
    service = await oada.get("/bookmarks/services/svc1")
    assert service.data["_type"] == SV
    assert set(service.data["jobs"]) == {"_id", "_rev"}

    ensured = await oada.ensure("/bookmarks/services/svc1", {}, tree=TREE)
    assert ensured.etag is not None  # it existed: a HEAD, nothing written
    assert (await oada.get("/bookmarks/services/svc1")).rev == service.rev

    whole = await oada.get("/bookmarks/services", tree=TREE)
    assert whole.data["svc1"]["jobs"]["job1"] == {"status": "new"}
    assert whole.data["svc1"]["_type"] == SV

    posted = await oada.post("/bookmarks/services/svc1/jobs", {"n": 1}, tree=TREE)
    assert posted.content_location is not None


async def test_concurrent_tree_puts_link_one_resource(oada: OADAClient) -> None:
    async with anyio.create_task_group() as group:
        for i in range(8):
            group.start_soon(
                lambda i=i: oada.put(f"/bookmarks/services/race/jobs/j{i}", {"i": i}, tree=TREE)
            )
    jobs = (await oada.get("/bookmarks/services/race/jobs")).data
    assert {key for key in jobs if not key.startswith("_")} == {f"j{i}" for i in range(8)}


async def test_watches_single_tree_and_resume(oada: OADAClient) -> None:
    with pytest.raises(NotFound):
        async with oada.watch("/bookmarks/no/such/thing"):
            pass
    await oada.put("/bookmarks/services/w/jobs/first", {"a": 0}, tree=TREE)
    async with oada.watch("/bookmarks/services/w/jobs") as single:
        start = single.rev
        assert start is not None
        for i in range(3):
            await oada.put(f"/bookmarks/services/w/jobs/k{i}", {"i": i})
        changes = await take(single, 3)
    assert revs(changes) == [start + 1, start + 2, start + 3]
    assert changes[0].body is not None
    assert changes[0].body["k0"] == {"i": 0}

    # A watch on the service sees the jobs change through the versioned link.
    async with oada.watch("/bookmarks/services/w", type="tree", initial_method="get") as tree:
        assert tree.response is not None
        assert tree.response.data["_type"] == SV
        await oada.put("/bookmarks/services/w/jobs/deep", {"d": 1})
        [array] = await take(tree, 1)
    assert array[0].path == ""
    assert [change.path for change in array[1:]] == ["/jobs"]
    assert array[1].body is not None
    assert array[1].body["deep"] == {"d": 1}

    # Resume from the first watch's start: everything since is replayed, in order.
    async with oada.watch("/bookmarks/services/w/jobs", rev=start) as resumed:
        replayed = await take(resumed, 4)
    assert revs(replayed) == [start + 1, start + 2, start + 3, start + 4]


async def test_reference_quirks_mode() -> None:
    async with embedded_server(quirks="reference") as server:
        for connection in ("ws", "http"):
            async with OADAClient(server.url, server.token, connection=connection) as oada:
                base = f"/bookmarks/services/q{connection}/jobs"
                await oada.put(f"{base}/a", {"a": 1}, tree=TREE)
                # A missing /resources/<id> answers 403 here; ensure treats it as missing.
                with pytest.raises(Forbidden):
                    await oada.get("/resources/does-not-exist")
                await oada.ensure("/resources/made-by-ensure", {"x": 1}, content_type=J)
                assert (await oada.get("/resources/made-by-ensure")).data["x"] == 1
                async with oada.watch(base) as watch:
                    start = watch.rev
                    assert start is not None
                    await oada.put(f"{base}/b", {"b": 2})
                    live = await take(watch, 1)
                async with oada.watch(base, rev=start - 1) as resumed:
                    replayed = await take(resumed, 2)
                # Parent revs arrive after the child's write answer in this mode.
                async with oada.watch(f"/bookmarks/services/q{connection}", type="tree") as parent:
                    await oada.put(f"{base}/c", {"c": 3})
                    [array] = await take(parent, 1)
                assert revs(live) == [start + 1]
                assert revs(replayed) == [start, start + 1]
                assert array[1].body is not None
                assert array[1].body["c"] == {"c": 3}


async def test_tls() -> None:
    async with embedded_server(tls=True) as server:
        assert server.url.startswith("https://")
        assert server.ca_cert is not None
        for connection in ("ws", "http", "auto"):
            async with OADAClient(
                server.url, server.token, connection=connection, verify=server.ca_cert
            ) as oada:  # type: ignore[arg-type]
                await oada.put("/bookmarks/tls", {connection: True})
                async with oada.watch("/bookmarks/tls") as watch:
                    await oada.put("/bookmarks/tls", {"again": connection})
                    [change] = await take(watch, 1)
                assert change.body is not None


@pytest.mark.parametrize("connection", ["ws", "http"])
async def test_watch_survives_the_socket_being_cut(connection: str) -> None:
    async with (
        embedded_server() as server,
        relay(server.port) as cutter,
        OADAClient(server.url, server.token, connection="http") as writer,
        OADAClient(cutter.url, server.token, connection=connection, max_backoff=0.05) as oada,
    ):
        await writer.put("/bookmarks/cut", {"r": -1})
        async with oada.watch("/bookmarks/cut") as watch:
            start = watch.rev
            assert start is not None
            seen: list[Change] = []
            for round_ in range(3):
                await writer.put("/bookmarks/cut", {"r": round_, "n": 0})
                seen += await take(watch, 1)
                await cutter.cut()
                # Written while the watch's socket is down: must come by replay.
                await writer.put("/bookmarks/cut", {"r": round_, "n": 1})
                await writer.put("/bookmarks/cut", {"r": round_, "n": 2})
                seen += await take(watch, 2)
            # Plain requests reconnect transparently too.
            assert (await oada.get("/bookmarks/cut")).data["r"] == 2
    assert revs(seen) == list(range(start + 1, start + 10))


@pytest.mark.slow
async def test_watch_survives_a_killed_and_restarted_server(tmp_path: Path) -> None:
    async with (
        embedded_server(subprocess=True, db=tmp_path / "oada.sqlite") as server,
        OADAClient(
            server.url, server.token, connection="ws", max_backoff=0.2, watch_deadline=60
        ) as oada,
    ):
        await oada.put("/bookmarks/kill", {"n": 0})
        async with oada.watch("/bookmarks/kill") as watch:
            start = watch.rev
            assert start is not None
            await oada.put("/bookmarks/kill", {"n": 1})
            seen = await take(watch, 1)
            await server.kill()
            await server.restart()
            # Written before the watch is back: replayed from the SQLite log.
            async with OADAClient(server.url, server.token, connection="http") as writer:
                for n in range(2, 6):
                    await writer.put("/bookmarks/kill", {"n": n})
            seen += await take(watch, 4, limit=60)
            await oada.put("/bookmarks/kill", {"n": 6})
            seen += await take(watch, 1)
    assert revs(seen) == list(range(start + 1, start + 7))
    assert [change.body["kill"]["n"] for change in seen if change.body] == [1, 2, 3, 4, 5, 6]
