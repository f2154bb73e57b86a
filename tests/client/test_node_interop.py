"""Interoperability with the official @oada/client 5.3.0 on the same embedded server."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from oada_jobs.client import OADAClient
from oada_jobs.testing import EmbeddedServer, embedded_server

pytestmark = pytest.mark.node

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).resolve().parent / "node" / "oada.mjs"
ENV = {**os.environ, "OADA_NODE_MODULES": str(ROOT / "conformance" / "node_modules")}

SV = "application/vnd.oada.service.1+json"
J = "application/vnd.oada.service.jobs.1+json"
TREE: dict[str, Any] = {
    "bookmarks": {
        "_type": "application/vnd.oada.bookmarks.1+json",
        "services": {
            "_type": "application/vnd.oada.services.1+json",
            "_rev": 0,
            "*": {"_type": SV, "_rev": 0, "jobs": {"_type": J, "_rev": 0, "*": {}}},
        },
    }
}


async def node(server: EmbeddedServer, connection: str, *args: str) -> list[Any]:
    """Run one oada.mjs command; return its JSON lines."""
    done = await anyio.run_process(
        ["node", str(SCRIPT), server.url, server.token, connection, *args],
        env=ENV,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    return [json.loads(line) for line in done.stdout.decode().splitlines() if line.strip()]


@asynccontextmanager
async def node_watch(
    server: EmbeddedServer, connection: str, path: str, count: int
) -> AsyncIterator[anyio.abc.Process]:
    """Start a Node watch; yield once it reports ready."""
    async with await anyio.open_process(
        ["node", str(SCRIPT), server.url, server.token, connection, "watch", path, str(count)],
        env=ENV,
    ) as process:
        assert process.stdout is not None
        with anyio.fail_after(30):
            first = await process.stdout.receive()
        assert json.loads(first.decode().splitlines()[0]) == {"ready": True}
        yield process


async def read_lines(process: anyio.abc.Process, count: int) -> list[Any]:
    assert process.stdout is not None
    buffer = b""
    lines: list[Any] = []
    with anyio.fail_after(30):
        while len(lines) < count:
            buffer += await process.stdout.receive()
            *complete, buffer = buffer.split(b"\n")
            lines += [json.loads(line) for line in complete if line.strip()]
    return lines


@pytest.mark.parametrize("connection", ["ws", "http"])
async def test_a_node_write_is_seen_by_a_python_watch(connection: str) -> None:
    async with (
        embedded_server() as server,
        OADAClient(server.url, server.token, connection=connection) as oada,
    ):
        await oada.put("/bookmarks/interop", {"start": True})
        async with oada.watch("/bookmarks/interop") as watch:
            [answer] = await node(
                server, connection, "put", "/bookmarks/interop/from", '{"node": 1}'
            )
            assert answer["status"] in (200, 201, 204)
            with anyio.fail_after(15):
                change = await watch.__anext__()
    assert change.body is not None
    assert change.body["interop"]["from"] == {"node": 1}
    assert change.rev == int(answer["headers"]["x-oada-rev"])


@pytest.mark.parametrize("connection", ["ws", "http"])
async def test_a_python_write_is_seen_by_a_node_watch(connection: str) -> None:
    async with (
        embedded_server() as server,
        OADAClient(server.url, server.token, connection=connection) as oada,
    ):
        await oada.put("/bookmarks/interop", {"start": True})
        async with node_watch(server, connection, "/bookmarks/interop", 2) as process:
            first = await oada.put("/bookmarks/interop/from", {"python": 1})
            second = await oada.put("/bookmarks/interop/from", {"python": 2})
            changes = await read_lines(process, 2)
            await process.wait()
    assert [change["body"]["_rev"] for change in changes] == [first.rev, second.rev]
    assert changes[1]["body"]["interop"]["from"] == {"python": 2}


async def test_tree_puts_are_readable_across_clients() -> None:
    async with embedded_server() as server, OADAClient(server.url, server.token) as oada:
        tree = json.dumps(TREE)
        await node(server, "http", "put", "/bookmarks/services/by-node/jobs/j1", '{"n": 1}', tree)
        read = await oada.get("/bookmarks/services/by-node", tree=TREE)
        assert read.data["_type"] == SV
        assert read.data["jobs"]["j1"] == {"n": 1}
        # The Python side extends the Node-made tree and builds one of its own.
        await oada.put("/bookmarks/services/by-node/jobs/j2", {"n": 2}, tree=TREE)
        await oada.put("/bookmarks/services/by-python/jobs/j1", {"p": 1}, tree=TREE)
        [answer] = await node(server, "ws", "get", "/bookmarks/services", tree)
    services = answer["data"]
    assert services["by-node"]["jobs"]["j2"] == {"n": 2}
    assert services["by-python"]["jobs"]["j1"] == {"p": 1}
    assert services["by-python"]["_type"] == SV
    assert services["by-python"]["jobs"]["_type"] == J
