"""WebSocketSession against a scripted socket: what a real client cannot easily provoke."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest

from oada_jobs.server import ws as ws_module
from oada_jobs.server.config import ServerConfig
from oada_jobs.server.core import CoreRequest, OADACore
from oada_jobs.server.ws import WebSocketSession

AUTH = {"authorization": "Bearer god", "content-type": "application/json"}


class _URL:
    scheme = "ws"


class ScriptedSocket:
    """Enough of Starlette's WebSocket for a session; sends block until released."""

    url = _URL()

    def __init__(self) -> None:
        # No direct-send extension: the session takes the plain ASGI path.
        self.scope: dict[str, Any] = {"type": "websocket"}
        self.headers = {"host": "test"}
        self._progress = anyio.Event()
        self.incoming_send, self.incoming = anyio.create_memory_object_stream[dict[str, Any]](100)
        self.sent: list[dict[str, Any]] = []
        self.first_sent = anyio.Event()
        self.release = anyio.Event()
        self.closed_with: int | None = None
        self.closed = anyio.Event()

    async def accept(self) -> None:
        pass

    async def receive(self) -> dict[str, Any]:
        # Like uvicorn's, it returns a waiting message without yielding.
        try:
            return self.incoming.receive_nowait()
        except anyio.WouldBlock:
            return await self.incoming.receive()

    async def send_text(self, text: str) -> None:
        self.sent.append(json.loads(text))
        self.first_sent.set()
        self._progress.set()
        self._progress = anyio.Event()
        # The peer stops reading after the first message.
        await self.release.wait()

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.closed_with = code
        self.closed.set()

    async def wait_sent(self, count: int) -> None:
        while len(self.sent) < count:
            await self._progress.wait()

    def __enter__(self) -> ScriptedSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.incoming_send.close()
        self.incoming.close()

    def frame(self, **msg: Any) -> None:
        self.incoming_send.send_nowait({"type": "websocket.receive", "text": json.dumps(msg)})


async def test_a_peer_that_stops_reading_is_closed_with_1013() -> None:
    with ScriptedSocket() as sock:
        await flood(sock)


async def flood(sock: ScriptedSocket) -> None:
    # Room for a few change messages of about 300 bytes.
    config = ServerConfig(ws_send_buffer_bytes=1500)
    async with OADACore(config) as core, anyio.create_task_group() as tg:
        await core.handle(CoreRequest("put", "/resources/flood", AUTH, b'{"n": 0}'))
        tg.start_soon(WebSocketSession(core, sock).run)  # type: ignore[arg-type]
        sock.frame(requestId="w", method="watch", path="/resources/flood", headers=AUTH)
        with anyio.fail_after(5):
            await sock.first_sent.wait()
        for n in range(1, 20):
            r = await core.handle(
                CoreRequest("put", "/resources/flood", AUTH, json.dumps({"n": n}).encode())
            )
            # Writers are never held up by a slow watcher.
            assert r.status == 201
        sock.release.set()
        with anyio.fail_after(5):
            await sock.closed.wait()
        assert sock.closed_with == 1013
        # What was sent before the close is an in-order prefix, never a gap.
        assert sock.sent[0]["requestId"] == "w"
        sock.incoming_send.send_nowait({"type": "websocket.disconnect", "code": 1013})
    assert len(sock.sent) <= 2


async def test_session_ends_its_subscriptions_on_disconnect() -> None:
    with ScriptedSocket() as sock:
        await watch_and_disconnect(sock)


async def watch_and_disconnect(sock: ScriptedSocket) -> None:
    sock.release.set()
    async with OADACore(ServerConfig()) as core:
        await core.handle(CoreRequest("put", "/resources/w1", AUTH, b'{"n": 0}'))
        calls: list[int] = []
        core.subscribe("resources/w1", lambda rid, rev, change: calls.append(rev))
        async with anyio.create_task_group() as tg:
            tg.start_soon(WebSocketSession(core, sock).run)  # type: ignore[arg-type]
            sock.frame(requestId="a", method="watch", path="/resources/w1", headers=AUTH)
            sock.frame(requestId="b", method="watch", path="/resources/w1", headers=AUTH)
            sock.frame(requestId="p", method="ping", path="", headers={"authorization": ""})
            with anyio.fail_after(5):
                await sock.wait_sent(3)
            sock.incoming_send.send_nowait({"type": "websocket.disconnect", "code": 1000})
        await core.handle(CoreRequest("put", "/resources/w1", AUTH, b'{"n": 1}'))
        # Only the test's own listener is left; the session's was removed.
        assert len(calls) == 1
        assert [m["requestId"] for m in sock.sent] == ["a", "b", "p"]


@pytest.mark.parametrize(("puts", "commits"), [(4, 1), (8, 1), (12, 2)])
async def test_requests_read_together_share_a_commit_per_two_turns_and_answer_in_order(
    puts: int, commits: int
) -> None:
    """A turn serves REQUESTS_PER_TURN requests (4), then lets the loop run; the
    commit comes a pass after the first write, so it takes two turns' writes."""
    assert ws_module.REQUESTS_PER_TURN == 4
    with ScriptedSocket() as sock:
        sock.release.set()
        async with OADACore(ServerConfig()) as core, anyio.create_task_group() as tg:
            await core.handle(CoreRequest("put", "/resources/p", AUTH, b"{}"))
            store = core.store
            real = store._db
            made = 0

            class Counting:
                def execute(self, sql: str, *args: Any) -> Any:
                    nonlocal made
                    made += sql == "COMMIT"
                    return real.execute(sql, *args)

                def __getattr__(self, name: str) -> Any:
                    return getattr(real, name)

            store._db = Counting()  # type: ignore[assignment]
            for n in range(puts):
                sock.frame(
                    requestId=f"put{n}",
                    method="put",
                    path="/resources/p",
                    headers=AUTH,
                    data={n: n},
                )
            sock.frame(requestId="get", method="get", path="/resources/p", headers=AUTH)
            tg.start_soon(WebSocketSession(core, sock).run)  # type: ignore[arg-type]
            with anyio.fail_after(5):
                await sock.wait_sent(puts + 1)
            store._db = real
            sock.incoming_send.send_nowait({"type": "websocket.disconnect", "code": 1000})
    assert made == commits
    assert [(m["requestId"], m["status"]) for m in sock.sent] == [
        *((f"put{n}", 201) for n in range(puts)),
        ("get", 200),
    ]
    revs = [str(n + 2) for n in range(puts)]
    assert [m["headers"]["x-oada-rev"] for m in sock.sent] == [*revs, revs[-1]]
