"""Prometheus metrics of a service: jobs by state and type, durations, queues.

Metric objects are created once per :class:`~prometheus_client.CollectorRegistry`
and labelled by service, so several services in one process share them
instead of colliding. Pass a fresh registry per service in tests.

==================================  =========  ===============================
name                                kind       labels
==================================  =========  ===============================
``oada_jobs_jobs_total``            counter    service, type, state
``oada_jobs_jobs_running``          gauge      service, type
``oada_jobs_job_duration_seconds``  histogram  service, type, state
``oada_jobs_queues``                gauge      service
``oada_jobs_queue_up``              gauge      service, queue
``oada_jobs_bad_entries_total``     counter    service
``oada_jobs_loop_lag_seconds``      gauge      service
``oada_jobs_loop_blocked_total``    counter    service
``oada_jobs_share_reads_total``     counter    service, kind
``oada_jobs_claims_lost_total``     counter    service
``oada_jobs_replicas``              gauge      service
``oada_jobs_purged_jobs_total``     counter    service, status
==================================  =========  ===============================

``oada_jobs_queues`` counts the queues the service runs (watching or
retrying); ``oada_jobs_queue_up`` is 1 for a queue whose list watch is
established with its connection up, 0 while it is being restored or the
queue is retrying (see :mod:`oada_jobs.health`, which refreshes it).

``state`` is ``started``, ``success`` or ``failure``. ``kind`` says why this
replica read a job: ``owned`` (its share), ``stolen`` (it waited too long in
another replica's share) or ``context`` (another share's job read for the
place of a grouped or unique-key job of this one). A lost claim is a job
someone else wrote between this replica's read and its claim (another
replica's claim, a cancel). ``oada_jobs_replicas`` is the live replicas this
one sees (1 when work is not divided). ``status`` of a purged job is
``success`` or ``failure`` (see docs/retention.md).

Jobs run for milliseconds or for days, so the duration histogram's buckets
(:data:`DURATION_BUCKETS`) double from 1/8 s to 2^19 s (about six days),
the range @oada/jobs' ``job_times`` covers, plus the fast end.

Owns the Prometheus collectors; imports nothing from the package and must
not reach the service (the queue and runner call it).
"""

from __future__ import annotations

import errno
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import start_http_server

from .exceptions import ListenError

__all__ = ["DURATION_BUCKETS", "ServiceMetrics"]

#: Upper bounds (seconds) of the job duration histogram's buckets: powers of
#: two from 0.125 s to 524,288 s (6.07 days); slower jobs land in ``+Inf``.
DURATION_BUCKETS: tuple[float, ...] = tuple(2.0**exponent for exponent in range(-3, 20))


@dataclass(frozen=True, slots=True)
class _Collectors:
    jobs: Counter
    running: Gauge
    duration: Histogram
    queues: Gauge
    queue_up: Gauge
    bad_entries: Counter
    loop_lag: Gauge
    loop_blocked: Counter
    share_reads: Counter
    claims_lost: Counter
    replicas: Gauge
    purged: Counter


_lock = threading.Lock()
_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, _Collectors] = (
    weakref.WeakKeyDictionary()
)


def _collectors(registry: CollectorRegistry) -> _Collectors:
    with _lock:
        found = _by_registry.get(registry)
        if found is None:
            found = _Collectors(**_job_collectors(registry), **_service_collectors(registry))
            _by_registry[registry] = found
        return found


def _job_collectors(registry: CollectorRegistry) -> dict[str, Any]:
    """The collectors of jobs: counts, running, durations, reads, lost claims, purges."""
    return {
        "jobs": Counter(
            "oada_jobs_jobs",
            "Jobs by service, type and state (started, success, failure).",
            ["service", "type", "state"],
            registry=registry,
        ),
        "running": Gauge(
            "oada_jobs_jobs_running",
            "Jobs whose work function is running now.",
            ["service", "type"],
            registry=registry,
        ),
        "duration": Histogram(
            "oada_jobs_job_duration_seconds",
            "Time from claiming a job to its outcome being known.",
            ["service", "type", "state"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        ),
        "share_reads": Counter(
            "oada_jobs_share_reads",
            "Jobs this replica read: its share (owned), stolen, or as context.",
            ["service", "kind"],
            registry=registry,
        ),
        "claims_lost": Counter(
            "oada_jobs_claims_lost",
            "Claims refused because the job changed since it was read (412).",
            ["service"],
            registry=registry,
        ),
        "purged": Counter(
            "oada_jobs_purged_jobs",
            "Finished jobs removed by retention, by the list they were filed in.",
            ["service", "status"],
            registry=registry,
        ),
    }


def _service_collectors(registry: CollectorRegistry) -> dict[str, Any]:
    """The collectors of the service itself: queues, bad entries, event loop, replicas."""
    return {
        "queues": Gauge(
            "oada_jobs_queues",
            "Job queues the service runs (watching or retrying).",
            ["service"],
            registry=registry,
        ),
        "queue_up": Gauge(
            "oada_jobs_queue_up",
            "1 while the queue's list watch is established and its connection up.",
            ["service", "queue"],
            registry=registry,
        ),
        "bad_entries": Counter(
            "oada_jobs_bad_entries",
            "Warnings about job-list entries that cannot be run or filed.",
            ["service"],
            registry=registry,
        ),
        "loop_lag": Gauge(
            "oada_jobs_loop_lag_seconds",
            "How late the event loop last woke the watchdog (blocking work shows here).",
            ["service"],
            registry=registry,
        ),
        "loop_blocked": Counter(
            "oada_jobs_loop_blocked",
            "Times the event loop lagged by loop_lag_warning seconds or more.",
            ["service"],
            registry=registry,
        ),
        "replicas": Gauge(
            "oada_jobs_replicas",
            "Live replicas of the service that this one sees.",
            ["service"],
            registry=registry,
        ),
    }


class ServiceMetrics:
    """The metrics of one service.

    >>> metrics = ServiceMetrics("email-service", registry=CollectorRegistry())
    >>> metrics.job_started("email")
    """

    def __init__(self, service: str, *, registry: CollectorRegistry | None = None) -> None:
        self.service = service
        self.registry = registry if registry is not None else REGISTRY
        self._c = _collectors(self.registry)
        self._server: Any = None
        # Labelled children, looked up once: ``labels()`` checks and joins
        # its arguments on every call, three times per job.
        self._children: dict[tuple[object, ...], Any] = {}
        self._queues_up: set[str] = set()

    def _child(self, metric: Counter | Gauge | Histogram, *labels: str) -> Any:
        key = (metric, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(self.service, *labels)
        return child

    def job_started(self, job_type: str) -> None:
        self._child(self._c.jobs, job_type, "started").inc()
        self._child(self._c.running, job_type).inc()

    def job_stopped(self, job_type: str) -> None:
        self._child(self._c.running, job_type).dec()

    def job_finished(self, job_type: str, state: str, duration: float | None) -> None:
        self._child(self._c.jobs, job_type, state).inc()
        if duration is not None:
            self._child(self._c.duration, job_type, state).observe(duration)

    def bad_entry(self) -> None:
        self._child(self._c.bad_entries).inc()

    def loop_lag(self, seconds: float) -> None:
        self._child(self._c.loop_lag).set(seconds)

    def loop_blocked(self) -> None:
        self._child(self._c.loop_blocked).inc()

    def jobs_purged(self, status: str, count: int) -> None:
        self._child(self._c.purged, status).inc(count)

    def set_queues(self, count: int) -> None:
        self._c.queues.labels(self.service).set(count)

    def set_queues_up(self, queues: Mapping[str, bool]) -> None:
        """Set ``oada_jobs_queue_up`` for *queues* (key -> up); drop queues gone since."""
        for key in self._queues_up - queues.keys():
            self._c.queue_up.remove(self.service, key)
        for key, up in queues.items():
            self._c.queue_up.labels(self.service, key).set(1 if up else 0)
        self._queues_up = set(queues)

    def share_read(self, kind: str) -> None:
        """A job read by this replica: ``owned``, ``stolen`` or ``context``."""
        self._child(self._c.share_reads, kind).inc()

    def claim_lost(self) -> None:
        self._child(self._c.claims_lost).inc()

    def set_replicas(self, count: int) -> None:
        self._child(self._c.replicas).set(count)

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Serve ``/metrics`` on *port* (0 picks a free one); returns the port.

        Raises :class:`~oada_jobs.exceptions.ListenError` when it cannot listen there.
        """
        try:
            server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        except OSError as exc:
            reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise ListenError(addr, port, reason or str(exc)) from None
        self._server = server
        return int(server.server_port)

    def close(self) -> None:
        """Stop the ``/metrics`` server, if one was started."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
