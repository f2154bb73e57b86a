"""How long one client waits while another's watch replays a long history.

``python -m bench.replay_stall [--revs 80000] [--watches 1]``
builds a resource with *revs* revisions in a SQLite file (through the core,
in this process), starts the embedded server on it in a child process, and
then, at the same time,

* opens a WebSocket and sends *watches* ``watch`` requests with
  ``x-oada-rev: 0`` on that resource, pipelined, and reads until every
  replayed change has arrived;
* sends small GETs over one HTTP connection, one after the other, and
  records how long each took.

It prints the longest and the 99th-percentile GET time while the replay
ran, how many GETs were answered meanwhile, and how long the replay took.
Before replays were sliced the longest GET waited for the whole replay.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import cast

import anyio
import httpx
from websockets.asyncio.client import connect

from oada_jobs.server.config import ServerConfig
from oada_jobs.server.core import CoreRequest, OADACore
from oada_jobs.testing import embedded_server

_RESOURCE = "resources/replay-bench"
_AUTH = {"authorization": "Bearer god", "content-type": "application/json"}


async def _build(db: Path, revs: int) -> None:
    """Write *revs* revisions of one small resource (group-committed, 1,000 at a time)."""
    async with OADACore(ServerConfig(db=str(db))) as core:
        done = 0
        while done < revs:
            batch = min(1000, revs - done)
            answered = _Countdown(batch)
            for n in range(done, done + batch):
                body = json.dumps({"n": n}).encode()
                core.submit(CoreRequest("put", f"/{_RESOURCE}", _AUTH, body), answered)
            await answered.finished.wait()
            done += batch


class _Countdown:
    """An answer callback that sets ``finished`` after *n* answers."""

    def __init__(self, n: int) -> None:
        self.left = n
        self.finished = anyio.Event()

    def __call__(self, _response: object) -> None:
        self.left -= 1
        if self.left == 0:
            self.finished.set()


async def _replay(ws_url: str, revs: int, watches: int) -> float:
    async with connect(ws_url, max_size=None, compression=None) as ws:
        start = time.perf_counter()
        for w in range(watches):
            await ws.send(
                json.dumps(
                    {
                        "requestId": f"w{w}",
                        "method": "watch",
                        "path": f"/{_RESOURCE}",
                        "headers": {"authorization": "Bearer god", "x-oada-rev": "0"},
                    }
                )
            )
        changes = 0
        while changes < revs * watches:
            message = json.loads(await ws.recv())
            if "change" in message:
                changes += 1
        return time.perf_counter() - start


async def _probe(url: str, finished: anyio.Event, started: anyio.Event) -> list[float]:
    waits: list[float] = []
    async with httpx.AsyncClient(
        base_url=url, headers={"authorization": "Bearer god"}, timeout=60
    ) as c:
        await c.get("/bookmarks")  # connection open, roots created
        started.set()
        while not finished.is_set():
            t0 = time.perf_counter()
            response = await c.get("/bookmarks")
            waits.append(time.perf_counter() - t0)
            response.raise_for_status()
            await anyio.sleep(0.002)
    return waits


def _waits_text(waits: list[float]) -> str:
    """How the probe's GETs fared: how many, the longest, 99th percentile and median."""
    ordered = sorted(waits)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (
        f"{len(ordered)} GETs meanwhile, longest {ordered[-1] * 1000:.1f} ms,"
        f" p99 {p99 * 1000:.1f} ms, median {ordered[len(ordered) // 2] * 1000:.1f} ms"
    )


async def main(revs: int, watches: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "replay.sqlite3"
        t0 = time.perf_counter()
        await _build(db, revs)
        print(f"built {revs} revs in {time.perf_counter() - t0:.1f} s")
        async with embedded_server(db=db, subprocess=True) as server:
            finished = anyio.Event()
            started = anyio.Event()
            result: dict[str, object] = {}

            async def probe() -> None:
                result["waits"] = await _probe(server.url, finished, started)

            async with anyio.create_task_group() as tg:
                tg.start_soon(probe)
                await started.wait()
                # The replay is read in another process, so that decoding
                # its messages does not delay this one's GETs.
                consumer = await anyio.run_process(
                    [
                        sys.executable,
                        "-m",
                        "bench.replay_stall",
                        "--consume",
                        server.ws_url,
                        "--revs",
                        str(revs),
                        "--watches",
                        str(watches),
                    ]
                )
                finished.set()
                result["replay"] = float(consumer.stdout.decode().strip())
        waits = cast(list[float], result["waits"])
        print(
            f"replay of {revs} revs x {watches} watch(es): {result['replay']:.2f} s;"
            f" {_waits_text(waits)}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--revs", type=int, default=80_000)
    parser.add_argument("--watches", type=int, default=1)
    parser.add_argument("--consume", metavar="WS_URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.consume:
        print(anyio.run(_replay, args.consume, args.revs, args.watches))
    else:
        anyio.run(main, args.revs, args.watches)
