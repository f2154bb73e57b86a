"""JSON document helpers of the embedded OADA server: encoding, merging, lookup.

Pure functions on decoded JSON, shared by the read and write paths. Decoding
request bodies is the validation edge's (:mod:`oada_jobs.server.edge`).

Owns these JSON helpers (paths through documents follow
:mod:`oada_jobs._pointer`); must not import the framework or the client.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import orjson

from oada_jobs._pointer import array_index

__all__ = [
    "MISSING",
    "ChangeArray",
    "array_index",
    "copy_json",
    "dumpb",
    "dumpb_kept",
    "dumps",
    "is_json_type",
    "is_link_position",
    "lookup",
    "merge",
    "nest",
]


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


#: Returned by :func:`lookup` when nothing is at the path.
MISSING: Any = _Missing()


class ChangeArray(list[dict[str, Any]]):
    """A committed change array, encoded at most once however many times it is sent.

    Every socket watching a resource is sent its change: encoded once per
    socket, a large change held the event loop that many times over.
    Never changed once made (its text would then be stale).
    """

    __slots__ = ("_text",)

    def text(self) -> str:
        """The array as compact JSON text (:func:`dumps`), encoded on first use."""
        try:
            return self._text
        except AttributeError:
            self._text: str = dumps(self)
            return self._text


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


def dumpb_kept(value: Any) -> bytes:
    """:func:`dumpb`, in a buffer of its own length: for bytes kept in memory (caches).

    orjson's result keeps the larger buffer it was written into: held by the
    thousands, a job's change of 200 bytes took 4 KiB of memory each.
    """
    return memoryview(dumpb(value)).tobytes()


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
        elif isinstance(node, list) and (index := array_index(key, len(node))) is not None:
            node = node[index]
        else:
            return MISSING
    return node
