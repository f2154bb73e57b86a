"""The OADA trees and paths of a service: its queue config and its job lists.

A service named ``<name>`` keeps everything under ``/bookmarks/services/<name>``:
the ``queues`` list (which OADA stores to take jobs from) and the job lists. Two
job-list layouts exist (see ``docs/layouts.md``):

``classic`` (the default)
    ``jobs`` holds pending jobs; finished ones are linked under
    ``jobs-success/day-index/<YYYY-MM-DD>`` and ``jobs-failure/day-index/<date>``;
    typed failures also under ``jobs-typed-failure/<type>/day-index/<date>``.

``pending``
    the layout of current ``@oada/jobs``: ``jobs/pending``, ``jobs/success``,
    ``jobs/failure`` and ``jobs/typed-failure/<type>``, each finished list with
    a ``day-index``.

Owns trees, layouts and paths; imports only :mod:`oada_jobs.types` and must
not do I/O.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal, TypeAlias

from . import _pointer
from .exceptions import InvalidKey
from .types import Tree

__all__ = [
    "BOOKMARKS_TYPE",
    "JOBS_TYPE",
    "JOB_TYPE",
    "LAYOUT_MARKER",
    "QUEUES_TYPE",
    "QUEUE_TYPE",
    "SERVICES_TYPE",
    "SERVICE_TYPE",
    "Layout",
    "LayoutName",
    "get_layout",
    "path_segment",
    "resource_path",
    "service_root",
    "service_tree_with",
    "validate_service_name",
]

BOOKMARKS_TYPE = "application/vnd.oada.bookmarks.1+json"
SERVICES_TYPE = "application/vnd.oada.services.1+json"
SERVICE_TYPE = "application/vnd.oada.service.1+json"
QUEUES_TYPE = "application/vnd.oada.service.queues.1+json"
QUEUE_TYPE = "application/vnd.oada.service.queue.1+json"
#: Type of every job list, and (as in ``@oada/jobs``) of job resources themselves.
JOBS_TYPE = "application/vnd.oada.service.jobs.1+json"
#: Type of one job, used for its ``updates`` entries.
JOB_TYPE = "application/vnd.oada.service.job.1+json"

#: The two job-list layouts.
LayoutName: TypeAlias = Literal["classic", "pending"]

#: Key of the service resource where a running service notes its layout
#: (``{"jobs-layout": "classic"}``), so requesters post where it reads.
LAYOUT_MARKER = "jobs-layout"

# Service names become one path segment; keep them to characters that need no
# escaping in a URI reference (OADA does not percent-decode paths).
_SERVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._~-]*$")


# What a key may hold once "~" and "/" are escaped: RFC 3986 path characters
# that every hop passes on as they are (unreserved, sub-delims, ":", "@"),
# and "%", which the client sends as it is and OADA servers never decode.
# For that reason percent-encoding cannot escape anything either: a key with
# a space, "?", "#", a control or a non-ASCII character names a different
# key (or none) in any request.
_NAMEABLE = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@%-]+")


def path_segment(key: str) -> str:
    """*key* as one OADA path segment: ``~`` as ``~0`` and ``/`` as ``~1``
    (JSON pointer rules, which OADA servers apply to paths).

    Every key read from a list (a job key, a queue id) goes into a path
    through this function. Raises :class:`~oada_jobs.InvalidKey` for a key
    no request can name: empty, ``.``, ``..``, or holding characters a path
    cannot carry as they are (see ``docs/concepts.md``).
    """
    if not isinstance(key, str):
        raise InvalidKey(f"expected a key string, got {type(key).__name__}")
    escaped = _pointer.escape(key)
    if key in ("", ".", "..") or not _NAMEABLE.fullmatch(escaped):
        raise InvalidKey(
            f"no OADA request can name the key {key!r}: expected a non-empty key other than "
            "'.' and '..' of letters, digits and -._~!$&'()*+,;=:@%/",
            key=key,
        )
    return escaped


def resource_path(resource_id: str) -> str:
    """``/resources/<key>`` for a resource id ``resources/<key>``.

    Raises :class:`~oada_jobs.InvalidKey` for anything else (a sub-path, a
    key no request can name): an ``_id`` read from a list must point at a
    whole resource, never into one.
    """
    if not isinstance(resource_id, str) or not resource_id.startswith("resources/"):
        raise InvalidKey(f"expected a resource id like 'resources/<key>', got {resource_id!r}")
    key = resource_id.removeprefix("resources/")
    if "/" in key:
        raise InvalidKey(
            f"expected a resource id like 'resources/<key>', got {resource_id!r}", key=key
        )
    return f"/resources/{path_segment(key)}"


def validate_service_name(name: str) -> str:
    """Return *name* if it can be a service name, else raise :class:`ValueError`."""
    if not isinstance(name, str) or not _SERVICE_NAME.fullmatch(name):
        raise ValueError(
            "expected a service name of letters, digits and '.', '_', '~', '-' "
            f"(starting with a letter or digit), got {name!r}"
        )
    return name


def service_root(name: str) -> str:
    """``/bookmarks/services/<name>`` (validated once per name: it is asked per job)."""
    if not isinstance(name, str):
        validate_service_name(name)  # raises the usual error, not "unhashable"
    return _service_root(name)


@functools.lru_cache(maxsize=64)
def _service_root(name: str) -> str:
    return f"/bookmarks/services/{validate_service_name(name)}"


def _day_index() -> dict[str, Any]:
    # Job nodes below a day are deliberately absent: a tree PUT at a job key
    # would create an empty resource there and then fail to overwrite its
    # link. Links are always written at the day (list) level.
    return {"day-index": {"*": {"_type": JOBS_TYPE, "_rev": 0}}}


def _finished_list() -> dict[str, Any]:
    return {"_type": JOBS_TYPE, "_rev": 0, **_day_index()}


def _service_tree(service_node: dict[str, Any]) -> Tree:
    return {
        "bookmarks": {
            "_type": BOOKMARKS_TYPE,
            "services": {
                "_type": SERVICES_TYPE,
                "_rev": 0,
                "*": {
                    "_type": SERVICE_TYPE,
                    "_rev": 0,
                    "queues": {"_type": QUEUES_TYPE},
                    **service_node,
                },
            },
        }
    }


@dataclass(frozen=True, slots=True)
class Layout:
    """Where a service's job lists live, relative to its service root.

    Use :func:`get_layout` to get one of the two built-in layouts.
    """

    #: ``"classic"`` or ``"pending"``.
    name: LayoutName
    #: The list jobs are posted to.
    pending: str
    #: The list successful jobs are filed under (by ``day-index/<date>``).
    success: str
    #: The list failed jobs are filed under.
    failure: str
    #: Parent of ``<fail type>/day-index/<date>`` for typed failures.
    typed_failure: str
    #: The OADA tree for everything under ``/bookmarks/services/*``.
    tree: Tree
    #: Keys of the pending list that name lists of the other layout, never
    #: jobs: the ``pending`` layout keeps its lists inside classic's ``jobs``.
    list_keys: frozenset[str] = frozenset()

    def pending_path(self, service: str) -> str:
        """Absolute path of *service*'s pending list."""
        return f"{service_root(service)}/{self.pending}"

    def queues_path(self, service: str) -> str:
        """Absolute path of *service*'s queue configuration list."""
        return f"{service_root(service)}/queues"

    def day_index_path(
        self, service: str, status: str, day: date, fail_type: str | None = None
    ) -> str:
        """Absolute path of the day list a job finished with *status* is linked into.

        With *fail_type* it is the typed-failure day list instead.
        """
        if fail_type is not None:
            base = f"{self.typed_failure}/{_segment(fail_type)}"
        elif status == "success":
            base = self.success
        elif status == "failure":
            base = self.failure
        else:
            raise ValueError(f"expected status 'success' or 'failure', got {status!r}")
        return f"{service_root(service)}/{base}/day-index/{day.isoformat()}"


def service_tree_with(layout: LayoutName | Layout, node: str) -> Tree:
    """*layout*'s tree with one more resource ``<node>`` under each service.

    For a service's own records beside its job lists (``cron``, ``unique``,
    ``retention``): each one resource of the jobs type, linked unversioned
    (like ``queues``), so writing it does not bump the service's rev.
    """
    tree: dict[str, Any] = {**get_layout(layout).tree}
    bookmarks = {**tree["bookmarks"]}
    services = {**bookmarks["services"]}
    services["*"] = {**services["*"], node: {"_type": JOBS_TYPE}}
    bookmarks["services"] = services
    tree["bookmarks"] = bookmarks
    return tree


def _segment(value: str) -> str:
    # A failure type comes from user code; keep it one safe path segment
    # ("." and ".." are navigation, which servers refuse).
    cleaned = re.sub(r"[^A-Za-z0-9._~-]", "-", value)
    if cleaned in ("", ".", ".."):
        return "-" * max(len(cleaned), 1)
    return cleaned


_CLASSIC = Layout(
    name="classic",
    pending="jobs",
    success="jobs-success",
    failure="jobs-failure",
    typed_failure="jobs-typed-failure",
    list_keys=frozenset({"pending", "success", "failure", "typed-failure"}),
    tree=_service_tree(
        {
            "jobs": {"_type": JOBS_TYPE},
            "jobs-success": _finished_list(),
            "jobs-failure": _finished_list(),
            "jobs-typed-failure": {"*": _finished_list()},
        }
    ),
)

_PENDING = Layout(
    name="pending",
    pending="jobs/pending",
    success="jobs/success",
    failure="jobs/failure",
    typed_failure="jobs/typed-failure",
    tree=_service_tree(
        {
            "jobs": {
                "_type": JOBS_TYPE,
                "pending": {"_type": JOBS_TYPE},
                "success": _finished_list(),
                "failure": _finished_list(),
                "typed-failure": {"*": _finished_list()},
            }
        }
    ),
)


def get_layout(name: LayoutName | Layout) -> Layout:
    """The :class:`Layout` called *name* (``"classic"`` or ``"pending"``)."""
    if isinstance(name, Layout):
        return name
    if name == "classic":
        return _CLASSIC
    if name == "pending":
        return _PENDING
    raise ValueError(f"expected layout 'classic' or 'pending', got {name!r}")
