"""The service: work functions by job type, and the queues they are fed from.

::

    service = Service("email-service", domain=DOMAIN, token=TOKEN, concurrency=10)

    @service.on("email", timeout=10)
    async def send(job: Job, ctx: WorkerContext) -> Json:
        await ctx.log.info("started", "Job started")
        return {"sent": True}

    async with service:          # returns once every queue is watched
        ...                      # the service works in the background
    # or: await service.run()    # until SIGTERM/SIGINT
    # or: await service.start(); ...; await service.stop()   (same task)

A running service watches ``/bookmarks/services/<name>/queues`` on its own
store and runs one :class:`~oada_jobs.queue.Queue` for its own domain and
token plus one per valid ``{"domain", "token"}`` entry there; entries added,
changed or removed take effect at once.

Owns :class:`Service` (the public façade: options, work functions, life
cycle, components) and the :class:`Component` seam; :class:`ServiceState`
and the starting and stopping are :mod:`oada_jobs.lifecycle`'s. It hands off to collaborators that never see it: the keyword options are
declared and validated in :mod:`oada_jobs.options` (and ``service.on``'s by
:func:`oada_jobs.worker.worker_factory`), the work functions and the control
in force are kept by :class:`~oada_jobs.work_types.WorkTypes`, the queues
and the queues list they follow by :class:`~oada_jobs.queue_set.QueueSet`,
and what a run opens and starts by :class:`~oada_jobs.service_run.ServiceRun`
(each queue gets a :class:`~oada_jobs.queue.QueueHost`, never the service).
Periodic jobs and scheduled reports sit above it as components using its
public API (:mod:`oada_jobs.cron`, :mod:`oada_jobs.reports`); it must not
import them.

Length: ``Service`` is longer than 300 lines because it is the public
façade and nothing else: some thirty-five public members (the options,
``on`` and its overloads, the components, the life cycle, the state the
queues and tests read), most of them a docstring and a line or two that
hand off to the collaborators above. Going further would move public
members into a base class, whose members the API reference does not
render with the class.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping
from datetime import timedelta
from functools import partial
from types import TracebackType
from typing import Any, ClassVar, Protocol, TypeVar, Unpack, overload

import anyio
from anyio.abc import TaskStatus

from ._ksuid import ksuid
from .client import OADAClient, parse_domain
from .config import ServiceConfig
from .context import WorkFunction
from .control import Control
from .health import Readiness
from .lifecycle import Lifecycle, ServiceState
from .metrics import ServiceMetrics
from .options import (
    WORK_DEFAULTS,
    Connection,
    ServiceOptions,
    WorkOptions,
    check_service_options,
    configured,
)
from .queue import Queue
from .queue_list import parse_queue_entry
from .queue_set import QueueSet
from .replicas import Membership, WholeQueue
from .reporters import FinishReport, Reporter
from .service_run import RunParts, ServiceRun
from .settings import Settings, load_settings
from .tree import get_layout, validate_service_name
from .watchdog import LoopWatchdog
from .work_types import WorkTypes
from .worker import Timeout, Worker, worker_factory

__all__ = [
    "Component",
    "Service",
    "ServiceConfig",
    "ServiceState",
    "Timeout",
    "parse_queue_entry",
]

logger = logging.getLogger("oada_jobs")

#: How long ``start()`` and a change of the queues list wait for a new queue
#: to watch its list; a queue whose server is slower goes on starting meanwhile.
QUEUE_START_WAIT = 5.0

W = TypeVar("W", bound=WorkFunction)


class Component(Protocol):
    """A part of a service that runs beside its queues while the service runs.

    Periodic jobs (:mod:`oada_jobs.cron`) and scheduled reports are
    components: they sit above the service, use only its public API, and
    are added with :meth:`Service.add_component` before it starts.
    """

    def copy(self) -> Component:
        """The same component for a copy of its service (:meth:`Service.copy`)."""
        ...

    async def run(self, service: Service, *, task_status: TaskStatus[anyio.CancelScope]) -> None:
        """Run while *service* runs: ``task_status.started(scope)`` once ready;
        the service cancels *scope* when it stops."""
        ...


class Service:
    """An OADA job service.

    :param name: the service name; its config lives at ``/bookmarks/services/<name>``.
    :param domain: the OADA store with the service config, e.g. ``https://oada.example.org``.
    :param token: the service token for *domain*.
    :param oada: an open :class:`~oada_jobs.client.OADAClient` to use instead of
        *domain*/*token* (the service does not close it).
    :param reporters: finish reporters, e.g. :class:`~oada_jobs.SlackReporter`.
    :param metrics_registry: where metrics go (default: the global registry).

    The other keyword arguments are :class:`ServiceConfig` fields, with its
    defaults. Timeouts and durations are seconds (float) or
    :class:`~datetime.timedelta`.
    """

    def __init__(self, name: str, **options: Unpack[ServiceOptions]) -> None:
        self.name = validate_service_name(name)
        check_service_options(options, "Service")
        self._life = Lifecycle(self.name)
        self._connection = Connection()
        self.config = ServiceConfig()
        self.layout = get_layout(self.config.layout)
        self.metrics = ServiceMetrics(self.name, registry=options.pop("metrics_registry", None))
        self.reporters: list[Reporter] = []
        self.configure(**options)
        #: Identifies this service instance in job leases.
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{ksuid()[-10:]}"
        self._types = WorkTypes(self.name)
        # Counted on the metrics in use then (configure may replace them).
        self._queue_set = QueueSet(self.name, counted=lambda n: self.metrics.set_queues(n))
        self._components: dict[str, Component] = {}
        self._run: ServiceRun | None = None

    def configure(self, **options: Unpack[ServiceOptions]) -> None:
        """Replace the given options (``None`` keeps the current value); only before start.

        Takes the keyword arguments of :class:`Service`. Lets a runner such as
        ``oada-jobs run`` apply command-line options to a service defined in
        user code as ``Service("email-service")``.
        """
        if self.state is not ServiceState.CREATED:
            raise RuntimeError(
                f"a service can only be configured before it starts; it is {self.state.value}"
            )
        check_service_options(options, "configure")
        config = configured(self.config, options)
        self._connection = self._connection.configured(options)
        self.config = config
        layout = options.get("layout")
        self.layout = get_layout(layout if layout is not None else config.layout)
        if (registry := options.get("metrics_registry")) is not None:
            self.metrics = ServiceMetrics(self.name, registry=registry)
        if (reporters := options.get("reporters")) is not None:
            self.reporters = list(reporters)
        self.limiter = anyio.CapacityLimiter(config.concurrency)

    @classmethod
    def from_env(cls, name: str, **options: Any) -> Service:
        """A service with *options*, then the settings ``oada-jobs run`` applies on top.

        For a program that runs its service itself rather than through
        ``oada-jobs run``::

            service = Service.from_env("email-service", concurrency=4)

            @service.on("email", timeout=60)
            async def send(job: Job, ctx: WorkerContext) -> Json: ...

            anyio.run(service.run)

        ``OADA_DOMAIN``/``OADA_TOKEN`` (or ``DOMAIN``/``TOKEN``),
        ``OADA_JOBS_CONCURRENCY``, ``OADA_JOBS_LAYOUT``,
        ``OADA_JOBS_METRICS_PORT``, ``OADA_JOBS_GRACE_PERIOD`` and
        ``OADA_JOBS_LOGGING`` are read from the environment and a ``.env``
        file, and win over *options* as they win over the service's code
        under ``oada-jobs run``. Raises :class:`pydantic.ValidationError`
        naming a bad variable (never its value).

        Log output is the process's business, not the service's: for the
        output ``oada-jobs run`` sets up (``OADA_JOBS_LOG_LEVEL``,
        ``OADA_JOBS_LOG_FORMAT``), call ``load_settings().configure_logging()``.
        """
        service = cls(name, **options)
        service.configure_from_env()
        return service

    def configure_from_env(self, settings: Settings | None = None) -> None:
        """Apply *settings* (default: read from the environment and ``.env`` now).

        Only settings set somewhere change the service; see :meth:`from_env`.
        """
        settings = settings if settings is not None else load_settings()
        self.configure(**settings.service_options())
        settings.export_update_levels()

    def copy(self) -> Service:
        """A new, not yet started service with this one's name, options, work
        functions and reporters (a service runs once; its copy can run again).

        ``oada-jobs run`` starts a copy, so a service object defined at module
        level can be run any number of times in one process.
        """
        twin = Service(self.name, metrics_registry=self.metrics.registry)
        twin.config, twin.layout = self.config, self.layout
        twin._connection = self._connection
        twin.reporters = list(self.reporters)
        twin.limiter = anyio.CapacityLimiter(self.config.concurrency)
        twin._types = self._types.copy()
        twin._components = {key: part.copy() for key, part in self._components.items()}
        return twin

    @property
    def request_concurrency(self) -> int:
        """OADA requests in flight for clients the service opens: a few per running job,
        so one job's request never waits for another job's."""
        return 4 * self.config.concurrency

    @property
    def domain(self) -> str:
        """The origin of the service's own store, e.g. ``https://oada.example.org``."""
        if self._connection.domain is None:
            raise RuntimeError("the service has no domain yet; pass domain= and token= or oada=")
        return self._connection.domain

    @property
    def token(self) -> str | None:
        """The token the service connects with (``None`` when given ``oada=``).

        A secret: it is in no repr or log line; this is for tools that must
        connect as the service would (``oada-jobs cron``).
        """
        return self._connection.token

    def __repr__(self) -> str:
        domain = self._connection.domain
        return f"Service({self.name!r}, domain={domain!r}, state={self.state.value})"

    # ------------------------------------------------------------ workers

    @overload
    def on(
        self, type: str, timeout: Timeout | None = None, **options: Unpack[WorkOptions]
    ) -> Callable[[W], W]: ...

    @overload
    def on(
        self, type: str, timeout: Timeout | None, work: W, **options: Unpack[WorkOptions]
    ) -> W: ...

    def on(
        self,
        type: str,
        timeout: Timeout | None = None,
        work: W | None = None,
        **options: Unpack[WorkOptions],
    ) -> W | Callable[[W], W]:
        """Register *work* for jobs of *type*; usable as a decorator.

        :param timeout: seconds (or a timedelta) the function may run; it is
            cancelled after that and the job fails with type ``timeout``.
            ``None`` means no limit.

        Timeout, tries, retry delay, priority, concurrency and rate limit can
        be overridden live in ``/bookmarks/services/<name>/control``.

        See docs/scheduling.md.

        >>> @service.on("email", timeout=10)  # doctest: +SKIP
        ... async def send(job: Job, ctx: WorkerContext) -> Json: ...
        """
        make = worker_factory(type, timeout, **(WORK_DEFAULTS | options))

        def register(fn: W) -> W:
            self._types.add(type, make(fn))
            return fn

        return register if work is None else register(work)

    def off(self, type: str) -> None:
        """Remove the work function for *type*; later jobs of that type fail."""
        self._types.remove(type)

    # ------------------------------------------------------------ components

    #: ``service.<name>(...)`` methods provided by modules above the service
    #: (``cron`` by :mod:`oada_jobs.cron`, ``add_report`` by
    #: :mod:`oada_jobs.reports`, ``retain`` by :mod:`oada_jobs.retention`), registered with :meth:`provide` when
    #: ``oada_jobs`` is imported. The import arrows point at this module.
    _provided: ClassVar[dict[str, Callable[..., object]]] = {}

    @classmethod
    def provide(cls, name: str, method: Callable[..., object]) -> None:
        """Make ``service.<name>(...)`` call ``method(service, ...)``."""
        cls._provided[name] = method

    def _call_provided(self, name: str, *args: Any, **kwargs: Any) -> None:
        method = self._provided.get(name)
        if method is None:
            raise RuntimeError(f"service.{name}() is provided by a module that was not imported")
        method(self, *args, **kwargs)

    def cron(
        self,
        name: str,
        schedule: str,
        *,
        type: str | None = None,
        config: Any = None,
        **options: Any,
    ) -> None:
        """Post a job of *type* (default *name*) on a cron *schedule*; see docs/periodic-jobs.md.

        *options*: ``timezone``, ``overlap``, ``version`` and the ticks' job
        options (``group``, ``unique_key``, ``tries``, ``priority``,
        ``timeout``, ``expires``, ``options``). Provided by
        :func:`oada_jobs.cron.add_entry`.
        """
        self._call_provided("cron", name, schedule, type=type, config=config, **options)

    def retain(self, **options: Any) -> None:
        """Purge old finished jobs on a schedule (``success_days=``, ``failure_days=``,
        ``schedule=``...); see docs/retention.md. Provided by
        :func:`oada_jobs.retention.add_retention`."""
        self._call_provided("retain", **options)

    def add_report(self, name: str, schedule: str, **options: Any) -> None:
        """Make a report of finished jobs on a cron *schedule*, stored in OADA and
        optionally mailed; *options* as for :func:`oada_jobs.reports.add_report`."""
        self._call_provided("add_report", name, schedule, **options)

    def add_component(self, key: str, component: Component) -> None:
        """Run *component* beside the queues while the service runs; before start only."""
        if self.state is not ServiceState.CREATED:
            raise RuntimeError(
                f"components are added before the service starts; it is {self.state.value}"
            )
        if key in self._components:
            raise ValueError(f"the service has a component {key!r} already")
        self._components[key] = component

    def component(self, key: str) -> Component | None:
        """The component added under *key*, if any."""
        return self._components.get(key)

    def worker_for(self, type: str) -> Worker | None:
        """The :class:`~oada_jobs.worker.Worker` for *type*, if any, with the
        settings of the service's control (``control/types/<type>``) applied."""
        return self._types.worker_for(type)

    @property
    def control(self) -> Control:
        """What the service's control resource says now (docs/control.md)."""
        return self._types.control

    @property
    def control_errors(self) -> Mapping[str, str]:
        """Why parts of the control resource were refused (also in its ``status``)."""
        return self._types.errors

    # ------------------------------------------------------------ state shared with queues

    @property
    def state(self) -> ServiceState:
        return self._life.state

    @property
    def oada(self) -> OADAClient:
        """The service's own client (while running)."""
        oada = self._run.oada if self._run is not None else self._connection.given
        if oada is None:
            raise RuntimeError("the service is not running")
        return oada

    @property
    def metrics_bound_port(self) -> int | None:
        """The port ``/metrics`` is served on, once running with ``metrics_port``."""
        return self._run.bound_port if self._run is not None else None

    @property
    def shares(self) -> Membership | WholeQueue:
        """How this replica's queues divide their jobs with the service's other replicas."""
        return self._run.shares if self._run is not None else WholeQueue()

    @property
    def watchdog(self) -> LoopWatchdog:
        """Measures event-loop lag and names the work functions running (once started)."""
        if self._run is None:
            raise RuntimeError("the service has not started")
        return self._run.watchdog

    @property
    def queues(self) -> Mapping[str, Queue]:
        """The queues by key (``"_default"`` is the service's own), started or retrying.

        ``queue.watching`` tells whether a queue's list watch is open.
        """
        return self._queue_set.queues

    async def wait_for_queues(self, predicate: Callable[[Mapping[str, Queue]], bool]) -> None:
        """Wait until the queues (by key) satisfy *predicate*; bound it with ``anyio.fail_after``.

        A stopped queue leaves the mapping at once; ``queue.watching`` turns
        true when its list watch opens. Useful for health checks and tests::

            with anyio.fail_after(5):
                await service.wait_for_queues(lambda qs: "b" in qs and qs["b"].watching)
        """
        await self._queue_set.wait_for(predicate)

    def _readiness(self) -> Readiness:
        """For ``/readyz``: running, and each queue's watch established and connected."""
        return Readiness(self.state is ServiceState.RUNNING, self._queue_set.up())

    def same_domain(self, domain: str) -> bool:
        return parse_domain(domain).http == self.domain

    async def report(self, report: FinishReport) -> None:
        """Tell every reporter about a finished job; reporter errors are logged only."""
        for reporter in self.reporters:
            try:
                await reporter.report(report)
            except Exception as error:
                logger.error("reporter %r failed for job %s: %s", reporter, report.job.key, error)

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Service:
        await self._enter()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._life.exit(exc_type, exc, tb)

    async def start(self) -> None:
        """Start the service; returns once its queues are watched.

        The background work runs in a task group entered here and left by
        :meth:`stop`, so call both from the same task. To start a service from
        one task and stop it from another, use ``async with service:`` or
        :meth:`run`.
        """
        await self._enter(by_start=True)

    async def stop(self, grace: Timeout | None = None) -> None:
        """Stop: no new jobs; running jobs get *grace* seconds to finish, then
        are cancelled and given back (they stay pending and run again later).

        *grace* defaults to the ``shutdown_grace`` option.
        """
        if isinstance(grace, timedelta):
            grace = grace.total_seconds()
        await self._life.stop(None if grace is None else float(grace))

    async def run(
        self,
        *,
        handle_signals: bool = True,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run until :meth:`stop` is called or (with *handle_signals*) SIGTERM/SIGINT arrives.

        Where the event loop cannot handle signals (Windows), Ctrl-C still
        stops the service gracefully from the main thread (see
        :mod:`oada_jobs._signals`).

        ``await task_group.start(service.run)`` returns once the queues are
        watched (and the signal handlers installed).
        """
        async with self, anyio.create_task_group() as group:
            if handle_signals:
                await group.start(self._life.handle_signals)
            task_status.started()
            await self._life.stopping.wait()
            group.cancel_scope.cancel()

    async def _enter(self, *, by_start: bool = False) -> None:
        self._life.check_unstarted()
        connection = self._connection
        if connection.given is None and (connection.domain is None or not connection.token):
            raise ValueError("expected domain= and token= (or an open client as oada=)")
        self._run = ServiceRun(self._run_parts())
        await self._life.enter(self._run, grace=self.config.shutdown_grace, by_start=by_start)

    def _run_parts(self) -> RunParts:
        """What a run of the service needs, as it is configured now."""
        return RunParts(
            name=self.name,
            worker_id=self.worker_id,
            config=self.config,
            layout=self.layout,
            connection=self._connection,
            request_concurrency=self.request_concurrency,
            metrics=self.metrics,
            limiter=self.limiter,
            types=self._types,
            queues=self._queue_set,
            report=self.report,
            readiness=self._readiness,
            queue_start_wait=QUEUE_START_WAIT,
            components=[partial(part.run, self) for part in self._components.values()],
        )
