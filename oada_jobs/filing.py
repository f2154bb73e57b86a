"""Filing: write a job's outcome, link it into its day lists, take it off the pending list.

After the outcome is written a job is filed with two more requests: a link
``PUT <list>/day-index/<date>`` (the first one into a day list is a tree
``PUT`` that creates it) and ``DELETE <pending>/<key>``. Links of jobs
finishing together into the same day list are group-committed into one
``PUT`` (see :meth:`Filer.link_into`). Once filed, the filer tells its
``on_filed`` callback (metrics and finish reporters, wired by the queue).

Owns :class:`Filer` (one per queue client), :class:`Filed` and the shielded,
bounded retry every recording step runs under. A filed job that held a
unique key frees it in the service's index (:mod:`oada_jobs.unique`). May use the client, the job
model and :mod:`oada_jobs.outcome`. Must not touch the runner, the queue,
the scheduler or the service: who decided the outcome, and who is told
about it, is given to it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import anyio

from ._retry import exponential, retry
from .client import OADAClient
from .exceptions import (
    BadRequest,
    Conflict,
    OADAError,
    OADATransportError,
    PayloadTooLarge,
    ServerError,
    TooManyRequests,
)
from .job import Job, JobStatus, new_update, parse_time, utc_now
from .outcome import JobOutcome, unrecordable
from .tree import JOBS_TYPE, Layout, path_segment
from .types import JsonObject
from .unique import release_key

__all__ = ["KNOWN_DAYS", "Filed", "Filer", "finish_time"]

T = TypeVar("T")

#: Day lists a filer remembers as existing (linking into them needs no tree PUT).
KNOWN_DAYS = 16

#: Errors a recording step is retried after: the connection, 5xx, 429.
TRANSIENT = (OADATransportError, ServerError, TooManyRequests)
#: Waits between retries of a recording step: 0.1 s, doubling up to 2 s.
RECORD_BACKOFF = exponential(0.1, 2.0)

Log = logging.LoggerAdapter[logging.Logger]

#: Writes a body on the job; ``False`` when this worker no longer owns it.
Write = Callable[[JsonObject], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class Filed:
    """A job filed by this service, as the filer tells ``on_filed``."""

    #: The job as read (``None`` for a list entry that was not a job).
    job: Job[Any] | None
    #: The outcome written to it.
    outcome: JobOutcome
    #: The day list it is filed in.
    path: str
    #: Seconds its work function ran, when it ran here.
    duration: float | None


def finish_time(job: Job[Any]) -> datetime:
    """When *job* (finished elsewhere) finished: the time of its last update with its status."""
    for update in reversed(list(job.updates.values())):
        if isinstance(update, Mapping) and update.get("status") == job.status:
            moment = parse_time(update.get("time"))
            if moment is not None:
                return moment
    return utc_now()


def outcome_body(outcome: JobOutcome, finished_at: datetime) -> JsonObject:
    """What is written on the job for *outcome*: status, result and the finishing update."""
    key, update = new_update(outcome.status, outcome.meta, at=finished_at)
    return {
        "status": outcome.status,
        "result": outcome.result,
        "lease": None,
        "updates": {key: update},
    }


class Filer:
    """Writes outcomes and files the jobs of one job list (see the module docstring).

    :param oada: the queue's client.
    :param layout: the job-list layout (where day lists are).
    :param service: the service name.
    :param finish_timeout: seconds one recording step may take, retries included.
    :param on_filed: told about every job filed with an outcome.
    """

    def __init__(
        self,
        oada: OADAClient,
        *,
        layout: Layout,
        service: str,
        finish_timeout: float,
        on_filed: Callable[[Filed], Awaitable[None]],
    ) -> None:
        self.oada = oada
        self.layout = layout
        self.service = service
        self.pending_path = layout.pending_path(service)
        self.finish_timeout = finish_timeout
        self._on_filed = on_filed
        # Day lists known to exist: linking into them needs no tree PUT.
        self._known_days: set[str] = set()
        # Open (not yet written) link batch and write lock per day list.
        self._link_batches: dict[str, _LinkBatch] = {}
        self._day_locks: dict[str, anyio.Lock] = {}

    # ------------------------------------------------------------- recording

    async def shielded(self, step: Callable[[], Awaitable[T]], log: Log) -> T | None:
        """Run *step* to record an outcome; ``None`` if it could not be recorded.

        Once the work is done its outcome must be recorded even while the
        service is being cancelled, so this is shielded — and bounded by
        ``finish_timeout`` so shutdown cannot hang. Transient failures (the
        connection dropped, 5xx, 429) are retried: every step is idempotent.
        """
        with anyio.move_on_after(self.finish_timeout, shield=True) as scope:
            try:
                return await retry(
                    step,
                    retryable=lambda error: isinstance(error, TRANSIENT),
                    delay=RECORD_BACKOFF,
                    on_retry=lambda error, delay: log.warning(
                        "recording the job's outcome failed (%s); retrying in %.1f s", error, delay
                    ),
                )
            except OADAError as error:
                log.error(
                    "could not record the job's outcome (it stays in the pending list and "
                    "will be retried): %s",
                    error,
                )
                return None
        if scope.cancelled_caught:
            log.error("recording the job's outcome took too long; it stays pending")
        return None

    async def write_and_file(
        self,
        outcome: JobOutcome,
        job: Job[Any] | None,
        *,
        key: str,
        job_id: str,
        write: Write,
        log: Log,
        duration: float | None = None,
        written: Callable[[], None] = lambda: None,
        after_write: Callable[[JobOutcome], Awaitable[None]] | None = None,
    ) -> JobOutcome | None:
        """Write *outcome* on the job with *write*, then file it; the outcome filed.

        ``None`` when it was not filed: *write* found the job owned by
        another worker, or recording failed (the job stays pending and is
        looked at again). An outcome the server refuses, or that is not
        JSON, is replaced by a failure saying so. *written* is called once
        the outcome is written, before filing; *after_write* too (it is
        retried with filing, so it must be idempotent: follow-up jobs).
        """
        recording = _Recording(
            outcome,
            write=write,
            log=log,
            written=written,
            after_write=after_write,
            file=lambda outcome, finished_at: self.file(
                key, job_id, outcome.status, outcome.fail_type, finished_at
            ),
        )
        day_path = await self.shielded(recording.record, log)
        outcome = recording.outcome
        if recording.abandoned:
            log.error(
                "another worker took the job over after this one's lease ran out; not "
                "recording this run's outcome (%s)",
                outcome.status,
            )
        if day_path is None:
            return None
        if job is not None and job.options.unique_key is not None:
            await self._release_key(job, job_id, log)
        level = logging.INFO if outcome.status == JobStatus.SUCCESS.value else logging.WARNING
        log.log(level, "job finished: %s", outcome.status)
        await self._on_filed(Filed(job, outcome, day_path, duration))
        return outcome

    async def _release_key(self, job: Job[Any], job_id: str, log: Log) -> None:
        """Free the job's unique key in the service's index, if it holds it.

        Best effort: an entry left behind holds nothing once its job is
        finished (:mod:`oada_jobs.unique`), so a failure here is only logged.
        """
        assert job.options.unique_key is not None
        with anyio.move_on_after(self.finish_timeout, shield=True):
            try:
                await release_key(self.oada, self.service, job.type, job.options.unique_key, job_id)
            except OADAError as error:
                log.warning("could not free the job's unique key in the index: %s", error)

    # ------------------------------------------------------------- filing

    async def file(
        self, key: str, job_id: str, status: str, fail_type: str | None, finished_at: datetime
    ) -> str:
        """Link the job into the day list(s) and remove it from the pending list."""
        day = finished_at.date()
        day_path = self.layout.day_index_path(self.service, status, day)
        await self.link_into(day_path, key, job_id)
        if fail_type is not None:
            typed = self.layout.day_index_path(self.service, status, day, fail_type)
            await self.link_into(typed, key, job_id)
        await self.oada.delete(f"{self.pending_path}/{path_segment(key)}")
        return day_path

    async def relink(self, key: str, job_id: str) -> None:
        """Link the job into the pending list again, so every replica's list
        watch sees it at once (a released job) instead of at its next sweep."""
        await self.oada.put(self.pending_path, {key: {"_id": job_id}}, content_type=JOBS_TYPE)

    async def link_into(self, day_path: str, key: str, job_id: str) -> None:
        """Add a versioned link to *job_id* under *key* in the day list *day_path*.

        Links are group-committed: while one write to a day list is in flight,
        links of other jobs finishing meanwhile gather and go out together in
        the next single PUT (each link write bumps every versioned parent up to
        the bookmarks, so this saves the server most of its work per job under
        load, and costs nothing when idle). Returns once this job's link is
        written; raises if that write failed.

        The first write into a day list is a tree PUT (it creates the list and
        links it in); later ones are a plain PUT.
        """
        batch = self._link_batches.get(day_path)
        if batch is not None:
            batch.links[key] = {"_id": job_id, "_rev": 0}
            await batch.done.wait()
            if batch.error is not None:
                raise OADATransportError(f"linking into {day_path} failed: {batch.error}")
            return
        batch = _LinkBatch({key: {"_id": job_id, "_rev": 0}})
        self._link_batches[day_path] = batch
        lock = self._day_locks.setdefault(day_path, anyio.Lock())
        try:
            async with lock:
                # Sealed from here: later links start the next batch.
                if self._link_batches.get(day_path) is batch:
                    del self._link_batches[day_path]
                if day_path in self._known_days:
                    await self.oada.put(day_path, batch.links, content_type=JOBS_TYPE)
                else:
                    await self.oada.put(day_path, batch.links, tree=self.layout.tree)
                    self._remember(day_path, lock)
        except BaseException as error:
            batch.error = error
            raise
        finally:
            if self._link_batches.get(day_path) is batch:
                del self._link_batches[day_path]
            batch.done.set()

    def _remember(self, day_path: str, lock: anyio.Lock) -> None:
        if len(self._known_days) >= KNOWN_DAYS:
            # Days go by: forget old lists (at worst one more tree PUT).
            self._known_days.clear()
            self._day_locks = {
                path: other
                for path, other in self._day_locks.items()
                if other is lock or other.locked()
            }
        self._known_days.add(day_path)


class _Recording:
    """The steps of recording one outcome, each done once however often
    :meth:`record` is retried: write it, tell *written* and *after_write*,
    file the job (idempotent, so always redone)."""

    def __init__(
        self,
        outcome: JobOutcome,
        *,
        write: Write,
        log: Log,
        written: Callable[[], None],
        after_write: Callable[[JobOutcome], Awaitable[None]] | None,
        file: Callable[[JobOutcome, datetime], Awaitable[str]],
    ) -> None:
        #: The outcome recorded (replaced by a failure if it cannot be written).
        self.outcome = outcome
        self._write = write
        self._log = log
        self._written = written
        self._after_write = after_write
        self._file = file
        self._finished_at = utc_now()
        # Made once per outcome, so a retried write does not add a second update.
        self._body = outcome_body(outcome, self._finished_at)
        self._done = False
        self._followed = after_write is None
        #: Whether *write* found the job owned by another worker.
        self.abandoned = False

    async def _put(self, body: JsonObject) -> None:
        self.abandoned = not await self._write(body)

    async def record(self) -> str | None:
        """Record the outcome; the day list the job is filed in, ``None`` if abandoned."""
        if not self._done:
            try:
                await self._put(self._body)
            except (TypeError, ValueError, BadRequest, PayloadTooLarge) as error:
                # Not JSON, or refused by the server (too deep, too large):
                # recorded instead is a failure saying so, not the run again.
                self.outcome = unrecordable(self._log, self.outcome, error)
                self._body = outcome_body(self.outcome, self._finished_at)
                await self._put(self._body)
            except Conflict as error:
                # The job resource takes no JSON at all (it holds bytes):
                # nothing can be recorded in it; it is filed all the same.
                self._log.error(
                    "the job resource refuses the outcome (%s); filing it without one", error
                )
            if self.abandoned:
                return None
            self._done = True
            self._written()
        if not self._followed:
            assert self._after_write is not None
            await self._after_write(self.outcome)
            self._followed = True
        return await self._file(self.outcome, self._finished_at)


@dataclass(slots=True)
class _LinkBatch:
    """Links waiting for one PUT into a day list."""

    links: dict[str, Any]
    done: anyio.Event = field(default_factory=anyio.Event)
    error: BaseException | None = None
