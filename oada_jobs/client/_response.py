"""What requests and watches hand back: :class:`Response` and :class:`Change`.

Owns these two records and the error of a status; must not import another
client module but ``_common``, nor the framework or the server.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..exceptions import OADAStatusError, error_for_status, redact

__all__ = ["Change", "Response", "parse_change_array", "raise_for_status"]


@dataclass(frozen=True, slots=True)
class Response:
    """One answer from an OADA server.

    ``headers`` have lower-case names. ``data`` is the decoded JSON body, the
    raw bytes of a binary body, or ``None`` when there is no body (HEAD, and
    the 201/204 answers to writes).
    """

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    data: Any = None

    @property
    def rev(self) -> int | None:
        """``X-OADA-Rev``: the resource's rev after a read or write, if given."""
        value = self.headers.get("x-oada-rev")
        try:
            return int(value) if value is not None else None
        except ValueError:
            return None

    @property
    def etag(self) -> str | None:
        """The ``ETag`` header exactly as received; echo it in ``if_match``."""
        return self.headers.get("etag")

    @property
    def content_location(self) -> str | None:
        """``Content-Location``, e.g. ``/resources/K/a/b`` (where a write landed)."""
        return self.headers.get("content-location")

    @property
    def path_leftover(self) -> str | None:
        """``X-OADA-Path-Leftover``: the part of the path inside the resource."""
        return self.headers.get("x-oada-path-leftover")

    @property
    def resource_id(self) -> str | None:
        """``resources/<key>`` taken from ``Content-Location``, if it names one."""
        location = self.content_location
        if not location:
            return None
        parts = location.lstrip("/").split("/")
        if len(parts) >= 2 and parts[0] == "resources" and parts[1]:
            return f"resources/{parts[1]}"
        return None

    @property
    def ok(self) -> bool:
        return self.status < 400


ChangeType = Literal["merge", "delete"]


@dataclass(frozen=True, slots=True)
class Change:
    """One element of an OADA change array.

    ``path`` is where the changed resource sits below the watched one
    (``""`` for the watched resource itself); ``body`` is the write as
    applied, including ``_rev`` — or ``None`` for a whole-resource delete.
    """

    resource_id: str
    path: str
    type: ChangeType
    body: dict[str, Any] | None

    @property
    def rev(self) -> int:
        """The changed resource's rev (``body._rev``); 0 for a whole-resource delete."""
        if self.body is None:
            return 0
        rev = self.body.get("_rev")
        return rev if isinstance(rev, int) else 0


def parse_change_array(value: Any) -> list[Change] | None:
    """Validate a change array as the protocol defines it; ``None`` if it is not one.

    Each element needs ``resource_id`` (``resources/...``), a string ``path``,
    ``type`` ``merge``/``delete`` and a ``body`` that is an object with an
    integer ``_rev`` (or ``null`` for a delete).
    """
    if not isinstance(value, list) or not value:
        return None
    changes: list[Change] = []
    for item in value:
        if not isinstance(item, dict):
            return None
        resource_id = item.get("resource_id")
        path = item.get("path")
        kind = item.get("type")
        body = item.get("body")
        if not isinstance(resource_id, str) or not resource_id.startswith("resources/"):
            return None
        if not isinstance(path, str) or kind not in ("merge", "delete"):
            return None
        if body is None:
            if kind != "delete":
                return None
        elif (
            not isinstance(body, dict)
            or not isinstance(body.get("_rev"), int)
            or isinstance(body.get("_rev"), bool)
        ):
            return None
        changes.append(Change(resource_id, path, kind, body))
    return changes


def error_message(status: int, data: Any, reason: str | None) -> str:
    """The message of an error answer: the body's ``message``, else the status line."""
    if isinstance(data, dict):
        message = data.get("message")
        if isinstance(message, str) and message:
            return message
    return f"{status} {reason}".strip() if reason else str(status)


def raise_for_status(
    response: Response, *, method: str, path: str, reason: str | None, token: str
) -> Response:
    """Return *response* when it is a success, else raise its :class:`OADAStatusError`."""
    if response.status < 400:
        return response
    raise status_error(response, method=method, path=path, reason=reason, token=token)


def status_error(
    response: Response, *, method: str, path: str, reason: str | None, token: str
) -> OADAStatusError:
    message = redact(error_message(response.status, response.data, reason), token)
    return error_for_status(
        response.status,
        message,
        method=method,
        path=path,
        body=response.data,
        headers=dict(response.headers),
    )
