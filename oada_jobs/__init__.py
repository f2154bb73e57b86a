"""oada-jobs: write OADA job microservices in Python.

The public API is what ``__all__`` lists; everything else may move.
The top of the package: it imports the framework, including the modules
that provide ``service.cron`` and ``service.add_report`` (see
docs/architecture.md); nothing in the package imports it by name.
"""

# cron, reports and retention provide service.cron(), service.add_report() and
# service.retain() when imported.
from . import cron, reports, retention  # noqa: F401
from ._version import __version__
from .client import Change, OADAClient, Response
from .context import JobLogger, WorkerContext, WorkFunction
from .exceptions import (
    BadRequest,
    ClientClosed,
    Conflict,
    DuplicateJob,
    Forbidden,
    InvalidJob,
    InvalidKey,
    InvalidQueueEntry,
    JobCancelled,
    JobError,
    JobExists,
    JobFailed,
    MissingExtra,
    NotFound,
    OADAError,
    OADAJobsError,
    OADAStatusError,
    OADATimeout,
    OADATransportError,
    PayloadTooLarge,
    PreconditionFailed,
    Reschedule,
    Retry,
    ServerError,
    TooManyRequests,
    Unauthorized,
    UnprocessableEntity,
    WatchLost,
)
from .job import Job, JobOptions, JobStatus
from .metrics import ServiceMetrics
from .queue import Queue
from .reporters import FinishReport, Reporter, SlackReporter
from .requester import post_job, run_job
from .service import Service, ServiceConfig, ServiceState
from .tree import Layout
from .types import Json, JsonObject, Tree
from .worker import FollowUp

__all__ = [
    "BadRequest",
    "Change",
    "ClientClosed",
    "Conflict",
    "DuplicateJob",
    "FinishReport",
    "FollowUp",
    "Forbidden",
    "InvalidJob",
    "InvalidKey",
    "InvalidQueueEntry",
    "Job",
    "JobCancelled",
    "JobError",
    "JobExists",
    "JobFailed",
    "JobLogger",
    "JobOptions",
    "JobStatus",
    "Json",
    "JsonObject",
    "Layout",
    "MissingExtra",
    "NotFound",
    "OADAClient",
    "OADAError",
    "OADAJobsError",
    "OADAStatusError",
    "OADATimeout",
    "OADATransportError",
    "PayloadTooLarge",
    "PreconditionFailed",
    "Queue",
    "Reporter",
    "Reschedule",
    "Response",
    "Retry",
    "ServerError",
    "Service",
    "ServiceConfig",
    "ServiceMetrics",
    "ServiceState",
    "SlackReporter",
    "TooManyRequests",
    "Tree",
    "Unauthorized",
    "UnprocessableEntity",
    "WatchLost",
    "WorkFunction",
    "WorkerContext",
    "__version__",
    "post_job",
    "run_job",
]
