"""This worker's hold on one job: the claim, the lease, and writes while it holds it.

The claim is a ``PUT`` conditional on the ETag the job was read with, so of
several replicas that read the same job only one wins it. While it runs,
every write this worker makes is conditional on its own last write; a 412
means someone else wrote (the work function through ``ctx.oada``, a
requester's cancel, or another worker that took the job over after this
one's lease ran out), and :meth:`Claim.still_ours` decides which.

Owns :class:`Claim` and :func:`lease_taken`. May use the client and the job
model; must not touch the queue, filing or the service.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import anyio

from .client import OADAClient
from .exceptions import InvalidJob, InvalidKey, OADAError, PreconditionFailed
from .job import Job, JobStatus, Lease, iso, new_update
from .outcome import JobOutcome
from .tree import JOBS_TYPE, resource_path
from .types import JsonObject

__all__ = ["Claim", "lease_taken", "release_body"]


def lease_taken(value: object, worker: str) -> bool:
    """Whether the ``lease`` *value* of a job names a worker other than *worker*."""
    lease = Lease.from_json(value)
    return lease is not None and lease.worker != worker


class Claim:
    """This worker's hold on the job *job_id* (see the module docstring)."""

    def __init__(
        self,
        oada: OADAClient,
        job_id: str,
        *,
        worker_id: str,
        lease: timedelta,
        log: logging.LoggerAdapter[logging.Logger],
    ) -> None:
        self.oada = oada
        self.job_id = job_id
        try:
            self.path = resource_path(job_id)
        except InvalidKey:
            # Never requested: the queue gave such an entry a problem, so
            # it is only moved to the failure list.
            self.path = ""
        self.worker_id = worker_id
        self.lease = lease
        self.log = log
        # ETag of this worker's latest write to the job while it holds it:
        # writes conditional on it fail (412) if anyone else wrote since.
        self._etag: str | None = None

    async def take(self, job: Job[JsonObject]) -> int | None:
        """Conditionally mark the job running for this worker.

        Returns the claim's rev, or ``None`` on 412: someone wrote the job
        since it was read (another replica's claim, a requester's cancel).
        """
        lease = Lease.new(self.worker_id, self.lease)
        key, update = new_update("started", "Runner started")
        body: JsonObject = {
            "status": JobStatus.RUNNING.value,
            "lease": lease.to_json(),
            "tries": job.tries + 1,
            "updates": {key: update},
        }
        if job.run_at is not None:
            body["runAt"] = None
        if job.raw.get("waitingFor") is not None:
            # Running again: a child filed from now on has nobody to wake.
            body["waitingFor"] = None
        try:
            response = await self.oada.put(
                self.path, body, content_type=JOBS_TYPE, if_match=job.etag
            )
        except PreconditionFailed:
            self.log.debug("the job changed since it was read; reading it again")
            return None
        self._etag = response.etag
        return response.rev if response.rev is not None else 0

    async def give_back(self, outcome: JobOutcome, entry: tuple[str, JsonObject]) -> bool:
        """Leave the job pending until ``outcome.run_at`` (a retry or a reschedule),
        with the update *entry* (made once, so a retried write adds no second)."""
        assert outcome.run_at is not None
        key, update = entry
        body: JsonObject = {
            "status": JobStatus.PENDING.value,
            "lease": None,
            "runAt": iso(outcome.run_at),
            "updates": {key: update},
        }
        if outcome.rescheduled:
            # A new step, not a failed try: it gets the type's tries afresh.
            # A PUT merges objects, so the old state is cleared first for the
            # new one to replace it rather than merge into it.
            if not await self.put({"state": None}):
                return False
            body.update(state=outcome.state, tries=0)
        elif outcome.waiting_for is not None:
            # A step, like a reschedule (tries afresh), keeping its state.
            body.update(waitingFor={"_id": outcome.waiting_for}, tries=0)
        else:
            body["lastError"] = outcome.reason
        return await self.put(body)

    def note_write(self, etag: str | None) -> None:
        if etag is not None:
            self._etag = etag

    async def still_ours(self) -> bool:
        """Re-read the job after a 412: may this worker still write its outcome?

        Not when the job finished meanwhile or another worker holds a lease on
        it (this one stalled past its lease and the job was taken over).
        """
        response = await self.oada.get(self.path)
        try:
            job = Job.from_resource(response.data, oada_id=self.job_id, etag=response.etag)
        except InvalidJob:
            return False
        if job.finished or lease_taken(job.raw.get("lease"), self.worker_id):
            return False
        self._etag = response.etag
        return True

    async def put(self, body: JsonObject) -> bool:
        """PUT *body* on the job if this worker still owns it; ``False`` if it does not."""
        while True:
            try:
                response = await self.oada.put(
                    self.path, body, content_type=JOBS_TYPE, if_match=self._etag
                )
            except PreconditionFailed:
                # Someone wrote the job since our last write: the work
                # function through ctx.oada, or another worker that took it.
                if not await self.still_ours():
                    return False
                continue
            self.note_write(response.etag)
            return True

    def lease_interval(self) -> float:
        """Seconds between renewals: a third of the lease (at least 50 ms)."""
        return max(self.lease.total_seconds() / 3, 0.05)

    async def renew(self, on_lost: Callable[[], None]) -> None:
        """Renew the lease now and every :meth:`lease_interval` after."""
        while True:
            lease = Lease.new(self.worker_id, self.lease)
            try:
                if not await self.put({"lease": lease.to_json()}):
                    self.log.error(
                        "another worker took the job over after this one's lease ran out; "
                        "abandoning this run"
                    )
                    on_lost()
                    return
            except OADAError as error:
                self.log.warning("could not renew the job lease: %s", error)
            await anyio.sleep(self.lease_interval())

    async def release(self, body: JsonObject) -> bool:
        """Give the job back unfinished (the service is stopping) with *body*
        (made once by :func:`release_body`, so a retried write adds no second
        ``released`` update); ``False`` if another worker holds it by now and
        there was nothing to give back."""
        return await self.put(body)


def release_body(job: Job[Any]) -> JsonObject:
    """What giving *job* back writes on it."""
    key, update = new_update(
        "released", "Worker stopped before the job finished; it will run again"
    )
    return {
        "status": JobStatus.PENDING.value,
        "lease": None,
        # A stop is not a failed try: the claim's count is given back.
        "tries": job.tries,
        "updates": {key: update},
    }
