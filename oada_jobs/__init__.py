"""oada-jobs: write OADA job microservices in Python.

The public API is what ``__all__`` lists; everything else may move.
"""

from .client import Change, OADAClient, Response
from .exceptions import (
    BadRequest,
    ClientClosed,
    Conflict,
    Forbidden,
    InvalidJob,
    InvalidQueueEntry,
    JobCancelled,
    JobError,
    NotFound,
    OADAError,
    OADAJobsError,
    OADAStatusError,
    OADATimeout,
    OADATransportError,
    PayloadTooLarge,
    PreconditionFailed,
    Retry,
    ServerError,
    TooManyRequests,
    Unauthorized,
    UnprocessableEntity,
    WatchLost,
)
from .types import Json, JsonObject, Tree, WorkFunction

__version__ = "0.1.0"

__all__ = [
    "BadRequest",
    "Change",
    "ClientClosed",
    "Conflict",
    "Forbidden",
    "InvalidJob",
    "InvalidQueueEntry",
    "JobCancelled",
    "JobError",
    "Json",
    "JsonObject",
    "NotFound",
    "OADAClient",
    "OADAError",
    "OADAJobsError",
    "OADAStatusError",
    "OADATimeout",
    "OADATransportError",
    "PayloadTooLarge",
    "PreconditionFailed",
    "Response",
    "Retry",
    "ServerError",
    "TooManyRequests",
    "Tree",
    "Unauthorized",
    "UnprocessableEntity",
    "WatchLost",
    "WorkFunction",
    "__version__",
]
