"""Memory of the embedded server's core as finished jobs pile up.

``python -m bench.server_memory [--jobs 10000] [--rounds 6] [--document-cache-size N]``
opens an :class:`~oada_jobs.server.core.OADACore` on a SQLite file in this
process (no transport: only the core and its store are measured) and runs
rounds of jobs through it. Each round creates *jobs* job resources, links them
into a queue 100 at a time, and then, ten jobs at a time, makes each job's
requests as a service does: read it, claim it, write its result, link it into
the day's success list, remove it from the queue. After each round it prints
the process's resident set size (after a full garbage collection) and how many
documents the store keeps in memory.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import psutil

from oada_jobs.server.config import ServerConfig, TokenInfo
from oada_jobs.server.core import CoreRequest, CoreResponse, OADACore

_TOKEN = "bench"
_SERVICE = "/bookmarks/services/memory"
_QUEUE = f"{_SERVICE}/jobs"
_SUCCESS = f"{_SERVICE}/jobs-success/day-index/2026-01-01"
#: The service's tree: each (parent, key) is a resource linked (versioned) from its parent.
_TREE = (
    ("/bookmarks", "services"),
    ("/bookmarks/services", "memory"),
    (_SERVICE, "jobs"),
    (_SERVICE, "jobs-success"),
    (f"{_SERVICE}/jobs-success", "day-index"),
    (f"{_SERVICE}/jobs-success/day-index", "2026-01-01"),
)
_WORKERS = 10


class _Caller:
    def __init__(self, core: OADACore) -> None:
        self.core = core

    async def __call__(
        self, method: str, path: str, body: Any = None, **headers: str
    ) -> CoreResponse:
        headers = {"authorization": f"Bearer {_TOKEN}", **headers}
        raw = b""
        if body is not None:
            headers["content-type"] = "application/vnd.oada.service.jobs.1+json"
            raw = json.dumps(body).encode()
        response = await self.core.handle(CoreRequest(method, path, headers, raw))
        if response.status >= 300:
            raise RuntimeError(f"{method.upper()} {path}: {response.status} {response.body!r}")
        return response


def _update(status: str, n: int) -> dict[str, Any]:
    return {f"u{status}{n}": {"status": status, "time": "2026-01-01T00:00:00Z"}}


async def _run_job(call: _Caller, key: str, n: int) -> None:
    job = await call("get", f"/resources/{key}")
    etag = job.headers["etag"]
    claim = {"status": "running", "lease": {"worker": "w"}, "updates": _update("started", n)}
    claimed = await call("put", f"/resources/{key}", claim, **{"if-match": etag})
    done = {
        "status": "success",
        "result": {"n": n},
        "lease": None,
        "updates": _update("success", n),
    }
    await call("put", f"/resources/{key}", done, **{"if-match": claimed.headers["etag"]})
    await call("put", _SUCCESS, {key: {"_id": f"resources/{key}", "_rev": 0}})
    await call("delete", f"{_QUEUE}/{key}")


async def _round(call: _Caller, jobs: int, counter: Iterator[int]) -> None:
    keys = []
    for _ in range(jobs):
        created = await call("post", "/resources", {"service": "memory", "type": "noop"})
        keys.append(created.headers["content-location"].rsplit("/", 1)[1])
    for start in range(0, jobs, 100):
        links = {key: {"_id": f"resources/{key}"} for key in keys[start : start + 100]}
        await call("put", _QUEUE, links)
    pending = iter(keys)

    async def worker() -> None:
        for key in pending:
            await _run_job(call, key, next(counter))

    async with anyio.create_task_group() as group:
        for _ in range(_WORKERS):
            group.start_soon(worker)


async def _tree(call: _Caller) -> None:
    for parent, key in _TREE:
        created = await call("post", "/resources", {})
        link = {"_id": created.headers["content-location"].lstrip("/"), "_rev": 0}
        await call("put", parent, {key: link})


async def main(jobs: int, rounds: int, document_cache_size: int) -> None:
    """Print RSS and cached documents after each round of *jobs* jobs."""
    tokens = {_TOKEN: TokenInfo(user="users/bench", bookmarks="resources/bench_bookmarks")}
    process = psutil.Process()
    with tempfile.TemporaryDirectory(prefix="oada-bench-memory-") as tmp:
        config = ServerConfig(
            db=str(Path(tmp) / "oada.sqlite3"),
            tokens=tokens,
            document_cache_size=document_cache_size,
        )
        async with OADACore(config) as core:
            call = _Caller(core)
            await _tree(call)
            counter = itertools.count()
            print(f"document cache size {document_cache_size:,}", flush=True)
            for n in range(1, rounds + 1):
                await _round(call, jobs, counter)
                gc.collect()
                rss = process.memory_info().rss / 2**20
                print(
                    f"after {n * jobs:>7,} jobs: RSS {rss:6.1f} MiB, "
                    f"{len(core.store.cached):,} documents cached",
                    flush=True,
                )


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.server_memory", description=__doc__)
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs per round")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument(
        "--document-cache-size",
        type=int,
        default=ServerConfig.model_fields["document_cache_size"].default,
    )
    args = parser.parse_args(argv)
    anyio.run(main, args.jobs, args.rounds, args.document_cache_size)
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
