"""The change records of the store: written with each commit, cached, read back as history.

:class:`ChangeLog` writes the ``changes`` rows of a commit, keeps the
recent ones in a byte-bounded cache as the bytes they are stored as (no
work for the garbage collector), and answers the history queries: one
record, a page of records, the revs of a resource, the rev it was
(re-)created at.

A cached record is one ``bytes`` under one ``str`` key, not tuples: the
collector tracks a new tuple until a young collection goes through it,
which is rare once the cache churns at its budget, and in a busy server
these tuples (a key and a record per change) were 39,000 of the 57,000
objects a full collection went through. JSON text never holds a raw NUL
byte, so NUL separates the parts of a record; a key is the resource id, NUL
and the rev (split at the last NUL).

Owns the ``changes`` rows and their cache; must not touch a document, nor
import the framework, the client or a transport.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from oada_jobs.server.cache import SizedLRU
from oada_jobs.server.links import execute_rows
from oada_jobs.server.records import ENTRY_BYTES, ChangeRecord, loads

__all__ = ["ChangeLog", "ChangeRow", "StoredChange"]

_INSERT_CHANGE = (
    "INSERT OR REPLACE INTO changes (resource_id, rev, type, body, children) VALUES (?, ?, ?, ?, ?)"
)

#: A change record as stored and cached: ``(type, body, children)``.
StoredChange = tuple[str, bytes | None, bytes | None]

#: A change row of a commit: ``(resource_id, rev, type, body, children)``.
ChangeRow = tuple[str, int, str, bytes | None, bytes | None]


class ChangeLog:
    """The ``changes`` table and the cache of its recent rows.

    :param db: The store's connection, as it is now.
    :param cache_bytes: The cache's budget (``change_cache_bytes``).
    """

    def __init__(self, db: Callable[[], sqlite3.Connection], cache_bytes: int) -> None:
        self._db = db
        # Change records as stored (JSON bytes), packed (see the module
        # docstring): as objects, the 20,000 records of the default budget
        # were a third of what each full collection went through.
        self._changes = SizedLRU[str, bytes](cache_bytes)

    @property
    def cached(self) -> list[tuple[str, int]]:
        """``(resource_id, rev)`` of the change records in memory, least recently used first."""
        out = []
        for key in self._changes:
            rid, _, rev = key.rpartition("\0")
            out.append((rid, int(rev)))
        return out

    @property
    def bytes(self) -> int:
        """What the cached change records are accounted to weigh."""
        return self._changes.bytes

    def clear(self) -> None:
        self._changes.clear()

    def write(self, db: sqlite3.Connection, rows: list[ChangeRow]) -> None:
        """Write the change rows ``(resource_id, rev, type, body, children)`` of a commit."""
        execute_rows(db, _INSERT_CHANGE, rows)

    def committed(self, rows: list[ChangeRow]) -> None:
        """Cache the rows of a commit that succeeded."""
        changes = self._changes
        for rid, rev, kind, body, children in rows:
            packed = _pack((kind, body, children))
            changes.put(f"{rid}\0{rev}", packed, ENTRY_BYTES + len(packed))
        changes.evict()

    def max_rev(self, resource_id: str) -> int:
        """Highest rev committed for *resource_id* (0 if none)."""
        row = (
            self._db()
            .execute("SELECT MAX(rev) FROM changes WHERE resource_id = ?", (resource_id,))
            .fetchone()
        )
        return int(row[0]) if row and row[0] is not None else 0

    def change(self, resource_id: str, rev: int) -> ChangeRecord | None:
        """The change record of *resource_id* at *rev*, if there is one."""
        key = f"{resource_id}\0{rev}"
        packed = self._changes.get(key)
        if packed is not None:
            return _decode(resource_id, rev, _unpack(packed))
        stored: StoredChange | None = (
            self._db()
            .execute(
                "SELECT type, body, children FROM changes WHERE resource_id = ? AND rev = ?",
                (resource_id, rev),
            )
            .fetchone()
        )
        if stored is None:
            return None
        packed = _pack(stored)
        self._changes.put(key, packed, ENTRY_BYTES + len(packed))
        self._changes.evict()
        return _decode(resource_id, rev, stored)

    def changes_after(self, resource_id: str, after: int, limit: int) -> list[ChangeRecord]:
        """Up to *limit* change records of *resource_id* after rev *after*, oldest first.

        One query for a page of a replay; the records are not kept in the
        change cache (a long replay would push out the recent ones).
        """
        out: list[ChangeRecord] = []
        for rev, kind, body, children in self._db().execute(
            "SELECT rev, type, body, children FROM changes"
            " WHERE resource_id = ? AND rev > ? ORDER BY rev LIMIT ?",
            (resource_id, after, limit),
        ):
            out.append(_decode(resource_id, rev, (kind, body, children)))
        return out

    def created_rev(self, resource_id: str, before: int | None = None) -> int:
        """The rev *resource_id* was created at (committed history).

        The first rev after its id was last deleted as a whole (before rev
        *before*, when given), or 1.
        """
        row = (
            self._db()
            .execute(
                "SELECT MAX(rev) FROM changes"
                " WHERE resource_id = ? AND type = 'delete' AND body IS NULL AND rev < ?",
                (resource_id, before if before is not None else 1 << 62),
            )
            .fetchone()
        )
        return int(row[0]) + 1 if row and row[0] is not None else 1

    def latest_change_revs(self, resource_id: str, limit: int, after: int = 0) -> list[int]:
        """The last *limit* revs with a change record for *resource_id* after *after*, oldest first."""
        revs = [
            r
            for (r,) in self._db().execute(
                "SELECT rev FROM changes WHERE resource_id = ? AND rev > ?"
                " ORDER BY rev DESC LIMIT ?",
                (resource_id, after, limit),
            )
        ]
        revs.reverse()
        return revs

    def change_revs(self, resource_id: str, after: int = 0) -> list[int]:
        """Revs with a change record for *resource_id* greater than *after*."""
        return [
            r
            for (r,) in self._db().execute(
                "SELECT rev FROM changes WHERE resource_id = ? AND rev > ? ORDER BY rev",
                (resource_id, after),
            )
        ]


def _decode(resource_id: str, rev: int, stored: StoredChange) -> ChangeRecord:
    """The change record of a stored (or cached) ``(type, body, children)``."""
    kind, body, children = stored
    return ChangeRecord(
        resource_id,
        rev,
        kind,
        loads(body)[0] if body else None,
        [(p, c, int(r)) for p, c, r in loads(children)[0]] if children else [],
    )


def _pack(stored: StoredChange) -> bytes:
    """*stored* as one cached value: type, body and children, NUL between them.

    A new ``bytes`` of its own length, whatever buffers the parts sit in
    (orjson's output keeps the larger buffer it was written into).
    """
    kind, body, children = stored
    return b"\0".join((kind.encode(), body or b"", children or b""))


def _unpack(packed: bytes) -> StoredChange:
    """The record :func:`_pack` made *packed* from (an empty part: ``None``)."""
    kind, body, children = packed.split(b"\0", 2)
    return kind.decode(), body or None, children or None
