"""A scripted OADA WebSocket server on 127.0.0.1 for client tests.

It keeps one resource ``resources/R`` (reachable as ``/bookmarks/r``) with a
change log, answers head/get/put/delete/watch/unwatch, and has switches to
misbehave the ways real servers do: duplicate answers, garbage frames,
replays that overlap, dropped sockets, restarts.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import anyio
from websockets.asyncio.server import Server, ServerConnection, serve

RID = "resources/R"


class FakeOADA:
    def __init__(self) -> None:
        self.rev = 1
        self.doc: dict[str, Any] = {}
        self.log: dict[int, list[dict[str, Any]]] = {}
        self.received: list[dict[str, Any]] = []
        self.watchers: dict[ServerConnection, set[str]] = {}
        self.connections: set[ServerConnection] = set()
        self.connects = 0
        #: answer a resumed watch twice: first bare, then after the replay with headers
        self.duplicate_answers = False
        #: replay from rev r instead of r + 1 (an overlap the client must drop)
        self.overlap_replay = False
        #: send garbage before every answer
        self.garbage = False
        #: send GET answers and change notifications in many small fragments
        self.fragmented = False
        #: do not answer these methods (to leave requests in flight)
        self.hold: set[str] = set()
        self.held = anyio.Event()
        self.unwatched = anyio.Event()
        self.port = 0
        self._server: Server | None = None

    @property
    def domain(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @asynccontextmanager
    async def running(self, port: int = 0) -> AsyncIterator[FakeOADA]:
        async with serve(self._handle, "127.0.0.1", port) as server:
            self._server = server
            self.port = server.sockets[0].getsockname()[1] if port == 0 else port
            try:
                yield self
            finally:
                await self.drop()
                self._server = None

    async def drop(self) -> None:
        """Cut every connection abruptly (no close handshake)."""
        for conn in list(self.connections):
            conn.transport.abort()
        self.connections.clear()
        self.watchers.clear()

    async def write(self, body: dict[str, Any]) -> int:
        """Change the resource as a PUT would and notify watchers."""
        self.rev += 1
        self.doc.update(body)
        change = [
            {"resource_id": RID, "path": "", "type": "merge", "body": {**body, "_rev": self.rev}}
        ]
        self.log[self.rev] = change
        await self._notify(change)
        return self.rev

    async def delete_resource(self) -> None:
        change = [{"resource_id": RID, "path": "", "type": "delete", "body": None}]
        await self._notify(change)

    async def _notify(self, change: list[dict[str, Any]]) -> None:
        for conn, ids in list(self.watchers.items()):
            if ids:
                await self._send(
                    conn, {"requestId": sorted(ids), "resourceId": RID, "change": change}
                )

    async def _send(self, conn: ServerConnection, message: dict[str, Any]) -> None:
        with suppress(Exception):
            await self._text(conn, message)

    async def _text(self, conn: ServerConnection, message: dict[str, Any]) -> None:
        text = json.dumps(message)
        if self.fragmented:
            await conn.send([text[i : i + 7] for i in range(0, len(text), 7)])
        else:
            await conn.send(text)

    def _headers(self) -> dict[str, str]:
        return {
            "content-location": f"/{RID}",
            "x-oada-rev": str(self.rev),
            "etag": f'"R/{self.rev}"',
            "content-type": "application/json",
        }

    async def _handle(self, conn: ServerConnection) -> None:
        self.connects += 1
        self.connections.add(conn)
        self.watchers[conn] = set()
        try:
            async for raw in conn:
                message = json.loads(raw)
                self.received.append(message)
                await self._answer(conn, message)
        except Exception:
            pass
        finally:
            self.connections.discard(conn)
            self.watchers.pop(conn, None)

    async def _answer(self, conn: ServerConnection, message: dict[str, Any]) -> None:
        rid = message["requestId"]
        method = message["method"]
        if method in self.hold:
            self.held.set()
            return
        if self.garbage:
            await conn.send("this is not json")
            await conn.send(json.dumps({"hello": "world"}))
            await conn.send(json.dumps({"requestId": "nobody", "status": 200, "headers": {}}))
        if method in ("watch", "get-watch", "head-watch"):
            since = message["headers"].get("x-oada-rev")
            self.watchers.setdefault(conn, set()).add(rid)
            if since is None:
                answer: dict[str, Any] = {
                    "requestId": rid,
                    "status": 200,
                    "headers": self._headers(),
                }
                if method == "get-watch":
                    answer["data"] = {**self.doc, "_rev": self.rev}
                await conn.send(json.dumps(answer))
                return
            first = int(since) + (0 if self.overlap_replay else 1)
            bare = {"requestId": rid, "status": 200}
            await conn.send(
                json.dumps(bare if self.duplicate_answers else {**bare, "headers": self._headers()})
            )
            for rev in range(max(first, 2), self.rev + 1):
                await conn.send(
                    json.dumps({"requestId": [rid], "resourceId": RID, "change": self.log[rev]})
                )
            if self.duplicate_answers:
                await conn.send(
                    json.dumps({"requestId": rid, "status": 200, "headers": self._headers()})
                )
            return
        if method == "unwatch":
            self.watchers.get(conn, set()).discard(rid)
            self.unwatched.set()
            await conn.send(json.dumps({"requestId": rid, "status": 200}))
            return
        if method == "put":
            await conn.send(
                json.dumps(
                    {
                        "requestId": rid,
                        "status": 201,
                        "headers": {**self._headers(), "x-oada-rev": str(self.rev + 1)},
                    }
                )
            )
            await self.write(message.get("data") or {})
            return
        if method in ("get", "head"):
            if message["path"] == "/missing":
                await conn.send(
                    json.dumps(
                        {
                            "requestId": rid,
                            "status": 404,
                            "statusText": "Not Found",
                            "headers": {},
                            "data": {"statusCode": 404, "message": "nothing here"},
                        }
                    )
                )
                return
            answer = {"requestId": rid, "status": 200, "headers": self._headers()}
            if method == "get":
                answer["data"] = {**self.doc, "_id": RID, "_rev": self.rev}
            await self._text(conn, answer)
            if self.duplicate_answers:
                await conn.send(json.dumps({**answer, "data": "a stale duplicate"}))
            return
        await conn.send(json.dumps({"requestId": rid, "status": 400, "headers": {}}))
