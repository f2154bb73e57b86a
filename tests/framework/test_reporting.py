"""Finish reporters (Slack-compatible webhook) and Prometheus metrics."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import anyio
import httpx
import pytest
import respx
from prometheus_client import CollectorRegistry

from oada_jobs import FinishReport, Job, Json, Service, SlackReporter, WorkerContext
from oada_jobs.client import OADAClient
from oada_jobs.metrics import DURATION_BUCKETS, ServiceMetrics
from oada_jobs.testing import post_job, wait_for_job

WEBHOOK = "https://hooks.example.org/services/T000/B000/XXXX"


async def test_the_slack_reporter_posts_finished_jobs(
    make_service: Callable[..., Service], oada: OADAClient, name: str
) -> None:
    router = respx.MockRouter(assert_all_called=False)
    posted: list[dict[str, object]] = []
    arrived = anyio.Event()

    def record(request: httpx.Request) -> httpx.Response:
        posted.append(json.loads(request.content))
        if len(posted) == 2:
            arrived.set()
        return httpx.Response(200, text="ok")

    router.post(WEBHOOK).mock(side_effect=record)
    reporter = SlackReporter(
        WEBHOOK, on={"success", "failure"}, transport=httpx.MockTransport(router.async_handler)
    )
    only_failures = SlackReporter(WEBHOOK, transport=httpx.MockTransport(router.async_handler))
    service = make_service(reporters=[reporter])

    @service.on("echo", 10)
    async def echo(job: Job, ctx: WorkerContext) -> Json:
        if job.config.get("fail"):
            raise RuntimeError("nope")
        return {"ok": True}

    async with service:
        good = await post_job(oada, name, "echo", {})
        await wait_for_job(oada, good, 10)
        bad = await post_job(oada, name, "echo", {"fail": True})
        await wait_for_job(oada, bad, 10)
        with anyio.fail_after(10):
            await arrived.wait()
    texts = [message["text"] for message in posted]
    assert f"job *{good.removeprefix('resources/')}*" in str(texts[0])
    assert "finished with *success*" in str(texts[0])
    assert "finished with *failure*" in str(texts[1])
    assert "nope" in json.dumps(posted[1])
    assert "XXXX" not in repr(reporter)
    assert only_failures.statuses == {"failure"}
    with pytest.raises(ValueError, match="expected statuses"):
        SlackReporter(WEBHOOK, on={"done"})


async def test_metrics_count_jobs_by_state_and_type_and_can_be_served(
    make_service: Callable[..., Service], oada: OADAClient, name: str
) -> None:
    registry = CollectorRegistry()
    service = make_service(metrics_registry=registry, metrics_port=0, metrics_addr="127.0.0.1")

    @service.on("echo", 10)
    async def echo(job: Job, ctx: WorkerContext) -> Json:
        if job.config.get("fail"):
            raise RuntimeError("nope")
        return {}

    async with service:
        await wait_for_job(oada, await post_job(oada, name, "echo", {}), 10, filed="classic")
        await wait_for_job(oada, await post_job(oada, name, "echo", {}), 10, filed="classic")
        await wait_for_job(
            oada, await post_job(oada, name, "echo", {"fail": 1}), 10, filed="classic"
        )
        port = service.metrics_bound_port
        assert port is not None
        async with httpx.AsyncClient() as http:
            text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text

    def sample(metric: str, **labels: str) -> float | None:
        return registry.get_sample_value(metric, {"service": name, "type": "echo", **labels})

    assert sample("oada_jobs_jobs_total", state="started") == 3
    assert sample("oada_jobs_jobs_total", state="success") == 2
    assert sample("oada_jobs_jobs_total", state="failure") == 1
    assert sample("oada_jobs_jobs_running") == 0
    assert sample("oada_jobs_job_duration_seconds_count", state="success") == 2
    assert registry.get_sample_value("oada_jobs_queues", {"service": name}) == 1
    assert f'oada_jobs_jobs_total{{service="{name}",state="success",type="echo"}} 2.0' in text


def test_duration_buckets_fit_jobs_of_seconds_to_days() -> None:
    registry = CollectorRegistry()
    metrics = ServiceMetrics("svc", registry=registry)
    for seconds in (0.05, 3, 90, 2 * 3600, 3 * 86400):
        metrics.job_finished("long", "success", seconds)

    def below(bound: str) -> float | None:
        labels = {"service": "svc", "type": "long", "state": "success", "le": bound}
        return registry.get_sample_value("oada_jobs_job_duration_seconds_bucket", labels)

    assert DURATION_BUCKETS[0] == 0.125
    assert DURATION_BUCKETS[-1] >= 6 * 86400
    assert list(DURATION_BUCKETS) == sorted(DURATION_BUCKETS)
    # Minutes, hours and days each fall in a bucket of their own, not +Inf.
    assert below("0.125") == 1
    assert below("4.0") == 2
    assert below("128.0") == 3
    assert below("8192.0") == 4
    assert below("262144.0") == 5
    assert below("+Inf") == 5


async def test_the_webhook_url_never_reaches_a_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    url = "https://hooks.example.org/services/T000/B000/s3cretW3bhook"
    reporter = SlackReporter(
        url, on={"failure"}, transport=httpx.MockTransport(lambda request: httpx.Response(500))
    )
    job = Job.from_resource({"service": "s", "type": "t"}, oada_id="resources/j", key="j")
    report = FinishReport(
        service="s",
        domain="http://x",
        queue="_default",
        job=job,
        status="failure",
        result=None,
        path="/p",
    )
    await reporter.report(report)
    assert "HTTP Request: POST" in caplog.text  # httpx's own line, with the URL masked
    assert "s3cretW3bhook" not in caplog.text
    assert "T000/B000" not in caplog.text
    assert "Slack webhook answered 500" in caplog.text
