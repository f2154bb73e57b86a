"""Units that need no server: service options, queue entries, reporters, run helpers."""

from __future__ import annotations

import json
import logging

import anyio
import httpx
import pytest
import respx

from oada_jobs import InvalidQueueEntry, Job, Service, SlackReporter
from oada_jobs.context import JobLogger
from oada_jobs.exceptions import BadRequest, OADATransportError
from oada_jobs.queue_list import parse_queue_entry
from oada_jobs.reporters import FinishReport


async def test_service_options_and_registration_are_validated() -> None:
    domain = "http://127.0.0.1:9"
    incomplete = Service("svc", domain=domain)
    with pytest.raises(ValueError, match="expected domain= and token="):
        await incomplete.start()
    with pytest.raises(ValueError, match="either oada= or domain="):
        Service("svc", domain=domain, oada=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="expected a service name"):
        Service("a/b", domain=domain, token="god")
    with pytest.raises(ValueError, match="expected layout"):
        Service("svc", domain=domain, token="god", layout="weird")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="domain"):
        Service("svc", domain="ftp://x", token="god")
    service = Service("svc", domain=domain, token="god")
    with pytest.raises(ValueError, match="expected timeout > 0 seconds, got -1"):
        service.on("t", -1)
    with pytest.raises(ValueError, match="expected a non-empty job type"):
        service.on("", 1)
    assert "god" not in repr(service)
    assert service.token == "god"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("tok-secret", "expected an object with 'domain' and 'token', got a string"),
        ([1], "got a list"),
        ({"token": "tok-secret"}, "'domain' is missing"),
        ({"domain": 5, "token": "tok-secret"}, "'domain' must be a string, got a int"),
        ({"domain": "ftp://h", "token": "tok-secret"}, "'domain' is malformed"),
        ({"domain": "bad host", "token": "tok-secret"}, "without spaces"),
        ({"domain": "http://h/x", "token": "tok-secret"}, "got a path"),
        ({"domain": "http://h"}, "'token' is missing"),
        ({"domain": "http://h", "token": " "}, "'token' must be a non-empty string"),
        ({"domain": "http://h", "token": "tok-secret\n"}, "'token' is malformed: the token"),
        ({"domain": "http://h", "token": "tok secret"}, "contains whitespace"),
    ],
)
def test_bad_queue_entries_are_refused_without_naming_the_token(
    value: object, expected: str
) -> None:
    with pytest.raises(InvalidQueueEntry, match="queue entry 'k' is ignored") as info:
        parse_queue_entry("k", value)
    assert expected in str(info.value)
    assert "tok-secret" not in str(info.value)
    assert info.value.key == "k"


def test_good_queue_entries_are_normalised() -> None:
    entry = parse_queue_entry("k", {"domain": "localhost:8080", "token": "t", "extra": 1})
    assert entry.domain == "http://localhost:8080"
    assert entry.token == "t"
    assert "'t'" not in repr(entry)


async def test_slack_reporter_message_and_failures_are_contained() -> None:
    router = respx.MockRouter()
    route = router.post("https://hooks.example.org/x").respond(500)
    reporter = SlackReporter(
        "https://hooks.example.org/x", transport=httpx.MockTransport(router.async_handler)
    )
    job = Job.from_resource(
        {"service": "svc", "type": "email", "config": {"to": "a"}}, oada_id="resources/J", key="J"
    )
    report = FinishReport(
        service="svc",
        domain="https://oada.example.org",
        queue="_default",
        job=job,
        status="failure",
        result={"message": "boom"},
        path="/bookmarks/services/svc/jobs-failure/day-index/2026-01-01",
    )
    await reporter.report(report)
    assert route.called
    body = json.loads(route.calls[0].request.content)
    assert (
        body["text"]
        == "Service *svc* on *https://oada.example.org*: job *J* (type `email`) finished with *failure*"
    )
    assert "boom" in json.dumps(body["attachments"])
    success = (
        FinishReport(**{**report.__dict__, "status": "success"})
        if hasattr(report, "__dict__")
        else None
    )
    assert success is None or success.status == "success"
    with pytest.raises(ValueError, match="http"):
        SlackReporter("not a url")


def test_configure_replaces_only_the_given_options_before_start() -> None:
    service = Service("email-service")
    service.configure(
        domain="localhost:8080", token="t", concurrency=3, layout="pending", shutdown_grace=2
    )
    assert service.domain == "http://localhost:8080"
    assert service.config.concurrency == 3
    assert service.layout.name == "pending"
    assert service.config.shutdown_grace == 2
    assert service.config.lease.total_seconds() == 60
    service.configure(lease=5)
    assert service.config.concurrency == 3
    assert service.config.lease.total_seconds() == 5
    with pytest.raises(ValueError, match="concurrency"):
        service.configure(concurrency=0)


def test_copy_gives_a_fresh_service_with_the_same_setup() -> None:
    service = Service(
        "email-service", domain="localhost:8080", token="t", concurrency=4, layout="pending"
    )

    async def work(job: Job, ctx: object) -> None:
        return None

    service.on("email", 5, work)
    twin = service.copy()
    assert twin is not service
    assert twin.state.value == "created"
    assert (twin.name, twin.domain, twin.layout.name) == (
        "email-service",
        "http://localhost:8080",
        "pending",
    )
    assert twin.config == service.config
    worker = twin.worker_for("email")
    assert worker is not None
    assert worker.timeout == 5
    twin.off("email")
    assert service.worker_for("email") is not None  # the copy's registry is its own
    assert twin.worker_id != service.worker_id


def test_services_share_metrics_in_one_registry_without_collisions() -> None:
    from prometheus_client import REGISTRY

    a = Service("metrics-a", domain="localhost:1", token="t")
    b = Service("metrics-b", domain="localhost:1", token="t")
    assert a.metrics.registry is REGISTRY
    a.metrics.job_started("x")
    b.metrics.job_started("x")
    a.metrics.job_stopped("x")
    assert (
        REGISTRY.get_sample_value("oada_jobs_jobs_running", {"service": "metrics-a", "type": "x"})
        == 0
    )
    assert (
        REGISTRY.get_sample_value("oada_jobs_jobs_running", {"service": "metrics-b", "type": "x"})
        == 1
    )
    b.metrics.job_stopped("x")


def test_copy_keeps_cron_entries() -> None:
    from oada_jobs.cron import entries_of

    service = Service("cron-copy", domain="localhost:1", token="t")
    service.cron("tick", "*/5 * * * *", type="echo", config={"n": 1})
    twin = service.copy()
    [entry] = entries_of(twin)
    assert (entry.name, entry.schedule, entry.type, entry.config) == (
        "tick",
        "*/5 * * * *",
        "echo",
        {"n": 1},
    )


async def test_run_helpers_are_gone_before_stop_returns_and_their_errors_stop_the_work() -> None:
    from oada_jobs.call import _Helpers

    async with anyio.create_task_group() as tg:
        stopped: list[str] = []
        left: list[str] = []

        async def watcher() -> None:
            try:
                await anyio.sleep_forever()
            finally:
                with anyio.CancelScope(shield=True):
                    await anyio.sleep(0.01)  # cleaning up takes a while
                left.append("watcher")

        helpers = _Helpers(tg.start_soon, lambda: stopped.append("work"))
        helpers.start(watcher)
        await anyio.sleep(0.01)
        await helpers.stop()
        assert left == ["watcher"]
        assert stopped == []

        async def broken() -> None:
            raise RuntimeError("lease renewal broke")

        helpers = _Helpers(tg.start_soon, lambda: stopped.append("work"))
        helpers.start(broken)
        helpers.start(watcher)
        await anyio.sleep(0.01)
        assert stopped == ["work"]
        with pytest.raises(RuntimeError, match="lease renewal broke"):
            await helpers.stop()
        assert left == ["watcher", "watcher"]

        # Stopped before it got to run: it never does, and is not waited for.
        helpers = _Helpers(tg.start_soon, lambda: stopped.append("work"))
        helpers.start(watcher)
        await helpers.stop()
        await anyio.sleep(0.05)
        assert left == ["watcher", "watcher"]

        # A run that is itself cancelled still lets its helpers finish first.
        helpers = _Helpers(tg.start_soon, lambda: stopped.append("work"))
        helpers.start(watcher)
        await anyio.sleep(0.01)
        with anyio.CancelScope() as run:
            run.cancel()
            await helpers.stop()
        assert left == ["watcher", "watcher", "watcher"]


class _Refusing:
    """Stands in for a job's client: every PUT fails with *error*."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def put(self, *args: object, **kwargs: object) -> None:
        raise self.error


async def test_job_log_drops_an_update_the_server_cannot_take_now(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.LoggerAdapter(logging.getLogger("oada_jobs.test"), {})
    away = OADATransportError("connection refused", method="put", path="/resources/j")
    logger = JobLogger(_Refusing(away), "resources/j", log)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="oada_jobs.test"):
        await logger.info("halfway")  # does not raise: the work goes on
    assert "update halfway not written (the work goes on)" in caplog.text
    refused = BadRequest("no", method="put", path="/resources/j")
    with pytest.raises(BadRequest):
        await JobLogger(_Refusing(refused), "resources/j", log).info("x")  # type: ignore[arg-type]
