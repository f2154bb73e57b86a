"""The life cycle of a service: its states, and starting and stopping its run.

Owns :class:`ServiceState` and :class:`Lifecycle`: created, starting,
running, stopping, stopped, and never started again. :meth:`Lifecycle.enter`
starts a :class:`~oada_jobs.service_run.ServiceRun` in a task group of its
own and returns once the run is ready; asked to stop (by :meth:`Lifecycle.stop`,
a signal or leaving the block), the run takes no new jobs and its running
jobs get the grace period to finish.

It gets the run, never the service, and must not import :mod:`oada_jobs.service`.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from enum import Enum
from types import TracebackType

import anyio
from anyio.abc import TaskStatus

from ._signals import stop_on_signals
from .service_run import ServiceRun

__all__ = ["Lifecycle", "ServiceState"]

logger = logging.getLogger("oada_jobs")


class ServiceState(Enum):
    """Lifecycle of a :class:`~oada_jobs.Service`; a stopped service cannot be restarted."""

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


def _single_leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


class Lifecycle:
    """The states of service *name* and the one run it starts and stops."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.state = ServiceState.CREATED
        #: Set when the service is asked to stop.
        self.stopping = anyio.Event()
        #: Seconds running jobs get to finish once stopping (set when started).
        self.grace = 0.0
        self._done = anyio.Event()
        self._stack: AsyncExitStack | None = None
        self._started_by_start = False

    def check_unstarted(self) -> None:
        if self.state is not ServiceState.CREATED:
            raise RuntimeError(f"a service can be started once; this one is {self.state.value}")

    async def enter(self, run: ServiceRun, *, grace: float, by_start: bool = False) -> None:
        """Start *run*; returns once it is ready. *by_start*: left by :meth:`stop`."""
        self.check_unstarted()
        self.state = ServiceState.STARTING
        self.grace = grace
        stack = AsyncExitStack()
        try:
            group = await stack.enter_async_context(anyio.create_task_group())
            await group.start(self._main, run)
        except BaseException as error:
            self.stopping.set()
            self.state = ServiceState.STOPPED
            await stack.aclose()
            # Task groups wrap a start-up failure; the caller wants the error
            # itself (e.g. Unauthorized when the service token is refused).
            leaf = _single_leaf(error)
            if leaf is not error:
                raise leaf from None
            raise
        self._stack = stack
        self._started_by_start = by_start

    async def exit(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the run and wait for it to end (in the task that entered it)."""
        self.stopping.set()
        stack, self._stack = self._stack, None
        try:
            if stack is not None:
                await stack.__aexit__(exc_type, exc, tb)
        finally:
            self.state = ServiceState.STOPPED

    async def stop(self, grace: float | None = None) -> None:
        """Ask the run to stop (*grace*: seconds for running jobs) and wait for it."""
        if grace is not None:
            self.grace = max(0.0, grace)
        if self.state in (ServiceState.CREATED, ServiceState.STOPPED):
            self.state = ServiceState.STOPPED
            return
        self.stopping.set()
        if self._started_by_start:
            await self.exit(None, None, None)
        else:
            await self._done.wait()

    async def handle_signals(self, *, task_status: TaskStatus[None]) -> None:
        """Ask the run to stop on SIGTERM or SIGINT (see :mod:`oada_jobs._signals`)."""

        def stop(name: str) -> None:
            logger.info("service %s: got %s; stopping", self.name, name)
            self.stopping.set()

        await stop_on_signals(stop, task_status=task_status)

    async def _main(self, run: ServiceRun, *, task_status: TaskStatus[None]) -> None:
        try:
            async with AsyncExitStack() as stack:
                await run.open(stack)
                with anyio.CancelScope() as work_scope:
                    async with anyio.create_task_group() as work:
                        await run.start(work, self.stopping)
                        self.state = ServiceState.RUNNING
                        worker = run.parts.worker_id
                        logger.info("service %s: running (worker %s)", self.name, worker)
                        task_status.started()
                        await self.stopping.wait()
                        self.state = ServiceState.STOPPING
                        logger.info("service %s: stopping", self.name)
                        run.stop()
                        # Queues end once their running jobs end; past the
                        # grace period those are cancelled (and given back).
                        work_scope.deadline = anyio.current_time() + self.grace
        finally:
            self._done.set()
