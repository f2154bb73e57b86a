"""One run of a service: what ``start()`` opens and ``stop()`` closes.

Owns :class:`ServiceRun`: the service's own client, the probes port
(:mod:`oada_jobs.health`), the :class:`~oada_jobs.limits.Gate` of per-type
limits, the event-loop watchdog, this replica's membership
(:mod:`oada_jobs.replicas`), following the control resource and the queues
list, the components, and stopping them in that order. It makes each
queue with a :class:`~oada_jobs.queue.QueueHost` and connects it.

It gets what a run needs as :class:`RunParts`, never the service, and must
not import :mod:`oada_jobs.service`; the service keeps the life-cycle
states and decides when a run starts and stops.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from ._retry import exponential
from .client import OADAClient, parse_domain
from .config import ServiceConfig
from .dispatch import InFlight
from .health import Readiness, serve_probes
from .limits import Gate
from .metrics import ServiceMetrics
from .options import Connection
from .queue import Queue, QueueHost
from .queue_set import QueueSet
from .replicas import Membership, WholeQueue
from .reporters import FinishReport
from .tree import Layout
from .watchdog import LoopWatchdog
from .work_types import WorkTypes

__all__ = ["RunParts", "ServiceRun", "StartComponent"]

#: Starts a component; it calls ``task_status.started(scope)`` once ready and
#: ends when *scope* is cancelled.
StartComponent = Callable[..., Coroutine[Any, Any, None]]


@dataclass(frozen=True, slots=True)
class RunParts:
    """What one run of a service needs, as they are when it starts."""

    #: The service name (where its config, lists and control are).
    name: str
    #: Names this replica in job leases and among the service's replicas.
    worker_id: str
    #: The service's options.
    config: ServiceConfig
    #: The job-list layout.
    layout: Layout
    #: Where the service connects.
    connection: Connection
    #: OADA requests in flight for each client the run opens.
    request_concurrency: int
    #: The service's metrics.
    metrics: ServiceMetrics
    #: Job slots shared by all the service's queues.
    limiter: anyio.CapacityLimiter
    #: The work functions by type, and the control in force.
    types: WorkTypes
    #: The service's queues.
    queues: QueueSet
    #: Told about every job a queue files.
    report: Callable[[FinishReport], Awaitable[None]]
    #: What ``/readyz`` says.
    readiness: Callable[[], Readiness]
    #: How long ``start()`` and a change of the queues list wait for a new queue.
    queue_start_wait: float
    #: The components, in the order they were added.
    components: Sequence[StartComponent] = ()


class ServiceRun:
    """One run of a service made of *parts*: :meth:`open`, :meth:`start`,
    then :meth:`stop` once the service stops."""

    def __init__(self, parts: RunParts) -> None:
        self.parts = parts
        #: The service's own client (while running, or the one it was given).
        self.oada: OADAClient | None = parts.connection.given
        #: The port ``/metrics`` is served on, with ``metrics_port``.
        self.bound_port: int | None = None
        #: Measures event-loop lag and names the work functions running.
        self.watchdog = LoopWatchdog(parts.name, parts.metrics, parts.config.loop_lag_warning)
        #: How this replica's queues divide their jobs with the other replicas.
        self.shares: Membership | WholeQueue = WholeQueue()
        #: Jobs in flight over all the service's queues.
        self.in_flight = InFlight()
        self._gate: Gate | None = None
        self._membership_scope: anyio.CancelScope | None = None
        self._scopes: list[anyio.CancelScope] = []

    @property
    def client(self) -> OADAClient:
        if self.oada is None:
            raise RuntimeError("the service is not running")
        return self.oada

    async def open(self, stack: AsyncExitStack) -> None:
        """Connect to the service's own store, serve the probes and make the
        gate, each closed by *stack*."""
        parts, config = self.parts, self.parts.config
        if parts.connection.given is None:
            assert parts.connection.token is not None
            self.oada = await stack.enter_async_context(self._client(parts.connection.token))
            stack.callback(setattr, self, "oada", None)
        if config.metrics_port is not None:
            probes = serve_probes(
                parts.metrics,
                parts.readiness,
                port=config.metrics_port,
                addr=config.metrics_addr,
                stall_limit=config.loop_stall_limit,
            )
            self.bound_port = (await stack.enter_async_context(probes)).port
        self._gate = Gate(
            parts.name,
            worker_id=parts.worker_id,
            lease=config.lease,
            limits_for=parts.types.limits_for,
        )
        self._gate.oada = self.client

    async def start(self, work: TaskGroup, stopping: anyio.Event) -> None:
        """Start in *work* what runs beside the jobs: the watchdog, the
        replicas, the control, the queues and the components.

        The control's type slots are renewed until *stopping* is set and
        through the stop's grace period.
        """
        parts, config = self.parts, self.parts.config
        assert self._gate is not None
        watch_scope = anyio.CancelScope()
        work.start_soon(self._watch_loop, watch_scope)
        if config.divide_work:
            await work.start(self._join_replicas)
        backoff = exponential(config.retry_initial, config.retry_max)
        follow_control = partial(
            parts.types.follow, self.client, self._gate, backoff=backoff, stopping=stopping
        )
        control_scope = await work.start(follow_control)
        follow_queues = partial(
            parts.queues.follow,
            self.client,
            work,
            make=self._queue,
            domain=self._domain,
            layout=parts.layout,
            backoff=backoff,
            start_wait=parts.queue_start_wait,
        )
        await work.start(follow_queues)
        components = [await work.start(start) for start in parts.components]
        self._scopes = [control_scope, *components, watch_scope]

    def stop(self) -> None:
        """No new jobs: stop following the queues list, leave the replicas,
        stop the control, the components and the watchdog, then the queues."""
        self.parts.queues.stop_following()
        if self._membership_scope is not None:
            # Hands this replica's share to the others at once.
            self._membership_scope.cancel()
        for scope in self._scopes:
            scope.cancel()
        self.parts.queues.stop_queues()

    @property
    def _domain(self) -> str:
        domain = self.parts.connection.domain
        assert domain is not None, "a running service has a domain"
        return domain

    def _client(self, token: str, domain: str | None = None) -> OADAClient:
        concurrency = self.parts.request_concurrency
        return OADAClient(domain or self._domain, token, concurrency=concurrency)

    async def _watch_loop(self, scope: anyio.CancelScope) -> None:
        with scope:
            await self.watchdog.run()

    async def _join_replicas(self, *, task_status: TaskStatus[None]) -> None:
        """Announce this replica and follow the others (see :mod:`oada_jobs.replicas`)."""
        parts, config = self.parts, self.parts.config
        membership = Membership(
            self.client,
            parts.name,
            worker_id=parts.worker_id,
            lease=config.member_lease,
            layout=parts.layout,
            backoff=(config.retry_initial, config.retry_max),
            on_change=parts.metrics.set_replicas,
        )
        self.shares = membership
        parts.metrics.set_replicas(1)
        with anyio.CancelScope() as self._membership_scope:
            await membership.run(task_status=task_status)

    def _queue(self, key: str, domain: str, token: str | None) -> Queue:
        """A queue for *domain*, with *token* (``None``: the service's own)."""
        parts = self.parts
        host = QueueHost(
            name=parts.name,
            worker_id=parts.worker_id,
            config=parts.config,
            layout=parts.layout,
            limiter=parts.limiter,
            in_flight=self.in_flight,
            metrics=parts.metrics,
            workers=parts.types.worker_for,
            changed=parts.queues.changed,
            report=parts.report,
            watchdog=self.watchdog,
            shares=self.shares,
            gate=self._gate,
        )
        connect = partial(self._connect, domain, token)
        return Queue(host, key, domain=domain, connect=connect, own_token=token is None)

    @asynccontextmanager
    async def _connect(self, domain: str, token: str | None) -> AsyncIterator[OADAClient]:
        """A client for a queue on *domain* with *token* (``None``: the service's own)."""
        if token is None:
            yield self.client
        elif parse_domain(domain).http == self._domain:
            # Same store: share the service's connections; the queue's token
            # is used by this clone only.
            clone = self.client.clone(token)
            try:
                yield clone
            finally:
                clone.revoke()
        else:
            async with self._client(token, domain) as client:
                yield client
