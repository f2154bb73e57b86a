"""Run an :class:`oada_jobs.Service` with a benchmark worker, as a child process.

The Python twin of ``bench/node/oada_jobs_service.cjs``: the same environment
variables and the same stdout protocol, so :mod:`bench.jobs` drives both
frameworks the same way.

Environment (the token never goes on the command line):

``OADA_DOMAIN``, ``OADA_TOKEN``
    the server and the service token; the server's development CA is
    trusted through ``SSL_CERT_FILE``, as a deployment with a private CA
    would do, so the service opens its own client as users' services do;
``BENCH_LAYOUT``
    ``classic`` (default) or ``pending``;
``BENCH_SERVICE``, ``BENCH_JOB_TYPE``
    service name and the job type the worker is registered for;
``BENCH_SLEEP_MS``
    milliseconds each job sleeps (0: a no-op worker);
``BENCH_CONCURRENCY``
    jobs running at once (the service's ``concurrency``);
``BENCH_DIVIDE``
    ``1`` (default): replicas divide the jobs; ``0``: every replica reads
    every job and the claims decide (the behaviour before division);
``BENCH_MEMBER_LEASE``, ``BENCH_LEASE``, ``BENCH_STEAL_AFTER``
    seconds: the replica's member lease, the job lease, the stealing bound;
``BENCH_LAG_FILE``
    where the event-loop stall probe writes (:mod:`bench.lag`; none if unset);
``BENCH_RECORD_IDS``
    ``0`` to count the jobs run without keeping their ids (the exit report's
    ``jobs`` is then empty): the long haul runs too many to keep.

A job's ``config.sleep_ms`` overrides ``BENCH_SLEEP_MS`` for that job.

stdout, one JSON object a line: ``{"event": "ready"}`` once every queue is
watched, and on SIGTERM/SIGINT ``{"event": "exit", "runs": n, "jobs": [...],
"max_active": k}`` after a graceful stop.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

import anyio

from oada_jobs import Job, Service, WorkerContext
from oada_jobs.types import Json

from .lag import probe_from_env
from .loop import run


def _emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def _env(name: str, default: str | None = None) -> str:
    value = os.environ.get(name) or default
    if value is None:
        raise SystemExit(f"missing environment variable {name}")
    return value


def _int_env(name: str, default: int) -> int:
    raw = _env(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"expected an integer in {name}, got {raw!r}") from None
    if value < 0:
        raise SystemExit(f"expected a non-negative integer in {name}, got {value}")
    return value


async def main() -> None:
    """Start the service, report readiness, run until SIGTERM, report what ran."""
    domain = _env("OADA_DOMAIN")
    token = _env("OADA_TOKEN")
    layout = _env("BENCH_LAYOUT", "classic")
    if layout not in ("classic", "pending"):
        raise SystemExit(f"expected BENCH_LAYOUT classic or pending, got {layout!r}")
    name = _env("BENCH_SERVICE")
    job_type = _env("BENCH_JOB_TYPE", "bench")
    sleep = _int_env("BENCH_SLEEP_MS", 0) / 1000
    concurrency = max(1, _int_env("BENCH_CONCURRENCY", 10))
    divide = _int_env("BENCH_DIVIDE", 1) == 1
    member_lease = _int_env("BENCH_MEMBER_LEASE", 10)
    lease = _int_env("BENCH_LEASE", 60)
    steal_after = _int_env("BENCH_STEAL_AFTER", 2)
    record_ids = _int_env("BENCH_RECORD_IDS", 1) != 0

    ran: list[str] = []
    runs = 0
    active = 0
    max_active = 0

    service = Service(
        name,
        domain=domain,
        token=token,
        concurrency=concurrency,
        layout="pending" if layout == "pending" else "classic",
        divide_work=divide,
        member_lease=max(member_lease, 1),
        lease=max(lease, 1),
        steal_after=max(steal_after, 1),
    )

    @service.on(job_type, timeout=60)
    async def work(job: Job[Any], ctx: WorkerContext) -> Json:
        nonlocal active, max_active, runs
        active += 1
        max_active = max(max_active, active)
        try:
            runs += 1
            if record_ids:
                ran.append(ctx.job_id)
            config = job.config if isinstance(job.config, dict) else {}
            seconds = config.get("sleep_ms", sleep * 1000) / 1000
            if seconds:
                await anyio.sleep(seconds)
            return {"ok": True}
        finally:
            active -= 1

    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with service, anyio.create_task_group() as group:
            group.start_soon(probe_from_env)
            _emit({"event": "ready"})
            async for _ in signals:
                break
            group.cancel_scope.cancel()
    _emit({"event": "exit", "runs": runs, "jobs": ran, "max_active": max_active})


if __name__ == "__main__":
    run(main)
