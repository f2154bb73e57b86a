"""What a service registers per job type: the work function and its job defaults.

Owns :class:`Worker` (built by ``service.on``): timeout, tries and retry
delays, priority, unique-key policy, group limit, version floor and the
config/result models. Plain data with two small rules on it; the scheduler,
the runner and the queue read it. Must not touch I/O or anything that runs
jobs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from pydantic import BaseModel

from .context import WorkFunction
from .types import UniquePolicy

__all__ = ["Worker"]


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

    def retry_delay_for(self, tried: int) -> float:
        """Seconds to wait after the *tried*-th failed try (1 for the first)."""
        delay = min(self.max_retry_delay, self.retry_delay * self.backoff ** max(0, tried - 1))
        return delay * random.uniform(0.5, 1.0) if self.jitter else delay

    def retries(self, error: BaseException) -> bool:
        """Whether *error* from the work function counts as a failed try."""
        return isinstance(error, self.retry_on)
