"""Replays of long histories (``x-oada-rev``) are sliced and keep every change in order."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import anyio
import httpx
from ws_helpers import WS, handshake, ws_connect

from oada_jobs.server.core import CoreRequest, CoreResponse, OADACore
from oada_jobs.testing import EmbeddedServer

RESOURCE = "resources/long"
AUTH = {"authorization": "Bearer god", "content-type": "application/json"}


async def build(core: OADACore, revs: int) -> None:
    """Write *revs* revisions of RESOURCE, group-committed a thousand at a time."""
    done = 0
    while done < revs:
        batch = min(1000, revs - done)
        left = [batch]
        finished = anyio.Event()

        def answer(
            response: CoreResponse, left: list[int] = left, ev: anyio.Event = finished
        ) -> None:
            assert response.status == 201
            left[0] -= 1
            if left[0] == 0:
                ev.set()

        for n in range(done, done + batch):
            core.submit(
                CoreRequest("put", f"/{RESOURCE}", AUTH, json.dumps({"n": n}).encode()), answer
            )
        await finished.wait()
        done += batch


def rev_of(message: dict[str, Any]) -> int:
    return int(message["change"][0]["body"]["_rev"])


async def read_changes(ws: WS, until_rev: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while not out or rev_of(out[-1]) < until_rev:
        message = await ws.recv(timeout=30)
        assert "change" in message, message
        out.append(message)
    return out


def client_frame(text: str) -> bytes:
    """A masked WebSocket text frame, as a client sends it."""
    payload = text.encode()
    mask = os.urandom(4)
    n = len(payload)
    assert n < 65536
    header = (
        bytes([0x81, 0x80 | 126]) + n.to_bytes(2, "big") if n > 125 else bytes([0x81, 0x80 | n])
    )
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def test_a_long_replay_lets_the_event_loop_run(server: EmbeddedServer) -> None:
    core = server.core
    assert core is not None
    revs = 20_000
    await build(core, revs)
    gaps: list[float] = []
    finished = anyio.Event()

    async def heartbeat() -> None:
        last = time.perf_counter()
        while not finished.is_set():
            await anyio.sleep(0)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    # A raw socket, read as bytes: decoding 20,000 messages in this process
    # would itself hold the event loop the heartbeat measures.
    stream, buffer = await handshake(server.port)
    request = {
        "requestId": "w1",
        "method": "watch",
        "path": f"/{RESOURCE}",
        "headers": {"authorization": "Bearer god", "x-oada-rev": "0"},
    }
    end = f'"_rev":{revs}}}'.encode()
    async with stream, anyio.create_task_group() as tg:
        start = time.perf_counter()
        await stream.send(client_frame(json.dumps(request)))
        tg.start_soon(heartbeat)
        with anyio.fail_after(60):
            while end not in buffer:
                buffer = buffer[-64:] + await stream.receive()
        finished.set()
        total = time.perf_counter() - start
    # Unsliced, the whole replay was built in one event-loop pass.
    longest = max(gaps)
    assert longest < total / 5, (longest, total)
    assert longest < 0.1, (longest, total)


async def test_changes_during_a_replay_follow_it_once_and_in_order(
    server: EmbeddedServer,
) -> None:
    core = server.core
    assert core is not None
    revs = 5_000
    await build(core, revs)
    async with (
        ws_connect(server) as ws,
        httpx.AsyncClient(base_url=server.url, headers=AUTH) as http,
    ):
        rid = await ws.send("watch", f"/{RESOURCE}", headers={"x-oada-rev": "0"})
        # Pipelined on the same socket: answered after the replay.
        ping = await ws.send("ping", "")
        for n in range(5):
            put = await http.put(f"/{RESOURCE}", json={"live": n})
            assert put.status_code == 201
        first = await ws.recv()
        assert (first["requestId"], first["status"]) == (rid, 200)
        messages = []
        while len(messages) < revs + 5 + 1:
            messages.append(await ws.recv(timeout=30))
        pong = [m for m in messages if m.get("requestId") == ping]
        assert pong == [{"requestId": ping, "status": 204}]
        changes = [m for m in messages if "change" in m]
        assert [rev_of(m) for m in changes] == list(range(1, revs + 6))
        assert all(m["requestId"] == [rid] for m in changes)
        assert messages.index(pong[0]) >= revs
        # Then live, once.
        await http.put(f"/{RESOURCE}", json={"after": 1})
        live = await ws.recv()
        assert rev_of(live) == revs + 6


async def test_a_delete_during_a_replay_ends_the_watch_after_it(server: EmbeddedServer) -> None:
    core = server.core
    assert core is not None
    revs = 3_000
    await build(core, revs)
    async with (
        ws_connect(server) as ws,
        httpx.AsyncClient(base_url=server.url, headers=AUTH) as http,
    ):
        rid = await ws.send("watch", f"/{RESOURCE}", headers={"x-oada-rev": "0"})
        assert (await http.delete(f"/{RESOURCE}")).status_code == 204
        first = await ws.recv()
        assert first["requestId"] == rid
        changes = [await ws.recv(timeout=30) for _ in range(revs + 1)]
        assert [m["change"][0]["type"] for m in changes[-2:]] == ["merge", "delete"]
        assert changes[-1]["change"][0]["body"] is None
        # The watch ended with the delete: a new resource of that id is not watched.
        assert (await http.put(f"/{RESOURCE}", json={"again": 1})).status_code == 201
        pong = await ws.request("ping", "")
        assert pong["status"] == 204
