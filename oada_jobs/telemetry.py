"""OpenTelemetry spans for jobs, when the ``otel`` extra is installed.

Owns how a job run becomes a trace; the runner only opens the spans. With
``opentelemetry-api`` absent nothing is imported, :data:`ENABLED` is false
and every function here returns a shared no-op context manager.

A job that is run (claimed) gives one span ``job <type>`` (kind CONSUMER)
with three children, ``claim``, ``run`` (the work function) and ``file``
(writing the outcome and moving the job to its day list). Requests the
client makes meanwhile, including the work function's through ``ctx.oada``,
are ``OADA <METHOD>`` spans below them (see ``oada_jobs.client._tracing``).

The job span continues the job's trace: when the job config's ``traceId`` is
a W3C ``traceparent`` (``00-<32 hex>-<16 hex>-<2 hex>``), that is its parent;
when it is a trace id alone (32 hex digits, or 16, or a UUID), the span gets
that trace id under a remote parent standing for the requester. Any other
``traceId`` starts a new trace; the value is kept as the attribute
``oada_jobs.job.trace_id`` either way, and log records carry it as
``trace_id``.

Spans go to whatever tracer provider the program configured (for example
with ``opentelemetry-instrument`` or the SDK); until one is configured no
span is made at all (the check costs a fraction of a microsecond).

May use the client's tracing and the job model; must not import the runner,
the queue or the service, which open its spans.
"""

from __future__ import annotations

import importlib
import random
import re
from contextlib import AbstractContextManager, contextmanager, nullcontext
from types import ModuleType
from typing import Any

from .client._tracing import active
from .job import Job

__all__ = ["ENABLED", "active", "job_span", "parent_context", "set_job_outcome", "step_span"]

# Imported by name so that type checking works with and without the extra.
trace: ModuleType | None
tracecontext: ModuleType | None
try:
    trace = importlib.import_module("opentelemetry.trace")
    tracecontext = importlib.import_module("opentelemetry.trace.propagation.tracecontext")
except ImportError:  # the `otel` extra is not installed
    trace = tracecontext = None

#: Whether OpenTelemetry is installed (the ``otel`` extra).
ENABLED = trace is not None

_TRACER_NAME = "oada_jobs"
_NOTHING: AbstractContextManager[None] = nullcontext()
_HEX_ID = re.compile(r"[0-9a-f]{16}|[0-9a-f]{32}")
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


def parent_context(trace_id: str | None) -> Any:
    """The OpenTelemetry context a job with config ``traceId`` *trace_id* continues, or ``None``."""
    if trace is None or tracecontext is None or not trace_id:
        return None
    text = trace_id.strip().lower()
    if _TRACEPARENT.fullmatch(text):
        context = tracecontext.TraceContextTextMapPropagator().extract({"traceparent": text})
        if trace.get_current_span(context).get_span_context().is_valid:
            return context
        return None
    digits = text.replace("-", "") if len(text) == 36 else text
    if not _HEX_ID.fullmatch(digits) or int(digits, 16) == 0:
        return None
    remote = trace.SpanContext(
        trace_id=int(digits, 16),
        # The requester's span is unknown: a stand-in id, never zero.
        span_id=random.getrandbits(64) | 1,
        is_remote=True,
        trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
    )
    return trace.set_span_in_context(trace.NonRecordingSpan(remote))


def job_span(service: str, queue: str, job: Job[Any]) -> AbstractContextManager[Any]:
    """The span of one job run (``None`` inside when OpenTelemetry is absent or idle)."""
    if not active():
        return _NOTHING
    return _job_span(service, queue, job)


@contextmanager
def _job_span(service: str, queue: str, job: Job[Any]) -> Any:
    assert trace is not None
    attributes = {
        "oada_jobs.service": service,
        "oada_jobs.queue": queue,
        "oada_jobs.job.id": job.oada_id,
        "oada_jobs.job.key": job.key or "",
        "oada_jobs.job.type": job.type,
    }
    if job.trace_id is not None:
        attributes["oada_jobs.job.trace_id"] = job.trace_id
    tracer = trace.get_tracer(_TRACER_NAME)
    with tracer.start_as_current_span(
        f"job {job.type}",
        context=parent_context(job.trace_id),
        kind=trace.SpanKind.CONSUMER,
        attributes=attributes,
    ) as span:
        yield span


def step_span(name: str) -> AbstractContextManager[Any]:
    """A child span of the current job span: ``claim``, ``run`` or ``file``."""
    if trace is None or not active():
        return _NOTHING
    return trace.get_tracer(_TRACER_NAME).start_as_current_span(name)  # type: ignore[no-any-return]  # the API is untyped here


def set_job_outcome(status: str, fail_type: str | None) -> None:
    """Record a job's outcome on the current span (the job span, when filing)."""
    if trace is None or not active():
        return
    span = trace.get_current_span()
    span.set_attribute("oada_jobs.job.status", status)
    if fail_type is not None:
        span.set_attribute("oada_jobs.job.fail_type", fail_type)
    if status == "failure":
        span.set_status(trace.Status(trace.StatusCode.ERROR, fail_type or "job failed"))
