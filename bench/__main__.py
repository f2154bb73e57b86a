"""``python -m bench``: run every benchmark and write docs/benchmarks.md and .png.

Options::

    --quick            tiny sizes, one repeat (the smoke test uses it)
    --only a,b         run only these sections (see SECTIONS; EXTRA_SECTIONS such
                       as long_haul run only when named)
    --out DIR          where benchmarks.md/.png/.json go (default: docs/)
    --repeats N        repeats per measurement (default 5; --quick: 1)

Each job benchmark section gets a fresh embedded server (TLS, SQLite file) in
its own process; inside a section the two frameworks alternate. A section that
fails is reported with its error; the others still run.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

from oada_jobs.client import OADAClient

from . import long_haul, report, scale
from .common import ROOT, BenchError, bench_server, machine, node_available, summarize
from .jobs import (
    FIRST_FILING_RACE,
    FRAMEWORKS,
    Framework,
    Harness,
    RunResult,
    backlog_run,
    burst_run,
    latency_run,
    latency_summary,
    order,
)


@dataclass(frozen=True)
class Sizes:
    """How big each measurement is."""

    repeats: int
    #: Jobs queued at once on a running service: a small and a large batch.
    burst: int
    burst_large: int
    #: Jobs waiting when the service starts (also the memory measurement).
    backlog: int
    #: Jobs queued one at a time for pickup latency, and the gap between them.
    latency: int
    latency_interval: float
    #: (concurrency, jobs) of the 100 ms work-bound runs.
    work: tuple[tuple[int, int], ...]
    #: Replica counts, jobs and repeats of the scale-out runs.
    replicas: tuple[int, ...]
    scale_jobs: int
    scale_repeats: int
    #: Uneven work: (long jobs, their milliseconds, short jobs).
    uneven: tuple[int, int, int]
    #: Takeover: jobs and each one's milliseconds.
    takeover: tuple[int, int]


FULL = Sizes(
    # Five, not the minimum of three: on a shared 2-core VM the same code's
    # CPU per job drifts by a third or more over tens of seconds, so with three
    # pairs of alternating runs the median ratio often hung on one odd pair.
    repeats=5,
    burst=1000,
    burst_large=10_000,
    backlog=10_000,
    latency=200,
    latency_interval=0.025,
    work=((10, 300), (100, 1000)),
    replicas=(1, 2, 4, 8),
    scale_jobs=1000,
    scale_repeats=3,
    uneven=(10, 5000, 200),
    takeover=(600, 50),
)
QUICK = Sizes(
    repeats=1,
    burst=20,
    burst_large=40,
    backlog=30,
    latency=10,
    latency_interval=0.02,
    work=((10, 20), (100, 100)),
    replicas=(1, 2),
    scale_jobs=40,
    scale_repeats=1,
    uneven=(2, 1000, 20),
    takeover=(90, 200),
)

WORK_SLEEP_MS = 100
#: Seconds bench/server.py and bench/client.py may take.
EXTERNAL_TIMEOUT = 600
EXTERNAL_TIMEOUT_QUICK = 120


def _frameworks(node_problem: str | None) -> tuple[Framework, ...]:
    return FRAMEWORKS if node_problem is None else ("python",)


def _pairs(
    results: dict[Framework, list[float]], *, higher_is_better: bool = True
) -> dict[str, Any] | None:
    """Python/Node ratio per repeat (same repeat index), summarized."""
    python, node = results.get("python") or [], results.get("node") or []
    ratios = [p / n if higher_is_better else n / p for p, n in zip(python, node, strict=False)]
    return summarize(ratios) if ratios else None


async def _alternating(
    sizes: Sizes,
    frameworks: tuple[Framework, ...],
    run: Callable[[Framework], Awaitable[RunResult]],
) -> dict[Framework, list[RunResult]]:
    out: dict[Framework, list[RunResult]] = {fw: [] for fw in frameworks}
    for repeat in range(sizes.repeats):
        for fw in order(repeat):
            if fw in frameworks:
                out[fw].append(await run(fw))
    return out


def _runs_section(runs: dict[Framework, list[RunResult]], jobs: int) -> dict[str, Any]:
    rates = {fw: [r.jobs_per_second for r in rs] for fw, rs in runs.items()}
    return {
        "jobs": jobs,
        "jobs_per_second": {fw: summarize(v) for fw, v in rates.items()},
        "ratio": _pairs(rates),
        "requests_per_job": {
            fw: summarize([r.requests / r.jobs for r in rs]) for fw, rs in runs.items()
        },
        "peak_rss_mib": {
            fw: summarize([r.peak_rss / 2**20 for r in rs]) for fw, rs in runs.items()
        },
        "service_cpu_ms_per_job": {
            fw: summarize([1000 * r.service_cpu / r.jobs for r in rs]) for fw, rs in runs.items()
        },
        "server_cpu_ms_per_job": {
            fw: summarize([1000 * r.server_cpu / r.jobs for r in rs]) for fw, rs in runs.items()
        },
        "duplicates": {fw: sum(r.runs - r.distinct for r in rs) for fw, rs in runs.items()},
        "runs": [r.as_dict() for rs in runs.values() for r in rs],
    }


async def section_throughput(h: Harness, sizes: Sizes, fws: tuple[Framework, ...]) -> Any:
    runs = await _alternating(sizes, fws, lambda fw: burst_run(h, fw, sizes.burst))
    out = _runs_section(runs, sizes.burst)
    # The same jobs on oada-jobs' other layout (jobs/pending, as current
    # @oada/jobs has it), which @oada/jobs 1.0.4 cannot serve.
    pending = [
        await burst_run(h, "python", sizes.burst, layout="pending") for _ in range(sizes.repeats)
    ]
    node = [r.jobs_per_second for r in runs.get("node", [])]
    out["pending_layout"] = {
        "jobs_per_second": summarize([r.jobs_per_second for r in pending]),
        "ratio": _pairs({"python": [r.jobs_per_second for r in pending], "node": node}),
        "requests_per_job": summarize([r.requests / r.jobs for r in pending]),
        "service_cpu_ms_per_job": summarize([1000 * r.service_cpu / r.jobs for r in pending]),
        "server_cpu_ms_per_job": summarize([1000 * r.server_cpu / r.jobs for r in pending]),
        "peak_rss_mib": summarize([r.peak_rss / 2**20 for r in pending]),
        "duplicates": sum(r.runs - r.distinct for r in pending),
        "runs": [r.as_dict() for r in pending],
    }
    return out


async def section_throughput_large(h: Harness, sizes: Sizes, fws: tuple[Framework, ...]) -> Any:
    runs = await _alternating(sizes, fws, lambda fw: burst_run(h, fw, sizes.burst_large))
    return _runs_section(runs, sizes.burst_large)


async def section_backlog(h: Harness, sizes: Sizes, fws: tuple[Framework, ...]) -> Any:
    runs = await _alternating(sizes, fws, lambda fw: backlog_run(h, fw, sizes.backlog))
    return _runs_section(runs, sizes.backlog)


async def section_latency(h: Harness, sizes: Sizes, fws: tuple[Framework, ...]) -> Any:
    per_run: dict[Framework, list[dict[str, float]]] = {fw: [] for fw in fws}
    samples: dict[Framework, list[float]] = {fw: [] for fw in fws}
    for repeat in range(sizes.repeats):
        for fw in order(repeat):
            if fw not in fws:
                continue
            latencies = await latency_run(h, fw, sizes.latency, interval=sizes.latency_interval)
            per_run[fw].append(latency_summary(latencies))
            samples[fw].extend(1000 * x for x in latencies)
    return {
        "jobs": sizes.latency,
        "interval_ms": sizes.latency_interval * 1000,
        "ms": {
            fw: {q: summarize([run[q] for run in runs]) for q in ("p50", "p95", "p99")}
            for fw, runs in per_run.items()
        },
        "samples_ms": samples,
    }


async def _work_run(h: Harness, concurrency: int, jobs: int, fw: Framework) -> RunResult:
    return await burst_run(h, fw, jobs, sleep_ms=WORK_SLEEP_MS, concurrency=concurrency)


async def section_work(h: Harness, sizes: Sizes, fws: tuple[Framework, ...]) -> Any:
    rows = []
    for concurrency, jobs in sizes.work:
        runs = await _alternating(sizes, fws, functools.partial(_work_run, h, concurrency, jobs))
        ideal = concurrency / (WORK_SLEEP_MS / 1000)
        fractions = {fw: [r.jobs_per_second / ideal for r in rs] for fw, rs in runs.items()}
        rows.append(
            {
                "concurrency": concurrency,
                "jobs": jobs,
                "sleep_ms": WORK_SLEEP_MS,
                "ideal_jobs_per_second": ideal,
                "fraction_of_ideal": {fw: summarize(v) for fw, v in fractions.items()},
                "jobs_per_second": {
                    fw: summarize([r.jobs_per_second for r in rs]) for fw, rs in runs.items()
                },
                "max_active": {fw: max(r.max_active for r in rs) for fw, rs in runs.items()},
                "runs": [r.as_dict() for rs in runs.values() for r in rs],
            }
        )
    return rows


async def section_scale_out(h: Harness, sizes: Sizes, fws: tuple[Framework, ...]) -> Any:
    """Replicas dividing the jobs and racing for them, back to back (alternating)."""
    rows = []
    for replicas in sizes.replicas:
        runs: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
        for repeat in range(sizes.scale_repeats):
            for divide in (True, False) if repeat % 2 == 0 else (False, True):
                runs[divide].append(
                    await scale.scale_run(h, replicas, sizes.scale_jobs, divide=divide)
                )
        for divide, results in runs.items():
            rows.append(
                {
                    "replicas": replicas,
                    "mode": "divided" if divide else "racing",
                    "jobs": sizes.scale_jobs,
                    **{
                        field: summarize([r[field] for r in results])
                        for field in (
                            "jobs_per_second",
                            "requests_per_job",
                            "server_cpu_ms_per_job",
                            "service_cpu_ms_per_job",
                        )
                    },
                    "duplicates": [r["duplicates"] for r in results],
                    "load": [[r["load_before"], r["load_after"]] for r in results],
                    "runs": results,
                }
            )
    return rows


async def section_uneven(h: Harness, sizes: Sizes, fws: tuple[Framework, ...]) -> Any:
    """Long jobs handed to one replica first: short jobs' time, one replica vs two."""
    long_jobs, long_ms, short_jobs = sizes.uneven
    rows = []
    for repeat in range(sizes.scale_repeats):
        for replicas in (1, 2) if repeat % 2 == 0 else (2, 1):
            rows.append(
                await scale.uneven_run(
                    h, replicas, long_jobs=long_jobs, long_ms=long_ms, short_jobs=short_jobs
                )
            )
    return rows


async def section_takeover(h: Harness, sizes: Sizes, fws: tuple[Framework, ...]) -> Any:
    """Three replicas, one SIGKILLed mid-run."""
    jobs, sleep_ms = sizes.takeover
    return [
        await scale.takeover_run(h, jobs, sleep_ms=sleep_ms) for _ in range(sizes.scale_repeats)
    ]


JOB_SECTIONS: dict[str, Callable[[Harness, Sizes, tuple[Framework, ...]], Awaitable[Any]]] = {
    "throughput": section_throughput,
    "throughput_large": section_throughput_large,
    "backlog": section_backlog,
    "latency": section_latency,
    "work": section_work,
    "scale_out": section_scale_out,
    "uneven": section_uneven,
    "takeover": section_takeover,
}
SECTIONS = (*JOB_SECTIONS, "server", "client")
#: Sections run only when named with --only: ``long_haul`` (bench/long_haul.py)
#: takes a quarter of an hour or more, and writes its own long_haul.json/.png,
#: which the report then shows.
EXTRA_SECTIONS = ("long_haul",)


def _error(exc: BaseException) -> dict[str, str]:
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        return _error(exc.exceptions[0])
    text = str(exc) if isinstance(exc, BenchError) else f"{type(exc).__name__}: {exc}"
    return {"error": text, "traceback": "".join(traceback.format_exception(exc))[-4000:]}


async def run_job_sections(
    sizes: Sizes, wanted: list[str], log_dir: Path, node_problem: str | None
) -> dict[str, Any]:
    fws = _frameworks(node_problem)
    out: dict[str, Any] = {}
    for name in wanted:
        section = JOB_SECTIONS.get(name)
        if section is None:
            continue
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        began = time.perf_counter()
        try:
            async with bench_server(log_dir) as server:
                token = server.tokens["harness"]
                async with OADAClient(
                    server.url, token, verify=str(server.ca_cert), concurrency=16
                ) as oada:
                    out[name] = await section(Harness(server, oada, log_dir), sizes, fws)
        except Exception as exc:
            out[name] = _error(exc)
            print(f"[bench] {name} failed: {out[name]['error']}", file=sys.stderr, flush=True)
        print(
            f"[bench] {name} done in {time.perf_counter() - began:.0f} s",
            file=sys.stderr,
            flush=True,
        )
    return out


def run_external(name: str, quick: bool, log_dir: Path) -> Any:
    """``bench.<name>.run(quick=...)`` (owned by the server and client code) in a child."""
    print(f"[bench] {name} ...", file=sys.stderr, flush=True)
    began = time.perf_counter()
    timeout = EXTERNAL_TIMEOUT_QUICK if quick else EXTERNAL_TIMEOUT
    argv = [sys.executable, "-m", "bench.external", name, *(["--quick"] if quick else [])]
    result: Any
    try:
        done = subprocess.run(
            argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        result = {"error": f"bench/{name}.py did not finish within {timeout} s"}
    else:
        lines = done.stdout.strip().splitlines()
        try:
            result = json.loads(lines[-1]) if done.returncode == 0 and lines else None
        except ValueError:
            result = None
        if result is None:
            tail = "\n".join(done.stderr.strip().splitlines()[-6:])
            result = {"error": f"bench/{name}.py failed (exit status {done.returncode}): {tail}"}
    (log_dir / f"{name}.stderr.log").write_text(getattr(done, "stderr", "") or "")
    print(
        f"[bench] {name} done in {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True
    )
    return result


def run_long_haul(quick: bool, out: Path) -> None:
    """Run :mod:`bench.long_haul` and write long_haul.json/.png into *out*."""
    jobs, round_size = (2_000, 500) if quick else (long_haul.JOBS, long_haul.ROUND)
    print(f"[bench] long_haul ({jobs} jobs) ...", file=sys.stderr, flush=True)
    logs = Path(tempfile.mkdtemp(prefix="oada-bench-long-haul-"))
    result = anyio.run(long_haul.run, jobs, round_size, long_haul.BUDGET, logs)
    result["machine"] = machine()
    long_haul.write(result, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="output directory")
    parser.add_argument("--repeats", type=int, default=None, help="repeats per measurement")
    args = parser.parse_args(argv)
    wanted = [part.strip() for part in args.only.split(",") if part.strip()]
    known = (*SECTIONS, *EXTRA_SECTIONS)
    unknown = sorted(set(wanted) - set(known))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    sizes = QUICK if args.quick else FULL
    if args.repeats is not None:
        if args.repeats < 1:
            parser.error(f"expected --repeats >= 1, got {args.repeats}")
        sizes = Sizes(**{**sizes.__dict__, "repeats": args.repeats})

    if "long_haul" in wanted:
        run_long_haul(args.quick, args.out)
        wanted.remove("long_haul")
        if not wanted:
            # Only the long haul: the rest of the page as last measured.
            saved = args.out / "benchmarks.json"
            if saved.exists():
                report.write(json.loads(saved.read_text()), args.out)
            return 0

    node_problem = node_available()
    began = time.perf_counter()
    results: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "sizes": sizes.__dict__,
        "machine": machine(),
        "load_before": os.getloadavg(),
        "node_problem": node_problem,
        "notes": {"first_filing_race": FIRST_FILING_RACE},
    }
    with tempfile.TemporaryDirectory(prefix="oada-bench-logs-") as logs:
        results |= anyio.run(run_job_sections, sizes, wanted, Path(logs), node_problem)
        for name in ("server", "client"):
            if name in wanted:
                results[name] = run_external(name, args.quick, Path(logs))
    results["load_after"] = os.getloadavg()
    results["duration_s"] = time.perf_counter() - began

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "benchmarks.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    report.write(results, args.out)
    print(f"[bench] wrote {args.out / 'benchmarks.md'} in {results['duration_s']:.0f} s")
    failed = [
        name for name in wanted if isinstance(results.get(name), dict) and "error" in results[name]
    ]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
