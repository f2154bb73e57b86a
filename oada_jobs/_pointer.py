"""JSON pointers (RFC 6901): the one place their text is built, split and followed.

A pointer is ``""`` (the whole document) or ``/`` followed by segments
joined with ``/``, each with ``~`` written ``~0`` and ``/`` written ``~1``.
A segment indexes an array only when it is an array index as the RFC
spells one: ``0``, or ASCII digits without a leading zero (``01``, ``-1``,
``+1`` and non-ASCII digits such as ``²`` name no element).

Owns escaping, :func:`join` / :func:`split`, :func:`array_index` and
:func:`resolve`. Imports nothing from the package, so the client, the
server and the framework may all use it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["array_index", "escape", "join", "resolve", "split", "unescape"]

# ASCII digits only: re's [0-9] matches no other script's digits.
_INDEX = re.compile(r"0|[1-9][0-9]*")


def escape(key: str) -> str:
    """One key as a pointer segment: ``~`` → ``~0``, ``/`` → ``~1``."""
    if "~" in key or "/" in key:
        return key.replace("~", "~0").replace("/", "~1")
    return key


def unescape(segment: str) -> str:
    """The key a pointer segment names (the inverse of :func:`escape`)."""
    if "~" in segment:
        return segment.replace("~1", "/").replace("~0", "~")
    return segment


def join(path: Iterable[str]) -> str:
    """The pointer of the keys *path*: ``("a", "b/c")`` → ``"/a/b~1c"``; ``()`` → ``""``."""
    return "".join("/" + escape(key) for key in path)


def split(pointer: str) -> tuple[str, ...]:
    """The keys of *pointer* (the inverse of :func:`join`).

    Raises :class:`ValueError` for text that is neither ``""`` nor starts with ``/``.
    """
    if not pointer:
        return ()
    if not pointer.startswith("/"):
        raise ValueError(f"expected a JSON pointer starting with '/', got {pointer!r}")
    return tuple(unescape(segment) for segment in pointer[1:].split("/"))


def array_index(segment: str, length: int) -> int | None:
    """The element of an array of *length* that *segment* names, or ``None``."""
    # Longer than any index below *length* is none (and a segment of
    # thousands of digits never reaches int(), which refuses those).
    if len(segment) > len(str(length)) or _INDEX.fullmatch(segment) is None:
        return None
    index = int(segment)
    return index if index < length else None


def resolve(data: object, pointer: str) -> tuple[bool, Any]:
    """Follow *pointer* into *data*: ``(True, value)``, or ``(False, None)`` when
    it names nothing there. Raises :class:`ValueError` only for text that is
    not a pointer (see :func:`split`)."""
    node = data
    for key in split(pointer):
        if isinstance(node, Mapping) and key in node:
            node = node[key]
        elif isinstance(node, list) and (index := array_index(key, len(node))) is not None:
            node = node[index]
        else:
            return False, None
    return True, node
