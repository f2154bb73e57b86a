"""The core's requests and answers, and the HTTP header rules they share.

:class:`CoreRequest` and :class:`CoreResponse` are what a transport hands
the core and gets back; :func:`error_response` is the one shape of an error
answer. ETags, ``If-Match``/``If-None-Match`` and ``Accept`` are decided
here for reads and writes alike.

Owns the request and response values and their header rules; must not
import the store, the graph, the framework, the client or a transport.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus

from oada_jobs.server.documents import dumpb, is_json_type
from oada_jobs.server.edge import Reject

__all__ = [
    "CoreRequest",
    "CoreResponse",
    "accepts",
    "check_preconditions",
    "error_response",
    "etag",
    "etag_matches",
    "unsaved",
]


@dataclass(frozen=True, slots=True)
class CoreRequest:
    """One request as the core sees it."""

    #: Lower-case method: ``get head put post delete``.
    method: str
    #: Raw request path without the query string, not percent-decoded.
    path: str
    #: Lower-case header names.
    headers: Mapping[str, str]
    body: bytes = b""


@dataclass(slots=True)
class CoreResponse:
    """One answer: lower-case header names, string values, no empty values."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    #: JSON text for JSON answers, raw bytes for binary resources.
    body: bytes = b""


def unsaved() -> CoreResponse:
    """The answer to a request whose writes (or the writes it saw) were not committed."""
    return error_response(500, "the write could not be saved; nothing was changed")


def error_response(
    status: int, message: str, headers: Mapping[str, str] | None = None
) -> CoreResponse:
    """A fastify-style JSON error response."""
    body = dumpb({"statusCode": status, "error": HTTPStatus(status).phrase, "message": message})
    out = dict(headers) if headers else {}
    out["content-type"] = "application/json"
    return CoreResponse(status, out, body)


def etag(resource_id: str, rev: int) -> str:
    return f'"{resource_id.removeprefix("resources/")}/{rev}"'


def etag_matches(header: str, resource_id: str, rev: int) -> bool:
    """Whether any ETag in *header* names *rev* (and *resource_id*, if it has an id).

    Items are ``"<key>/<rev>"``, ``W/"<key>/<rev>"`` or ``"<rev>"``; id-less
    items match any resource (the reference server mishandles those).
    """
    for raw in header.split(","):
        item = raw.strip()
        if item.startswith("W/"):
            item = item[2:]
        if len(item) >= 2 and item[0] == item[-1] == '"':
            item = item[1:-1]
        ident, slash, rev_text = item.rpartition("/")
        try:
            item_rev = int(rev_text)
        except ValueError:
            continue
        if item_rev == rev and (not slash or f"resources/{ident}" == resource_id):
            return True
    return False


def accepts(accept: str, media_type: str) -> bool:
    """Whether an ``Accept`` header allows *media_type* (or plain JSON for JSON types)."""
    major = media_type.split("/", 1)[0]
    for raw in accept.split(","):
        item = raw.split(";", 1)[0].strip().lower()
        if item in ("*/*", "*", media_type, f"{major}/*", ""):
            return True
        if is_json_type(media_type) and item in ("application/json", "application/*"):
            return True
    return False


def check_preconditions(
    req: CoreRequest, resource_id: str, rev: int, headers: dict[str, str]
) -> None:
    """Raise 412 unless the request's ``If-Match``/``If-None-Match`` allow a write at *rev*."""
    if_match = req.headers.get("if-match")
    if if_match is not None and not etag_matches(if_match, resource_id, rev):
        raise Reject(412, "If-Match header does not match current resource _rev", headers)
    if_none = req.headers.get("if-none-match")
    if if_none is not None and etag_matches(if_none, resource_id, rev):
        raise Reject(412, "If-None-Match header contains current resource _rev", headers)
