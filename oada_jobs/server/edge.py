"""The validation edge of the embedded server: what a request may contain at all.

Every request, HTTP or WebSocket, passes through here before the core acts on
it; what passes is normalised, so nothing further in ever sees

* a string that cannot be encoded as UTF-8 (a lone surrogate, legal in JSON
  text as ``"\\udc80"``): SQLite, orjson and the socket would each fail on it
  somewhere else, long after the request was accepted;
* a control character in a path or header (it would end up in a response
  header, which HTTP forbids);
* a path longer than ``max_path_bytes``;
* a number the store cannot hold: revs are SQLite integers, at most
  :data:`MAX_REV`, written as ASCII digits with nothing around them;
* JSON nested deeper than ``max_depth`` or refused by orjson, whichever
  decoder is used afterwards;
* JSON of more than ``max_body_items`` items (strings, keys included, and
  the commas between members and elements): decoding, merging and storing
  it takes time in proportion, on the event loop every client shares, so
  it is counted before it is decoded, in time bounded by the limit.

:func:`admit` checks a request's method, path and headers; :func:`decode_json`
is the one JSON decoder for request bodies and WebSocket frames;
:func:`parse_rev` and :func:`check_etags` are for every number a client sends.
Everything refused raises :class:`Reject` with a 4xx status and a message
saying what was expected and what came instead.

This module knows nothing of resources, tokens or transports: it must not
touch the store, decide authorization or route.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import orjson

__all__ = [
    "MAX_REV",
    "Reject",
    "admit",
    "check_etags",
    "check_text",
    "decode_json",
    "parse_rev",
]

#: Largest rev (or other count) a client may name: SQLite's largest INTEGER.
MAX_REV = 2**63 - 1
_MAX_REV_DIGITS = len(str(MAX_REV))

# C0 controls and DEL: never in a path or a header value (tab is allowed in
# header values, as in HTTP).
_PATH_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HEADER_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# RFC 9110 token characters, for header names.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-zA-Z]+")

# orjson turns integers beyond 64 bits into floats; texts with a run of 19
# digits are decoded again by the (exact, slower) stdlib decoder. The run is
# found by mapping every digit to "0" and everything else to " "
# (bytes.translate), then a substring search: a regular expression for it
# took four times as long as orjson's decoding.
_DIGIT_MAP = bytes(48 if 48 <= i <= 57 else 32 for i in range(256))
_DIGIT_RUN = b"0" * 19


class Reject(Exception):
    """A request the server refuses; the core turns it into a JSON error response.

    Internal to :mod:`oada_jobs.server`: it never leaves ``OADACore.handle``.
    """

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def _show(text: str, limit: int = 40) -> str:
    """*text* quoted for an error message, cut short, surrogates escaped."""
    shown = text if len(text) <= limit else text[:limit] + "..."
    return ascii(shown)


def check_text(value: str, what: str) -> None:
    """Raise :class:`Reject` (400) if *value* cannot be encoded as UTF-8."""
    if value.isascii():
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise Reject(
            400,
            f"expected {what} to be valid Unicode text, got {_show(value)}"
            " (a lone surrogate cannot be encoded as UTF-8)",
        ) from None


def _utf8_size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def admit(
    method: str,
    path: str,
    headers: Mapping[str, str],
    *,
    max_path_bytes: int,
    max_header_bytes: int,
) -> dict[str, str]:
    """Check a request's method, path and headers; return the headers normalised.

    Header names come back in lower case. Raises :class:`Reject`: 400 for a
    value that is not UTF-8 text or holds a control character, 414 for a
    path longer than *max_path_bytes*, 431 for headers (names and values)
    of more than *max_header_bytes* together (HTTP's are bounded on the
    wire already; a WebSocket request's only by its frame, and lists such
    as ``If-Match`` cost time per item), 400 for a malformed number in
    ``x-oada-rev``, ``if-match`` or ``if-none-match``.
    """
    check_text(method, "the method")
    if len(path) > max_path_bytes or len(path.encode("utf-8", "surrogatepass")) > max_path_bytes:
        raise Reject(
            414, f"the path is longer than the limit of {max_path_bytes} bytes (UTF-8 encoded)"
        )
    check_text(path, "the path")
    bad = _PATH_CONTROL.search(path)
    if bad:
        raise Reject(
            400,
            f"expected a path without control characters, got {bad.group()!a} in {_show(path)}",
        )
    # Characters first: never more than the bytes, and no copy of a huge value.
    size = sum(len(name) + len(value) for name, value in headers.items())
    if size <= max_header_bytes:
        size = sum(_utf8_size(name) + _utf8_size(value) for name, value in headers.items())
    if size > max_header_bytes:
        raise Reject(431, f"the headers take over {max_header_bytes} bytes, the most accepted")
    out: dict[str, str] = {}
    for name, value in headers.items():
        check_text(name, "a header name")
        if not _TOKEN.fullmatch(name):
            raise Reject(400, f"expected a header name made of token characters, got {_show(name)}")
        check_text(value, f"header {name}")
        bad = _HEADER_CONTROL.search(value)
        if bad:
            raise Reject(
                400,
                f"expected header {name} without control characters, got {bad.group()!a}",
            )
        out[name.lower()] = value
    rev = out.get("x-oada-rev")
    if rev:
        parse_rev(rev, "header x-oada-rev")
    for name in ("if-match", "if-none-match"):
        etags = out.get(name)
        if etags is not None:
            check_etags(etags, name)
    return out


def parse_rev(text: str, what: str) -> int:
    """*text* as a rev: ASCII digits only, at most :data:`MAX_REV`; else :class:`Reject` (400)."""
    if (
        not text
        or not text.isascii()
        or not text.isdigit()
        or len(text) > _MAX_REV_DIGITS
        or int(text) > MAX_REV
    ):
        raise Reject(
            400,
            f"expected {what} to be a rev (ASCII digits, 0 to {MAX_REV}), got {_show(text)}",
        )
    return int(text)


def check_etags(value: str, header: str) -> None:
    """Raise :class:`Reject` (400) if an ETag in *value* names a malformed rev.

    Items are ``*``, ``"<key>/<rev>"``, ``"<rev>"``, optionally ``W/``-prefixed
    (the quotes may be left out). An ETag is opaque to a client: one without
    any digit in its rev part is merely not this server's and matches
    nothing; one with digits must name a rev this server could have.
    """
    for raw in value.split(","):
        item = raw.strip()
        if item.startswith("W/"):
            item = item[2:]
        if len(item) >= 2 and item[0] == item[-1] == '"':
            item = item[1:-1]
        rev = item.rpartition("/")[2]
        if any(c.isdigit() for c in rev):
            parse_rev(rev, f"the rev of each ETag in {header}")


def _long_digit_run(data: bytes) -> bool:
    """Whether *data* has 19 ASCII digits in a row (a number orjson may not keep exact)."""
    return _DIGIT_RUN in data.translate(_DIGIT_MAP)


def _more_items_than(data: bytes, limit: int) -> bool:
    """Whether JSON *data* holds more than *limit* strings and commas outside strings.

    Every object member has a key, every value after the first of an object
    or array a comma before it: the count follows the work of decoding and
    merging. It is made at C speed, never item by item: an upper bound
    first (a string has two quotes); past it, with escaped backslashes and
    quotes taken out, the quotes left delimit the strings (in valid JSON;
    anything else fails to decode next), and the commas between them are
    counted only once there are at most *limit* strings.
    """
    if data.count(b'"') // 2 + data.count(b",") <= limit:
        return False
    bare = data.replace(b"\\\\", b"").replace(b'\\"', b"") if b"\\" in data else data
    strings = bare.count(b'"') // 2
    if strings > limit:
        return True
    outside = bare.split(b'"')[::2]
    return strings + sum(part.count(b",") for part in outside) > limit


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether *value* nests more than *limit* objects and arrays (no recursion)."""
    if not isinstance(value, dict | list):
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def decode_json(
    text: bytes | str, *, max_depth: int, max_items: int, what: str = "JSON body"
) -> Any:
    """Decode JSON *text*, raising :class:`Reject` (400) for anything the server cannot keep.

    orjson decodes it first and refuses malformed text, ``NaN``, a byte
    order mark and lone surrogates (anywhere, keys included); nesting deeper
    than *max_depth* objects and arrays is refused next. Only then are texts
    with integers beyond 64 bits decoded again by the stdlib decoder, which
    keeps them exact, and which so never sees a text it could recurse on
    too deeply or strings orjson refused. Before any of that, a text of more
    than *max_items* items (see :func:`_more_items_than`) is refused with 413.
    """
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    if not data.strip():
        raise Reject(400, f"expected a {what}, got an empty body")
    if _more_items_than(data, max_items):
        raise Reject(
            413,
            f"the {what} holds more than {max_items} JSON items "
            "(strings, keys included, and commas between values)",
        )
    too_deep = f"the {what} is nested more than {max_depth} levels deep"
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        reason = str(exc)
        if "depth limit" in reason:
            raise Reject(400, too_deep) from None
        if "surrogate" in reason:
            reason += " (a lone surrogate cannot be encoded as UTF-8)"
        raise Reject(400, f"malformed {what}: {reason}") from None
    if _deeper_than(value, max_depth):
        raise Reject(400, too_deep)
    if _long_digit_run(data):
        value = json.loads(data.decode("utf-8"))
    return value
