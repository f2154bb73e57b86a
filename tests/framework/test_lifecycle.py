"""Starting, stopping, restarting and sharing a queue between replicas."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from oada_jobs import Job, Json, Service, ServiceState, WorkerContext
from oada_jobs.client import OADAClient
from oada_jobs.testing import embedded_server, post_job, wait_for_job
from oada_jobs.tree import get_layout

from .conftest import LogWaiter, key_of, today, wait_list_empty

CLASSIC = get_layout("classic")


async def test_stop_lets_running_jobs_finish_within_the_grace_period(
    make_service: Callable[..., Service], oada: OADAClient, name: str, logs: LogWaiter
) -> None:
    service = make_service()
    started, release = anyio.Event(), anyio.Event()

    @service.on("wait", 10)
    async def wait(job: Job, ctx: WorkerContext) -> Json:
        started.set()
        await release.wait()
        return {"finished": True}

    async with anyio.create_task_group() as group:
        await group.start(partial(service.run, handle_signals=False))
        job_id = await post_job(oada, name, "wait", {})
        with anyio.fail_after(10):
            await started.wait()
        group.start_soon(partial(service.stop, grace=10))
        await logs.wait_for(lambda r: r.getMessage() == f"service {name}: stopping")
        assert service.state is ServiceState.STOPPING
        release.set()
    assert service.state is ServiceState.STOPPED
    assert (await oada.get(f"/{job_id}")).data["status"] == "success"
    with pytest.raises(RuntimeError, match="can be started once"):
        await service.start()


async def test_a_restart_resumes_the_backlog_and_reruns_jobs_cut_off_at_shutdown(
    make_service: Callable[..., Service], oada: OADAClient, name: str
) -> None:
    first = make_service(concurrency=1)
    started = anyio.Event()
    cut_off: list[str] = []

    @first.on("work", 10)
    async def block(job: Job, ctx: WorkerContext) -> Json:
        cut_off.append(job.oada_id)
        started.set()
        await anyio.sleep_forever()
        return None

    await first.start()
    # start() returns once the queues are watched.
    assert first.queues["_default"].watching
    ids = [await post_job(oada, name, "work", {"n": n}) for n in range(6)]
    with anyio.fail_after(10):
        await started.wait()
    await first.stop(grace=0)
    [interrupted] = cut_off
    released = (await oada.get(f"/{interrupted}")).data
    assert released["status"] == "pending"
    assert released["lease"] is None

    second = make_service(concurrency=2)
    ran: list[str] = []

    @second.on("work", 10)
    async def work(job: Job, ctx: WorkerContext) -> Json:
        ran.append(job.oada_id)
        return {"n": job.config["n"]}

    async with second:
        jobs = [await wait_for_job(oada, job_id, 10) for job_id in ids]
    assert [job.result for job in jobs] == [{"n": n} for n in range(6)]
    assert sorted(ran) == sorted(ids)
    statuses = [u["status"] for u in jobs[ids.index(interrupted)].updates.values()]
    assert statuses == ["started", "released", "started", "success"]


@pytest.mark.slow
async def test_two_services_on_one_queue_run_each_job_exactly_once(
    make_service: Callable[..., Service], oada: OADAClient, domain: str, name: str
) -> None:
    total = 200
    runs: Counter[str] = Counter()
    done = anyio.Event()
    # Jobs hold their slot until both replicas have started one: a replica
    # with all its slots taken leaves the next jobs to the other. (Under a
    # light load the replica that hears of a job first may take them all.)
    started_by: set[str] = set()
    both_started = anyio.Event()

    def replica() -> Service:
        service = make_service(concurrency=10)

        @service.on("count", 10)
        async def count(job: Job, ctx: WorkerContext) -> Json:
            runs[job.oada_id] += 1
            started_by.add(service.worker_id)
            if len(started_by) == 2:
                both_started.set()
            await both_started.wait()
            if sum(runs.values()) >= total:
                done.set()
            return {"by": service.worker_id}

        return service

    a, b = replica(), replica()
    async with a, b:
        ids = [await post_job(oada, name, "count", {"n": n}) for n in range(total)]
        with anyio.fail_after(60):
            await done.wait()
        await wait_list_empty(oada, CLASSIC.pending_path(name), 60)
    assert len(runs) == total
    assert set(runs.values()) == {1}
    filed = (
        await oada.get(
            CLASSIC.day_index_path(
                name, "success", __import__("datetime").date.fromisoformat(today())
            )
        )
    ).data
    assert {key_of(job_id) for job_id in ids} <= set(filed)
    workers = Counter()
    for job_id in ids:
        workers[(await oada.get(f"/{job_id}/result/by")).data] += 1
    # Both replicas took part.
    assert len(workers) == 2
    assert set(workers) == started_by


async def test_run_stops_on_sigterm(make_service: Callable[..., Service]) -> None:
    service = make_service()
    async with anyio.create_task_group() as group:
        await group.start(service.run)
        os.kill(os.getpid(), signal.SIGTERM)
    assert service.state is ServiceState.STOPPED


@pytest.mark.slow
async def test_the_service_carries_on_after_the_server_restarts(
    make_service: Callable[..., Service], name: str, tmp_path: Path
) -> None:
    async with embedded_server(subprocess=True, db=tmp_path / "oada.sqlite") as server:
        service = make_service(domain=server.url)

        @service.on("echo", 10)
        async def echo(job: Job, ctx: WorkerContext) -> Json:
            return {"n": job.config["n"]}

        async with service, OADAClient(server.url, "god") as oada:
            first = await post_job(oada, name, "echo", {"n": 1})
            assert (await wait_for_job(oada, first, 10)).result == {"n": 1}
            await server.kill()
            await server.restart()
            # Posted right after the restart: the service's watch must have
            # come back (resuming from its last rev) to see it.
            second = await post_job(oada, name, "echo", {"n": 2})
            assert (await wait_for_job(oada, second, 30)).result == {"n": 2}
            # Filing cut off by the crash was retried, not left for a sweep.
            await wait_for_job(oada, first, 10, filed="classic")


async def test_a_copy_of_a_stopped_service_runs_again(
    make_service: Callable[..., Service], oada: OADAClient, name: str
) -> None:
    service = make_service()

    @service.on("echo", 10)
    async def echo(job: Job, ctx: WorkerContext) -> Json:
        return {"n": job.config["n"]}

    async with service:
        assert (
            await wait_for_job(oada, await post_job(oada, name, "echo", {"n": 1}), 10)
        ).result == {"n": 1}
    with pytest.raises(RuntimeError, match="can be started once"):
        await service.start()
    async with service.copy():
        assert (
            await wait_for_job(oada, await post_job(oada, name, "echo", {"n": 2}), 10)
        ).result == {"n": 2}


def _no_loop_signal_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the event loop refuse signal handlers, as asyncio does on Windows."""

    def unsupported(*args: object, **kwargs: object) -> None:
        raise NotImplementedError

    loop_type = type(asyncio.get_running_loop())
    monkeypatch.setattr(loop_type, "add_signal_handler", unsupported)
    monkeypatch.setattr(loop_type, "remove_signal_handler", unsupported)


async def test_run_stops_on_ctrl_c_where_the_loop_has_no_signal_handlers(
    make_service: Callable[..., Service], monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_loop_signal_handlers(monkeypatch)
    before = signal.getsignal(signal.SIGINT)
    service = make_service()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            await group.start(service.run)
            assert service.state is ServiceState.RUNNING
            # Ctrl-C: delivered to the Python-level handler, which hands the
            # stop request to the loop instead of raising KeyboardInterrupt.
            signal.raise_signal(signal.SIGINT)
    assert service.state is ServiceState.STOPPED
    # The process's own handler is back.
    assert signal.getsignal(signal.SIGINT) is before


async def test_run_without_any_signal_handlers_still_stops_by_stop(
    make_service: Callable[..., Service], monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_loop_signal_handlers(monkeypatch)
    service = make_service()
    before = signal.getsignal(signal.SIGTERM)

    def run_in_a_thread() -> None:
        # Not the main thread: no handler can be installed; run() still works.
        async def main() -> None:
            async with anyio.create_task_group() as group:
                await group.start(service.run)
                assert service.state is ServiceState.RUNNING
                await service.stop()

        anyio.run(main)

    with anyio.fail_after(20):
        await anyio.to_thread.run_sync(run_in_a_thread)
    assert service.state is ServiceState.STOPPED
    assert signal.getsignal(signal.SIGTERM) is before
