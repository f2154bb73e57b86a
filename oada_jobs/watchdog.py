"""The event-loop watchdog: notices work that blocks the loop, and names it.

Every job of a service shares one event loop. A work function that blocks it
(``time.sleep``, a CPU-bound loop, blocking I/O) stops every other job, the
lease renewals and the list watches until it returns. The
:class:`LoopWatchdog` sleeps a short interval again and again and measures
how late it wakes: the lag. A lag of ``loop_lag_warning`` seconds or more is
logged, naming the jobs whose work functions ran during it, and counted in
the service's metrics.

It owns only the registry of running work functions (runners tell it when
one starts and ends) and its own timing task; it touches no job and no OADA
resource. It imports only the metrics and must not import the runner or the
service, which hand it what it names.
"""

from __future__ import annotations

import logging

import anyio

from .metrics import ServiceMetrics

__all__ = ["LoopWatchdog"]

logger = logging.getLogger("oada_jobs")

#: Longest sleep between two lag measurements, in seconds.
MAX_INTERVAL = 0.5


class LoopWatchdog:
    """Measures the lag of the event loop a service runs on.

    *threshold* is the lag in seconds that is worth a warning (0 turns the
    watchdog off). Runners call :meth:`started` and :meth:`ended` around a
    work function.
    """

    def __init__(self, service: str, metrics: ServiceMetrics, threshold: float) -> None:
        self._service = service
        self._metrics = metrics
        self.threshold = threshold
        # Work functions running now: job id -> how to name it.
        self._running: dict[str, str] = {}
        # Every job that ran since the last measurement (a function that
        # starts, blocks and ends between two wake-ups is named too).
        self._seen: dict[str, str] = {}

    def started(self, job_id: str, description: str) -> None:
        """A work function of *job_id* started (*description* names it in warnings)."""
        self._running[job_id] = self._seen[job_id] = description

    def ended(self, job_id: str) -> None:
        """The work function of *job_id* returned or was abandoned."""
        self._running.pop(job_id, None)

    @property
    def running(self) -> list[str]:
        """Descriptions of the work functions running now."""
        return sorted(self._running.values())

    async def run(self) -> None:
        """Measure the lag until cancelled."""
        if not self.threshold:
            return
        interval = min(self.threshold / 2, MAX_INTERVAL)
        while True:
            self._seen = dict(self._running)
            before = anyio.current_time()
            await anyio.sleep(interval)
            lag = max(0.0, anyio.current_time() - before - interval)
            self._metrics.loop_lag(lag)
            if lag >= self.threshold:
                self._metrics.loop_blocked()
                named = ", ".join(sorted(self._seen.values())) or "no job (framework code)"
                logger.warning(
                    "service %s: the event loop was blocked for %.2f s, stopping every job "
                    "meanwhile; work functions running then: %s. Run blocking or CPU-bound "
                    "code with anyio.to_thread.run_sync or in a process (docs/work-functions.md)",
                    self._service,
                    lag,
                    named,
                )
