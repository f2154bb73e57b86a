"""CPU per job of oada-jobs alone, for working on the per-request cost.

``python -m bench.profile [--jobs 1000] [--runs 3] [--layout classic]`` starts
one benchmark server (TLS, SQLite file, counting; :func:`bench.common.bench_server`)
and runs the burst measurement of :func:`bench.jobs.burst_run` on the Python
service *runs* times, printing for each run jobs/s, OADA requests per job and
the CPU milliseconds per job of the service and of the server, then the
medians. Only the Python side runs, so a change can be measured in about a
minute instead of a full ``make bench``.

To see where the CPU goes, run it under py-spy, which samples every child::

    py-spy record --subprocesses --format raw -o /tmp/stacks.txt -- \\
        .venv/bin/python -m bench.profile --jobs 2000 --runs 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import anyio

from oada_jobs.client import OADAClient

from .common import bench_server
from .jobs import Harness, Layout, RunResult, burst_run


def _line(label: str, result: RunResult) -> str:
    row = result.as_dict()
    return (
        f"{label:>8}: {row['jobs_per_second']:7.1f} jobs/s  "
        f"{row['requests_per_job']:5.2f} req/job  "
        f"service {row['service_cpu_ms_per_job']:5.2f} ms/job  "
        f"server {row['server_cpu_ms_per_job']:5.2f} ms/job"
    )


async def main(jobs: int, runs: int, layout: Layout, concurrency: int) -> None:
    """Run the burst measurement *runs* times and print per-run and median figures."""
    # Kept afterwards: the children's stderr is where a failed run says why.
    logs = tempfile.mkdtemp(prefix="oada-bench-profile-")
    print(f"logs in {logs}", flush=True)
    async with (
        bench_server(Path(logs)) as server,
        OADAClient(
            server.url, server.tokens["harness"], verify=str(server.ca_cert), concurrency=16
        ) as oada,
    ):
        harness = Harness(server, oada, Path(logs))
        results = []
        for i in range(runs):
            result = await burst_run(
                harness, "python", jobs, layout=layout, concurrency=concurrency
            )
            results.append(result)
            print(_line(f"run {i + 1}", result), flush=True)
    median = RunResult(
        framework="python",
        jobs=jobs,
        seconds=statistics.median(r.seconds for r in results),
        requests=round(statistics.median(r.requests for r in results)),
        runs=0,
        distinct=0,
        service_cpu=statistics.median(r.service_cpu for r in results),
        server_cpu=statistics.median(r.server_cpu for r in results),
    )
    print(_line("median", median), flush=True)


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--jobs", type=int, default=1000, help="jobs queued at once per run")
    parser.add_argument("--runs", type=int, default=3, help="runs on one server")
    parser.add_argument("--layout", choices=("classic", "pending"), default="classic")
    parser.add_argument("--concurrency", type=int, default=10, help="jobs at once")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.runs < 1:
        parser.error("expected --jobs and --runs >= 1")
    anyio.run(main, args.jobs, args.runs, args.layout, args.concurrency)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
