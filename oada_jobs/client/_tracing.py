"""OpenTelemetry spans for OADA requests, when the ``otel`` extra is installed.

Owns the one question the client asks about tracing: is it available, and
if so, a span per request. Without ``opentelemetry-api`` installed nothing
is imported and :data:`ENABLED` is false; installed but with no tracer
provider configured, :func:`active` is false. Either way the client does not
even enter a context manager per request. Tokens never become span attributes.

Owns the request spans; imports no other module of the client and must not
import the framework or the server.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

# Imported by name so that type checking works with and without the extra.
trace: ModuleType | None
try:
    trace = importlib.import_module("opentelemetry.trace")
except ImportError:  # the `otel` extra is not installed
    trace = None

__all__ = ["ENABLED", "active", "request_span", "set_status"]

#: Whether OpenTelemetry is installed (the ``otel`` extra).
ENABLED = trace is not None
# Providers that record nothing: while one of these is in place (no
# provider configured yet), spans are not even made.
_INERT: tuple[type, ...] = (
    (trace.ProxyTracerProvider, trace.NoOpTracerProvider) if trace is not None else ()
)


def active() -> bool:
    """Whether spans would be recorded: the extra is installed and a provider set."""
    return trace is not None and not isinstance(trace.get_tracer_provider(), _INERT)


_TRACER_NAME = "oada_jobs.client"


@contextmanager
def request_span(method: str, path: str, origin: str, transport: str) -> Iterator[Any]:
    """A CLIENT span ``OADA <METHOD>`` around one request (with its retries)."""
    assert trace is not None
    tracer = trace.get_tracer(_TRACER_NAME)
    with tracer.start_as_current_span(
        f"OADA {method.upper()}",
        kind=trace.SpanKind.CLIENT,
        attributes={
            "http.request.method": method.upper(),
            "url.path": path,
            "server.address": origin,
            "oada.transport": transport,
        },
    ) as span:
        yield span


def set_status(span: Any, status: int) -> None:
    """Record the response status on *span*."""
    span.set_attribute("http.response.status_code", status)
