"""Long haul: one server and one service running a day's worth of no-op jobs.

The burst benchmarks start each measurement on a fresh server. Single-node
users run one server for months, and a busy service files tens of thousands
of jobs a day into the same day list. This benchmark runs *jobs* no-op jobs
through one Python service on one benchmark server (TLS, SQLite file,
:func:`bench.common.bench_server`), in rounds of *round_size*: each round the
harness creates that many job resources (untimed), links them into the
service's list and waits until they have all left it, as
:func:`bench.jobs.burst_run` does. Every finished job is filed into the same
``jobs-success`` day list, so that list grows by *jobs* entries.

Per round it records jobs/s, the server's CPU milliseconds per job, the RSS
of the server and of the service, and the largest event-loop stall of each
process while the round ran (:mod:`bench.lag`: a probe task in each process,
and the longest garbage collection). :func:`plot` draws them against the jobs
run so far.

``python -m bench --only long_haul`` runs it with :data:`JOBS` jobs and writes
``docs/long_haul.json`` and ``docs/long_haul.png``; ``python -m bench.long_haul
--jobs N [--round N] [--budget S] [--out DIR]`` runs another size. *budget*
bounds the run in seconds: rounds stop once it is spent, and the figures say
how many jobs ran. Then a new server is started on the run's database
(:func:`restart`): the time to its first answer and its memory.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import psutil  # type: ignore[import-untyped]  # psutil ships no type information

from oada_jobs.client import OADAClient

from .common import BenchError, bench_server, child_process, cpu_seconds
from .jobs import Harness, ListDrain, create_jobs, filed_path, list_path, new_service_name

#: Jobs of ``python -m bench --only long_haul``.
JOBS = 200_000
#: Jobs per round (one sample of every figure).
ROUND = 5_000
#: Seconds the whole run may take.
BUDGET = 3_600.0


def _rss_mib(pid: int) -> float:
    try:
        return float(psutil.Process(pid).memory_info().rss) / 2**20
    except psutil.Error:
        return 0.0


def _lag_lines(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text()
    except OSError:
        return []
    lines = []
    for line in text.splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue  # a line being written
    return lines


def _worst(lines: list[dict[str, Any]], start: float, end: float) -> dict[str, float]:
    """Largest stall and collection in the windows that overlap ``[start, end]``."""
    inside = [x for x in lines if start <= x["t"] <= end + 1.0]
    return {
        "lag_ms": max((x["lag_ms"] for x in inside), default=0.0),
        "cpu_ms": max((x.get("cpu_ms", 0.0) for x in inside), default=0.0),
        "gc_ms": max((x["gc_ms"] for x in inside), default=0.0),
        "gc_cpu_ms": max((x.get("gc_cpu_ms", 0.0) for x in inside), default=0.0),
        "gc_full": sum(x["gc_full"] for x in inside),
        "tracked": max((x.get("tracked", 0) for x in inside), default=0),
    }


async def run(jobs: int, round_size: int, budget: float, log_dir: Path) -> dict[str, Any]:
    """Run the long haul (see the module docstring); the figures per round."""
    deadline = time.monotonic() + budget
    server_lag = log_dir / "server-lag.jsonl"
    service_lag = log_dir / "service-lag.jsonl"
    rounds: list[dict[str, Any]] = []
    db = log_dir / "oada.sqlite3"
    async with (
        bench_server(log_dir, env={"BENCH_LAG_FILE": str(server_lag)}, db=db) as server,
        OADAClient(
            server.url, server.tokens["harness"], verify=str(server.ca_cert), concurrency=16
        ) as oada,
    ):
        h = Harness(server, oada, log_dir)
        name = new_service_name("python")
        argv, env = h.service_argv_env("python", name, sleep_ms=0, concurrency=10)
        env["BENCH_LAG_FILE"] = str(service_lag)
        # The service's own memory, not the benchmark's list of every job id.
        env["BENCH_RECORD_IDS"] = "0"
        async with child_process(f"python-{name}", argv, env=env, log_dir=log_dir) as service:
            await service.expect("ready", 60)
            await h.run_one(name)
            path = list_path(name)
            done = 0
            stopped = None
            while done < jobs and time.monotonic() < deadline:
                count = min(round_size, jobs - done)
                ids = await create_jobs(oada, name, count)
                drain = ListDrain(oada, path)
                await drain.start()
                server_cpu = cpu_seconds(server.pid)
                service_cpu = cpu_seconds(service.pid)
                started = time.time()
                await drain.link(ids)
                try:
                    finished = await drain.wait_gone(h.timeout_for(count))
                except BenchError as exc:
                    # Too slow to go on: what was measured so far is the result.
                    stopped = f"after {done} jobs: {exc}"
                    print(f"[long_haul] stopped {stopped}", file=sys.stderr, flush=True)
                    break
                ended = time.time()
                done += count
                row = {
                    "jobs_done": done,
                    "jobs": count,
                    "seconds": finished - started,
                    "jobs_per_second": count / (finished - started),
                    "server_cpu_ms_per_job": 1000 * (cpu_seconds(server.pid) - server_cpu) / count,
                    "service_cpu_ms_per_job": 1000
                    * (cpu_seconds(service.pid) - service_cpu)
                    / count,
                    "server_rss_mib": _rss_mib(server.pid),
                    "service_rss_mib": _rss_mib(service.pid),
                    "server": _worst(_lag_lines(server_lag), started, ended),
                    "service": _worst(_lag_lines(service_lag), started, ended),
                    "load": os.getloadavg()[0],
                }
                rounds.append(row)
                print(
                    f"[long_haul] {done:>8} jobs: {row['jobs_per_second']:6.0f} jobs/s,"
                    f" server {row['server_cpu_ms_per_job']:.2f} ms/job"
                    f" {row['server_rss_mib']:.0f} MiB stall {row['server']['lag_ms']:.0f} ms"
                    f" (cpu {row['server']['cpu_ms']:.0f}, gc {row['server']['gc_ms']:.0f},"
                    f" {row['server']['tracked']} objects),"
                    f" service {row['service_rss_mib']:.0f} MiB stall"
                    f" {row['service']['lag_ms']:.0f} ms (cpu {row['service']['cpu_ms']:.0f});"
                    f" load {row['load']:.2f}",
                    file=sys.stderr,
                    flush=True,
                )
            await service.stop()
    return {
        "jobs": jobs,
        "round": round_size,
        "stopped": stopped,
        "rounds": rounds,
        **summary(rounds),
        "restart": await restart(db, log_dir, filed_path(name, "success")),
    }


async def restart(db: Path, log_dir: Path, days: str) -> dict[str, Any]:
    """Start a new server on the run's database: how soon it answers, and its memory.

    Times the child from its start to ready (Python start-up, certificate,
    opening the database), then the first answer (``GET /bookmarks``) and the
    first write into the largest day list under *days*, with the server's RSS
    after each.
    """
    started = time.monotonic()
    async with bench_server(log_dir, db=db) as server:
        ready = time.monotonic() - started
        async with OADAClient(
            server.url, server.tokens["harness"], verify=str(server.ca_cert)
        ) as oada:
            t0 = time.monotonic()
            await oada.get("/bookmarks")
            first = time.monotonic() - t0
            rss_first = _rss_mib(server.pid)
            index = (await oada.get(days)).data
            day = max(k for k in index if not k.startswith("_"))
            t0 = time.monotonic()
            await oada.put(f"{days}/{day}", {"restart-probe": 1})
            write = time.monotonic() - t0
            rss_write = _rss_mib(server.pid)
    result = {
        "db_mib": round(db.stat().st_size / 2**20, 1),
        "start_to_ready_ms": round(ready * 1000, 1),
        "first_answer_ms": round(first * 1000, 1),
        "first_write_ms": round(write * 1000, 1),
        "rss_first_answer_mib": round(rss_first, 1),
        "rss_first_write_mib": round(rss_write, 1),
        "load": os.getloadavg()[0],
    }
    print(f"[long_haul] restart: {result}", file=sys.stderr, flush=True)
    return result


def summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures the targets are stated in: first against last tenth, largest stalls."""
    if not rounds:
        return {}
    tenth = max(1, len(rounds) // 10)
    first, last = rounds[:tenth], rounds[-tenth:]
    # After warm-up: from the end of the first tenth on.
    after = rounds[tenth:] or rounds

    def rate(rows: list[dict[str, Any]]) -> float:
        return sum(r["jobs"] for r in rows) / sum(r["seconds"] for r in rows)

    return {
        "jobs_run": rounds[-1]["jobs_done"],
        "first_tenth_jobs_per_second": rate(first),
        "last_tenth_jobs_per_second": rate(last),
        "last_over_first": rate(last) / rate(first),
        "server_cpu_ms_per_job_first_last": [
            statistics.median(r["server_cpu_ms_per_job"] for r in first),
            statistics.median(r["server_cpu_ms_per_job"] for r in last),
        ],
        "server_rss_mib_after_warm_up": [
            min(r["server_rss_mib"] for r in after),
            max(r["server_rss_mib"] for r in after),
        ],
        "service_rss_mib_after_warm_up": [
            min(r["service_rss_mib"] for r in after),
            max(r["service_rss_mib"] for r in after),
        ],
        "server_max_stall_ms": max(r["server"]["lag_ms"] for r in rounds),
        "service_max_stall_ms": max(r["service"]["lag_ms"] for r in rounds),
        "server_max_busy_ms": max(r["server"]["cpu_ms"] for r in rounds),
        "service_max_busy_ms": max(r["service"]["cpu_ms"] for r in rounds),
        "server_max_busy_after_warm_up_ms": max(r["server"]["cpu_ms"] for r in after),
        "service_max_busy_after_warm_up_ms": max(r["service"]["cpu_ms"] for r in after),
        "server_max_gc_after_warm_up_ms": max(r["server"]["gc_ms"] for r in after),
        "service_max_gc_after_warm_up_ms": max(r["service"]["gc_ms"] for r in after),
        "server_max_gc_cpu_after_warm_up_ms": max(r["server"]["gc_cpu_ms"] for r in after),
        "service_max_gc_cpu_after_warm_up_ms": max(r["service"]["gc_cpu_ms"] for r in after),
        "server_max_gc_cpu_ms": max(r["server"]["gc_cpu_ms"] for r in rounds),
        "service_max_gc_cpu_ms": max(r["service"]["gc_cpu_ms"] for r in rounds),
        "server_max_gc_ms": max(r["server"]["gc_ms"] for r in rounds),
        "service_max_gc_ms": max(r["service"]["gc_ms"] for r in rounds),
        "load": [min(r["load"] for r in rounds), max(r["load"] for r in rounds)],
    }


def plot(result: dict[str, Any], path: Path) -> bool:
    """Draw jobs/s, RSS, server CPU per job and stalls against jobs run; False if nothing to draw."""
    rounds = result.get("rounds") or []
    if not rounds:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["jobs_done"] / 1000 for r in rounds]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    ax = axes[0][0]
    ax.plot(x, [r["jobs_per_second"] for r in rounds], marker=".")
    ax.set_ylabel("jobs/s")
    ax.set_ylim(bottom=0)
    ax.set_title("Throughput per round (load average dotted)")
    # The machine is shared: its load explains most of the swings.
    load = ax.twinx()
    load.plot(x, [r["load"] for r in rounds], color="grey", ls=":")
    load.set_ylabel("load average (1 min)")
    load.set_ylim(bottom=0)
    ax = axes[0][1]
    ax.plot(x, [r["server_rss_mib"] for r in rounds], marker=".", label="server")
    ax.plot(x, [r["service_rss_mib"] for r in rounds], marker=".", label="service")
    ax.set_ylabel("RSS (MiB)")
    ax.set_ylim(bottom=0)
    ax.set_title("Resident memory after each round")
    ax.legend()
    ax = axes[1][0]
    ax.plot(x, [r["server_cpu_ms_per_job"] for r in rounds], marker=".", label="server")
    ax.plot(x, [r["service_cpu_ms_per_job"] for r in rounds], marker=".", label="service")
    ax.set_ylabel("CPU ms per job")
    ax.set_ylim(bottom=0)
    ax.set_title("CPU per job")
    ax.legend()
    ax = axes[1][1]
    ax.plot(x, [r["server"]["lag_ms"] for r in rounds], marker=".", label="server stall")
    ax.plot(x, [r["service"]["lag_ms"] for r in rounds], marker=".", label="service stall")
    ax.plot(x, [r["server"]["cpu_ms"] for r in rounds], ls="--", label="server busy (CPU)")
    ax.plot(x, [r["service"]["cpu_ms"] for r in rounds], ls="--", label="service busy (CPU)")
    ax.plot(x, [r["server"]["gc_ms"] for r in rounds], ls=":", label="server longest GC")
    ax.axhline(50, color="grey", lw=0.8, ls="--")
    ax.set_ylabel("ms")
    ax.set_ylim(bottom=0)
    ax.set_title("Largest event-loop stall per round")
    ax.legend()
    for ax in axes[1]:
        ax.set_xlabel("jobs run (thousands)")
    fig.suptitle(f"Long haul: {rounds[-1]['jobs_done']:,} no-op jobs, one server, one service")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write(result: dict[str, Any], out_dir: Path, stem: str = "long_haul") -> None:
    """Save *result* as ``<stem>.json`` and its plot as ``<stem>.png`` in *out_dir*."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, out_dir / f"{stem}.png")


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.long_haul", description=__doc__)
    parser.add_argument("--jobs", type=int, default=JOBS)
    parser.add_argument("--round", type=int, default=ROUND, dest="round_size")
    parser.add_argument("--budget", type=float, default=BUDGET, help="seconds at most")
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--stem", default="long_haul", help="output file names")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.round_size < 1:
        parser.error("expected --jobs and --round >= 1")
    logs = tempfile.mkdtemp(prefix="oada-bench-long-haul-")
    print(f"[long_haul] logs in {logs}", file=sys.stderr, flush=True)
    result = anyio.run(run, args.jobs, args.round_size, args.budget, Path(logs))
    write(result, args.out, args.stem)
    shown = {k: v for k, v in result.items() if k != "rounds"}
    print(json.dumps(shown, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
