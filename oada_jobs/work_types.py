"""What runs for each job type of a service now: its work function, with the
live settings of the service's control resource applied.

Owns :class:`WorkTypes`: the :class:`~oada_jobs.worker.Worker` registered
per type, the :class:`~oada_jobs.control.Control` in force (pauses, per-type
settings) and why parts of it were refused, and following that resource
while the service runs (telling the :class:`~oada_jobs.limits.Gate` of each
change and renewing its slots). It gets the client and the gate, never the
service, and must not import :mod:`oada_jobs.service`.
"""

from __future__ import annotations

from collections.abc import Mapping

import anyio
from anyio.abc import TaskStatus

from ._retry import Delay
from .client import OADAClient
from .control import Control, ControlFollower
from .limits import Gate, TypeLimits
from .worker import Worker, with_settings

__all__ = ["WorkTypes"]


class WorkTypes:
    """The work functions of service *name* by job type, and its control."""

    def __init__(self, name: str, workers: Mapping[str, Worker] | None = None) -> None:
        self.name = name
        self._workers: dict[str, Worker] = dict(workers or {})
        #: What the service's control resource says now.
        self.control = Control()
        self._errors: Mapping[str, str] = {}

    def copy(self) -> WorkTypes:
        """The same work functions, with no control read yet."""
        return WorkTypes(self.name, self._workers)

    def add(self, job_type: str, worker: Worker) -> None:
        self._workers[job_type] = worker

    def remove(self, job_type: str) -> None:
        self._workers.pop(job_type, None)

    @property
    def errors(self) -> Mapping[str, str]:
        """Why parts of the control resource were refused (a copy)."""
        return dict(self._errors)

    def worker_for(self, job_type: str) -> Worker | None:
        """The worker for *job_type*, if any, with the control's settings applied."""
        worker = self._workers.get(job_type)
        if worker is None:
            return None
        settings = self.control.settings(job_type)
        return worker if settings is None else with_settings(worker, settings)

    def limits_for(self, job_type: str) -> TypeLimits:
        """What holds *job_type* back now: a pause, and the code's or control's limits."""
        worker = self.worker_for(job_type)
        settings = self.control.settings(job_type)
        concurrency = worker.concurrency if worker is not None else None
        rate_limit = worker.rate_limit if worker is not None else None
        if worker is None and settings is not None:
            concurrency, rate_limit = settings.concurrency, settings.rate_limit
        return TypeLimits(self.control.paused(job_type), concurrency, rate_limit)

    async def follow(
        self,
        oada: OADAClient,
        gate: Gate,
        *,
        backoff: Delay,
        stopping: anyio.Event,
        task_status: TaskStatus[anyio.CancelScope],
    ) -> None:
        """Follow the control resource and renew *gate*'s type slots.

        Started with the scope that ends the following; the slots are renewed
        until *stopping* is set and through the stop's grace period too, while
        the jobs holding them finish.
        """

        def apply(control: Control, errors: Mapping[str, str]) -> None:
            self._errors = errors
            self.control = control
            gate.notify()

        follower = ControlFollower(self.name, apply=apply, backoff=backoff)
        # Cancelled when the service stops: the control is no longer followed.
        scope = anyio.CancelScope()

        async def run_follower(*, task_status: TaskStatus[None]) -> None:
            with scope:
                await follower.follow(oada, task_status=task_status)

        async with anyio.create_task_group() as group:
            group.start_soon(gate.renew, stopping)
            await group.start(run_follower)
            task_status.started(scope)
