"""Embedded server benchmark: requests/s over HTTP and WebSocket, watch latency.

The server runs as ``oada-jobs serve`` in its own process (plain HTTP, SQLite
file), exactly as users run it. The load comes from this process, with a
minimal keep-alive HTTP/1.1 client and ``websockets`` (not httpx or the OADA
client, whose own per-request CPU would dominate on a shared machine):

* **HTTP GET / PUT**: ``CONCURRENCY`` keep-alive connections, each sending
  requests back to back;
* **WS GET / PUT**: one socket with ``CONCURRENCY`` requests in flight
  (requests are pipelined; answers matched by ``requestId``);
* **watch latency**: one socket watches a resource; another client PUTs to
  it over HTTP; the time from sending the PUT to receiving the change
  message, one write at a time.

Each figure is the median (and min-max) of ``repeats`` runs. The load
generator shares the machine's cores with the server, so these are lower
bounds of what the server can do.

``python -m bench.server [--quick]`` prints the table; ``run(quick=...)``
returns it for ``python -m bench``.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import SocketStream
from websockets.asyncio.client import ClientConnection, connect

from oada_jobs.testing import EmbeddedServer, embedded_server

CONCURRENCY = 10
TOKEN = "bench-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
DOC = {"name": "bench", "values": list(range(20)), "nested": {"a": 1, "b": "two"}}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


async def _timed(total: int, worker: Callable[[int], Awaitable[None]]) -> float:
    """Run *total* requests over CONCURRENCY workers; requests per second."""
    counter = itertools.count()

    async def loop() -> None:
        while (i := next(counter)) < total:
            await worker(i)

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(CONCURRENCY):
            tg.start_soon(loop)
    return total / (time.perf_counter() - start)


class _RawHTTP:
    """A minimal keep-alive HTTP/1.1 client, so the load generator costs little.

    Full clients (httpx) spend more CPU per request than the server does;
    on a shared machine they would make the benchmark measure themselves.
    The server always sends Content-Length (except for HEAD, 204 and 304).
    """

    def __init__(self, stream: SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        lines = [f"{method} {path} HTTP/1.1", "Host: bench", f"Authorization: Bearer {TOKEN}"]
        payload = b""
        if body is not None:
            payload = json.dumps(body).encode()
            lines += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
        await self.stream.send(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += await self.stream.receive()
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if method == "HEAD":
            length = 0
        while len(rest) < length:
            rest += await self.stream.receive()
        self.buffer = rest[length:]
        return status, rest[:length]


async def _http_rates(server: EmbeddedServer, total: int) -> tuple[float, float]:
    async with AsyncExitStack() as stack:
        clients = []
        for _ in range(CONCURRENCY):
            stream = await stack.enter_async_context(
                await anyio.connect_tcp("127.0.0.1", server.port)
            )
            clients.append(_RawHTTP(stream))
        status, _ = await clients[0].request("PUT", "/bookmarks/bench/http", DOC)
        if status != 201:
            raise RuntimeError(f"setup PUT failed: {status}")
        free = list(clients)

        async def get(_: int) -> None:
            c = free.pop()
            try:
                status, _ = await c.request("GET", "/bookmarks/bench/http")
            finally:
                free.append(c)
            if status != 200:
                raise RuntimeError(f"GET answered {status}")

        async def put(i: int) -> None:
            c = free.pop()
            try:
                status, _ = await c.request("PUT", f"/bookmarks/bench/http/k{i % 50}", {"i": i})
            finally:
                free.append(c)
            if status != 201:
                raise RuntimeError(f"PUT answered {status}")

        return await _timed(total, get), await _timed(total, put)


class _Pipelined:
    """Many requests in flight on one socket, answers matched by requestId."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.waiting: dict[str, anyio.Event] = {}
        self.answers: dict[str, dict[str, Any]] = {}
        self.ids = itertools.count()

    async def reader(self) -> None:
        async for raw in self.conn:
            msg = json.loads(raw)
            rid = msg.get("requestId")
            if isinstance(rid, str) and rid in self.waiting:
                self.answers[rid] = msg
                self.waiting.pop(rid).set()

    async def request(self, method: str, path: str, data: Any = None) -> dict[str, Any]:
        rid = f"b{next(self.ids)}"
        headers = dict(AUTH)
        msg: dict[str, Any] = {"requestId": rid, "method": method, "path": path, "headers": headers}
        if data is not None:
            headers["content-type"] = "application/json"
            msg["data"] = data
        done = self.waiting[rid] = anyio.Event()
        await self.conn.send(json.dumps(msg))
        await done.wait()
        return self.answers.pop(rid)


async def _ws_rates(server: EmbeddedServer, total: int) -> tuple[float, float]:
    async with connect(server.ws_url, max_size=None) as conn, anyio.create_task_group() as tg:
        ws = _Pipelined(conn)
        tg.start_soon(ws.reader)
        setup = await ws.request("put", "/bookmarks/bench/ws", DOC)
        if setup["status"] != 201:
            raise RuntimeError(f"setup PUT over WS failed: {setup}")

        async def get(_: int) -> None:
            r = await ws.request("get", "/bookmarks/bench/ws")
            if r["status"] != 200:
                raise RuntimeError(f"WS GET answered {r['status']}")

        async def put(i: int) -> None:
            r = await ws.request("put", f"/bookmarks/bench/ws/k{i % 50}", {"i": i})
            if r["status"] != 201:
                raise RuntimeError(f"WS PUT answered {r['status']}")

        rates = await _timed(total, get), await _timed(total, put)
        tg.cancel_scope.cancel()
    return rates


async def _watch_latency(server: EmbeddedServer, samples: int) -> list[float]:
    """Milliseconds from sending a PUT to receiving its change message."""
    latencies: list[float] = []
    stream = await anyio.connect_tcp("127.0.0.1", server.port)
    async with stream, connect(server.ws_url) as conn:
        writer = _RawHTTP(stream)
        await writer.request("PUT", "/resources/bench-watch", {"t": 0})
        await conn.send(
            json.dumps(
                {
                    "requestId": "w",
                    "method": "watch",
                    "path": "/resources/bench-watch",
                    "headers": AUTH,
                }
            )
        )
        with anyio.fail_after(10):
            if json.loads(await conn.recv()).get("status") != 200:
                raise RuntimeError("the benchmark watch was refused")
        for i in range(samples):
            start = time.perf_counter()
            await writer.request("PUT", "/resources/bench-watch", {"t": i})
            with anyio.fail_after(10):
                while True:
                    msg = json.loads(await conn.recv())
                    if "change" in msg and msg["change"][0]["body"].get("t") == i:
                        break
            latencies.append((time.perf_counter() - start) * 1000)
    return latencies


async def _measure(quick: bool) -> dict[str, Any]:
    repeats = 1 if quick else 3
    total = 200 if quick else 3000
    samples = 50 if quick else 1000
    runs: dict[str, list[float]] = {k: [] for k in ("http_get", "http_put", "ws_get", "ws_put")}
    p50: list[float] = []
    p99: list[float] = []
    with tempfile.TemporaryDirectory(prefix="oada-bench-") as tmp:
        db = Path(tmp) / "bench.sqlite"
        async with embedded_server(subprocess=True, db=db, tokens=[TOKEN]) as server:
            for _ in range(repeats):
                get, put = await _http_rates(server, total)
                runs["http_get"].append(get)
                runs["http_put"].append(put)
                get, put = await _ws_rates(server, total)
                runs["ws_get"].append(get)
                runs["ws_put"].append(put)
                lat = await _watch_latency(server, samples)
                p50.append(_pct(lat, 0.50))
                p99.append(_pct(lat, 0.99))

    def rate(values: list[float]) -> str:
        med = statistics.median(values)
        if len(values) == 1:
            return f"{med:,.0f}"
        return f"{med:,.0f} ({min(values):,.0f}-{max(values):,.0f})"

    def ms(values: list[float]) -> str:
        med = statistics.median(values)
        if len(values) == 1:
            return f"{med:.2f}"
        return f"{med:.2f} ({min(values):.2f}-{max(values):.2f})"

    return {
        "title": "Embedded server",
        "description": (
            "`oada-jobs serve` in its own process (plain HTTP, SQLite file in WAL mode), "
            f"driven from another process with a minimal HTTP/1.1 client and websockets: "
            f"{CONCURRENCY} concurrent HTTP keep-alive connections, or one WebSocket with {CONCURRENCY} requests in "
            f"flight; {total} requests per figure on a small JSON document (PUTs merge one key). "
            "Watch latency: one write at a time over HTTP, timed until its change message "
            f"arrives on a watching socket ({samples} writes). Median (min-max) of "
            f"{repeats} run(s). Client and server share the machine, so rates are lower bounds."
        ),
        "columns": ["Measurement", "Ours"],
        "rows": [
            ["HTTP GET, requests/s", rate(runs["http_get"])],
            ["HTTP PUT, requests/s", rate(runs["http_put"])],
            ["WebSocket GET, requests/s", rate(runs["ws_get"])],
            ["WebSocket PUT, requests/s", rate(runs["ws_put"])],
            ["Watch notification latency p50, ms", ms(p50)],
            ["Watch notification latency p99, ms", ms(p99)],
        ],
        "notes": [
            "No reference-server figures: the reference OADA server needs ArangoDB and Kafka; "
            "it is not run here.",
        ],
        "raw": {
            "requests_per_s": runs,
            "watch_latency_ms": {"p50": p50, "p99": p99},
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
    }


def run(quick: bool = False) -> dict[str, Any]:
    """Measure and return the report table (see the module docstring)."""
    result: dict[str, Any] = anyio.run(_measure, quick)
    return result


def _print(result: dict[str, Any]) -> None:
    width = max(len(row[0]) for row in result["rows"])
    print(result["title"])
    for row in result["rows"]:
        print(f"  {row[0]:<{width}}  {row[1]}")


if __name__ == "__main__":
    _print(run(quick="--quick" in sys.argv[1:]))
