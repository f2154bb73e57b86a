"""What one write into a list costs, by the list's length; and a restart on a large database.

``python -m bench.list_writes [--sizes 1000,10000,100000,1000000] [--writes 200]
[--budget 900] [--json FILE]`` opens one embedded server core (no transport:
the storage and data semantics alone) on a fresh SQLite file and, for each
size, fills a list of that many versioned links (the shape of a job service's
day list) in PUTs of :data:`FILL_CHUNK` links. Once every list is filled and
the background WAL checkpoint has copied the fills into the database file,
it times *writes* single-link PUTs of new keys into each list, and then as
many DELETEs of existing keys, one at a time, each answered after its
commit, taking the lists in turns (one write into each, then the next round)
so that whatever else slows the machine meanwhile falls on every length
alike. It prints the median, 99th percentile and largest time per write for
each size, and the server process's RSS after each fill.

All lists live in the same database and process, so the sizes are compared
within one run and on the same database. *budget* bounds the fills in
seconds: a size whose fill would not end in time is reported as not measured.

``--restart`` then closes the core and, in a new process, opens the same
database and times the first answer (``GET /bookmarks``) and the first write
into the largest list, with the RSS after each.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import anyio
import psutil  # type: ignore[import-untyped]  # psutil ships no type information

from oada_jobs.server.config import ServerConfig
from oada_jobs.server.core import CoreRequest, OADACore

#: Links written by one PUT while a list is filled.
FILL_CHUNK = 20_000
_AUTH = {"authorization": "Bearer god", "content-type": "application/json"}


def _rss_mib() -> float:
    return float(psutil.Process().memory_info().rss) / 2**20


def _link(n: int) -> dict[str, Any]:
    return {"_id": f"resources/job-{n:09d}", "_rev": 0}


async def _put(core: OADACore, path: str, body: Any) -> None:
    response = await core.handle(CoreRequest("put", path, _AUTH, json.dumps(body).encode()))
    if response.status >= 300:
        raise RuntimeError(f"PUT {path}: {response.status} {response.body[:200]!r}")


async def _delete(core: OADACore, path: str) -> None:
    response = await core.handle(CoreRequest("delete", path, _AUTH))
    if response.status >= 300:
        raise RuntimeError(f"DELETE {path}: {response.status} {response.body[:200]!r}")


async def _settle(core: OADACore) -> None:
    """Wait until the fill's WAL is checkpointed, as for a list grown over a day.

    Timed right after a fill of tens of megabytes, the writes shared the disk
    with the background checkpoint copying that fill, whose length grows with
    the list's: they measured the fill, not the list.
    """
    for _ in range(2):  # one may have begun before the fill's last commit
        with anyio.move_on_after(5):
            await core._checkpointed.wait()


def _ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_ms": round(statistics.median(ordered) * 1000, 3),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 3),
        "max_ms": round(ordered[-1] * 1000, 3),
    }


async def _fill(core: OADACore, size: int, deadline: float) -> int:
    """Create list *size* and link *size* entries into it before *deadline*; how many."""
    path = f"/resources/list-{size}"
    await _put(core, path, {"_type": "application/vnd.oada.job.1+json"})
    filled = 0
    while filled < size and time.monotonic() < deadline:
        chunk = min(FILL_CHUNK, size - filled)
        await _put(core, path, {f"k{filled + i:09d}": _link(filled + i) for i in range(chunk)})
        filled += chunk
    return filled


async def _timed(write: Awaitable[None]) -> float:
    t0 = time.perf_counter()
    await write
    return time.perf_counter() - t0


async def measure(db: str, sizes: list[int], writes: int, budget: float) -> dict[str, Any]:
    """Fill a list of each size, then time single writes into them (see the module docstring)."""
    deadline = time.monotonic() + budget
    rows: dict[int, dict[str, Any]] = {}
    async with OADACore(ServerConfig(db=db)) as core:
        for size in sizes:
            started = time.monotonic()
            filled = await _fill(core, size, deadline)
            if filled < size:
                print(f"{size:>9}: not measured (filled {filled} before the budget ran out)")
                rows[size] = {"size": size, "filled": filled, "measured": False}
                break
            rows[size] = {
                "size": size,
                "measured": True,
                "fill_seconds": round(time.monotonic() - started, 1),
                "rss_mib": round(_rss_mib(), 1),
            }
        await _settle(core)
        filled_sizes = [size for size, row in rows.items() if row["measured"]]
        puts: dict[int, list[float]] = {size: [] for size in filled_sizes}
        deletes: dict[int, list[float]] = {size: [] for size in filled_sizes}
        # In turns, one write into each list: whatever else slows the machine
        # meanwhile falls on every length alike.
        for i in range(writes):
            for size in filled_sizes:
                body = {f"new{i:06d}": _link(size + i)}
                puts[size].append(await _timed(_put(core, f"/resources/list-{size}", body)))
        for i in range(writes):
            for size in filled_sizes:
                path = f"/resources/list-{size}/k{i * (size // writes):09d}"
                deletes[size].append(await _timed(_delete(core, path)))
        load = os.getloadavg()[0]
        for size in filled_sizes:
            row = rows[size]
            row |= {"put": _ms(puts[size]), "delete": _ms(deletes[size]), "load": load}
            print(
                f"{size:>9}: PUT {row['put']['median_ms']:7.3f} ms median"
                f" {row['put']['p99_ms']:8.3f} p99 {row['put']['max_ms']:8.3f} max;"
                f" DELETE {row['delete']['median_ms']:7.3f} median"
                f" {row['delete']['p99_ms']:8.3f} p99 {row['delete']['max_ms']:8.3f} max;"
                f" fill {row['fill_seconds']:6.1f} s; RSS after it {row['rss_mib']:7.1f} MiB;"
                f" load {load:.2f}",
                flush=True,
            )
    return {"writes": writes, "sizes": list(rows.values())}


async def restart(db: str, size: int) -> dict[str, Any]:
    """Open *db* again: the first answer, then the first write into the largest list."""
    rss_before = _rss_mib()
    t0 = time.perf_counter()
    async with OADACore(ServerConfig(db=db)) as core:
        response = await core.handle(CoreRequest("get", "/bookmarks", _AUTH))
        first = time.perf_counter() - t0
        if response.status != 200:
            raise RuntimeError(f"GET /bookmarks after restart: {response.status}")
        rss_first = _rss_mib()
        t1 = time.perf_counter()
        await _put(core, f"/resources/list-{size}", {"after-restart": _link(0)})
        write = time.perf_counter() - t1
        rss_write = _rss_mib()
    return {
        "size": size,
        "first_answer_ms": round(first * 1000, 1),
        "first_write_ms": round(write * 1000, 1),
        "rss_start_mib": round(rss_before, 1),
        "rss_first_answer_mib": round(rss_first, 1),
        "rss_first_write_mib": round(rss_write, 1),
        "db_mib": round(Path(db).stat().st_size / 2**20, 1),
        "load": os.getloadavg()[0],
    }


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.list_writes", description=__doc__)
    parser.add_argument("--sizes", default="1000,10000,100000,1000000")
    parser.add_argument("--writes", type=int, default=200, help="PUTs and DELETEs per size")
    parser.add_argument("--budget", type=float, default=900.0, help="seconds for the fills")
    parser.add_argument("--restart", action="store_true", help="then time a restart")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--restart-of", help=argparse.SUPPRESS)  # the child of --restart
    args = parser.parse_args(argv)
    if args.restart_of:
        db, size = args.restart_of.rsplit(":", 1)
        print(json.dumps(anyio.run(restart, db, int(size))))
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.writes < 1 or not sizes or min(sizes) < args.writes:
        parser.error("expected sizes of at least --writes entries")
    with tempfile.TemporaryDirectory(prefix="oada-bench-lists-") as tmp:
        db = str(Path(tmp) / "lists.sqlite3")
        result = anyio.run(measure, db, sizes, args.writes, args.budget)
        if args.restart:
            largest = max(r["size"] for r in result["sizes"] if r["measured"])
            child = subprocess.run(
                [sys.executable, "-m", "bench.list_writes", "--restart-of", f"{db}:{largest}"],
                capture_output=True,
                text=True,
                check=True,
                timeout=600,
            )
            result["restart"] = json.loads(child.stdout.strip().splitlines()[-1])
            r = result["restart"]
            print(
                f"restart with {largest} links in one list ({r['db_mib']} MiB database):"
                f" first answer {r['first_answer_ms']} ms (RSS {r['rss_first_answer_mib']} MiB),"
                f" first write into that list {r['first_write_ms']} ms"
                f" (RSS {r['rss_first_write_mib']} MiB); load {r['load']:.2f}"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
