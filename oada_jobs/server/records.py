"""The values the store keeps and the codec of its rows.

:class:`Resource` is a cached document, :class:`ChangeRecord` the change
a write made to one resource at one rev, :class:`Batch` everything one
request changed. :func:`loads` decodes what the store wrote,
:func:`replay` applies a recorded change to a document again, and
:func:`pointer`/:func:`unpointer` turn key paths into JSON pointers and
back (through :mod:`oada_jobs._pointer`).

Owns these values and their encoding; must not touch SQLite or a cache,
nor import the framework, the client or a transport.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import orjson

from oada_jobs import _pointer
from oada_jobs.server.documents import array_index, merge
from oada_jobs.server.keyed import KeyedDoc

__all__ = [
    "ENTRY_BYTES",
    "Batch",
    "ChangeRecord",
    "Path",
    "Resource",
    "escape_key",
    "loads",
    "pointer",
    "replay",
    "unpointer",
]

#: A key path inside a document, as a tuple of unescaped keys.
Path = tuple[str, ...]

#: What a cached entry weighs beyond its encoded size: the Python objects of
#: the entry itself (key, record or resource, the cache's own slot). Small
#: documents take more still (a 600-byte job about 3.8 KiB parsed); the count
#: limit ``document_cache_size`` bounds those.
ENTRY_BYTES = 512


# Every digit to "0", everything else to " ": a run of 19 zeros is a number
# orjson might not keep exact.
_DIGITS = bytes(48 if 48 <= i <= 57 else 32 for i in range(256))


def loads(data: bytes) -> tuple[Any, bool]:
    """Decode JSON the store wrote, and whether orjson did.

    Through orjson where it gives the stdlib's value; numbers of 19 digits
    or more, and the lone surrogates the stdlib encoder wrote, go to the
    stdlib decoder.
    """
    if b"0" * 19 not in data.translate(_DIGITS):
        try:
            return orjson.loads(data), True
        except orjson.JSONDecodeError:
            pass
    return json.loads(data), False


# JSON pointers are built and split in one place, shared with the client and framework.
escape_key = _pointer.escape
pointer = _pointer.join


def unpointer(text: str) -> Path:
    """Inverse of :func:`pointer`."""
    return _pointer.split(text)


def replay(doc: dict[str, Any], body: dict[str, Any], kind: str) -> None:
    """Apply a recorded change body to *doc* again (loading a document).

    A ``merge`` body is deep-merged; in a ``delete`` body a ``null`` marks
    the removed key (a key delete records nothing else as ``null``).
    """
    if kind != "delete":
        merge(doc, body)
    else:
        _replay_delete(doc, body)


def _replay_delete(node: dict[str, Any] | list[Any], body: dict[str, Any]) -> None:
    """Apply a key delete's body: the path to the removed key, plus ``_rev`` and ``_meta``.

    A key delete finds its key through array elements too (``a/0/b``); its
    body then names the element by index, and so the index is followed here.
    """
    if isinstance(node, list):
        for key, value in body.items():
            index = array_index(key, len(node))
            if index is not None and isinstance(value, dict):
                element = node[index]
                if isinstance(element, dict | list):
                    _replay_delete(element, value)
        return
    for key, value in body.items():
        if value is None:
            node.pop(key, None)
        elif isinstance(value, dict) and isinstance(node.get(key), dict | list):
            _replay_delete(node[key], value)
        else:
            node[key] = value


@dataclass(slots=True)
class Resource:
    """One cached resource.

    ``doc`` is the stored document including ``_id``, ``_rev``, ``_type`` and
    the full ``_meta``; ``data`` the bytes of a binary resource.
    ``root_json`` caches the serialised root body of a GET (``_meta`` reduced
    to a link) until the next write.
    """

    id: str
    doc: dict[str, Any]
    data: bytes | None = None
    root_json: bytes | None = None
    #: Size of the stored snapshot (0: none yet) and of the change bodies
    #: written after it, which decide when the snapshot is rewritten.
    snap_bytes: int = 0
    pending_bytes: int = 0
    #: The rev this resource was created at (0: not known yet). Earlier revs
    #: of its id belong to a deleted resource, whose history is not its own.
    first_rev: int = 0

    @property
    def rev(self) -> int:
        rev = self.doc.get("_rev")
        return rev if isinstance(rev, int) else 0

    @property
    def type(self) -> str | None:
        value = self.doc.get("_type")
        return value if isinstance(value, str) else None

    @property
    def meta(self) -> dict[str, Any]:
        meta = self.doc.get("_meta")
        return meta if isinstance(meta, dict) else {}

    def whole(self) -> dict[str, Any]:
        """The whole document as a new dict (its values shared), keyed members included."""
        doc = self.doc
        return doc.whole() if isinstance(doc, KeyedDoc) else dict(doc)


@dataclass(slots=True)
class ChangeRecord:
    """The change a write made to one resource at one rev.

    ``body`` is the write as applied (``None`` for a whole-resource delete);
    ``children`` points at the child changes that caused a rev-graph bump, as
    ``(path, child_id, child_rev)`` with *path* a JSON pointer.
    """

    resource_id: str
    rev: int
    type: str
    body: dict[str, Any] | None
    children: list[tuple[str, str, int]] = field(default_factory=list)


@dataclass(slots=True)
class Batch:
    """Everything one request changed, committed together."""

    #: Resources whose document (or data) must be written.
    saved: dict[str, Resource] = field(default_factory=dict)
    #: Resources to delete (rows only; their changes stay).
    deleted: set[str] = field(default_factory=set)
    #: New change records, in the order they were made.
    changes: list[ChangeRecord] = field(default_factory=list)
    #: Edges to upsert: ``(parent, path, child, versioned)``.
    edges_set: list[tuple[str, Path, str, bool]] = field(default_factory=list)
    #: Edges to remove: ``(parent, path)``.
    edges_removed: list[tuple[str, Path]] = field(default_factory=list)
    #: Resources whose outgoing edges are all removed.
    edges_cleared: set[str] = field(default_factory=set)
    #: Binary payloads to store (``None`` keeps whatever is there).
    data: dict[str, bytes] = field(default_factory=dict)

    def touched(self) -> set[str]:
        """Ids of every resource this batch changes."""
        ids = set(self.saved) | self.deleted | self.edges_cleared
        ids.update(p for p, *_ in self.edges_set)
        ids.update(p for p, _ in self.edges_removed)
        ids.update(c.resource_id for c in self.changes)
        return ids
