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

Owns :class:`Service` (work functions by type, options, life cycle, the
queues list), :class:`ServiceState` and the :class:`Component` seam. Gives
each queue a :class:`~oada_jobs.queue.QueueHost`, never itself. Periodic
jobs and scheduled reports sit above it as components using its public API
(:mod:`oada_jobs.cron`, :mod:`oada_jobs.reports`); it must not import them.
The queues list is followed by :mod:`oada_jobs.queue_list`, and the options
of ``service.on`` are checked by :func:`oada_jobs.worker.worker_factory`.

:class:`Service` (and so this file) is longer than the ~300 lines a class
here keeps to, and ``__init__``, ``configure`` and ``on`` longer than ~60,
for one reason: it is the public façade, and most of it is its keyword
options spelled out with their docstrings. What it does is done by the
modules it hands off to.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta
from enum import Enum
from functools import partial
from types import TracebackType
from typing import (
    Any,
    ClassVar,
    Protocol,
    TypeVar,
    overload,
)

import anyio
from anyio.abc import TaskGroup, TaskStatus
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from ._ksuid import ksuid
from ._retry import exponential
from ._signals import stop_on_signals
from .client import OADAClient, parse_domain
from .config import ServiceConfig
from .context import WorkFunction
from .control import Control, ControlFollower, RateLimit
from .dispatch import InFlight
from .health import Readiness, serve_probes
from .limits import Gate, TypeLimits
from .metrics import ServiceMetrics
from .queue import DEFAULT_QUEUE, Once, Queue, QueueHost
from .queue_list import QueueEntry, QueuesList, parse_queue_entry
from .replicas import Membership, WholeQueue
from .reporters import FinishReport, Reporter
from .settings import Settings, load_settings
from .tree import Layout, LayoutName, get_layout, validate_service_name
from .types import UniquePolicy
from .watchdog import LoopWatchdog
from .worker import FollowUp, Timeout, Worker, as_seconds, with_settings, worker_factory

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


class ServiceState(Enum):
    """Lifecycle of a :class:`Service`; a stopped service cannot be restarted."""

    #: Created, not started.
    CREATED = "created"
    #: ``start()`` is ensuring and watching the queues.
    STARTING = "starting"
    #: Watching queues and running jobs.
    RUNNING = "running"
    #: No new jobs; running ones are finishing.
    STOPPING = "stopping"
    #: Done; connections closed.
    STOPPED = "stopped"


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


class _Started:
    """The task status of a queue started without waiting for it: an event."""

    def __init__(self) -> None:
        self.event = anyio.Event()

    def started(self, value: None = None) -> None:
        self.event.set()


def _single_leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


class Service:
    """An OADA job service.

    :param name: the service name; its config lives at ``/bookmarks/services/<name>``.
    :param domain: the OADA store with the service config, e.g. ``https://oada.example.org``.
    :param token: the service token for *domain*.
    :param oada: an open :class:`~oada_jobs.client.OADAClient` to use instead of
        *domain*/*token* (the service does not close it).
    :param reporters: finish reporters, e.g. :class:`~oada_jobs.SlackReporter`.
    :param metrics_registry: where metrics go (default: the global registry).

    The other keyword arguments are :class:`ServiceConfig` fields. Timeouts and
    durations are seconds (float) or :class:`~datetime.timedelta`.
    """

    def __init__(
        self,
        name: str,
        *,
        domain: str | None = None,
        token: str | None = None,
        oada: OADAClient | None = None,
        concurrency: int = 10,
        layout: LayoutName | Layout = "classic",
        lease: Timeout = 60.0,
        sweep_interval: Timeout = 30.0,
        shutdown_grace: Timeout = 30.0,
        retry_initial: Timeout = 1.0,
        retry_max: Timeout = 60.0,
        invalid_job_wait: Timeout = 2.0,
        finish_timeout: Timeout = 30.0,
        keep_jobs: int = 1000,
        metrics_port: int | None = None,
        metrics_addr: str = "0.0.0.0",
        loop_stall_limit: Timeout = 5.0,
        metrics_registry: CollectorRegistry | None = None,
        reporters: Iterable[Reporter] = (),
        cancel_grace: Timeout = 2.0,
        loop_lag_warning: Timeout = 1.0,
        divide_work: bool = True,
        member_lease: Timeout = 10.0,
        steal_after: Timeout = 2.0,
    ) -> None:
        self.name = validate_service_name(name)
        self._state = ServiceState.CREATED
        self._domain: str | None = None
        self._token: str | None = None
        self._given_client: OADAClient | None = None
        self._oada: OADAClient | None = None
        self.config = ServiceConfig()
        self.layout = get_layout(self.config.layout)
        self.metrics = ServiceMetrics(self.name, registry=metrics_registry)
        self.reporters: list[Reporter] = []
        self.configure(
            domain=domain,
            token=token,
            oada=oada,
            concurrency=concurrency,
            layout=layout,
            lease=lease,
            sweep_interval=sweep_interval,
            shutdown_grace=shutdown_grace,
            retry_initial=retry_initial,
            retry_max=retry_max,
            invalid_job_wait=invalid_job_wait,
            finish_timeout=finish_timeout,
            keep_jobs=keep_jobs,
            metrics_port=metrics_port,
            metrics_addr=metrics_addr,
            loop_stall_limit=loop_stall_limit,
            reporters=reporters,
            cancel_grace=cancel_grace,
            loop_lag_warning=loop_lag_warning,
            divide_work=divide_work,
            member_lease=member_lease,
            steal_after=steal_after,
        )
        #: Identifies this service instance in job leases.
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{ksuid()[-10:]}"
        #: The port ``/metrics`` is served on, once running with ``metrics_port``.
        self.metrics_bound_port: int | None = None
        self._workers: dict[str, Worker] = {}
        self._queues: dict[str, Queue] = {}
        self._entries: dict[str, QueueEntry] = {}
        self._in_flight = InFlight()
        self._components: dict[str, Component] = {}
        self._stop_requested = anyio.Event()
        self._done = anyio.Event()
        self._stack: AsyncExitStack | None = None
        self._started_by_start = False
        self._work: TaskGroup | None = None
        self._config_scope: anyio.CancelScope | None = None
        self._queues_event = anyio.Event()
        #: Measures event-loop lag and names the work functions running.
        self.watchdog = LoopWatchdog(self.name, self.metrics, self.config.loop_lag_warning)
        #: How this replica's queues divide their jobs with the service's other replicas.
        self.shares: Membership | WholeQueue = WholeQueue()
        self._membership_scope: anyio.CancelScope | None = None
        self._control = Control()
        self._control_errors: Mapping[str, str] = {}
        self._gate: Gate | None = None

    def configure(
        self,
        *,
        domain: str | None = None,
        token: str | None = None,
        oada: OADAClient | None = None,
        concurrency: int | None = None,
        layout: LayoutName | Layout | None = None,
        lease: Timeout | None = None,
        sweep_interval: Timeout | None = None,
        shutdown_grace: Timeout | None = None,
        retry_initial: Timeout | None = None,
        retry_max: Timeout | None = None,
        invalid_job_wait: Timeout | None = None,
        finish_timeout: Timeout | None = None,
        keep_jobs: int | None = None,
        metrics_port: int | None = None,
        metrics_addr: str | None = None,
        loop_stall_limit: Timeout | None = None,
        metrics_registry: CollectorRegistry | None = None,
        reporters: Iterable[Reporter] | None = None,
        cancel_grace: Timeout | None = None,
        loop_lag_warning: Timeout | None = None,
        divide_work: bool | None = None,
        member_lease: Timeout | None = None,
        steal_after: Timeout | None = None,
    ) -> None:
        """Replace the given options (``None`` keeps the current value); only before start.

        Lets a runner such as ``oada-jobs run`` apply command-line options to a
        service defined in user code as ``Service("email-service")``.
        """
        if self._state is not ServiceState.CREATED:
            raise RuntimeError(
                f"a service can only be configured before it starts; it is {self._state.value}"
            )
        if oada is not None and (domain is not None or token is not None):
            raise ValueError("pass either oada= or domain= and token=, not both")

        def secs(value: Timeout | None, what: str = "a duration") -> float | None:
            return None if value is None else as_seconds(value, what)

        changes: dict[str, Any] = {
            "concurrency": concurrency,
            "layout": get_layout(layout).name if layout is not None else None,
            "lease": timedelta(seconds=s) if (s := secs(lease, "lease")) is not None else None,
            "sweep_interval": secs(sweep_interval, "sweep_interval"),
            "shutdown_grace": secs(shutdown_grace, "shutdown_grace"),
            "retry_initial": secs(retry_initial, "retry_initial"),
            "retry_max": secs(retry_max, "retry_max"),
            "invalid_job_wait": secs(invalid_job_wait, "invalid_job_wait"),
            "finish_timeout": secs(finish_timeout, "finish_timeout"),
            "keep_jobs": keep_jobs,
            "metrics_port": metrics_port,
            "metrics_addr": metrics_addr,
            "loop_stall_limit": secs(loop_stall_limit, "loop_stall_limit"),
            "cancel_grace": secs(cancel_grace, "cancel_grace"),
            "loop_lag_warning": secs(loop_lag_warning, "loop_lag_warning"),
            "divide_work": divide_work,
            "member_lease": (
                timedelta(seconds=s)
                if (s := secs(member_lease, "member_lease")) is not None
                else None
            ),
            "steal_after": secs(steal_after, "steal_after"),
        }
        merged = {**self.config.model_dump(), **{k: v for k, v in changes.items() if v is not None}}
        self.config = ServiceConfig.model_validate(merged)
        self.layout = get_layout(layout) if layout is not None else get_layout(self.config.layout)
        if oada is not None:
            self._domain = parse_domain(oada.domain).http
            self._given_client, self._oada, self._token = oada, oada, None
        elif domain is not None or token is not None:
            if domain is not None:
                self._domain = parse_domain(domain).http
            if token is not None:
                self._token = token
            self._given_client = self._oada = None
        if metrics_registry is not None:
            self.metrics = ServiceMetrics(self.name, registry=metrics_registry)
        if reporters is not None:
            self.reporters = list(reporters)
        self.limiter = anyio.CapacityLimiter(self.config.concurrency)
        self._grace = self.config.shutdown_grace

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
        twin.config = self.config
        twin.layout = self.layout
        twin._domain, twin._token = self._domain, self._token
        twin._given_client = twin._oada = self._given_client
        twin.reporters = list(self.reporters)
        twin.limiter = anyio.CapacityLimiter(self.config.concurrency)
        twin._grace = self.config.shutdown_grace
        twin._workers = dict(self._workers)
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
        if self._domain is None:
            raise RuntimeError("the service has no domain yet; pass domain= and token= or oada=")
        return self._domain

    @property
    def token(self) -> str | None:
        """The token the service connects with (``None`` when given ``oada=``).

        A secret: it is in no repr or log line; this is for tools that must
        connect as the service would (``oada-jobs cron``).
        """
        return self._token

    def __repr__(self) -> str:
        return f"Service({self.name!r}, domain={self._domain!r}, state={self._state.value})"

    # ------------------------------------------------------------ workers

    @overload
    def on(
        self,
        type: str,
        timeout: Timeout | None = None,
        *,
        config: type[BaseModel] | None = None,
        result: type[BaseModel] | None = None,
        tries: int = 3,
        retry_delay: Timeout = 5.0,
        backoff: float = 2.0,
        max_retry_delay: Timeout = 3600.0,
        jitter: bool = True,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = (),
        start_delay: Timeout = 0.0,
        priority: int = 0,
        unique: UniquePolicy = "refuse",
        group_limit: int = 1,
        min_version: int | None = None,
        concurrency: int | None = None,
        rate_limit: tuple[int, Timeout] | RateLimit | None = None,
        then: str | FollowUp | None = None,
        on_failure: str | FollowUp | None = None,
    ) -> Callable[[W], W]: ...

    @overload
    def on(
        self,
        type: str,
        timeout: Timeout | None,
        work: W,
        *,
        config: type[BaseModel] | None = None,
        result: type[BaseModel] | None = None,
        tries: int = 3,
        retry_delay: Timeout = 5.0,
        backoff: float = 2.0,
        max_retry_delay: Timeout = 3600.0,
        jitter: bool = True,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = (),
        start_delay: Timeout = 0.0,
        priority: int = 0,
        unique: UniquePolicy = "refuse",
        group_limit: int = 1,
        min_version: int | None = None,
        concurrency: int | None = None,
        rate_limit: tuple[int, Timeout] | RateLimit | None = None,
        then: str | FollowUp | None = None,
        on_failure: str | FollowUp | None = None,
    ) -> W: ...

    def on(
        self,
        type: str,
        timeout: Timeout | None = None,
        work: W | None = None,
        *,
        config: type[BaseModel] | None = None,
        result: type[BaseModel] | None = None,
        tries: int = 3,
        retry_delay: Timeout = 5.0,
        backoff: float = 2.0,
        max_retry_delay: Timeout = 3600.0,
        jitter: bool = True,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = (),
        start_delay: Timeout = 0.0,
        priority: int = 0,
        unique: UniquePolicy = "refuse",
        group_limit: int = 1,
        min_version: int | None = None,
        concurrency: int | None = None,
        rate_limit: tuple[int, Timeout] | RateLimit | None = None,
        then: str | FollowUp | None = None,
        on_failure: str | FollowUp | None = None,
    ) -> W | Callable[[W], W]:
        """Register *work* for jobs of *type*; usable as a decorator.

        :param timeout: seconds (or a timedelta) the function may run; it is
            cancelled after that and the job fails with type ``timeout``.
            ``None`` means no limit.
        :param config: a pydantic model to validate the job's ``config`` into;
            by default taken from an annotation ``job: Job[Model]``. A config
            that does not validate fails the job with the validation errors.
        :param result: a pydantic model the function's return value must
            match; a result that does not fails the job (``invalid-result``).
        :param tries: how many times a job may be started in all (a job's
            ``options.tries`` overrides it). A try fails when the function
            raises :class:`~oada_jobs.Retry` or one of *retry_on*; after the
            last one the job fails.
        :param retry_delay: wait before the second try when ``Retry`` gives
            no ``defer``; each later try waits *backoff* times longer, at most
            *max_retry_delay*; with *jitter* a random 50-100 % of that.
        :param retry_on: exception classes that count as a failed try
            (``TimeoutError`` covers the timeout); other exceptions fail the job.
        :param start_delay: seconds a job waits after the service first sees it.
        :param priority: priority of jobs that set none (higher runs first).
        :param unique: a job whose ``options.uniqueKey`` is already pending or
            running in the queue is ``"refuse"``d (fails as ``duplicate``),
            ``"merge"``d (ends with the other's outcome) or ``"allow"``ed.
        :param group_limit: jobs of one ``options.group`` running at once.
        :param min_version: jobs with a lower ``options.version`` (default 1)
            fail as ``unsupported-version``.
        :param concurrency: jobs of the type running at once over all the
            service's replicas (docs/control.md).
        :param rate_limit: ``(starts, seconds)``: at most that many starts of
            the type in any window of that many seconds, over all replicas.
        :param then: a job type (or :class:`~oada_jobs.FollowUp`) posted with
            the result as its config when a job of this type succeeds;
        :param on_failure: the same when one fails (docs/work-functions.md).

        Timeout, tries, retry delay, priority, concurrency and rate limit can
        be overridden live in ``/bookmarks/services/<name>/control``.

        See docs/scheduling.md.

        >>> @service.on("email", timeout=10)  # doctest: +SKIP
        ... async def send(job: Job, ctx: WorkerContext) -> Json: ...
        """
        make = worker_factory(
            type,
            timeout,
            config=config,
            result=result,
            tries=tries,
            retry_delay=retry_delay,
            backoff=backoff,
            max_retry_delay=max_retry_delay,
            jitter=jitter,
            retry_on=retry_on,
            start_delay=start_delay,
            priority=priority,
            unique=unique,
            group_limit=group_limit,
            min_version=min_version,
            concurrency=concurrency,
            rate_limit=rate_limit,
            then=then,
            on_failure=on_failure,
        )

        def register(fn: W) -> W:
            self._workers[type] = make(fn)
            return fn

        return register if work is None else register(work)

    def off(self, type: str) -> None:
        """Remove the work function for *type*; later jobs of that type fail."""
        self._workers.pop(type, None)

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
        if self._state is not ServiceState.CREATED:
            raise RuntimeError(
                f"components are added before the service starts; it is {self._state.value}"
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
        worker = self._workers.get(type)
        if worker is None:
            return None
        settings = self._control.settings(type)
        return worker if settings is None else with_settings(worker, settings)

    @property
    def control(self) -> Control:
        """What the service's control resource says now (docs/control.md)."""
        return self._control

    @property
    def control_errors(self) -> Mapping[str, str]:
        """Why parts of the control resource were refused (also in its ``status``)."""
        return dict(self._control_errors)

    def _limits_for(self, type: str) -> TypeLimits:
        worker = self.worker_for(type)
        settings = self._control.settings(type)
        concurrency = worker.concurrency if worker is not None else None
        rate_limit = worker.rate_limit if worker is not None else None
        if worker is None and settings is not None:
            concurrency, rate_limit = settings.concurrency, settings.rate_limit
        return TypeLimits(self._control.paused(type), concurrency, rate_limit)

    def _apply_control(self, control: Control, errors: Mapping[str, str]) -> None:
        self._control_errors = errors
        self._control = control
        if self._gate is not None:
            self._gate.notify()

    # ------------------------------------------------------------ state shared with queues

    @property
    def state(self) -> ServiceState:
        return self._state

    @property
    def oada(self) -> OADAClient:
        """The service's own client (while running)."""
        if self._oada is None:
            raise RuntimeError("the service is not running")
        return self._oada

    @property
    def queues(self) -> Mapping[str, Queue]:
        """The queues by key (``"_default"`` is the service's own), started or retrying.

        ``queue.watching`` tells whether a queue's list watch is open.
        """
        return dict(self._queues)

    async def wait_for_queues(self, predicate: Callable[[Mapping[str, Queue]], bool]) -> None:
        """Wait until the queues (by key) satisfy *predicate*; bound it with ``anyio.fail_after``.

        A stopped queue leaves the mapping at once; ``queue.watching`` turns
        true when its list watch opens. Useful for health checks and tests::

            with anyio.fail_after(5):
                await service.wait_for_queues(lambda qs: "b" in qs and qs["b"].watching)
        """
        while True:
            event = self._queues_event
            if predicate(self.queues):
                return
            await event.wait()

    def _readiness(self) -> Readiness:
        """For ``/readyz``: running, and each queue's watch established and connected."""
        running = self._state is ServiceState.RUNNING
        return Readiness(running, {key: queue.up for key, queue in self._queues.items()})

    def _queues_changed(self) -> None:
        self.metrics.set_queues(len(self._queues))
        self._queues_event.set()
        self._queues_event = anyio.Event()

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
        if self._state is not ServiceState.CREATED:
            raise RuntimeError(f"a service can be started once; this one is {self._state.value}")
        if self._given_client is None and (self._domain is None or not self._token):
            raise ValueError("expected domain= and token= (or an open client as oada=)")
        self._state = ServiceState.STARTING
        stack = AsyncExitStack()
        try:
            group = await stack.enter_async_context(anyio.create_task_group())
            await group.start(self._main)
        except BaseException as error:
            self._stop_requested.set()
            self._state = ServiceState.STOPPED
            await stack.aclose()
            # Task groups wrap a start-up failure; the caller wants the error
            # itself (e.g. Unauthorized when the service token is refused).
            leaf = _single_leaf(error)
            if leaf is not error:
                raise leaf from None
            raise
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop_requested.set()
        stack, self._stack = self._stack, None
        try:
            if stack is not None:
                await stack.__aexit__(exc_type, exc, tb)
        finally:
            self._state = ServiceState.STOPPED

    async def start(self) -> None:
        """Start the service; returns once its queues are watched.

        The background work runs in a task group entered here and left by
        :meth:`stop`, so call both from the same task. To start a service from
        one task and stop it from another, use ``async with service:`` or
        :meth:`run`.
        """
        await self.__aenter__()
        self._started_by_start = True

    async def stop(self, grace: Timeout | None = None) -> None:
        """Stop: no new jobs; running jobs get *grace* seconds to finish, then
        are cancelled and given back (they stay pending and run again later).

        *grace* defaults to the ``shutdown_grace`` option.
        """
        if grace is not None:
            seconds = grace.total_seconds() if isinstance(grace, timedelta) else float(grace)
            self._grace = max(0.0, seconds)
        if self._state in (ServiceState.CREATED, ServiceState.STOPPED):
            self._state = ServiceState.STOPPED
            return
        self._stop_requested.set()
        if self._started_by_start:
            await self.__aexit__(None, None, None)
        else:
            await self._done.wait()

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
                await group.start(self._handle_signals)
            task_status.started()
            await self._stop_requested.wait()
            group.cancel_scope.cancel()

    async def _handle_signals(self, *, task_status: TaskStatus[None]) -> None:
        def stop(name: str) -> None:
            logger.info("service %s: got %s; stopping", self.name, name)
            self._stop_requested.set()

        await stop_on_signals(stop, task_status=task_status)

    async def _main(self, *, task_status: TaskStatus[None]) -> None:
        try:
            async with AsyncExitStack() as stack:
                if self._given_client is None:
                    assert self._token is not None
                    self._oada = await stack.enter_async_context(
                        OADAClient(self.domain, self._token, concurrency=self.request_concurrency)
                    )
                if self.config.metrics_port is not None:
                    probes = await stack.enter_async_context(
                        serve_probes(
                            self.metrics,
                            self._readiness,
                            port=self.config.metrics_port,
                            addr=self.config.metrics_addr,
                            stall_limit=self.config.loop_stall_limit,
                        )
                    )
                    self.metrics_bound_port = probes.port
                self._gate = Gate(
                    self.name,
                    worker_id=self.worker_id,
                    lease=self.config.lease,
                    limits_for=self._limits_for,
                )
                self._gate.oada = self.oada
                with anyio.CancelScope() as work_scope:
                    async with anyio.create_task_group() as work:
                        self._work = work
                        self.watchdog = LoopWatchdog(
                            self.name, self.metrics, self.config.loop_lag_warning
                        )
                        watch_scope = anyio.CancelScope()
                        work.start_soon(self._watch_loop, watch_scope)
                        if self.config.divide_work:
                            await work.start(self._join_replicas)
                        control_scope = await work.start(self._follow_control)
                        await work.start(self._follow_config)
                        scopes = [
                            await work.start(part.run, self) for part in self._components.values()
                        ]
                        self._state = ServiceState.RUNNING
                        logger.info("service %s: running (worker %s)", self.name, self.worker_id)
                        task_status.started()
                        await self._stop_requested.wait()
                        self._state = ServiceState.STOPPING
                        logger.info("service %s: stopping", self.name)
                        if self._config_scope is not None:
                            self._config_scope.cancel()
                        if self._membership_scope is not None:
                            # Hands this replica's share to the others at once.
                            self._membership_scope.cancel()
                        control_scope.cancel()
                        for scope in scopes:
                            scope.cancel()
                        watch_scope.cancel()
                        for queue in self._queues.values():
                            queue.stop()
                        # Queues end once their running jobs end; past the
                        # grace period those are cancelled (and given back).
                        work_scope.deadline = anyio.current_time() + self._grace
                self._work = None
        finally:
            if self._given_client is None:
                self._oada = None
            self._done.set()

    async def _watch_loop(self, scope: anyio.CancelScope) -> None:
        with scope:
            await self.watchdog.run()

    # ------------------------------------------------------------ queues

    async def _join_replicas(self, *, task_status: TaskStatus[None]) -> None:
        """Announce this replica and follow the others (see :mod:`oada_jobs.replicas`)."""
        config = self.config
        membership = Membership(
            self.oada,
            self.name,
            worker_id=self.worker_id,
            lease=config.member_lease,
            layout=self.layout,
            backoff=(config.retry_initial, config.retry_max),
            on_change=self.metrics.set_replicas,
        )
        self.shares = membership
        self.metrics.set_replicas(1)
        with anyio.CancelScope() as self._membership_scope:
            await membership.run(task_status=task_status)

    async def _start_queues(self, queues: list[Queue], *, wait: bool = True) -> None:
        """Start *queues*; with *wait*, until each watches its list, at most
        :data:`QUEUE_START_WAIT`.

        A queue whose server is slow to answer (or never answers) goes on
        starting in the background rather than holding up ``start()``.
        """
        assert self._work is not None
        started = []
        for queue in queues:
            # Listed before it starts, so a stop() meanwhile reaches it too.
            self._queues[queue.key] = queue
            status = _Started()
            self._work.start_soon(partial(queue.run, task_status=status))
            started.append(status.event)
        if queues:
            self._queues_changed()
        if not wait:
            return
        with anyio.move_on_after(QUEUE_START_WAIT):
            for event in started:
                await event.wait()

    def _queue(self, key: str, domain: str, token: str | None) -> Queue:
        """A queue for *domain*, with *token* (``None``: the service's own)."""
        host = QueueHost(
            name=self.name,
            worker_id=self.worker_id,
            config=self.config,
            layout=self.layout,
            limiter=self.limiter,
            in_flight=self._in_flight,
            metrics=self.metrics,
            workers=self.worker_for,
            changed=self._queues_changed,
            report=self.report,
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
            yield self.oada
        elif self.same_domain(domain):
            # Same store: share the service's connections; the queue's token
            # is used by this clone only.
            clone = self.oada.clone(token)
            try:
                yield clone
            finally:
                clone.revoke()
        else:
            async with OADAClient(domain, token, concurrency=self.request_concurrency) as client:
                yield client

    async def _follow_control(self, *, task_status: TaskStatus[anyio.CancelScope]) -> None:
        """Follow ``control`` (pauses, per-type settings) and renew type slots."""
        config = self.config
        follower = ControlFollower(
            self.name,
            apply=self._apply_control,
            backoff=exponential(config.retry_initial, config.retry_max),
        )
        assert self._gate is not None

        # Cancelled when the service stops: the control is no longer followed.
        scope = anyio.CancelScope()

        async def follow(*, task_status: TaskStatus[None]) -> None:
            with scope:
                await follower.follow(self.oada, task_status=task_status)

        async with anyio.create_task_group() as group:
            # Slots are renewed through a stop's grace period too, while the
            # jobs holding them finish.
            group.start_soon(self._gate.renew, self._stop_requested)
            await group.start(follow)
            task_status.started(scope)

    async def _follow_config(self, *, task_status: TaskStatus[None]) -> None:
        with anyio.CancelScope() as scope:
            self._config_scope = scope
            await self._start_queues([self._queue(DEFAULT_QUEUE, self.domain, None)])
            config = self.config
            queues_list = QueuesList(
                self.name,
                layout=self.layout,
                backoff=exponential(config.retry_initial, config.retry_max),
                apply=self._apply,
            )
            await queues_list.follow(self.oada, Once(task_status))

    async def _apply(self, wanted: dict[str, QueueEntry], wait: bool) -> None:
        """Run a queue for each entry of *wanted* (by key), and no other."""
        for key in list(self._entries):
            if wanted.get(key) != self._entries[key]:
                logger.info("service %s: stopping queue %r", self.name, key)
                self._queues.pop(key).stop()
                del self._entries[key]
                self._queues_changed()
        new = []
        for key, entry in wanted.items():
            if key not in self._entries:
                logger.info("service %s: starting queue %r on %s", self.name, key, entry.domain)
                self._entries[key] = entry
                new.append(self._queue(key, entry.domain, entry.token))
        await self._start_queues(new, wait=wait)
