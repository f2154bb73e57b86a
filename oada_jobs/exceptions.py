"""Every exception oada-jobs raises, under one root.

::

    OADAJobsError
    ├── OADAError                    an OADA request failed (client side)
    │   ├── OADATransportError       no usable answer: connection refused/reset, TLS, socket closed
    │   │   └── OADATimeout          the request or connect took longer than allowed
    │   ├── OADAStatusError          the server answered with a status >= 400
    │   │   ├── BadRequest           400
    │   │   ├── Unauthorized         401 (missing, unknown or expired token)
    │   │   ├── Forbidden            403
    │   │   ├── NotFound             404
    │   │   ├── Conflict             409
    │   │   ├── PreconditionFailed   412 (If-Match / If-None-Match)
    │   │   ├── PayloadTooLarge      413
    │   │   ├── UnprocessableEntity  422
    │   │   ├── TooManyRequests      429
    │   │   └── ServerError          5xx
    │   ├── WatchLost                a watch could not be restored after its connection dropped
    │   └── ClientClosed             the client (or a revoked job-scoped clone) refuses requests
    ├── InvalidJob                   a job resource or list entry does not have the shape of a job
    ├── InvalidKey                   a key (or resource id) that no OADA request path can name
    ├── JobExists                    a job key is taken by a different job (requester side)
    ├── DuplicateJob                 a job's unique key is held by another job (refused when posted)
    ├── InvalidQueueEntry            a service-config queue entry is not ``{"domain", "token"}``
    ├── MissingExtra                 a part used needs an extra that is not installed (an ImportError)
    ├── JobError                     raised by a work function to fail its job with a type
    │   ├── JobCancelled             the job was cancelled by a requester
    │   └── JobFailed                a job a requester waited for failed (requester side)
    ├── Retry                        raised by a work function to ask for another try later
    ├── Reschedule                   raised by a work function to run again later with new state
    ├── ListenError                  a server (embedded OADA, /metrics) cannot listen on its address
    ├── DatabaseLocked               another process serves the embedded server's SQLite file
    └── WaitForChild                 raised by ctx.run_job: end this run until a child job ends

Tokens are secrets: no exception message or repr in this module ever contains
one. Use :func:`redact` on any text that might.

Imports nothing from the package, so every layer raises from it; must not
grow a second root.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

__all__ = [
    "BadRequest",
    "ClientClosed",
    "Conflict",
    "DatabaseLocked",
    "DuplicateJob",
    "Forbidden",
    "InvalidJob",
    "InvalidKey",
    "InvalidQueueEntry",
    "JobCancelled",
    "JobError",
    "JobExists",
    "JobFailed",
    "ListenError",
    "MissingExtra",
    "NotFound",
    "OADAError",
    "OADAJobsError",
    "OADAStatusError",
    "OADATimeout",
    "OADATransportError",
    "PayloadTooLarge",
    "PreconditionFailed",
    "Reschedule",
    "Retry",
    "ServerError",
    "TooManyRequests",
    "Unauthorized",
    "UnprocessableEntity",
    "WaitForChild",
    "WatchLost",
    "error_for_status",
    "redact",
]

_BEARER = re.compile(r"(?i)(bearer\s+)[^\s\"',}]+")


def redact(text: str, *secrets: str) -> str:
    """Return *text* with bearer credentials and each of *secrets* masked."""
    text = _BEARER.sub(r"\1***", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class OADAJobsError(Exception):
    """Root of every exception raised by oada-jobs."""


class OADAError(OADAJobsError):
    """An OADA request failed.

    ``method`` and ``path`` name the request (never its token); ``status`` is
    the HTTP status when the server answered, else ``None``.
    """

    def __init__(
        self,
        message: str,
        *,
        method: str | None = None,
        path: str | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(redact(message))
        self.message = redact(message)
        self.method = method
        self.path = path
        self.status = status

    def __str__(self) -> str:
        where = " ".join(p for p in (self.method and self.method.upper(), self.path) if p)
        return f"{where}: {self.message}" if where else self.message

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, method={self.method!r}, "
            f"path={self.path!r}, status={self.status!r})"
        )


class OADATransportError(OADAError):
    """The request got no usable answer: refused, reset, TLS failure, socket closed."""


class OADATimeout(OADATransportError):
    """The request (or the connection attempt) took longer than its timeout."""


class OADAStatusError(OADAError):
    """The server answered with an error status.

    ``body`` is the decoded error body (usually ``{"message": ...}``) and
    ``headers`` the response headers, both as received.
    """

    #: The status this class stands for; ``None`` on the generic class.
    status_code: int | None = None

    def __init__(
        self,
        message: str,
        *,
        method: str | None = None,
        path: str | None = None,
        status: int | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, method=method, path=path, status=status or self.status_code)
        self.body = body
        self.headers = dict(headers or {})


class BadRequest(OADAStatusError):
    """400: the server could not make sense of the request."""

    status_code = 400


class Unauthorized(OADAStatusError):
    """401: no token, or a token the server does not accept."""

    status_code = 401


class Forbidden(OADAStatusError):
    """403: the token is valid but may not touch this resource."""

    status_code = 403


class NotFound(OADAStatusError):
    """404: nothing at that path."""

    status_code = 404


class Conflict(OADAStatusError):
    """409: the write conflicts with the resource's current state."""

    status_code = 409


class PreconditionFailed(OADAStatusError):
    """412: an ``If-Match`` / ``If-None-Match`` precondition did not hold."""

    status_code = 412


class PayloadTooLarge(OADAStatusError):
    """413: the body is larger than the server accepts."""

    status_code = 413


class UnprocessableEntity(OADAStatusError):
    """422: e.g. a body whose ``_id`` differs from the resource written to."""

    status_code = 422


class TooManyRequests(OADAStatusError):
    """429: rate limited; ``retry_after`` is the server's hint in seconds, if any."""

    status_code = 429

    @property
    def retry_after(self) -> float | None:
        return _retry_after(self.headers)


class ServerError(OADAStatusError):
    """5xx: the server failed."""

    @property
    def retry_after(self) -> float | None:
        return _retry_after(self.headers)


def _retry_after(headers: dict[str, str]) -> float | None:
    for name in ("retry-after", "ratelimit-reset", "x-ratelimit-reset"):
        value = headers.get(name)
        if value is not None:
            try:
                return max(0.0, float(value))
            except ValueError:
                return None
    return None


_BY_STATUS: dict[int, type[OADAStatusError]] = {
    cls.status_code: cls
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
        PreconditionFailed,
        PayloadTooLarge,
        UnprocessableEntity,
        TooManyRequests,
    )
    if cls.status_code is not None
}


def error_for_status(
    status: int,
    message: str,
    *,
    method: str | None = None,
    path: str | None = None,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> OADAStatusError:
    """Build the named :class:`OADAStatusError` subclass for *status*."""
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else OADAStatusError)
    return cls(message, method=method, path=path, status=status, body=body, headers=headers)


class WatchLost(OADAError):
    """A watch's connection dropped and could not be restored.

    A watch never goes silent: when reconnecting fails for good, the change
    iterator raises this instead.
    """


class ClientClosed(OADAError):
    """The client was closed, or is a job-scoped clone revoked after its job ended."""


class InvalidJob(OADAJobsError):
    """A job resource or a job-list entry is not a valid job.

    ``job_id`` is the resource id (when known) and ``key`` the list key.
    """

    def __init__(self, message: str, *, job_id: str | None = None, key: str | None = None):
        super().__init__(message)
        self.job_id = job_id
        self.key = key


class InvalidKey(OADAJobsError, ValueError):
    """A key, or a ``resources/<key>`` id, that no OADA request path can name.

    OADA servers split a path as a JSON pointer and never percent-decode it,
    so ``/`` and ``~`` can be escaped (``~1``, ``~0``) but an empty key,
    ``.``, ``..`` or one with characters a URI path cannot carry as they are
    (spaces, ``?``, ``#``, control or non-ASCII characters) cannot be
    named by any request. ``key`` is the offending key.
    """

    def __init__(self, message: str, *, key: str | None = None):
        super().__init__(message)
        self.key = key


class JobExists(OADAJobsError):
    """A job was posted with an explicit key that already names a different job.

    An explicit key means "this job, once": posting the same request again
    returns the existing job, a different one is refused with this error and
    nothing is written. ``job_id`` is the existing job.
    """

    def __init__(self, message: str, *, job_id: str):
        super().__init__(message)
        self.job_id = job_id


class InvalidQueueEntry(OADAJobsError):
    """A service-config queue entry is not ``{"domain": str, "token": str}``.

    The message never contains the token.
    """

    def __init__(self, message: str, *, key: str | None = None):
        super().__init__(redact(message))
        self.key = key


class MissingExtra(OADAJobsError, ImportError):
    """A part of oada-jobs was used without the extra that installs its dependencies.

    ``extra`` names it (``server`` or ``cli``); the message says what needed it
    and the command that installs it.
    """

    def __init__(self, what: str, extra: str):
        super().__init__(f"{what} needs the {extra} extra: pip install 'oada-jobs[{extra}]'")
        self.what = what
        self.extra = extra


class JobError(OADAJobsError):
    """Raised by a work function to fail its job.

    ``fail_type`` files the job also under ``typed-failure/<fail_type>``;
    ``details`` is JSON merged into the job's ``result``.

    >>> raise JobError("mailbox full", "smtp-rejected")  # doctest: +SKIP
    """

    def __init__(self, message: str, fail_type: str | None = None, *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.fail_type = fail_type
        self.details = details


class JobCancelled(JobError):
    """The job was cancelled by a requester while pending or running."""

    def __init__(self, message: str = "job cancelled") -> None:
        super().__init__(message, "cancelled")


class JobFailed(JobError):
    """A job posted with :func:`oada_jobs.run_job` ended as ``failure``.

    ``result`` is the job's failure result as stored
    (``{name, message, traceback, failType?, details?}``), ``fail_type`` its
    ``failType`` and ``job_id`` the job resource id.
    """

    def __init__(
        self, message: str, fail_type: str | None = None, *, job_id: str, result: Any = None
    ) -> None:
        super().__init__(message, fail_type, details=result)
        self.job_id = job_id
        self.result = result

    def __reduce__(self) -> tuple[Any, ...]:
        return (_job_failed, (self.message, self.fail_type, self.job_id, self.result))


def _job_failed(message: str, fail_type: str | None, job_id: str, result: Any) -> JobFailed:
    return JobFailed(message, fail_type, job_id=job_id, result=result)


class DuplicateJob(OADAJobsError):
    """``post_job`` refused a job: another job of its type holds its unique key.

    ``job_id`` is the job holding the key (pending or running); ``unique_key``
    the key. Nothing of the refused job stays behind.
    """

    def __init__(self, message: str, *, job_id: str, unique_key: str) -> None:
        super().__init__(message)
        self.message = message
        self.job_id = job_id
        self.unique_key = unique_key

    def __reduce__(self) -> tuple[Any, ...]:
        return (_duplicate_job, (self.message, self.job_id, self.unique_key))


def _duplicate_job(message: str, job_id: str, unique_key: str) -> DuplicateJob:
    return DuplicateJob(message, job_id=job_id, unique_key=unique_key)


def _seconds(value: float | timedelta, what: str) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if not seconds >= 0:
        raise ValueError(f"{what} must be >= 0 seconds, got {seconds}")
    return seconds


class Retry(OADAJobsError):
    """Raised by a work function to ask for another try later.

    The try is recorded as failed with *reason*. The next try comes after
    *defer* (seconds or a timedelta), or, without it, after the job type's
    retry delay (``service.on(..., retry_delay=, backoff=, jitter=)``). When
    the type's try limit is used up, the job is filed as a failure instead.

    >>> raise Retry(defer=30, reason="upstream busy")  # doctest: +SKIP
    """

    def __init__(
        self, defer: float | timedelta | None = None, *, reason: str = "retry requested"
    ) -> None:
        super().__init__(reason)
        self.defer = None if defer is None else _seconds(defer, "defer")
        self.reason = reason


class Reschedule(OADAJobsError):
    """Raised by a work function to end this run and run the job again later.

    Not a failure: the job goes back to pending with ``state`` set to *state*
    (JSON; the next run reads it as ``job.state``) and starts again after
    *defer* (seconds or a timedelta) or at the time *at*, with its try count
    reset. For long tasks done in steps.

    >>> raise Reschedule(defer=60, state={"page": 7})  # doctest: +SKIP
    """

    def __init__(
        self,
        defer: float | timedelta | None = None,
        *,
        at: datetime | None = None,
        state: Any = None,
        reason: str = "rescheduled",
    ) -> None:
        if (defer is None) == (at is None):
            raise ValueError("expected exactly one of defer= or at=")
        if at is not None and at.tzinfo is None:
            raise ValueError(f"expected a timezone-aware time for at=, got {at!r}")
        super().__init__(reason)
        self.defer = None if defer is None else _seconds(defer, "defer")
        self.at = at
        self.state = state
        self.reason = reason


class ListenError(OADAJobsError, OSError):
    """A server cannot listen on ``host:port`` (in use, or not allowed).

    Raised by the embedded OADA server and the ``/metrics`` endpoint before
    they start; also an :class:`OSError`, as the failed bind was.
    """

    def __init__(self, host: str, port: int, reason: str) -> None:
        super().__init__(f"cannot listen on {host}:{port}: {reason}")
        self.host = host
        self.port = port


class DatabaseLocked(OADAJobsError):
    """The embedded server's SQLite file is in use by another server.

    Two servers on one file would each cache its documents and silently
    overwrite each other's writes, so the second refuses to start. ``pid``
    is the other process, when it could be read.
    """

    def __init__(self, path: str, pid: int | None) -> None:
        holder = f"process {pid}" if pid is not None else "another process"
        super().__init__(f"the database {path} is in use by {holder}; stop it or use another --db")
        self.path = path
        self.pid = pid


class WaitForChild(OADAJobsError):
    """Raised by ``await ctx.run_job(...)`` while the child job is not done.

    Not a failure: the run ends, the job goes back to pending holding no
    slot, with ``waitingFor: {"_id": <child>}``; it runs again (from the
    top) once the child is filed, or after *check_every* seconds at the
    latest. A work function must let it through (do not catch it with a
    bare ``except Exception`` around ``ctx.run_job``).
    """

    def __init__(self, child_id: str, *, check_every: float) -> None:
        super().__init__(f"waiting for the child job {child_id}")
        self.child_id = child_id
        self.check_every = _seconds(check_every, "check_every")
