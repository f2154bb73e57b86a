"""One call of a work function, and the watchers around it.

A call runs the function under three watchers: its timeout (a timer), a
watch on the job for a cancel request or a takeover by another worker, and
the renewal of this worker's lease. The last two start only when due (after
:data:`CANCEL_WATCH_AFTER` and a third of the lease), which most calls never
are. Whichever fires first revokes the job-scoped client and cancels the
work, and the call's outcome says why.

Owns :class:`WorkCall`, the retry rule of a failed try and the helpers that
run beside a call. May use the claim, the context, the outcome rules and the
worker; must not touch filing, the queue or the service.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Coroutine
from typing import Any

import anyio

from . import outcome as outcomes
from .claim import Claim, lease_taken
from .client import OADAClient
from .context import JobLogAdapter, WorkerContext
from .exceptions import JobError, OADAError, Reschedule, Retry, WaitForChild
from .job import Job, JobStatus
from .outcome import TIMEOUT_FAIL_TYPE, JobOutcome, failed
from .worker import Worker

__all__ = ["CANCEL_WATCH_AFTER", "Spawn", "WorkCall"]

#: Seconds a job runs before the runner starts watching it for cancellation
#: (short jobs then cost no watch).
CANCEL_WATCH_AFTER = 1.0

#: Runs a task beside the jobs (it finishes even when the queue's intake stops).
Spawn = Callable[[Callable[[], Coroutine[Any, Any, None]]], object]


def _raised_by_work(error: BaseException) -> bool:
    """Whether a non-``Exception`` from a work function is its own failure.

    Not when the process is stopping, nor when this task is being cancelled
    (by the job's timeout, its cancellation or the service's shutdown: each
    cancels a scope around the work, which leaves no time to run). A
    ``CancelledError`` the function merely let through, from a task it
    awaited, fails the job like any error. (``Task.cancelling()`` cannot
    tell: on Python 3.11 an ``asyncio.TaskGroup`` may leave it raised.)
    """
    if isinstance(error, KeyboardInterrupt | SystemExit | GeneratorExit):
        return False
    if isinstance(error, asyncio.CancelledError):
        return anyio.current_effective_deadline() != -math.inf
    return True


class WorkCall:
    """One call of a work function and its watchers: the timeout, the watch
    for a cancel request and the lease renewal. Any of them stops the work
    (revoking the job-scoped client first) and says why.

    A function that ignores its cancellation for *cancel_grace* seconds
    (it shields itself, or blocks in a thread) is abandoned: *on_abandon* is
    given the outcome its stop means, to settle the job without waiting for
    it, and the call then returns ``None``.
    """

    def __init__(
        self,
        claim: Claim,
        scoped: OADAClient,
        claim_rev: int | None,
        spawn: Spawn,
        log: JobLogAdapter,
        *,
        cancel_grace: float,
        on_abandon: Callable[[JobOutcome | None], None],
    ) -> None:
        self.claim = claim
        self.scoped = scoped
        self.claim_rev = claim_rev
        self.log = log
        self.cancel_grace = cancel_grace
        self.on_abandon = on_abandon
        self.timed_out = self.cancelled = self.lost = False
        #: Set when the function was abandoned (see the class docstring).
        self.abandoned = False
        self._abandon_timer: asyncio.TimerHandle | None = None
        # What is being run, for the outcome of a stop.
        self._worker: Worker | None = None
        self._job: Job[Any] | None = None
        # Cancelling it stops the work (the helpers are stopped after it).
        self.scope = anyio.CancelScope()
        self.helpers = _Helpers(spawn, self.stop)

    @property
    def interrupted(self) -> bool:
        return self.timed_out or self.cancelled or self.lost

    def stop(self) -> None:
        # Revoke first: from here on nothing the function still tries
        # (even in a shielded finally) reaches the job.
        self.scoped.revoke()
        self.scope.cancel()
        if self._abandon_timer is None:
            loop = asyncio.get_running_loop()
            self._abandon_timer = loop.call_later(self.cancel_grace, self._abandon)

    def _abandon(self) -> None:
        # The function was told to stop cancel_grace seconds ago and goes on:
        # settle the job without it, so it holds neither the job nor a slot.
        if not self.interrupted:
            return  # a helper failed: its error is raised once the work ends
        assert self._worker is not None
        assert self._job is not None
        self.abandoned = True
        self.helpers.cancel()
        self.on_abandon(self._ending(None, self._worker, self._job))

    def _time_out(self) -> None:
        self.timed_out = True
        self.stop()

    def _on_lost(self) -> None:
        self.lost = True
        self.stop()

    async def _watch_for_cancel(self) -> None:
        claim = self.claim
        try:
            # From the claim's rev: a request made meanwhile is replayed.
            async with claim.oada.watch(claim.path, rev=self.claim_rev) as changes:
                async for change in changes:
                    body = change.body or {}
                    if body.get("status") == JobStatus.CANCEL_REQUESTED.value:
                        self.cancelled = True
                    elif lease_taken(body.get("lease"), claim.worker_id):
                        # This worker stalled past its lease and another
                        # claimed the job: that one owns it.
                        self.lost = True
                    else:
                        continue
                    self.stop()
                    return
        except OADAError as error:
            # Cancellation requests go unseen; the job itself goes on.
            self.log.warning("could not watch the job for cancellation: %s", error)

    async def run(
        self,
        worker: Worker,
        work_job: Job[Any],
        job: Job[Any],
        ctx: WorkerContext,
        started: float,
    ) -> JobOutcome | None:
        """Call the work function (the run began at *started*, anyio time); its
        outcome, or ``None`` if the job was lost or the function abandoned."""
        self._worker, self._job = worker, job
        outcome: JobOutcome | None = None
        timers = self._set_timers(worker, job)
        try:
            with self.scope:
                outcome = await self._work(worker, work_job, job, ctx)
        finally:
            # A function that blocked the event loop past its timeout ends
            # before the timer could fire: what it returned is too late.
            if (
                worker.timeout is not None
                and not self.interrupted
                and anyio.current_time() - started >= worker.timeout
            ):
                self.timed_out = True
                self.scoped.revoke()
            for timer in timers:
                timer.cancel()
            if self._abandon_timer is not None:
                self._abandon_timer.cancel()
            await self.helpers.stop()
        if self.abandoned:
            return None  # settled already, without waiting for the function
        return self._ending(outcome, worker, job)

    def _set_timers(self, worker: Worker, job: Job[Any]) -> list[asyncio.TimerHandle]:
        """Set the call's timers: the cancel watch, the lease renewal, the timeout.

        Timers rather than tasks: most jobs end before any of them is due,
        and a timer costs far less to set and drop.
        """
        loop = asyncio.get_running_loop()
        timers = [
            loop.call_later(CANCEL_WATCH_AFTER, self.helpers.start, self._watch_for_cancel),
            loop.call_later(
                self.claim.lease_interval(), self.helpers.start, self.claim.renew, self._on_lost
            ),
        ]
        timeout = effective_timeout(worker, job)
        if timeout is not None:
            timers.append(loop.call_later(timeout, self._time_out))
        return timers

    async def _work(
        self, worker: Worker, work_job: Job[Any], job: Job[Any], ctx: WorkerContext
    ) -> JobOutcome | None:
        """Await the work function; the outcome of what it returned or raised
        (``None`` if it raised because the call was stopped)."""
        log = self.log
        try:
            value = await worker.work(work_job, ctx)
            return outcomes.success(log, worker.result_model, value)
        except Retry as error:
            if not self.interrupted:
                return _retry(log, error, error.reason, error.defer, worker, job)
        except Reschedule as error:
            if not self.interrupted:
                return outcomes.reschedule(log, error)
        except WaitForChild as error:
            if not self.interrupted:
                return outcomes.wait_for_child(log, error)
        except Exception as error:
            if self.interrupted:
                pass
            elif worker.retries(error):
                reason = f"{type(error).__name__}: {error}"
                return _retry(log, error, reason, None, worker, job)
            else:
                return outcomes.failure(log, error)
        except BaseException as error:
            if not _raised_by_work(error):
                raise
            return outcomes.failure(log, error)
        return None

    def _ending(
        self, outcome: JobOutcome | None, worker: Worker, job: Job[Any]
    ) -> JobOutcome | None:
        """The outcome of the call, given why (if at all) it was stopped."""
        if self.lost:
            self.log.error(
                "another worker claimed the job after this one's lease ran out; leaving it"
            )
            return None
        if self.cancelled:
            return outcomes.cancelled(self.log, "the job was cancelled while it ran")
        if self.timed_out:
            timeout = effective_timeout(worker, job)
            assert timeout is not None
            message = f"job exceeded its {timeout:g} s timeout and was cancelled"
            timeout_error = JobError(message, TIMEOUT_FAIL_TYPE)
            if worker.retries(TimeoutError()):
                return _retry(self.log, timeout_error, message, None, worker, job)
            self.log.error("%s", message)
            return failed(timeout_error, message)
        assert outcome is not None
        return outcome


def effective_timeout(worker: Worker, job: Job[Any]) -> float | None:
    """Seconds a run may take: the type's timeout, shortened by the job's ``options.timeout``.

    A job may only shorten it: the type's timeout is the service's limit.
    """
    limits = [t for t in (worker.timeout, job.options.timeout) if t is not None]
    return min(limits) if limits else None


def _retry(
    log: JobLogAdapter,
    error: BaseException,
    reason: str,
    defer: float | None,
    worker: Worker,
    job: Job[Any],
) -> JobOutcome:
    """Another try later (after *defer*, else the worker's backoff), or a
    failure when the job used up its tries."""
    tried = job.tries + 1
    allowed = job.options.tries or worker.tries
    delay = defer if defer is not None else 0.0
    if defer is None and tried < allowed:
        delay = worker.retry_delay_for(tried)
    return outcomes.retry(log, error, reason, tried=tried, allowed=allowed, delay=delay)


class _Helpers:
    """Tasks that watch over one run (for a cancel request, to renew the lease).

    They start only when due, which most runs never are, and run beside the
    jobs rather than in a task group of the run's own: such a group costs an
    event-loop pass on leaving it even when nothing was started in it. As in
    a task group, a helper's error stops the work and is raised from
    :meth:`stop`, and the run goes on only once its helpers are gone.
    """

    __slots__ = ("_error", "_helpers", "_on_error", "_spawn")

    def __init__(
        self,
        spawn: Callable[[Callable[[], Coroutine[Any, Any, None]]], object],
        on_error: Callable[[], None],
    ) -> None:
        self._spawn = spawn
        self._on_error = on_error
        self._helpers: list[_Helper] = []
        self._error: Exception | None = None

    def start(self, func: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
        helper = _Helper()
        self._helpers.append(helper)

        async def run() -> None:
            helper.started = True
            try:
                with helper.scope:
                    if not helper.scope.cancel_called:  # stopped before it got to run
                        await func(*args)
            except Exception as error:
                if self._error is None:
                    self._error = error
                self._on_error()
            finally:
                helper.done.set()

        self._spawn(run)

    def cancel(self) -> None:
        """Cancel the helpers without waiting for them."""
        for helper in self._helpers:
            helper.scope.cancel()

    async def stop(self) -> None:
        """Cancel the helpers and wait until they are gone; raise the first one's error."""
        if not self._helpers:
            return
        for helper in self._helpers:
            helper.scope.cancel()
        # Shielded: even a run being cancelled lets its helpers finish first
        # (cancelled, they end promptly). One that has not started yet will
        # find itself cancelled and do nothing, so it is not waited for.
        with anyio.CancelScope(shield=True):
            for helper in self._helpers:
                if helper.started:
                    await helper.done.wait()
        if self._error is not None:
            raise self._error


class _Helper:
    __slots__ = ("done", "scope", "started")

    def __init__(self) -> None:
        self.scope = anyio.CancelScope()
        self.done = anyio.Event()
        self.started = False
