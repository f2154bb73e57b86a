"""JSON document helpers of the embedded OADA server: parsing, merging, lookup.

Pure functions on decoded JSON, shared by the read and write paths.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import orjson

__all__ = [
    "MISSING",
    "BadDocument",
    "copy_json",
    "dumpb",
    "dumps",
    "is_json_type",
    "is_link_position",
    "loads",
    "lookup",
    "merge",
    "nest",
    "parse_json",
]


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


#: Returned by :func:`lookup` when nothing is at the path.
MISSING: Any = _Missing()


class BadDocument(ValueError):
    """A request body is not acceptable JSON; the message says why."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    # orjson refuses numbers too large for a double (1e400); so does this.
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text} is out of range")
    return value


_stdlib_decode = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float).decode
# orjson turns integers beyond 64 bits (below -2**63, above 2**64 - 1) into
# floats; texts with a run of 19 digits go to the exact (slower) stdlib
# decoder instead. The run is found by mapping every digit to "0" and
# everything else to " " (bytes.translate), then a substring search: a
# regular expression for it took four times as long as orjson's decoding.
_DIGIT_MAP = bytes(48 if 48 <= i <= 57 else 32 for i in range(256))
_DIGIT_RUN = b"0" * 19


def _long_digit_run(text: str | bytes) -> bool:
    """Whether *text* has 19 ASCII digits in a row (a number orjson may not keep exact)."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    return _DIGIT_RUN in data.translate(_DIGIT_MAP)


def parse_json(body: bytes) -> Any:
    """Decode a JSON request body (UTF-8), raising :class:`BadDocument` with the reason."""
    if not body.strip():
        raise BadDocument("expected a JSON body, got an empty body")
    try:
        if not _long_digit_run(body):
            return orjson.loads(body)
        return _stdlib_decode(body.decode("utf-8"))
    except RecursionError:
        raise BadDocument("the JSON body is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        if "depth limit" in str(exc):
            raise BadDocument("the JSON body is nested too deeply") from None
        raise BadDocument(f"malformed JSON body: {exc}") from None


def loads(text: str | bytes) -> tuple[Any, bool]:
    """``json.loads(text)``, through orjson when that gives the same value.

    Returns the value and whether orjson decoded it: its values hold only
    finite floats, 64-bit integers and valid UTF-8 strings, so
    :func:`orjson.dumps` can encode them again. Anything orjson refuses
    (``NaN``, lone surrogates, a byte-order mark...) or might change (long
    numbers) gets exactly the stdlib's answer, value or exception.
    """
    if not _long_digit_run(text):
        try:
            return orjson.loads(text), True
        except orjson.JSONDecodeError:
            pass
    return json.loads(text), False


_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
_encode_text = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def dumps(value: Any) -> str:
    """Compact JSON text of *value*, non-ASCII kept as is.

    The same JSON as ``json.dumps(value, separators=(",", ":"),
    ensure_ascii=False)`` for values without NaN or infinities (which
    orjson would write as ``null``; the server never holds them).
    """
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        # Integers beyond 64 bits and lone surrogates.
        return _encode_text(value)


def dumpb(value: Any) -> bytes:
    """Compact JSON bytes of *value*."""
    try:
        return orjson.dumps(value)
    except TypeError:
        # Integers beyond 64 bits and lone surrogates, which the stdlib
        # encoder handles (the decoder accepted them).
        return _encode(value).encode()


def copy_json(value: Any) -> Any:
    """A deep copy of decoded JSON (faster than :func:`copy.deepcopy`)."""
    try:
        return orjson.loads(orjson.dumps(value))
    except TypeError:
        return json.loads(_encode(value))


def is_json_type(media_type: str) -> bool:
    """Whether a (parameter-free, lower-case) media type holds JSON."""
    return media_type in ("application/json", "text/json") or media_type.endswith("+json")


def is_link_position(path: Sequence[str]) -> bool:
    """Whether an object with ``_id`` at *path* counts as a link.

    Everywhere except the document root, ``_meta`` itself and the objects
    directly in the top-level ``_meta`` (``_meta/_changes`` …); links deeper
    under ``_meta`` (``_meta/watchPersists/<name>``) are real links.
    """
    n = len(path)
    if n == 0:
        return False
    return not (path[0] == "_meta" and n <= 2)


def nest(path: Sequence[str], value: Any) -> Any:
    """``nest(("a", "b"), v)`` → ``{"a": {"b": v}}``; ``nest((), v)`` → *v*."""
    for key in reversed(path):
        value = {key: value}
    return value


def merge(target: dict[str, Any], fragment: dict[str, Any]) -> None:
    """Deep-merge *fragment* into *target* in place: objects merge, the rest replaces.

    Subtrees of *fragment* are inserted without copying; pass a fragment
    nobody else holds.
    """
    for key, value in fragment.items():
        if isinstance(value, dict):
            current = target.get(key)
            if isinstance(current, dict):
                merge(current, value)
                continue
        target[key] = value


def lookup(doc: Any, path: Sequence[str]) -> Any:
    """The value at *path* inside *doc* (array indices allowed), or :data:`MISSING`."""
    node = doc
    for key in path:
        if isinstance(node, dict):
            if key not in node:
                return MISSING
            node = node[key]
        elif isinstance(node, list) and key.isascii() and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            return MISSING
    return node
