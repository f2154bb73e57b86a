"""What a service registers per job type: the work function and its job defaults.

Owns :class:`Worker` (built by ``service.on``): timeout, tries and retry
delays, priority, unique-key policy, group limit, version floor and the
config/result models. Plain data with two small rules on it; the scheduler,
the runner and the queue read it. Must not touch I/O or anything that runs
jobs.
"""

from __future__ import annotations

import builtins
import inspect
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from functools import partial
from typing import Any, get_args, get_origin, get_type_hints

from pydantic import BaseModel

from .context import WorkFunction
from .control import RateLimit, TypeSettings
from .job import Job
from .tree import validate_service_name
from .types import UniquePolicy

__all__ = ["FollowUp", "Timeout", "Worker", "as_seconds", "with_settings", "worker_factory"]

#: A timeout in seconds, or a :class:`~datetime.timedelta`.
Timeout = float | int | timedelta


@dataclass(frozen=True, slots=True)
class FollowUp:
    """A job posted when a job of a type ends: ``service.on(..., then="email")``.

    Its config is the first job's result (a result that is not an object
    becomes ``{"result": <it>}``); for ``on_failure`` it is the failed job's
    result (``{name, message, failType?, ...}``).
    """

    #: The follow-up job's type.
    type: str
    #: The service it is posted to; ``None``: the same service.
    service: str | None = None

    @classmethod
    def of(cls, value: str | FollowUp | None, what: str) -> FollowUp | None:
        """*value* as a :class:`FollowUp`; raise :class:`ValueError` if it is not one."""
        if value is None or isinstance(value, FollowUp):
            follow_up = value
        elif isinstance(value, str) and value:
            follow_up = cls(value)
        else:
            raise ValueError(f"expected {what} to be a job type or a FollowUp, got {value!r}")
        if follow_up is not None:
            if not isinstance(follow_up.type, str) or not follow_up.type:
                raise ValueError(f"expected {what} to name a job type, got {follow_up.type!r}")
            if follow_up.service is not None:
                validate_service_name(follow_up.service)
        return follow_up


@dataclass(frozen=True, slots=True)
class Worker:
    """A registered work function for one job type, with the type's job defaults."""

    #: The job type it handles.
    job_type: str
    #: The work function.
    work: WorkFunction
    #: Seconds the function may run; ``None`` for no limit.
    timeout: float | None
    #: The pydantic model the job's ``config`` is validated into, if any.
    config_model: type[BaseModel] | None = None
    #: How many times a job may be started in all (``options.tries`` overrides).
    tries: int = 3
    #: Seconds before the second try when the function gives no ``Retry(defer=)``;
    #: each later try waits *backoff* times longer, up to *max_retry_delay*.
    retry_delay: float = 5.0
    backoff: float = 2.0
    max_retry_delay: float = 3600.0
    #: Wait a random 50-100 % of the computed delay, so retries spread out.
    jitter: bool = True
    #: Exceptions that count as a failed try (retried while tries remain)
    #: instead of failing the job; ``TimeoutError`` covers the timeout.
    retry_on: tuple[type[BaseException], ...] = ()
    #: Seconds a job waits after the service first sees it.
    start_delay: float = 0.0
    #: Priority of jobs that set none.
    priority: int = 0
    #: What happens to a job whose ``uniqueKey`` is already pending or running.
    unique: UniquePolicy = "refuse"
    #: How many jobs of one group may run at once.
    group_limit: int = 1
    #: Jobs with a lower ``options.version`` (default 1) fail as ``unsupported-version``.
    min_version: int | None = None
    #: The pydantic model the function's return value is validated into, if any.
    result_model: type[BaseModel] | None = None
    #: Jobs of the type running at once over all replicas; ``None``: no limit.
    concurrency: int | None = None
    #: Starts of the type per period over all replicas; ``None``: no limit.
    rate_limit: RateLimit | None = None
    #: Posted when a job of the type succeeds, with its result as config.
    then: FollowUp | None = None
    #: Posted when a job of the type fails, with its result as config.
    on_failure: FollowUp | None = None

    def retry_delay_for(self, tried: int) -> float:
        """Seconds to wait after the *tried*-th failed try (1 for the first)."""
        delay = min(self.max_retry_delay, self.retry_delay * self.backoff ** max(0, tried - 1))
        return delay * random.uniform(0.5, 1.0) if self.jitter else delay

    def retries(self, error: BaseException) -> bool:
        """Whether *error* from the work function counts as a failed try."""
        return isinstance(error, self.retry_on)


def as_seconds(value: Timeout, what: str) -> float:
    """*value* (a number of seconds or a timedelta) as a finite float, or a clear ValueError."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        # float("30") would pass, but "30s" or "1m" would fail obscurely.
        raise ValueError(f"expected {what} as a number of seconds or a timedelta, got {value!r}")
    seconds = float(value)
    if not math.isfinite(seconds):
        raise ValueError(f"expected {what} as a finite number of seconds, got {value!r}")
    return seconds


def _is_async(fn: Callable[..., Any]) -> bool:
    """Whether calling *fn* gives an awaitable: an ``async def`` function, a
    ``functools.partial`` of one, or an object whose ``__call__`` is one."""
    if inspect.iscoroutinefunction(fn):
        return True
    if inspect.isroutine(fn):
        return False
    return inspect.iscoroutinefunction(type(fn).__call__)


def with_settings(worker: Worker, settings: TypeSettings | None) -> Worker:
    """*worker* with the values the service's control overrides (the rest as in code)."""
    if settings is None:
        return worker
    changes: dict[str, object] = {}
    for name in ("timeout", "tries", "retry_delay", "priority", "concurrency", "rate_limit"):
        value = getattr(settings, name)
        if value is not None:
            changes[name] = value
    return replace(worker, **changes) if changes else worker  # type: ignore[arg-type]


def _seconds(value: Timeout | None, what: str) -> float | None:
    if value is None:
        return None
    seconds = as_seconds(value, what)
    if not seconds > 0:
        raise ValueError(f"expected {what} > 0 seconds, got {seconds}")
    return seconds


def _delay(value: Timeout, what: str) -> float:
    seconds = as_seconds(value, what)
    if not seconds >= 0:
        raise ValueError(f"expected {what} >= 0 seconds, got {value!r}")
    return seconds


def _config_model_of(work: Callable[..., Any]) -> type[BaseModel] | None:
    """The pydantic model a work function declares via ``job: Job[Model]``, if any."""
    try:
        parameters = list(inspect.signature(work).parameters.values())
        hints = get_type_hints(work)
    except (TypeError, ValueError, NameError):
        return None
    if not parameters:
        return None
    hint = hints.get(parameters[0].name)
    if get_origin(hint) is Job:
        (model, *_) = get_args(hint) or (None,)
        if isinstance(model, type) and issubclass(model, BaseModel):
            return model
    return None


def worker_factory(
    type: str,
    timeout: Timeout | None,
    *,
    config: builtins.type[BaseModel] | None,
    result: builtins.type[BaseModel] | None,
    tries: int,
    retry_delay: Timeout,
    backoff: float,
    max_retry_delay: Timeout,
    jitter: bool,
    retry_on: builtins.type[BaseException] | tuple[builtins.type[BaseException], ...],
    start_delay: Timeout,
    priority: int,
    unique: UniquePolicy,
    group_limit: int,
    min_version: int | None,
    concurrency: int | None = None,
    rate_limit: tuple[int, Timeout] | RateLimit | None = None,
    then: str | FollowUp | None = None,
    on_failure: str | FollowUp | None = None,
) -> Callable[[WorkFunction], Worker]:
    """Validate the options of ``service.on`` (see its docstring): a function
    making the :class:`Worker` of a work function for jobs of *type*.

    Raises :class:`ValueError` saying which option is wrong and what it got.
    """
    if not isinstance(type, str) or not type:
        raise ValueError(f"expected a non-empty job type string, got {type!r}")
    seconds = _seconds(timeout, "timeout")
    retry_classes = retry_on if isinstance(retry_on, tuple) else (retry_on,)
    _check(tries, backoff, group_limit, unique, priority, min_version, retry_on)
    _check_models(config=config, result=result)
    make_worker = partial(
        Worker,
        tries=tries,
        retry_delay=_delay(retry_delay, "retry_delay"),
        backoff=float(backoff),
        max_retry_delay=_delay(max_retry_delay, "max_retry_delay"),
        jitter=bool(jitter),
        retry_on=retry_classes,
        start_delay=_delay(start_delay, "start_delay"),
        priority=priority,
        unique=unique,
        group_limit=group_limit,
        min_version=min_version,
        result_model=result,
        concurrency=_concurrency(concurrency, type),
        rate_limit=_rate_limit(rate_limit, type),
        then=FollowUp.of(then, "then"),
        on_failure=FollowUp.of(on_failure, "on_failure"),
    )

    def make(fn: WorkFunction) -> Worker:
        _check_work(fn, type)
        model = config or _config_model_of(fn)
        return make_worker(type, fn, seconds, model)

    return make


def _check_work(fn: WorkFunction, type: str) -> None:
    """Raise unless *fn* can be the work function of jobs of *type* (an async callable)."""
    if not callable(fn):
        raise ValueError(f"expected an async work function, got {fn!r}")
    if not _is_async(fn):
        # Refused rather than run in a thread: a thread cannot be
        # cancelled, so its timeout would not hold, and ctx.log,
        # ctx.oada and ctx.post_job are async anyway.
        raise TypeError(
            f"expected an async work function for job type {type!r} (async def "
            f"{getattr(fn, '__name__', 'work')}(job, ctx)), got a plain callable "
            f"{fn!r}; for blocking code, call it from an async function with "
            "await anyio.to_thread.run_sync(...) (see docs/work-functions.md)"
        )


def _check_models(**models: object) -> None:
    """Raise :class:`ValueError` for the first of *models* that is not a pydantic model class."""
    for name, model in models.items():
        if model is not None and not (
            isinstance(model, builtins.type) and issubclass(model, BaseModel)
        ):
            raise ValueError(f"expected {name} to be a pydantic model class, got {model!r}")


def _check(
    tries: int,
    backoff: float,
    group_limit: int,
    unique: UniquePolicy,
    priority: int,
    min_version: int | None,
    retry_on: builtins.type[BaseException] | tuple[builtins.type[BaseException], ...],
) -> None:
    """Raise :class:`ValueError` for the first option of ``service.on`` that is wrong."""
    if not isinstance(tries, int) or tries < 1:
        raise ValueError(f"expected tries >= 1, got {tries!r}")
    if not backoff >= 1:
        raise ValueError(f"expected backoff >= 1, got {backoff!r}")
    if not isinstance(group_limit, int) or group_limit < 1:
        raise ValueError(f"expected group_limit >= 1, got {group_limit!r}")
    if unique not in ("refuse", "merge", "allow"):
        raise ValueError(f"expected unique to be 'refuse', 'merge' or 'allow', got {unique!r}")
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise ValueError(f"expected an integer priority, got {priority!r}")
    if min_version is not None and (not isinstance(min_version, int) or min_version < 0):
        raise ValueError(f"expected min_version >= 0, got {min_version!r}")
    retry_classes = retry_on if isinstance(retry_on, tuple) else (retry_on,)
    if not all(
        isinstance(cls, builtins.type) and issubclass(cls, BaseException) for cls in retry_classes
    ):
        raise ValueError(f"expected exception classes for retry_on, got {retry_on!r}")


def _shared_type(type: str, what: str) -> None:
    # The type is a key of the shared limits resource, where OADA keeps
    # keys starting with "_" for itself.
    if type.startswith("_"):
        raise ValueError(f"{what} needs a job type not starting with '_', got {type!r}")


def _concurrency(value: int | None, type: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 10_000:
        raise ValueError(f"expected concurrency from 1 to 10000, got {value!r}")
    _shared_type(type, "concurrency")
    return value


def _rate_limit(value: tuple[int, Timeout] | RateLimit | None, type: str) -> RateLimit | None:
    if value is None:
        return None
    _shared_type(type, "rate_limit")
    if isinstance(value, RateLimit):
        return value
    try:
        limit, period = value
        seconds = as_seconds(period, "the rate_limit period")
        return RateLimit(limit=limit, period=seconds)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"expected rate_limit as (starts, seconds) with starts >= 1 and seconds > 0, "
            f"got {value!r}: {error}"
        ) from None
