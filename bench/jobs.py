"""The job framework benchmarks: oada-jobs versus the original @oada/jobs 1.0.4.

Both frameworks run as child processes against the same embedded server and
use the ``classic`` layout that @oada/jobs 1.0.4 knows: jobs are linked into
``/bookmarks/services/<name>/jobs`` and filed under
``jobs-success/day-index/<date>``. Each run uses a fresh service name, so the
two never share a list.

A job is created as @oada/jobs' ``postJob`` does (``POST /resources`` with
the job, content type ``application/vnd.oada.service.jobs.1+json``) and
queued by linking it into the list. Job resources are created before the
clock starts; what is timed is linking (100 keys a PUT, as fast as the server
takes them) until the last job has left the list; each framework removes a
job from the list as its last step, after filing it under ``jobs-success``.
The end is the server's time of that last removal (see :class:`ListDrain`);
the success lists are checked afterwards.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import anyio

from oada_jobs._ksuid import ksuid
from oada_jobs.client import OADAClient
from oada_jobs.exceptions import NotFound

from .common import (
    NODE_SERVICE,
    BenchError,
    BenchServer,
    ChildProcess,
    RssSampler,
    child_process,
    count_delta,
    cpu_seconds,
    percentile,
)

Framework = Literal["python", "node"]
Layout = Literal["classic", "pending"]
FRAMEWORKS: tuple[Framework, ...] = ("python", "node")
LABELS: dict[Framework, str] = {"python": "oada-jobs (Python)", "node": "@oada/jobs 1.0.4 (Node)"}

JOBS_TYPE = "application/vnd.oada.service.jobs.1+json"
JOB_TYPE = "bench"
#: Keys per link PUT when a batch of jobs is queued.
LINK_CHUNK = 100
#: In-flight requests of the harness while it creates job resources.
CREATE_CONCURRENCY = 32
#: Seconds between the harness's looks at a list it waits to see empty.
POLL_INTERVAL = 0.02

_names = itertools.count(1)

#: What goes wrong when @oada/jobs 1.0.4 files its first jobs concurrently.
FIRST_FILING_RACE = (
    "@oada/jobs 1.0.4 files each finished job with a tree PUT of "
    "jobs-success/day-index/<date> (@oada/client 1.1.4). When several jobs finish "
    "before that day list exists, each runner creates its own list resources and "
    "links them with If-Match; the losers get 412 and retry, but the retry skips the "
    "day-list level and re-PUTs its stale link onto the now existing jobs-success, "
    "which any OADA server rejects (422: body _id differs from the resource's). The "
    "runner then catches that error and re-files the job, whose work succeeded, as a "
    "failure (and when that filing races too, the rejection goes unhandled and ends the "
    "Node process). This is in the old package, not the server; the benchmarks run one "
    "warm-up job through every service before timing so the day list exists."
)


def order(repeat: int) -> tuple[Framework, Framework]:
    """Which framework goes first in repeat *repeat*: alternate, so drift hits both."""
    return ("python", "node") if repeat % 2 == 0 else ("node", "python")


@dataclass
class Harness:
    """What every benchmark needs: the server, a client of its own, a log directory."""

    server: BenchServer
    oada: OADAClient
    log_dir: Path
    #: Stop waiting for a run after this many seconds per job (at least 60 s).
    seconds_per_job: float = 0.05

    def timeout_for(self, jobs: int, sleep_ms: int = 0, concurrency: int = 10) -> float:
        """A generous bound on one run: the benchmark fails instead of hanging."""
        ideal = jobs * sleep_ms / 1000 / max(concurrency, 1)
        return max(60.0, jobs * self.seconds_per_job + 3 * ideal)

    def service_argv_env(
        self,
        framework: Framework,
        name: str,
        *,
        sleep_ms: int,
        concurrency: int,
        layout: Layout = "classic",
        extra_env: Mapping[str, str] | None = None,
    ) -> tuple[list[str], dict[str, str]]:
        """Command line and environment of one service process."""
        env = {
            "OADA_DOMAIN": self.server.url,
            "BENCH_SERVICE": name,
            "BENCH_JOB_TYPE": JOB_TYPE,
            "BENCH_SLEEP_MS": str(sleep_ms),
            "BENCH_CONCURRENCY": str(concurrency),
            **(extra_env or {}),
        }
        if framework == "python":
            env |= {
                "OADA_TOKEN": self.server.tokens["service"],
                "SSL_CERT_FILE": str(self.server.ca_cert),
                "BENCH_LAYOUT": layout,
            }
            return [sys.executable, "-m", "bench.py_service"], env
        if layout != "classic":
            raise ValueError("@oada/jobs 1.0.4 only knows the classic layout")
        env |= {
            "OADA_TOKEN": self.server.tokens["node"],
            # @oada/client 1.1.4 only speaks wss://: trust the server's dev CA.
            "NODE_EXTRA_CA_CERTS": str(self.server.ca_cert),
            # The Service's own `concurrency`: in-flight OADA requests.
            "BENCH_REQUESTS": str(concurrency),
        }
        return ["node", str(NODE_SERVICE)], env

    @asynccontextmanager
    async def services(
        self,
        framework: Framework,
        name: str,
        *,
        sleep_ms: int = 0,
        concurrency: int = 10,
        replicas: int = 1,
        wait_ready: bool = True,
        warm_up: bool = True,
        layout: Layout = "classic",
        extra_env: Mapping[str, str] | None = None,
    ) -> AsyncIterator[list[ChildProcess]]:
        """Run *replicas* service processes; by default wait until each is watching.

        With *warm_up* one job is run through the service before this yields:
        the first finished job creates the ``jobs-success`` day list, and
        @oada/jobs 1.0.4 cannot create it from several jobs at once (see
        :data:`FIRST_FILING_RACE`), so both frameworks start timed runs with
        their lists in place, as a long-running service has them.
        """
        argv, env = self.service_argv_env(
            framework,
            name,
            sleep_ms=sleep_ms,
            concurrency=concurrency,
            layout=layout,
            extra_env=extra_env,
        )
        async with AsyncExitStack() as stack:
            children = [
                await stack.enter_async_context(
                    child_process(f"{framework}-{name}-{i}", argv, env=env, log_dir=self.log_dir)
                )
                for i in range(replicas)
            ]
            if wait_ready:
                for child in children:
                    await child.expect("ready", 60)
                if warm_up:
                    await self.run_one(name, layout)
            yield children

    async def run_one(self, name: str, layout: Layout = "classic") -> None:
        """Queue one job on service *name* and wait until it has left the list."""
        path = list_path(name, layout)
        drain = ListDrain(self.oada, path)
        await drain.link(await create_jobs(self.oada, name, 1))
        await drain.wait_gone(60)


def new_service_name(framework: Framework) -> str:
    """A service name not used before in this process."""
    return f"bench-{framework}-{next(_names)}-{ksuid()[-6:].lower()}"


async def members(oada: OADAClient, name: str) -> dict[str, str]:
    """The replicas announced in ``/bookmarks/services/<name>/workers``: key -> worker id."""
    try:
        listing = (await oada.get(f"/bookmarks/services/{name}/workers")).data
    except NotFound:
        return {}
    return {
        key: str(value.get("worker"))
        for key, value in listing.items()
        if not key.startswith("_") and isinstance(value, dict)
    }


async def wait_members(oada: OADAClient, name: str, count: int, timeout: float = 30) -> None:
    """Wait until *count* replicas have announced themselves (and a moment for
    the others' watches to tell each of them)."""
    with anyio.fail_after(timeout):
        while len(await members(oada, name)) < count:
            await anyio.sleep(POLL_INTERVAL)
    await anyio.sleep(0.2)


def list_path(name: str, layout: Layout = "classic") -> str:
    """The list jobs are queued on for service *name*."""
    return f"/bookmarks/services/{name}/{'jobs' if layout == 'classic' else 'jobs/pending'}"


def filed_path(name: str, status: str, layout: Layout = "classic") -> str:
    """Parent of the day lists jobs finished with *status* are filed under."""
    base = f"jobs-{status}" if layout == "classic" else f"jobs/{status}"
    return f"/bookmarks/services/{name}/{base}/day-index"


async def create_jobs(
    oada: OADAClient,
    name: str,
    count: int,
    *,
    job_type: str = JOB_TYPE,
    config: Mapping[str, Any] | None = None,
) -> list[str]:
    """Create *count* job resources (not queued yet); return their ids in order."""
    ids: list[str | None] = [None] * count
    limiter = anyio.CapacityLimiter(CREATE_CONCURRENCY)

    async def create(i: int) -> None:
        async with limiter:
            job = {"service": name, "type": job_type, "config": {**(config or {}), "i": i}}
            ids[i] = await oada.create_resource(job, content_type=JOBS_TYPE)

    async with anyio.create_task_group() as group:
        for i in range(count):
            group.start_soon(create, i)
    return [job_id for job_id in ids if job_id is not None]


class ListDrain:
    """Queues jobs on a pending list and tells when they have all left it, and when.

    It does not watch the list. A watch would make the server send, and the
    harness read, one change message per job: work on the measured machine
    that weighs most on the faster framework's runs. Instead it polls the
    list's ``_rev``, a few bytes. Every link PUT and every removal is one
    write to the list, so once the rev shows as many writes as that, the
    list itself is read to check. The time returned is the server's own
    time of the list's last change (``_meta/modified``), so the polling
    interval does not blur it.
    """

    def __init__(self, oada: OADAClient, path: str, *, interval: float = POLL_INTERVAL) -> None:
        self._oada = oada
        self._path = path
        self._interval = interval
        self._keys: dict[str, str] = {}
        self._puts = 0
        self._start_rev: int | None = None

    async def start(self) -> None:
        """Note the list's rev before the first link (else the first :meth:`link` does)."""
        self._start_rev = await self._rev()

    async def link(
        self,
        ids: Sequence[str],
        *,
        chunk: int = LINK_CHUNK,
        keys_from: Callable[[], str] = ksuid,
    ) -> dict[str, str]:
        """Queue *ids*, *chunk* keys a PUT, in order, each under a key from
        *keys_from*; return ``{key: id}``."""
        if self._start_rev is None:
            await self.start()
        keys: dict[str, str] = {}
        for start in range(0, len(ids), chunk):
            body = {}
            for job_id in ids[start : start + chunk]:
                key = keys_from()
                keys[key] = job_id
                body[key] = {"_id": job_id}
            await self._oada.put(self._path, body, content_type=JOBS_TYPE)
            self._puts += 1
        self._keys.update(keys)
        return keys

    async def wait_gone(self, timeout: float) -> float:
        """Wait until every linked job has left the list; return the server's time of that.

        The time is seconds since the epoch, as ``time.time()``.
        """
        wanted = set(self._keys)
        due = (self._start_rev or 0) + self._puts + len(wanted)
        left = len(wanted)
        try:
            with anyio.fail_after(timeout):
                for polls in itertools.count():
                    # The rev alone could miss a framework that writes to the
                    # list more than once a job; then a full read now and then.
                    if await self._rev() >= due or polls % 50 == 49:
                        listing = (await self._oada.get(self._path)).data
                        left = len(wanted & listing.keys())
                        if not left:
                            modified = await self._oada.get(f"{self._path}/_meta/modified")
                            return float(modified.data)
                    await anyio.sleep(self._interval)
        except TimeoutError:
            pass
        raise BenchError(f"{left} of {len(wanted)} jobs were still queued after {timeout:.0f} s")

    async def _rev(self) -> int:
        try:
            return int((await self._oada.get(f"{self._path}/_rev")).data)
        except NotFound:
            return 0


async def filed_jobs(
    oada: OADAClient, name: str, status: str, layout: Layout = "classic"
) -> set[str]:
    """Job ids filed under the *status* day lists of service *name*."""
    base = filed_path(name, status, layout)
    try:
        days = (await oada.get(base)).data
    except NotFound:
        return set()
    found: set[str] = set()
    if not isinstance(days, dict):
        return found
    for day in days:
        if day.startswith("_"):
            continue
        listing = (await oada.get(f"{base}/{day}")).data
        if isinstance(listing, dict):
            found |= {
                value["_id"]
                for key, value in listing.items()
                if not key.startswith("_") and isinstance(value, dict) and "_id" in value
            }
    return found


async def check_filed(
    oada: OADAClient, name: str, ids: Sequence[str], layout: Layout = "classic"
) -> None:
    """Raise :class:`BenchError` unless every job is in the success list and none failed."""
    success = await filed_jobs(oada, name, "success", layout)
    failure = await filed_jobs(oada, name, "failure", layout)
    missing = set(ids) - success
    if missing or failure:
        raise BenchError(
            f"service {name}: {len(missing)} of {len(ids)} jobs not in jobs-success, "
            f"{len(failure)} in jobs-failure"
        )


def _ran(exits: Sequence[dict[str, Any] | None]) -> tuple[int, int]:
    """(work function calls, distinct jobs) over the exit reports of all replicas."""
    runs = 0
    distinct: set[str] = set()
    for report in exits:
        if report is None:
            continue
        jobs = report.get("jobs") or []
        runs += len(jobs)
        distinct.update(jobs)
    return runs, len(distinct)


@dataclass
class RunResult:
    """One timed run of one framework."""

    framework: Framework
    jobs: int
    seconds: float
    requests: int
    runs: int
    distinct: int
    peak_rss: int = 0
    max_active: int = 0
    #: CPU seconds the service process(es) and the server used while timed.
    service_cpu: float = 0.0
    server_cpu: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def jobs_per_second(self) -> float:
        return self.jobs / self.seconds

    def as_dict(self) -> dict[str, Any]:
        return {
            "framework": self.framework,
            "jobs": self.jobs,
            "seconds": self.seconds,
            "jobs_per_second": self.jobs_per_second,
            "requests_per_job": self.requests / self.jobs,
            "runs": self.runs,
            "duplicates": self.runs - self.distinct,
            "peak_rss_mib": self.peak_rss / 2**20,
            "max_active": self.max_active,
            "service_cpu_ms_per_job": 1000 * self.service_cpu / self.jobs,
            "server_cpu_ms_per_job": 1000 * self.server_cpu / self.jobs,
            **self.extra,
        }


def _cpu_now(sampler: RssSampler) -> float:
    sampler.sample()
    return sampler.cpu


def _token_label(framework: Framework) -> str:
    return "service" if framework == "python" else "node"


async def burst_run(
    h: Harness,
    framework: Framework,
    jobs: int,
    *,
    sleep_ms: int = 0,
    concurrency: int = 10,
    replicas: int = 1,
    layout: Layout = "classic",
    extra_env: Mapping[str, str] | None = None,
) -> RunResult:
    """Queue *jobs* at once on running service(s); time until all have left the list."""
    name = new_service_name(framework)
    path = list_path(name, layout)
    async with h.services(
        framework,
        name,
        sleep_ms=sleep_ms,
        concurrency=concurrency,
        replicas=replicas,
        layout=layout,
        extra_env=extra_env,
    ) as children:
        if replicas > 1 and framework == "python" and (extra_env or {}).get("BENCH_DIVIDE") != "0":
            await wait_members(h.oada, name, replicas)
        ids = await create_jobs(h.oada, name, jobs)
        samplers = [RssSampler(child.pid) for child in children]
        drain = ListDrain(h.oada, path)
        await drain.start()
        async with anyio.create_task_group() as group:
            for sampler in samplers:
                group.start_soon(sampler.run)
            before = await h.server.counts()
            cpu_before = [_cpu_now(sampler) for sampler in samplers]
            server_cpu = cpu_seconds(h.server.pid)
            started = time.time()
            await drain.link(ids)
            finished = await drain.wait_gone(h.timeout_for(jobs, sleep_ms, concurrency * replicas))
            server_cpu = cpu_seconds(h.server.pid) - server_cpu
            service_cpu = sum(
                _cpu_now(sampler) - cpu for sampler, cpu in zip(samplers, cpu_before, strict=True)
            )
            after = await h.server.counts()
            group.cancel_scope.cancel()
        exits = [await child.stop() for child in children]
    await check_filed(h.oada, name, ids, layout)
    runs, distinct = _ran(exits)
    return RunResult(
        framework=framework,
        jobs=jobs,
        seconds=finished - started,
        requests=count_delta(before, after, _token_label(framework)),
        runs=runs,
        distinct=distinct,
        peak_rss=max(sampler.peak for sampler in samplers),
        max_active=max(int((report or {}).get("max_active", 0)) for report in exits),
        service_cpu=service_cpu,
        server_cpu=server_cpu,
        extra={
            "replicas": replicas,
            "sleep_ms": sleep_ms,
            "concurrency": concurrency,
            "layout": layout,
        },
    )


async def backlog_run(
    h: Harness, framework: Framework, jobs: int, *, concurrency: int = 10
) -> RunResult:
    """Start a service on a list already holding *jobs*; time from process start to empty.

    The service runs once first (so it creates its own tree) and is stopped;
    then the jobs are queued and a fresh process is started. Start-up
    (interpreter, imports, connecting) is inside the time. Peak RSS of the
    service process is sampled every 20 ms.
    """
    name = new_service_name(framework)
    path = list_path(name)
    async with h.services(framework, name, concurrency=concurrency) as children:
        for child in children:
            await child.stop()
    ids = await create_jobs(h.oada, name, jobs)
    drain = ListDrain(h.oada, path)
    await drain.link(ids, chunk=1000)
    before = await h.server.counts()
    server_cpu = cpu_seconds(h.server.pid)
    started = time.time()
    async with h.services(framework, name, concurrency=concurrency, wait_ready=False) as children:
        sampler = RssSampler(children[0].pid)
        async with anyio.create_task_group() as group:
            group.start_soon(sampler.run)
            finished = await drain.wait_gone(h.timeout_for(jobs, 0, concurrency))
            server_cpu = cpu_seconds(h.server.pid) - server_cpu
            service_cpu = _cpu_now(sampler)
            after = await h.server.counts()
            group.cancel_scope.cancel()
        exits = [await child.stop() for child in children]
    await check_filed(h.oada, name, ids)
    runs, distinct = _ran(exits)
    return RunResult(
        framework=framework,
        jobs=jobs,
        seconds=finished - started,
        requests=count_delta(before, after, _token_label(framework)),
        runs=runs,
        distinct=distinct,
        peak_rss=sampler.peak,
        max_active=max(int((report or {}).get("max_active", 0)) for report in exits),
        service_cpu=service_cpu,
        server_cpu=server_cpu,
    )


def _started_at(job: Any) -> float | None:
    """Epoch seconds of the job's first ``started`` update, if it has one."""
    updates = job.get("updates") if isinstance(job, dict) else None
    if not isinstance(updates, dict):
        return None
    times = []
    for update in updates.values():
        if isinstance(update, dict) and update.get("status") == "started":
            try:
                moment = datetime.fromisoformat(str(update.get("time")).replace("Z", "+00:00"))
            except ValueError:
                continue
            times.append(moment.timestamp())
    return min(times) if times else None


async def latency_run(
    h: Harness, framework: Framework, jobs: int, *, interval: float = 0.02
) -> list[float]:
    """Queue *jobs* one at a time, *interval* apart; return each pickup latency (seconds).

    Latency is from just before the link PUT is sent to the time in the job's
    ``started`` update (both frameworks write one as they take the job; the
    clocks are the same machine's).
    """
    name = new_service_name(framework)
    path = list_path(name)
    async with h.services(framework, name) as children:
        ids = await create_jobs(h.oada, name, jobs)
        sent: dict[str, float] = {}
        drain = ListDrain(h.oada, path)
        await drain.start()
        for job_id in ids:
            sent[job_id] = time.time()
            await drain.link([job_id])
            await anyio.sleep(interval)
        await drain.wait_gone(h.timeout_for(jobs))
        for child in children:
            await child.stop()
    latencies = []
    for job_id in ids:
        started = _started_at((await h.oada.get(f"/{job_id}")).data)
        if started is None:
            raise BenchError(f"{framework}: job {job_id} has no 'started' update")
        latencies.append(started - sent[job_id])
    return latencies


def latency_summary(latencies: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99 in milliseconds."""
    return {f"p{q}": percentile(latencies, q) * 1000 for q in (50, 95, 99)}
