"""The service's queue list: entries added, changed and removed live; bad ones ignored."""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping

import anyio
import pytest

from oada_jobs import Job, Json, Queue, Service, WorkerContext
from oada_jobs import service as service_module
from oada_jobs.client import OADAClient
from oada_jobs.testing import post_job, wait_for_job
from oada_jobs.tree import get_layout

from .conftest import LogWaiter

CLASSIC = get_layout("classic")


def echo_service(service: Service) -> list[str]:
    ran: list[str] = []

    @service.on("echo", 10)
    async def echo(job: Job, ctx: WorkerContext) -> Json:
        ran.append(job.oada_id)
        who = await ctx.oada.get("/bookmarks")
        return {"n": job.config.get("n"), "bookmarks": who.data["_id"]}

    return ran


def watching(key: str) -> Callable[[Mapping[str, Queue]], bool]:
    return lambda queues: key in queues and queues[key].watching


@pytest.mark.parametrize("server", ["none", "reference"], indirect=True)
async def test_queues_are_added_changed_and_removed_live(
    make_service: Callable[..., Service], oada: OADAClient, domain: str, name: str
) -> None:
    service = make_service()
    ran = echo_service(service)
    queues = CLASSIC.queues_path(name)
    async with service, OADAClient(domain, "abc") as frank:
        frank_bookmarks = (await frank.get("/bookmarks")).data["_id"]
        response = await oada.post(queues, {"domain": domain, "token": "abc"})
        key = response.content_location.rsplit("/", 1)[-1]
        with anyio.fail_after(1):
            await service.wait_for_queues(watching(key))
        # A job in frank's store runs with frank's token.
        job = await wait_for_job(frank, await post_job(frank, name, "echo", {"n": 1}), 10)
        assert job.result == {"n": 1, "bookmarks": frank_bookmarks}

        # A changed entry restarts its queue; a change to other keys does not.
        first = service.queues[key]
        await oada.put(f"{queues}/{key}", {"note": "not a queue setting"})
        await oada.put(f"{queues}/{key}", {"domain": domain.replace("127.0.0.1", "localhost")})
        with anyio.fail_after(2):
            await service.wait_for_queues(
                lambda qs: key in qs and qs[key] is not first and qs[key].watching
            )
        assert service.queues[key].domain.startswith("http://localhost:")

        # A deleted entry stops: jobs posted there afterwards are not taken.
        await oada.delete(f"{queues}/{key}")
        with anyio.fail_after(2):
            await service.wait_for_queues(lambda qs: key not in qs)
        left = await post_job(frank, name, "echo", {"n": 2})
        # Prove the service is still live on its own queue meanwhile.
        assert (
            await wait_for_job(oada, await post_job(oada, name, "echo", {"n": 3}), 10)
        ).status == "success"
        assert left not in ran
        assert (await frank.get(f"/{left}")).data.get("status") is None


async def test_a_queue_on_another_origin_gets_its_own_client(
    make_service: Callable[..., Service], oada: OADAClient, domain: str, name: str
) -> None:
    service = make_service()
    echo_service(service)
    other_origin = domain.replace("127.0.0.1", "localhost")
    assert other_origin != domain
    async with service, OADAClient(domain, "abc") as frank:
        await oada.put(
            CLASSIC.queues_path(name), {"elsewhere": {"domain": other_origin, "token": "abc"}}
        )
        with anyio.fail_after(5):
            await service.wait_for_queues(watching("elsewhere"))
        assert service.queues["elsewhere"].domain == other_origin
        job = await wait_for_job(frank, await post_job(frank, name, "echo", {"n": 5}), 10)
    assert job.status == "success"


async def test_invalid_queue_entries_are_logged_without_tokens_and_ignored(
    make_service: Callable[..., Service], oada: OADAClient, domain: str, name: str, logs: LogWaiter
) -> None:
    service = make_service()
    echo_service(service)
    async with service:
        await oada.put(
            CLASSIC.queues_path(name),
            {
                "not-an-object": "secret-token-1",
                "no-token": {"domain": domain},
                "bad-domain": {"domain": "ftp://example.org", "token": "secret-token-2"},
                "spaces": {"domain": "not a domain", "token": "secret-token-3"},
                "empty-token": {"domain": domain, "token": ""},
                "pasted-token": {"domain": domain, "token": "secret-token-4\n"},
                "_meta-like": {"ignored": True},
            },
        )
        for key in (
            "not-an-object",
            "no-token",
            "bad-domain",
            "spaces",
            "empty-token",
            "pasted-token",
        ):
            await logs.wait_for(
                lambda r, key=key: f"queue entry {key!r} is ignored" in r.getMessage()
            )
        assert set(service.queues) == {"_default"}
        job = await wait_for_job(oada, await post_job(oada, name, "echo", {"n": 1}), 10)
        assert job.status == "success"
    text = logs.text()
    assert "expected an object with 'domain' and 'token', got a string" in text
    assert "'token' is missing" in text
    assert "got scheme 'ftp'" in text
    assert "'token' must be a non-empty string" in text
    assert "'token' is malformed: the token contains whitespace" in text
    assert "secret-token" not in text


async def test_a_refused_queue_token_does_not_stop_other_queues(
    make_service: Callable[..., Service], oada: OADAClient, domain: str, name: str, logs: LogWaiter
) -> None:
    service = make_service()
    echo_service(service)
    async with service, OADAClient(domain, "abc") as frank:
        await oada.put(
            CLASSIC.queues_path(name),
            {
                "refused": {"domain": domain, "token": "wrong-token"},
                "frank": {"domain": domain, "token": "abc"},
            },
        )
        record = await logs.wait_for(lambda r: "token was refused" in r.getMessage())
        assert "'refused'" in record.getMessage()
        # It keeps retrying with backoff...
        await logs.wait_for(lambda r: "token was refused" in r.getMessage() and r is not record)
        # ...while the other queues work.
        with anyio.fail_after(5):
            await service.wait_for_queues(watching("frank"))
        assert (
            await wait_for_job(frank, await post_job(frank, name, "echo", {}), 10)
        ).status == "success"
        assert (
            await wait_for_job(oada, await post_job(oada, name, "echo", {}), 10)
        ).status == "success"
        assert not service.queues["refused"].watching
    assert "wrong-token" not in logs.text()


async def test_a_removed_queue_lets_its_running_jobs_finish(
    make_service: Callable[..., Service], oada: OADAClient, domain: str, name: str
) -> None:
    service = make_service()
    started, release = anyio.Event(), anyio.Event()

    @service.on("hold", 10)
    async def hold(job: Job, ctx: WorkerContext) -> Json:
        started.set()
        await release.wait()
        # The queue's client still works for a job that outlives its queue.
        return {"bookmarks": (await ctx.oada.get("/bookmarks")).data["_id"]}

    queues = CLASSIC.queues_path(name)
    async with service, OADAClient(domain, "abc") as frank:
        await oada.put(queues, {"frank": {"domain": domain, "token": "abc"}})
        with anyio.fail_after(5):
            await service.wait_for_queues(watching("frank"))
        job_id = await post_job(frank, name, "hold", {})
        with anyio.fail_after(10):
            await started.wait()
        await oada.delete(f"{queues}/frank")
        with anyio.fail_after(5):
            await service.wait_for_queues(lambda qs: "frank" not in qs)
        release.set()
        job = await wait_for_job(frank, job_id, 10, filed="classic")
        frank_bookmarks = (await frank.get("/bookmarks")).data["_id"]
    assert job.status == "success"
    assert job.result == {"bookmarks": frank_bookmarks}


async def test_idle_queues_hold_no_slot_even_after_queues_come_and_go(
    make_service: Callable[..., Service], oada: OADAClient, domain: str, name: str
) -> None:
    service = make_service(concurrency=1)
    echo_service(service)
    queues = CLASSIC.queues_path(name)
    async with service, OADAClient(domain, "abc") as frank:
        # Queues added and removed a few times, all idle meanwhile.
        for _ in range(3):
            key = (await oada.post(queues, {"domain": domain, "token": "abc"})).content_location
            key = key.rsplit("/", 1)[-1]
            with anyio.fail_after(2):
                await service.wait_for_queues(watching(key))
            await oada.delete(f"{queues}/{key}")
            with anyio.fail_after(2):
                await service.wait_for_queues(lambda qs, key=key: key not in qs)
        key = (await oada.post(queues, {"domain": domain, "token": "abc"})).content_location
        key = key.rsplit("/", 1)[-1]
        with anyio.fail_after(2):
            await service.wait_for_queues(watching(key))
        # Two queues, one slot: the idle default queue must not hold it.
        job = await wait_for_job(frank, await post_job(frank, name, "echo", {"n": 1}), 10)
        assert job.status == "success"
        assert service.limiter.borrowed_tokens == 0


async def test_a_queue_whose_server_never_answers_holds_up_nothing(
    make_service: Callable[..., Service],
    oada: OADAClient,
    domain: str,
    name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(service_module, "QUEUE_START_WAIT", 0.5)
    queues = CLASSIC.queues_path(name)
    # Accepts connections (the kernel does, from its backlog) and never answers.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        stalled = f"http://127.0.0.1:{silent.getsockname()[1]}"
        await oada.put(queues, {"stalled": {"domain": stalled, "token": "t0ken-stalled"}})
        service = make_service()
        echo_service(service)
        started = anyio.current_time()
        with anyio.fail_after(20):
            async with service:
                # start() waited for the stalled queue no longer than it may.
                assert anyio.current_time() - started < 5
                assert not service.queues["stalled"].watching
                response = await oada.post(queues, {"domain": domain, "token": "abc"})
                key = response.content_location.rsplit("/", 1)[-1]
                with anyio.fail_after(2):
                    await service.wait_for_queues(watching(key))
                job = await wait_for_job(oada, await post_job(oada, name, "echo", {"n": 1}), 10)
                assert job.status == "success"
                stopping = anyio.current_time()
            # Nothing runs on the stalled queue: stopping does not wait for it.
            assert anyio.current_time() - stopping < 2
