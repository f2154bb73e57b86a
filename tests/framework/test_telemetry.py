"""OpenTelemetry: a span per job (claim, run, file) in the job's trace; request spans."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode

from oada_jobs import Job, Json, Service, WorkerContext
from oada_jobs.client import OADAClient
from oada_jobs.exceptions import NotFound
from oada_jobs.testing import post_job, wait_for_job

_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


def _job_spans(exporter: InMemorySpanExporter, job_id: str) -> tuple[ReadableSpan, dict[str, Any]]:
    finished = exporter.get_finished_spans()
    (job_span,) = [
        s for s in finished if s.attributes and s.attributes.get("oada_jobs.job.id") == job_id
    ]
    assert job_span.context is not None
    children = {
        s.name: s
        for s in finished
        if s.parent is not None and s.parent.span_id == job_span.context.span_id
    }
    return job_span, children


async def _run_one(
    make_service: Callable[..., Service], oada: OADAClient, name: str, config: Json
) -> str:
    service = make_service()

    @service.on("traced", 10)
    async def traced(job: Job, ctx: WorkerContext) -> Json:
        await ctx.oada.get(f"/{ctx.job_id}")
        if job.config.get("fail"):
            raise RuntimeError("nope")
        return {"ok": True}

    async with service:
        job_id = await post_job(oada, name, "traced", config)
        await wait_for_job(oada, job_id, 10)
    return job_id


async def test_a_job_is_a_span_with_claim_run_and_file_in_its_trace(
    make_service: Callable[..., Service],
    oada: OADAClient,
    name: str,
    spans: InMemorySpanExporter,
) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    job_id = await _run_one(make_service, oada, name, {"traceId": trace_id})
    job_span, children = _job_spans(spans, job_id)
    assert job_span.name == "job traced"
    assert job_span.kind is SpanKind.CONSUMER
    assert job_span.context is not None
    # The job's traceId is continued, under a remote parent for the requester.
    assert job_span.context.trace_id == int(trace_id, 16)
    assert job_span.parent is not None
    assert job_span.parent.is_remote
    assert job_span.attributes is not None
    assert job_span.attributes["oada_jobs.job.trace_id"] == trace_id
    assert job_span.attributes["oada_jobs.job.type"] == "traced"
    assert job_span.attributes["oada_jobs.service"] == name
    assert job_span.attributes["oada_jobs.job.status"] == "success"
    assert set(children) == {"claim", "run", "file"}
    claim, run, file = children["claim"], children["run"], children["file"]
    assert claim.end_time is not None
    assert run.start_time is not None
    assert claim.end_time <= run.start_time
    assert run.end_time is not None
    assert file.start_time is not None
    assert run.end_time <= file.start_time

    # OADA requests are spans below the step that made them.
    def requests_under(step: ReadableSpan) -> list[ReadableSpan]:
        assert step.context is not None
        return [
            s
            for s in spans.get_finished_spans()
            if s.parent is not None and s.parent.span_id == step.context.span_id
        ]

    (claim_put,) = requests_under(claim)
    assert claim_put.name == "OADA PUT"
    assert claim_put.kind is SpanKind.CLIENT
    assert claim_put.attributes is not None
    assert claim_put.attributes["url.path"] == f"/{job_id}"
    assert claim_put.attributes["http.response.status_code"] in (200, 201, 204)
    work_get = [s for s in requests_under(run) if s.name == "OADA GET"]
    assert work_get, "the work function's ctx.oada.get is a span under run"
    assert any(s.name in ("OADA PUT", "OADA DELETE") for s in requests_under(file))
    # No token anywhere in the spans.
    for span in spans.get_finished_spans():
        assert "god" not in repr(dict(span.attributes or {}))


async def test_a_traceparent_is_the_job_spans_parent(
    make_service: Callable[..., Service],
    oada: OADAClient,
    name: str,
    spans: InMemorySpanExporter,
) -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    job_id = await _run_one(make_service, oada, name, {"traceId": traceparent})
    job_span, _ = _job_spans(spans, job_id)
    assert job_span.context is not None
    assert job_span.parent is not None
    assert job_span.context.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    assert job_span.parent.span_id == 0xB7AD6B7169203331


@pytest.mark.parametrize("trace_id", ["not-a-trace-id", "0" * 32, None])
async def test_other_trace_ids_start_a_new_trace(
    make_service: Callable[..., Service],
    oada: OADAClient,
    name: str,
    spans: InMemorySpanExporter,
    trace_id: str | None,
) -> None:
    config: dict[str, Json] = {"fail": True}
    if trace_id is not None:
        config["traceId"] = trace_id
    job_id = await _run_one(make_service, oada, name, config)
    job_span, children = _job_spans(spans, job_id)
    assert job_span.parent is None
    assert job_span.attributes is not None
    assert job_span.attributes.get("oada_jobs.job.trace_id") == trace_id
    assert job_span.attributes["oada_jobs.job.status"] == "failure"
    assert job_span.status.status_code is StatusCode.ERROR
    assert set(children) == {"claim", "run", "file"}


async def test_a_refused_request_is_an_error_span(
    oada: OADAClient, spans: InMemorySpanExporter
) -> None:
    with pytest.raises(NotFound):
        await oada.get("/bookmarks/no-such-thing-here")
    (span,) = [s for s in spans.get_finished_spans() if s.name == "OADA GET"]
    assert span.attributes is not None
    assert span.attributes["http.response.status_code"] == 404
    assert span.attributes["url.path"] == "/bookmarks/no-such-thing-here"
    assert span.status.status_code is StatusCode.ERROR


def test_installed_but_without_a_provider_no_span_is_made() -> None:
    script = textwrap.dedent(
        """
        from oada_jobs import telemetry
        from oada_jobs.client import _tracing

        assert telemetry.ENABLED and _tracing.ENABLED
        assert not _tracing.active()
        assert telemetry.step_span("run") is telemetry.step_span("file")

        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider

        trace.set_tracer_provider(TracerProvider())
        assert _tracing.active()
        assert telemetry.step_span("run") is not telemetry.step_span("file")
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
