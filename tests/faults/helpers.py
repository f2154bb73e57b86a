"""Shared pieces of the fault tests: posting many jobs, waiting for them, checking outcomes.

Every fault test ends with :func:`check_all_filed`: each posted job is in
exactly one of the success/failure day lists, the pending list is empty, and
the job resource says the same as the list it is filed in.
"""

from __future__ import annotations

import os
import sys
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process, TaskGroup
from prometheus_client import CollectorRegistry

from oada_jobs import Service
from oada_jobs._ksuid import ksuid
from oada_jobs.client import OADAClient
from oada_jobs.exceptions import OADAError
from oada_jobs.tree import JOBS_TYPE, get_layout

LAYOUT = get_layout("classic")
ROOT = Path(__file__).resolve().parents[2]


def service_name() -> str:
    """A fresh service name so tests sharing a server never see each other's jobs."""
    return f"faults-{ksuid()[-12:].lower()}"


def today() -> str:
    return datetime.now(UTC).date().isoformat()


def pending_path(name: str) -> str:
    return LAYOUT.pending_path(name)


def day_path(name: str, status: str) -> str:
    return LAYOUT.day_index_path(name, status, datetime.now(UTC).date())


def job_keys(listing: object) -> set[str]:
    if not isinstance(listing, Mapping):
        return set()
    return {key for key in listing if not key.startswith("_")}


async def post_jobs(
    oada: OADAClient,
    name: str,
    count: int,
    *,
    job_type: str = "noop",
    config: Mapping[str, Any] | None = None,
    batch: int = 50,
    first: int = 0,
) -> list[str]:
    """Create *count* job resources and link them into the pending list in batches.

    Returns the job keys (``resources/<key>`` is the job id). Each job's
    config gets ``n``: its index, so results can be matched to jobs.
    """
    keys = [ksuid() for _ in range(count)]
    limiter = anyio.CapacityLimiter(20)

    async def create(index: int, key: str) -> None:
        async with limiter:
            body = {
                "service": name,
                "type": job_type,
                "config": {**(config or {}), "n": first + index},
            }
            await oada.put(f"/resources/{key}", body, content_type=JOBS_TYPE)

    for start in range(0, count, batch):
        chunk = keys[start : start + batch]
        async with anyio.create_task_group() as tg:
            for offset, key in enumerate(chunk):
                tg.start_soon(create, start + offset, key)
        links = {key: {"_id": f"resources/{key}"} for key in chunk}
        await oada.put(pending_path(name), links, tree=LAYOUT.tree)
    return keys


async def list_keys(oada: OADAClient, path: str) -> set[str]:
    try:
        return job_keys((await oada.get(path)).data)
    except OADAError as error:
        if getattr(error, "status", None) == 404:
            return set()
        raise


async def wait_pending_empty(oada: OADAClient, name: str, timeout: float) -> None:
    """Wait (watching the list) until the pending list has no job keys left."""
    path = pending_path(name)
    with anyio.fail_after(timeout):
        while True:
            response = await oada.get(path)
            if not job_keys(response.data):
                return
            try:
                async with oada.watch(path, rev=response.rev) as changes:
                    async for _change in changes:
                        if not job_keys((await oada.get(path)).data):
                            return
            except OADAError:
                # The watch was lost (server restart); look again.
                await anyio.sleep(0.2)


async def wait_until(predicate: Any, timeout: float, interval: float = 0.05) -> None:
    """Poll *predicate* (sync or async) until true, for state that cannot be watched
    (a file another process appends to)."""
    with anyio.fail_after(timeout):
        while True:
            value = predicate()
            if hasattr(value, "__await__"):
                value = await value
            if value:
                return
            await anyio.sleep(interval)


@dataclass
class Outcome:
    success: set[str]
    failure: set[str]
    pending: set[str]
    bodies: dict[str, dict[str, Any]] = field(default_factory=dict)


async def collect(oada: OADAClient, name: str, keys: Iterable[str] | None = None) -> Outcome:
    """Read the lists (and, with *keys*, every job resource)."""
    outcome = Outcome(
        success=await list_keys(oada, day_path(name, "success")),
        failure=await list_keys(oada, day_path(name, "failure")),
        pending=await list_keys(oada, pending_path(name)),
    )
    if keys is not None:
        limiter = anyio.CapacityLimiter(20)

        async def read(key: str) -> None:
            async with limiter:
                data = (await oada.get(f"/resources/{key}")).data
                outcome.bodies[key] = dict(data) if isinstance(data, Mapping) else {"_raw": data}

        async with anyio.create_task_group() as tg:
            for key in keys:
                tg.start_soon(read, key)
    return outcome


async def check_all_filed(
    oada: OADAClient, name: str, keys: list[str], *, expect_failures: Iterable[str] = ()
) -> Outcome:
    """Assert: every job in exactly one list, the queue empty, the resources agree."""
    outcome = await collect(oada, name, keys)
    posted = set(keys)
    failures = set(expect_failures)
    assert outcome.pending == set(), f"{len(outcome.pending)} jobs still pending"
    assert not (outcome.success & outcome.failure), "a job is in both lists"
    missing = posted - outcome.success - outcome.failure
    assert not missing, f"{len(missing)} jobs lost (in no list), e.g. {sorted(missing)[:3]}"
    assert outcome.failure & posted == failures, (
        f"unexpected failures: {sorted((outcome.failure & posted) - failures)[:5]}; "
        f"results: {[outcome.bodies[k].get('result') for k in sorted((outcome.failure & posted) - failures)[:2]]}"
    )
    for key in posted:
        body = outcome.bodies[key]
        expected = "failure" if key in failures else "success"
        assert body.get("status") == expected, (key, body.get("status"), body.get("result"))
        if expected == "success":
            assert body.get("result") == {"n": body["config"]["n"]}, (key, body.get("result"))
    return outcome


# ------------------------------------------------------------------ run records


@dataclass(frozen=True)
class Run:
    """One run of a work function as recorded by ``service_main``."""

    job: str
    worker: str
    start: float
    end: float | None


def read_runs(record: Path) -> list[Run]:
    """Parse a record file: lines ``start|end <job> <worker> <unix time>``."""
    starts: dict[tuple[str, str], list[float]] = defaultdict(list)
    ends: dict[tuple[str, str], list[float]] = defaultdict(list)
    if not record.exists():
        return []
    for line in record.read_text().splitlines():
        parts = line.split()
        if len(parts) != 4:
            continue
        event, job, worker, moment = parts
        (starts if event == "start" else ends)[(job, worker)].append(float(moment))
    runs = []
    for (job, worker), times in starts.items():
        finished = sorted(ends.get((job, worker), []))
        for index, start in enumerate(sorted(times)):
            runs.append(Run(job, worker, start, finished[index] if index < len(finished) else None))
    return runs


def run_counts(record: Path) -> Counter[str]:
    return Counter(run.job for run in read_runs(record))


def count_lines(record: Path, event: str = "start") -> int:
    if not record.exists():
        return 0
    return sum(1 for line in record.read_text().splitlines() if line.startswith(event + " "))


# ------------------------------------------------------------------ service processes


class ServiceProcess:
    """A ``tests.faults.service_main`` child process that can be SIGKILLed."""

    def __init__(
        self, domain: str, token: str, name: str, record: Path, worker: str, **options: Any
    ) -> None:
        self.worker = worker
        self.args = [
            sys.executable,
            "-m",
            "tests.faults.service_main",
            "--domain",
            domain,
            "--name",
            name,
            "--record",
            str(record),
            "--worker",
            worker,
        ]
        for option, value in options.items():
            self.args += [f"--{option.replace('_', '-')}", str(value)]
        self.env = {**os.environ, "FAULTS_SERVICE_TOKEN": token, "PYTHONUNBUFFERED": "1"}
        self.process: Process | None = None
        self.output = b""

    async def start(self) -> None:
        self.process = await anyio.open_process(
            self.args, env=self.env, cwd=ROOT, stderr=-2
        )  # -2: subprocess.STDOUT
        assert self.process.stdout is not None
        with anyio.fail_after(30):
            async for chunk in self.process.stdout:
                self.output += chunk
                if b"READY" in self.output:
                    return
        raise RuntimeError(f"service process exited early:\n{self.output.decode()}")

    async def drain(self) -> None:
        """Keep reading the child's output so it never blocks on a full pipe."""
        assert self.process is not None
        assert self.process.stdout is not None
        try:
            async for chunk in self.process.stdout:
                self.output += chunk
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass

    async def kill(self) -> None:
        assert self.process is not None
        self.process.kill()  # SIGKILL
        await self.process.wait()

    async def stop(self) -> None:
        process = self.process
        if process is None:
            return
        if process.returncode is None:
            process.terminate()
            with anyio.move_on_after(15):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
        await process.aclose()


# ------------------------------------------------------------------ harness

#: Options that keep an in-process test service fast: no periodic sweep, quick retries.
FAST: dict[str, Any] = {"sweep_interval": 3600, "retry_initial": 0.05, "retry_max": 0.2}


def make_service(name: str, server: Any, token: str | None = None, **options: Any) -> Service:
    """An in-process service on *server* with fast test options and its own metrics registry."""
    return Service(
        name,
        domain=server.url,
        token=token or server.token,
        metrics_registry=CollectorRegistry(),
        **{**FAST, **options},
    )


def fleet(
    server_url: str, token: str, name: str, record: Path, workers: Iterable[str], **options: Any
) -> dict[str, ServiceProcess]:
    """Service processes named by *workers*, all on one queue and one record file."""
    return {
        worker: ServiceProcess(server_url, token, name, record, worker, **options)
        for worker in workers
    }


@asynccontextmanager
async def running(
    *services: ServiceProcess, later: Iterable[ServiceProcess] = ()
) -> AsyncIterator[TaskGroup]:
    """Start the service processes, keep their output drained, stop them on exit.

    *later* are services the block starts itself (with :func:`start_again`);
    they are stopped on exit too. Yields a task group for background work.
    """
    try:
        async with anyio.create_task_group() as tg:
            for service in services:
                await service.start()
                tg.start_soon(service.drain)
            yield tg
            tg.cancel_scope.cancel()
    finally:
        for service in (*services, *later):
            await service.stop()


async def start_again(tg: TaskGroup, service: ServiceProcess) -> None:
    """Start a (new) service process inside a :func:`running` block."""
    await service.start()
    tg.start_soon(service.drain)


def post_in_background(
    tg: TaskGroup, oada: OADAClient, name: str, count: int, **options: Any
) -> list[str]:
    """Post *count* jobs in a background task; the returned list fills when done."""
    keys: list[str] = []

    async def post() -> None:
        keys.extend(await post_jobs(oada, name, count, **options))

    tg.start_soon(post)
    return keys


async def finish(
    oada: OADAClient,
    name: str,
    keys: list[str],
    count: int,
    *survivors: ServiceProcess,
    timeout: float = 90,
) -> Outcome:
    """Wait until all *count* jobs are posted and the queue is empty, then check
    every job is filed once and the *survivors* are still running."""
    await wait_until(lambda: len(keys) == count, 60)
    await wait_pending_empty(oada, name, timeout=timeout)
    outcome = await check_all_filed(oada, name, keys)
    for service in survivors:
        assert service.process is not None
        assert service.process.returncode is None, f"service {service.worker} died"
    return outcome


def check_runs(record: Path, keys: list[str], *, max_extra: int) -> int:
    """Check every job ran and at most *max_extra* ran again; returns how many extra runs there were."""
    runs = read_runs(record)
    assert {run.job for run in runs} == {f"resources/{key}" for key in keys}
    extra = len(runs) - len(keys)
    assert extra <= max_extra, f"{extra} extra runs"
    return extra
