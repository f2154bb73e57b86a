"""The options of a service, validated: every size and time limit of the framework core.

Owns :class:`ServiceConfig`, which ``Service(...)`` and ``service.configure``
build; the queue, runner and filer read the fields they need from it.
Plain data; imports only the layout names of :mod:`oada_jobs.tree`.

It must not touch I/O, the queues or the service.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt

from .tree import LayoutName

__all__ = [
    "CONTROL_MAX_TYPES",
    "CONTROL_TYPE_BYTES",
    "LIMIT_RECHECK",
    "RATE_LIMIT_MAX",
    "ServiceConfig",
]


class ServiceConfig(BaseModel):
    """The validated options of a :class:`~oada_jobs.Service` (all keyword arguments)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Jobs running at once, over all queues (clients the service opens allow
    #: four times as many requests in flight).
    concurrency: PositiveInt = 10
    #: Job-list layout: ``"classic"`` or ``"pending"`` (see docs/layouts.md).
    layout: LayoutName = "classic"
    #: How long a claim on a job holds without renewal.
    lease: timedelta = Field(default=timedelta(seconds=60), gt=timedelta(0))
    #: Seconds between re-reads of the pending list (expired leases, released jobs).
    sweep_interval: PositiveFloat = 30.0
    #: Seconds ``stop()`` lets running jobs finish before cancelling them.
    shutdown_grace: float = Field(default=30.0, ge=0)
    #: First and longest wait between retries of a failing queue.
    retry_initial: PositiveFloat = 1.0
    retry_max: PositiveFloat = 60.0
    #: Seconds to wait for a resource that is not a job yet to become one.
    invalid_job_wait: float = Field(default=2.0, ge=0)
    #: Seconds allowed for recording a job's outcome.
    finish_timeout: PositiveFloat = 30.0
    #: Read jobs a queue holds in memory, waiting for a slot; in a larger
    #: backlog it reads more as these start (bounds memory).
    keep_jobs: PositiveInt = 1000
    #: Serve Prometheus ``/metrics`` on this port (0 = any free port).
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    #: Address the metrics server binds to.
    metrics_addr: str = "0.0.0.0"
    #: Seconds the event loop may go without a heartbeat before ``/healthz``
    #: (served with ``/metrics``) fails (see :mod:`oada_jobs.health`).
    loop_stall_limit: PositiveFloat = 5.0
    #: Seconds a cancelled work function (timeout, cancel request) has to
    #: end; past that its job is filed anyway and its slot freed, while the
    #: function, which ignores cancellation, goes on with a revoked client.
    cancel_grace: float = Field(default=2.0, ge=0)
    #: An event-loop lag of this many seconds or more is logged, naming the
    #: jobs running, and counted (see docs/work-functions.md); 0 turns it off.
    loop_lag_warning: float = Field(default=1.0, ge=0)
    #: Replicas divide each queue's jobs between them (see docs/replicas.md);
    #: off, every replica reads every job and the claims decide.
    divide_work: bool = True
    #: How long a replica's announcement holds without renewal: a replica
    #: killed without stopping loses its share this long after its last renewal.
    member_lease: timedelta = Field(default=timedelta(seconds=10), gt=timedelta(0))
    #: Seconds a job waits in another replica's share before a replica with
    #: free slots and nothing of its own to do takes it.
    steal_after: PositiveFloat = 2.0


#: Job types the control resource may name (under ``paused/types`` and under ``types``).
CONTROL_MAX_TYPES = 1000
#: Bytes of one job type's name in the control resource.
CONTROL_TYPE_BYTES = 200
#: Largest ``rateLimit.limit``: the starts of a window are kept in the limits
#: resource, one timestamp each.
RATE_LIMIT_MAX = 1000
#: Seconds a replica waits before asking again for a type whose concurrency
#: is taken by other replicas (their releases are not watched).
LIMIT_RECHECK = 1.0
