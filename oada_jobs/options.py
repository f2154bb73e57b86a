"""The keyword options of ``Service(...)``, ``service.configure`` and ``service.on``.

Owns their names and types (:class:`ServiceOptions` and :class:`WorkOptions`,
for ``**options: Unpack[...]``), the defaults of ``service.on``
(:data:`WORK_DEFAULTS`), turning given service options into a validated
:class:`~oada_jobs.config.ServiceConfig` (:func:`configured`), and where the
service connects (:class:`Connection`).

Plain data and validation: it must not touch I/O, the queues or the service.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any, TypedDict

from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from .client import OADAClient, parse_domain
from .config import ServiceConfig
from .control import RateLimit
from .reporters import Reporter
from .tree import Layout, LayoutName, get_layout
from .types import UniquePolicy
from .worker import FollowUp, Timeout, as_seconds

__all__ = [
    "WORK_DEFAULTS",
    "Connection",
    "ServiceOptions",
    "WorkOptions",
    "check_service_options",
    "configured",
]


class ServiceOptions(TypedDict, total=False):
    """The keyword options of ``Service(...)`` and ``service.configure``.

    ``domain``, ``token`` and ``oada`` say where the service connects
    (:class:`Connection`), ``metrics_registry`` and ``reporters`` are kept as
    given, and the rest are :class:`~oada_jobs.config.ServiceConfig` fields
    (durations as seconds or a :class:`~datetime.timedelta`). ``None`` keeps
    the current value, at first the field's default.
    """

    domain: str | None
    """The OADA store with the service config, e.g. ``https://oada.example.org``."""
    token: str | None
    """The service token for *domain*."""
    oada: OADAClient | None
    """An open client to use instead of *domain*/*token* (the service does not close it)."""
    concurrency: int | None
    """Jobs running at once, over all queues (default 10)."""
    layout: LayoutName | Layout | None
    """Job-list layout: ``"classic"`` (default) or ``"pending"``."""
    lease: Timeout | None
    """How long a claim on a job holds without renewal (default 60 s)."""
    sweep_interval: Timeout | None
    """Time between re-reads of the pending list (default 30 s)."""
    shutdown_grace: Timeout | None
    """Time ``stop()`` lets running jobs finish before cancelling them (default 30 s)."""
    retry_initial: Timeout | None
    """First wait between retries of a failing queue (default 1 s)."""
    retry_max: Timeout | None
    """Longest wait between retries of a failing queue (default 60 s)."""
    invalid_job_wait: Timeout | None
    """Time to wait for a resource that is not a job yet to become one (default 2 s)."""
    finish_timeout: Timeout | None
    """Time allowed for recording a job's outcome (default 30 s)."""
    keep_jobs: int | None
    """Read jobs a queue holds in memory, waiting for a slot (default 1000)."""
    metrics_port: int | None
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` on this port (0: any free one)."""
    metrics_addr: str | None
    """Address the metrics server binds to (default ``0.0.0.0``)."""
    loop_stall_limit: Timeout | None
    """Time the event loop may go without a heartbeat before ``/healthz`` fails (default 5 s)."""
    metrics_registry: CollectorRegistry | None
    """Where metrics go (default: the global registry)."""
    reporters: Iterable[Reporter] | None
    """Finish reporters, e.g. :class:`~oada_jobs.SlackReporter`."""
    cancel_grace: Timeout | None
    """Time a cancelled work function has to end before its job is filed anyway (default 2 s)."""
    loop_lag_warning: Timeout | None
    """An event-loop lag this long or longer is logged and counted (default 1 s; 0: off)."""
    divide_work: bool | None
    """Replicas divide each queue's jobs between them (default ``True``)."""
    member_lease: Timeout | None
    """How long a replica's announcement holds without renewal (default 10 s)."""
    steal_after: Timeout | None
    """Time a job waits in another replica's share before an idle replica takes it (default 2 s)."""


class WorkOptions(TypedDict, total=False):
    """The keyword options of ``service.on``; defaults in :data:`WORK_DEFAULTS`."""

    config: type[BaseModel] | None
    """A pydantic model to validate the job's ``config`` into; by default taken
    from an annotation ``job: Job[Model]``. A config that does not validate
    fails the job with the validation errors."""
    result: type[BaseModel] | None
    """A pydantic model the function's return value must match; a result that
    does not fails the job (``invalid-result``)."""
    tries: int
    """How many times a job may be started in all (default 3; a job's
    ``options.tries`` overrides it). A try fails when the function raises
    :class:`~oada_jobs.Retry` or one of *retry_on*; after the last one the job
    fails."""
    retry_delay: Timeout
    """Wait before the second try when ``Retry`` gives no ``defer`` (default
    5 s); each later try waits *backoff* (default 2) times longer, at most
    *max_retry_delay* (default an hour); with *jitter* (default on) a random
    50-100 % of that."""
    backoff: float
    """How many times longer each later try waits (see *retry_delay*)."""
    max_retry_delay: Timeout
    """The longest wait between tries (see *retry_delay*)."""
    jitter: bool
    """Wait a random 50-100 % of each wait between tries (see *retry_delay*)."""
    retry_on: type[BaseException] | tuple[type[BaseException], ...]
    """Exception classes that count as a failed try (``TimeoutError`` covers
    the timeout); other exceptions fail the job."""
    start_delay: Timeout
    """Seconds a job waits after the service first sees it (default 0)."""
    priority: int
    """Priority of jobs that set none (higher runs first; default 0)."""
    unique: UniquePolicy
    """A job whose ``options.uniqueKey`` is already pending or running in the
    queue is ``"refuse"``d (the default; it fails as ``duplicate``),
    ``"merge"``d (ends with the other's outcome) or ``"allow"``ed."""
    group_limit: int
    """Jobs of one ``options.group`` running at once (default 1)."""
    min_version: int | None
    """Jobs with a lower ``options.version`` (default 1) fail as
    ``unsupported-version``."""
    concurrency: int | None
    """Jobs of the type running at once over all the service's replicas
    (docs/control.md)."""
    rate_limit: tuple[int, Timeout] | RateLimit | None
    """``(starts, seconds)``: at most that many starts of the type in any
    window of that many seconds, over all replicas."""
    then: str | FollowUp | None
    """A job type (or :class:`~oada_jobs.FollowUp`) posted with the result as
    its config when a job of this type succeeds."""
    on_failure: str | FollowUp | None
    """The same as *then* when a job of this type fails (docs/work-functions.md)."""


#: What ``service.on`` uses for an option it is not given.
WORK_DEFAULTS: WorkOptions = {
    "config": None,
    "result": None,
    "tries": 3,
    "retry_delay": 5.0,
    "backoff": 2.0,
    "max_retry_delay": 3600.0,
    "jitter": True,
    "retry_on": (),
    "start_delay": 0.0,
    "priority": 0,
    "unique": "refuse",
    "group_limit": 1,
    "min_version": None,
    "concurrency": None,
    "rate_limit": None,
    "then": None,
    "on_failure": None,
}

#: Options given in seconds or as a timedelta.
_DURATIONS = frozenset(
    {
        "lease",
        "sweep_interval",
        "shutdown_grace",
        "retry_initial",
        "retry_max",
        "invalid_job_wait",
        "finish_timeout",
        "loop_stall_limit",
        "cancel_grace",
        "loop_lag_warning",
        "member_lease",
        "steal_after",
    }
)
#: Durations the config keeps as a timedelta.
_TIMEDELTAS = frozenset({"lease", "member_lease"})
#: Options that are not :class:`ServiceConfig` fields.
_NOT_CONFIG = frozenset({"domain", "token", "oada", "metrics_registry", "reporters"})


def check_service_options(options: ServiceOptions, caller: str) -> None:
    """Refuse an option *caller* does not take, as a call with named parameters would."""
    for name in options:
        if name not in ServiceOptions.__optional_keys__:
            raise TypeError(f"{caller}() got an unexpected keyword argument {name!r}")
    if options.get("oada") is not None and (
        options.get("domain") is not None or options.get("token") is not None
    ):
        raise ValueError("pass either oada= or domain= and token=, not both")


def configured(config: ServiceConfig, options: ServiceOptions) -> ServiceConfig:
    """*config* with the given *options* (``None`` keeps a value), validated."""
    given: dict[str, Any] = dict(options)
    changes: dict[str, Any] = {}
    for name, value in given.items():
        if name in _NOT_CONFIG or value is None:
            continue
        if name == "layout":
            value = get_layout(value).name
        elif name in _DURATIONS:
            value = as_seconds(value, name)
            if name in _TIMEDELTAS:
                value = timedelta(seconds=value)
        changes[name] = value
    return ServiceConfig.model_validate({**config.model_dump(), **changes})


@dataclass(frozen=True, slots=True)
class Connection:
    """Where a service connects: its store's origin and token, or an open client."""

    #: The origin of the service's own store, e.g. ``https://oada.example.org``.
    domain: str | None = None
    #: The token for *domain* (``None`` when given a client); a secret, so in no repr.
    token: str | None = field(default=None, repr=False)
    #: An open client the service uses and does not close.
    given: OADAClient | None = None

    def configured(self, options: ServiceOptions) -> Connection:
        """This connection with the ``oada``, ``domain`` and ``token`` of *options*."""
        oada, domain, token = options.get("oada"), options.get("domain"), options.get("token")
        if oada is not None:
            return Connection(parse_domain(oada.domain).http, None, oada)
        if domain is None and token is None:
            return self
        return replace(
            self,
            domain=parse_domain(domain).http if domain is not None else self.domain,
            token=token if token is not None else self.token,
            given=None,
        )
