"""How long one client waits while another reads a long ``_meta/_changes`` listing.

``python -m bench.changes_stall [--revs 80000] [--reads 5]``
builds a resource with *revs* revisions in a SQLite file (as
:mod:`bench.replay_stall` does), starts the embedded server on it in a child
process, and then, at the same time,

* reads ``/<resource>/_meta/_changes`` *reads* times over one HTTP
  connection, one after the other;
* sends small GETs over another connection, one after the other, and
  records how long each took.

It prints the longest, 99th-percentile and median GET time while the
listings were read, and the size and time of one listing.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import cast

import anyio
import httpx

from bench.replay_stall import _RESOURCE, _build, _probe, _waits_text
from oada_jobs.testing import embedded_server


async def _list(url: str, reads: int) -> tuple[float, int]:
    async with httpx.AsyncClient(
        base_url=url, headers={"authorization": "Bearer god"}, timeout=60
    ) as c:
        size = 0
        start = time.perf_counter()
        for _ in range(reads):
            response = await c.get(f"/{_RESOURCE}/_meta/_changes")
            response.raise_for_status()
            size = len(response.content)
        return (time.perf_counter() - start) / reads, size


async def main(revs: int, reads: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "changes.sqlite3"
        await _build(db, revs)
        async with embedded_server(db=db, subprocess=True) as server:
            finished = anyio.Event()
            started = anyio.Event()
            result: dict[str, object] = {}

            async def probe() -> None:
                result["waits"] = await _probe(server.url, finished, started)

            async with anyio.create_task_group() as tg:
                tg.start_soon(probe)
                await started.wait()
                result["listing"] = await _list(server.url, reads)
                finished.set()
        each, size = cast(tuple[float, int], result["listing"])
        waits = cast(list[float], result["waits"])
        print(
            f"_meta/_changes of {revs} revs: {size} bytes, {each * 1000:.0f} ms each;"
            f" {_waits_text(waits)}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--revs", type=int, default=80_000)
    parser.add_argument("--reads", type=int, default=5)
    args = parser.parse_args()
    anyio.run(main, args.revs, args.reads)
