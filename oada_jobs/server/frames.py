"""The frames of the OADA WebSocket protocol: requests parsed, answers encoded.

:func:`parse_request` turns one text frame into a :class:`WSRequest`
through the validation edge's JSON decoder, or raises
:class:`InvalidMessage`. :func:`response_frame` encodes the core's answer
to one; the other functions build the protocol's error answers (an
oversized or invalid frame, a refused watch). :func:`replay_since` reads
where a watch's replay starts.

Owns the shape of the frames; must not send them, hold a socket, nor
import the core, the framework or the client.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from oada_jobs.server.documents import dumpb, dumps, is_json_type
from oada_jobs.server.edge import Reject, check_text, decode_json, parse_rev
from oada_jobs.server.messages import CoreResponse

__all__ = [
    "ENVELOPE_ITEMS",
    "MAX_REQUEST_ID",
    "PLAIN_METHODS",
    "WATCH_METHODS",
    "InvalidMessage",
    "WSRequest",
    "error_message",
    "invalid_message",
    "parse_request",
    "replay_since",
    "response_frame",
    "too_large_message",
]

#: Longest ``requestId`` accepted, in characters.
MAX_REQUEST_ID = 1024

#: Room for the JSON items of the envelope (requestId, method, path,
#: headers) around a body's ``max_body_items``.
ENVELOPE_ITEMS = 4096

_REQUEST_ID = re.compile(r'"requestId"\s*:\s*"((?:[^"\\]|\\.){1,256})"')

PLAIN_METHODS = frozenset({"head", "get", "put", "post", "delete"})
WATCH_METHODS = {
    "watch": "head",
    "head-watch": "head",
    "get-watch": "get",
    "put-watch": "put",
    "post-watch": "post",
    "delete-watch": "delete",
}
_METHODS = PLAIN_METHODS | WATCH_METHODS.keys() | {"unwatch", "ping"}


class InvalidMessage(ValueError):
    """A frame that is not a valid OADA WebSocket request."""

    def __init__(self, detail: str, request_id: str | None = None, status: int = 400) -> None:
        super().__init__(detail)
        self.detail = detail
        self.request_id = request_id
        self.status = status


@dataclass(frozen=True, slots=True)
class WSRequest:
    """One parsed WebSocket request."""

    request_id: str
    method: str
    path: str
    #: Lower-case names, string values.
    headers: dict[str, str]
    #: The request body: ``data`` as JSON text, or ``b""`` when absent.
    body: bytes


def _textual_request_id(text: str | bytes) -> str | None:
    """The frame's ``requestId`` found without parsing it (for frames that cannot be)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    match = _REQUEST_ID.search(text)
    if match is None:
        return None
    try:
        found = json.loads(f'"{match.group(1)}"')
        check_text(found, "requestId")
    except (ValueError, Reject):
        return None
    return found if isinstance(found, str) else None


def parse_request(text: str | bytes, *, max_depth: int, max_items: int) -> WSRequest:
    """Parse and validate one frame (formats:``oada/websockets/request``).

    The frame goes through the validation edge's JSON decoder, so ``data``
    may nest *max_depth* levels (the frame itself adds one), hold about
    *max_items* items (the envelope may add :data:`ENVELOPE_ITEMS`; the
    core counts the body's own exactly) and no string in it may be one that
    UTF-8 cannot encode. Raises :class:`InvalidMessage` saying what was
    expected (with status 413 for too many items); it carries the
    ``requestId`` when the frame had a usable one.
    """
    try:
        msg = decode_json(
            text,
            max_depth=max_depth + 1,
            max_items=max_items + ENVELOPE_ITEMS,
            what="WebSocket message",
        )
    except Reject as exc:
        raise InvalidMessage(exc.message, _textual_request_id(text), exc.status) from None
    if not isinstance(msg, dict):
        raise InvalidMessage(f"expected a JSON object, got {type(msg).__name__}")
    request_id = msg.get("requestId")
    if not isinstance(request_id, str) or not request_id:
        raise InvalidMessage(f"expected 'requestId' to be a non-empty string, got {request_id!r}")
    if len(request_id) > MAX_REQUEST_ID:
        # A watch's id is kept, and sent with each of its changes.
        raise InvalidMessage(
            f"expected 'requestId' of at most {MAX_REQUEST_ID} characters, got {len(request_id)}"
        )
    method = msg.get("method")
    if not isinstance(method, str) or method.lower() not in _METHODS:
        raise InvalidMessage(
            f"expected 'method' to be one of {', '.join(sorted(_METHODS))}, got {method!r}",
            request_id,
        )
    method = method.lower()
    path = msg.get("path")
    if not isinstance(path, str):
        raise InvalidMessage(f"expected 'path' to be a string, got {path!r}", request_id)
    raw_headers = msg.get("headers")
    if not isinstance(raw_headers, dict):
        raise InvalidMessage(
            f"expected 'headers' to be an object, got {type(raw_headers).__name__}", request_id
        )
    headers: dict[str, str] = {}
    for name, value in raw_headers.items():
        if not isinstance(value, str):
            raise InvalidMessage(
                f"expected header {name!r} to be a string, got {type(value).__name__}",
                request_id,
            )
        headers[name.lower()] = value
    body = dumpb(msg["data"]) if "data" in msg else b""
    return WSRequest(request_id, method, path.split("?", 1)[0], headers, body)


_BINARY_OVER_WS = "Cannot GET binary over WebSockets"
_ERROR_HREF = "https://github.com/OADA/oada-docs/blob/master/rest-specs/README.md"

# Outgoing messages: compact, non-ASCII as is (orjson, stdlib for what it refuses).
_dumps = dumps


def error_message(request_id: str, status: int, message: str) -> dict[str, Any]:
    """An answer with *status* and a fastify-style error body saying *message*."""
    return {
        "requestId": request_id,
        "status": status,
        "statusText": HTTPStatus(status).phrase,
        "headers": {"x-request-id": request_id},
        "data": {
            "statusCode": status,
            "error": HTTPStatus(status).phrase,
            "message": message,
        },
    }


def too_large_message(frame: str | bytes, limit: int) -> dict[str, Any]:
    """The 413 answer to a frame over the body limit *limit*, found without parsing it."""
    request_id: str | list[str] = _textual_request_id(frame) or ["error"]
    return {
        "requestId": request_id,
        "status": 413,
        "statusText": HTTPStatus(413).phrase,
        "headers": {},
        "data": {
            "statusCode": 413,
            "error": HTTPStatus(413).phrase,
            "message": f"the message is {len(frame)} bytes; "
            f"bodies of at most {limit} bytes are accepted",
        },
    }


def invalid_message(exc: InvalidMessage, *, reference: bool) -> dict[str, Any]:
    """The answer to an invalid frame (under ``["error"]`` as the *reference* server)."""
    request_id: str | list[str] = ["error"]
    # Answering under the sender's own id (when it had one) lets a client
    # fail that request at once instead of waiting for a timeout; the
    # reference server always answers under ["error"].
    if exc.request_id is not None and not reference:
        request_id = exc.request_id
    status = exc.status
    return {
        "requestId": request_id,
        "status": status,
        "statusText": HTTPStatus(status).phrase,
        "headers": {},
        "data": {
            "code": str(status),
            "status": status,
            "title": HTTPStatus(status).phrase,
            "href": _ERROR_HREF,
            "userMessage": "Invalid WebSocket request",
            "detail": exc.detail,
        },
    }


def response_frame(req: WSRequest, method: str, response: CoreResponse) -> tuple[int, str]:
    """The response status and message (JSON-encoded; bodies are spliced in as they are)."""
    status = response.status
    headers = {k: v for k, v in response.headers.items() if v}
    headers["x-request-id"] = req.request_id
    content_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    body = response.body
    data: bytes | None = None
    if body and method != "head":
        if is_json_type(content_type):
            data = body
        elif status < 300:
            # Binary can only travel over HTTP (protocol §4.2).
            message: dict[str, Any] = {
                "requestId": req.request_id,
                "status": 400,
                "statusText": _BINARY_OVER_WS,
                "headers": headers,
                "data": {
                    "statusCode": 400,
                    "error": "Bad Request",
                    "message": f"{_BINARY_OVER_WS}; use HTTP to read {content_type} resources",
                },
            }
            return 400, _dumps(message)
    out: dict[str, Any] = {"requestId": req.request_id, "status": status, "headers": headers}
    if status >= 300:
        out["statusText"] = HTTPStatus(status).phrase
    text = _dumps(out)
    if data is not None:
        # The core's JSON text is valid JSON already: splice it in rather
        # than parse and re-encode a possibly large document.
        text = f'{text[:-1]},"data":{data.decode()}}}'
    return status, text


def replay_since(req: WSRequest, response: CoreResponse) -> tuple[int | None, bool]:
    """The rev after which to replay (None: no replay), and whether the client resumes.

    With ``x-oada-rev`` that is the client's rev (the validation edge
    refused the request if it was not one). Otherwise the rev the
    underlying request saw: normally nothing is newer, but a change that
    slipped in before the subscription is replayed rather than lost. Rev
    0 (a resource deleted, or not there) has nothing to replay.
    """
    asked = req.headers.get("x-oada-rev", "")
    if asked:
        return parse_rev(asked, "header x-oada-rev"), True
    seen = response.headers.get("x-oada-rev", "")
    if seen.isascii() and seen.isdigit() and int(seen) > 0:
        return int(seen), False
    return None, False
