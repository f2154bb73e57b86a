"""Writing documents' rows: snapshots of the small ones, a row per member of the large.

A document is not re-serialised on every write: :meth:`Snapshots.write`
rewrites its snapshot only once the change bodies written since outweigh
it and pass the slack, and otherwise counts them against it (the change
rows are the document's write-ahead log). A large document with many
members is stored keyed from then on: its head in ``resources``, a row per
member in ``members`` (see :mod:`oada_jobs.server.keyed`), each written
only when changed.

Owns the ``resources`` and ``members`` rows of a commit; must not decide
what a commit holds, nor import the framework, the client or a transport.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from typing import Any

from oada_jobs.server.cache import SizedLRU
from oada_jobs.server.doc_cache import ColdDocument
from oada_jobs.server.documents import dumpb
from oada_jobs.server.keyed import KeyedDoc, is_member
from oada_jobs.server.links import execute_rows
from oada_jobs.server.records import Resource, loads

__all__ = ["KEYED_BYTES", "KEYED_MEMBERS", "Snapshots"]

#: A document is stored keyed (a row per top-level member, see
#: :mod:`oada_jobs.server.keyed`) once its snapshot is due to be rewritten at
#: this many bytes or more with at least :data:`KEYED_MEMBERS` members. Below
#: it, rewriting the whole snapshot now and then costs less than a row per
#: member; above it, the rewrite (and, evicted, the reload) of a long list
#: grows with the list and blocks the event loop: 60 ms at 100,000 links.
KEYED_BYTES = 64 * 1024
KEYED_MEMBERS = 256


def _dumps(value: Any) -> bytes:
    return dumpb(value)


class Snapshots:
    """Writes the rows of the documents a commit changed.

    :param slack: Change bytes any document may have after its snapshot
        before the snapshot is rewritten (a larger document may have as many
        as its own size).
    :param keyed: The in-memory side of a keyed document, from its id and head.
    """

    def __init__(self, *, slack: int, keyed: Callable[[str, dict[str, Any]], KeyedDoc]) -> None:
        self.slack = slack
        self._keyed = keyed

    def write(
        self,
        db: sqlite3.Connection,
        res: Resource,
        members: Iterable[str],
        written: int,
        data: bytes | None,
    ) -> None:
        """Write *res* as it is now: its changed *members* if keyed, else :meth:`_write_doc`."""
        if isinstance(res.doc, KeyedDoc):
            self._write_keyed(db, res, members, data)
        else:
            self._write_doc(db, res, written, data)

    def _write_doc(
        self, db: sqlite3.Connection, res: Resource, written: int, data: bytes | None
    ) -> None:
        """Snapshot *res* (or only count *written* change bytes against its snapshot).

        A large JSON document with many members is made keyed instead (see
        :data:`KEYED_BYTES`). The bookkeeping is updated at once: should the
        transaction fail, the caller discards the resource anyway.
        """
        pending = res.pending_bytes + written
        if res.snap_bytes and pending <= max(res.snap_bytes, self.slack):
            res.pending_bytes = pending
            if data is not None:
                db.execute("UPDATE resources SET data = ? WHERE id = ?", (data, res.id))
            return
        doc = _dumps(res.doc)
        if len(doc) >= KEYED_BYTES and res.data is None and data is None:
            keys = [k for k in res.doc if is_member(k)]
            if len(keys) >= KEYED_MEMBERS:
                self._make_keyed(db, res, keys)
                return
        res.snap_bytes, res.pending_bytes = len(doc), 0
        if data is not None:
            db.execute(
                "INSERT INTO resources (id, rev, doc, data) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET rev = excluded.rev,"
                " doc = excluded.doc, data = excluded.data",
                (res.id, res.rev, doc, data),
            )
        else:
            db.execute(
                "INSERT INTO resources (id, rev, doc) VALUES (?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET rev = excluded.rev, doc = excluded.doc",
                (res.id, res.rev, doc),
            )

    def flush(self, db: sqlite3.Connection, docs: SizedLRU[str, Resource | ColdDocument]) -> None:
        """Snapshot every document with more than the slack logged since (faster reopen).

        Those are large documents only: a small one is reloaded from its few
        changes in well under a millisecond, and there may be very many.
        """
        slack = self.slack
        stale: list[tuple[int, bytes, str]] = []
        for rid in docs:
            cached = docs.peek(rid)
            if isinstance(cached, Resource):
                if cached.pending_bytes > slack and not isinstance(cached.doc, KeyedDoc):
                    stale.append((cached.rev, _dumps(cached.doc), rid))
            elif cached is not None and cached[3] > slack:
                doc = loads(cached[0])[0]
                stale.append((doc.get("_rev", 0), cached[0], rid))
        if not stale:
            return
        db.execute("BEGIN")
        try:
            db.executemany("UPDATE resources SET rev = ?, doc = ? WHERE id = ?", stale)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _make_keyed(self, db: sqlite3.Connection, res: Resource, keys: list[str]) -> None:
        """Store *res* keyed from now on: a row per member, its head in its own row."""
        doc = res.doc
        db.execute("DELETE FROM members WHERE resource_id = ?", (res.id,))
        db.executemany(
            "INSERT INTO members (resource_id, key, value) VALUES (?, ?, ?)",
            [(res.id, k, _dumps(doc[k])) for k in keys],
        )
        keyed = self._keyed(res.id, {k: v for k, v in doc.items() if not is_member(k)})
        for k in keys:
            # In memory (with their links) until the next trim.
            dict.__setitem__(keyed, k, doc[k])
        res.doc = keyed
        _write_head(db, res)

    @staticmethod
    def _write_keyed(
        db: sqlite3.Connection, res: Resource, keys: Iterable[str], data: bytes | None
    ) -> None:
        """Write the head of keyed *res* and the members named by *keys* as they are now."""
        doc = res.doc
        assert isinstance(doc, KeyedDoc)
        upserts = []
        deletes = []
        for key in keys:
            present, value = doc.state(key)
            if present:
                upserts.append((res.id, key, _dumps(value)))
            elif doc.resident(key):
                deletes.append((res.id, key))
        execute_rows(db, "DELETE FROM members WHERE resource_id = ? AND key = ?", deletes)
        execute_rows(
            db,
            "INSERT INTO members (resource_id, key, value) VALUES (?, ?, ?)"
            " ON CONFLICT (resource_id, key) DO UPDATE SET value = excluded.value",
            upserts,
        )
        _write_head(db, res)
        if data is not None:
            db.execute("UPDATE resources SET data = ? WHERE id = ?", (data, res.id))


def _write_head(db: sqlite3.Connection, res: Resource) -> None:
    doc = res.doc
    assert isinstance(doc, KeyedDoc)
    head = _dumps(doc.head())
    res.snap_bytes, res.pending_bytes = len(head), 0
    db.execute(
        "INSERT INTO resources (id, rev, doc) VALUES (?, ?, ?)"
        " ON CONFLICT (id) DO UPDATE SET rev = excluded.rev, doc = excluded.doc",
        (res.id, res.rev, head),
    )
