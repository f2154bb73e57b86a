"""SQLite persistence for the embedded OADA server, with a write-through cache.

The SQLite file is the source of truth. Four tables:

``resources``
    One row per live resource: its id, a snapshot of the stored JSON document
    (``_id``, ``_rev``, ``_type``, full ``_meta``) at rev ``rev`` and, for
    binary resources, the raw bytes.
``changes``
    One row per ``(resource_id, rev)``: the change type (``merge`` or
    ``delete``), the change body as applied, and pointers to the child
    changes that caused it through versioned links (``[[path, child_id,
    child_rev], …]``), from which nested change arrays are assembled. Rows
    outlive their resource, so a deleted and re-created id continues its revs;
    the revs before the last whole-resource delete are not the new
    resource's history and are never served as such.
``edges``
    The link graph: ``(parent, JSON-pointer path, child, versioned)``, with
    an index of the versioned ones by child (rev propagation).
``members``
    The top-level members of *keyed* documents, one row each: a document
    whose snapshot is due at :data:`KEYED_BYTES` or more with
    :data:`KEYED_MEMBERS` members or more (a busy service's day list) is
    stored as its head (the ``_``-prefixed keys, in ``resources``, rewritten
    with every write) and these rows, so a write into it costs the same
    whatever its length (see :mod:`oada_jobs.server.keyed`).

The schema has a version (``PRAGMA user_version``, :data:`SCHEMA_VERSION`):
a database written by an older version is migrated, in one transaction,
when it is opened.

Every write of one request (including the rev-graph bumps of its parents) is
one :class:`Batch`, and :meth:`Store.commit` writes a sequence of batches in
one transaction (the core gathers the requests of one event-loop pass). It
returns only after SQLite committed them in WAL mode, and no request is
answered before that, so an acknowledged write survives a process crash.

The change records double as the write-ahead log of the documents: a
document is not re-serialised on every write. Its snapshot is rewritten only
once the change bodies written since outweigh it and pass
:data:`_SNAPSHOT_SLACK`, so the cost of a write stays proportional to the
change, and a document is loaded as its snapshot plus the changes after it.
A job, for one, is snapshotted when it is created and then only logged: its
claim and its result each cost a change row, not a change row and a new
snapshot.

Recent change records and the most recently used documents, with their
links, are kept in memory; reads never touch SQLite while a document stays
cached (of a keyed document, its head and the members used since the last
trim). Nothing is read at start-up: a document's links are loaded with it,
and :meth:`LinkIndex.parents_of` finds the versioned links of documents not in
memory through the index. The core mutates the cached documents in place and then hands the
:class:`Batch` of what changed to :meth:`Store.commit`; if the commit fails,
:meth:`Store.discard` drops the cached state of the touched resources so it is
reloaded from disk. Once nothing uncommitted is cached, :meth:`Store.trim`
drops the least recently used documents beyond the cache's budget, so memory
does not grow with every job ever run.

Both caches are :class:`~oada_jobs.server.cache.SizedLRU` maps bounded in
bytes (``document_cache_bytes``, ``change_cache_bytes``): an entry weighs its
encoded size plus :data:`ENTRY_BYTES`. A document's encoded size is its stored
snapshot, the change bodies logged after it, its binary data and its cached
GET body; it is measured again in :meth:`Store.trim` for every document used
since the last one, so what a request made of a document is accounted before
anything is evicted.

The collector-friendly forms: only the :data:`HOT_DOCUMENTS` documents used
last are cached as objects; the others are cached as their encoded JSON, and
change records always as the bytes they are stored as. A full garbage
collection goes through every tracked object, so a cache of parsed documents
made each one block the event loop for hundreds of milliseconds.

Its parts: the values and their codec (:mod:`oada_jobs.server.records`),
the documents in memory (:mod:`oada_jobs.server.doc_cache`), their links
(:mod:`oada_jobs.server.links`), the change records
(:mod:`oada_jobs.server.changelog`) and the rows of documents
(:mod:`oada_jobs.server.snapshots`). :class:`Store` opens and closes the
database, loads documents and commits batches through them.

Owns the SQLite store and its cache (pointers are built by
:mod:`oada_jobs._pointer`); must not import the framework, the client or a
transport.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from oada_jobs.server.cache import SizedLRU
from oada_jobs.server.changelog import ChangeLog, ChangeRow
from oada_jobs.server.dblock import DatabaseLock
from oada_jobs.server.doc_cache import ColdDocument, DocumentCache
from oada_jobs.server.documents import dumpb
from oada_jobs.server.keyed import KeyedDoc, is_member
from oada_jobs.server.links import ALL_LINKS, HEAD_LINKS, LinkIndex, member_links
from oada_jobs.server.records import (
    ENTRY_BYTES,
    Batch,
    ChangeRecord,
    Path,
    Resource,
    loads,
    pointer,
    replay,
    unpointer,
)
from oada_jobs.server.snapshots import KEYED_BYTES, KEYED_MEMBERS, Snapshots

__all__ = [
    "ENTRY_BYTES",
    "HOT_DOCUMENTS",
    "KEYED_BYTES",
    "KEYED_MEMBERS",
    "Batch",
    "ChangeRecord",
    "Path",
    "Resource",
    "Store",
    "pointer",
    "replay",
    "unpointer",
]

_CHANGES_TABLE = """
CREATE TABLE IF NOT EXISTS changes (
    resource_id TEXT NOT NULL,
    rev INTEGER NOT NULL,
    type TEXT NOT NULL,
    body BLOB,
    children BLOB,
    PRIMARY KEY (resource_id, rev)
)"""
_SCHEMA = f"""
{_CHANGES_TABLE};
CREATE TABLE IF NOT EXISTS resources (
    id TEXT PRIMARY KEY,
    rev INTEGER NOT NULL,
    doc BLOB NOT NULL,
    data BLOB
);
CREATE TABLE IF NOT EXISTS edges (
    parent TEXT NOT NULL,
    path TEXT NOT NULL,
    child TEXT NOT NULL,
    versioned INTEGER NOT NULL,
    PRIMARY KEY (parent, path)
) WITHOUT ROWID;
DROP INDEX IF EXISTS edges_child;
CREATE INDEX IF NOT EXISTS edges_versioned_child ON edges (child) WHERE versioned = 1;
CREATE TABLE IF NOT EXISTS members (
    resource_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (resource_id, key)
) WITHOUT ROWID;
"""

#: ``PRAGMA user_version`` of the schema above. Version 1: ``changes`` is a
#: rowid table. It was ``WITHOUT ROWID`` before, which keeps each whole row
#: (change bodies of up to megabytes) in the key's B-tree: once a list had
#: been filled by large writes, inserting a small change beside those rows
#: took 0.6-0.9 ms instead of 0.02 ms.
SCHEMA_VERSION = 1
_CHANGES_COLUMNS = "resource_id, rev, type, body, children"

#: Bytes of ids known not to exist that are remembered (beyond it they are
#: forgotten; an id is as long as a request path allows).
_MISSING_CACHE_BYTES = 4 * 1024 * 1024
#: WAL pages after which a commit checkpoints by itself: a backstop only;
#: normally :meth:`Store.checkpoint` runs in a worker thread long before.
_WAL_BACKSTOP_PAGES = 20_000
#: Change bytes any document may have after its snapshot before the snapshot
#: is rewritten (a larger document may have as many as its own size). Loading a
#: document with that much to replay (87 small changes) took 1.5 ms, a job
#: with two changes 0.09 ms (0.04 ms from a snapshot alone).
_SNAPSHOT_SLACK = 16 * 1024
#: Cached documents kept as objects: those used last (in-flight jobs, the
#: lists and their parents). The others in the cache are kept encoded and
#: decoded again when used (a job document in 10 µs, against 40 µs or more
#: from SQLite).
HOT_DOCUMENTS = 2_000


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a database written by an older version to :data:`SCHEMA_VERSION`, in one transaction.

    Runs once per database; a crash part-way leaves it as it was.
    """
    (version,) = db.execute("PRAGMA user_version").fetchone()
    if version >= SCHEMA_VERSION:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        (sql,) = db.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'changes'"
        ).fetchone()
        if "WITHOUT ROWID" in sql.upper():
            db.execute("ALTER TABLE changes RENAME TO changes_before_v1")
            db.execute(_CHANGES_TABLE)
            db.execute(
                f"INSERT INTO changes ({_CHANGES_COLUMNS})"
                f" SELECT {_CHANGES_COLUMNS} FROM changes_before_v1 ORDER BY resource_id, rev"
            )
            db.execute("DROP TABLE changes_before_v1")
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


class Store:
    """The SQLite store plus its in-memory caches.

    Not thread-safe: it lives on the event loop thread, and the core never
    awaits between reading a document and committing its new state.
    """

    def __init__(
        self,
        path: str,
        *,
        document_cache_size: int,
        document_cache_bytes: int,
        change_cache_bytes: int,
    ) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        #: The links of the documents in memory (and the ``edges`` rows).
        self.edges = LinkIndex(self._connection, self._links_loaded)
        #: parent → {path → (child, versioned)}: see :class:`LinkIndex`.
        self.links = self.edges.links
        self._cache = DocumentCache(
            max_bytes=document_cache_bytes,
            max_entries=document_cache_size,
            hot=HOT_DOCUMENTS,
            missing_bytes=_MISSING_CACHE_BYTES,
            drop_links=self.edges.drop,
        )
        #: The change records (and their cache).
        self.log = ChangeLog(self._connection, change_cache_bytes)
        self._snapshots = Snapshots(slack=_SNAPSHOT_SLACK, keyed=self._keyed)
        # Held while the file is open: one server per database file.
        self._lock = DatabaseLock(path) if path != ":memory:" else None
        #: Commits since the last :meth:`checkpoint` was started (0: nothing to do).
        self.commits_since_checkpoint = 0
        # The checkpoint's own connection, used only by the checkpointing thread.
        self._checkpoint_db: sqlite3.Connection | None = None

    # -- life cycle -------------------------------------------------------

    def open(self) -> None:
        """Open (creating if needed) the database; nothing is loaded until it is used.

        Raises :class:`~oada_jobs.exceptions.DatabaseLocked` while another
        store (in any process) has the same file open.
        """
        if self._lock is not None:
            self._lock.acquire()
        try:
            self._open()
        except BaseException:
            if self._db is not None:
                self._db.close()
                self._db = None
            if self._lock is not None:
                self._lock.release()
            raise

    def _open(self) -> None:
        db = self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        if self.path != ":memory:":
            db.execute("PRAGMA journal_mode=WAL")
            # Checkpoints (copying the WAL into the database file and syncing
            # it) run in a worker thread, see checkpoint(). Inside a commit on
            # the event loop they blocked every request for up to 30 ms every
            # few hundred writes: a tenth of the server's time under load.
            db.execute(f"PRAGMA wal_autocheckpoint={_WAL_BACKSTOP_PAGES}")
        # NORMAL in WAL mode: a committed transaction survives a process
        # crash; only an OS crash or power loss may drop the last commits.
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        _migrate(db)
        # Nothing is read at start-up: documents and their links are loaded
        # when first used, so opening costs the same whatever the database holds.

    @property
    def checkpoints(self) -> bool:
        """Whether :meth:`checkpoint` has anything to do (a database file, not memory)."""
        return self.path != ":memory:"

    def checkpoint(self) -> None:
        """Copy committed WAL pages into the database file; call it from a worker thread.

        A passive checkpoint on a connection of its own: it never blocks the
        event loop's writes (they go on appending to the WAL meanwhile), and
        SQLite releases the GIL while it copies and syncs.
        """
        if not self.checkpoints:
            return
        db = self._checkpoint_db
        if db is None:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._checkpoint_db = db
        db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        """Write pending snapshots and close the database; the caches are dropped.

        Call it only when no :meth:`checkpoint` is running.
        """
        try:
            if self._checkpoint_db is not None:
                self._checkpoint_db.close()
                self._checkpoint_db = None
            if self._db is not None:
                try:
                    self._snapshots.flush(self.db, self._cache.docs)
                finally:
                    self._db.close()
                    self._db = None
        finally:
            if self._lock is not None:
                self._lock.release()
        self._cache.clear()
        self.edges.clear()
        self.log.clear()

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the store is not open")
        return self._db

    def _connection(self) -> sqlite3.Connection:
        return self.db

    # -- reads --------------------------------------------------------------

    def get(self, resource_id: str) -> Resource | None:
        """The cached resource, loading it from SQLite if it is not cached."""
        cache = self._cache
        cached = cache.get(resource_id)
        if cached is not None:
            return cached
        if resource_id in cache.missing:
            return None
        db = self.db
        row = db.execute(
            "SELECT rev, doc, data FROM resources WHERE id = ?", (resource_id,)
        ).fetchone()
        if row is None:
            cache.note_missing(resource_id, 0)
            return None
        snap_rev, snapshot, data = row
        doc: dict[str, Any] = json.loads(snapshot)
        pending = 0
        keyed = db.execute(
            "SELECT EXISTS (SELECT 1 FROM members WHERE resource_id = ?)", (resource_id,)
        ).fetchone()[0]
        if keyed:
            # Its head row is rewritten with every write: nothing to replay.
            doc = self._keyed(resource_id, doc)
            self.edges.load(resource_id, HEAD_LINKS)
        else:
            # Changes after the snapshot: the document's write-ahead log.
            for kind, body in db.execute(
                "SELECT type, body FROM changes WHERE resource_id = ? AND rev > ? ORDER BY rev",
                (resource_id, snap_rev),
            ):
                if body is None:
                    continue
                pending += len(body)
                replay(doc, json.loads(body), kind)
            self.edges.load(resource_id, ALL_LINKS)
        meta = doc.get("_meta")
        if isinstance(meta, dict):
            meta["_changes"] = {"_id": f"{resource_id}/_meta/_changes", "_rev": doc.get("_rev")}
        res = Resource(resource_id, doc, data, snap_bytes=len(snapshot), pending_bytes=pending)
        cache.loaded(res)
        return res

    @property
    def _docs(self) -> SizedLRU[str, Resource | ColdDocument]:
        """The cached documents themselves (see :class:`DocumentCache`)."""
        return self._cache.docs

    @property
    def cached(self) -> list[str]:
        """Ids of the documents in memory, least recently used first."""
        return list(self._cache)

    @property
    def cached_changes(self) -> list[tuple[str, int]]:
        """``(resource_id, rev)`` of the change records in memory, least recently used first."""
        return self.log.cached

    @property
    def document_bytes(self) -> int:
        """What the cached documents are accounted to weigh (see the module docstring)."""
        return self._cache.bytes

    @property
    def change_bytes(self) -> int:
        """What the cached change records are accounted to weigh."""
        return self.log.bytes

    def trim(self) -> None:
        """Drop documents until the cache is within its budget (see :meth:`DocumentCache.trim`).

        Call it only when no uncommitted change is cached (no batch is
        staged): a dropped document is reloaded from SQLite as last committed.
        """
        self._cache.trim()

    def _links_loaded(self, parent: str, path: Path) -> bool:
        return self._cache.links_loaded(parent, path)

    def max_change_rev(self, resource_id: str) -> int:
        """Highest rev ever recorded for *resource_id* (0 if none), staged deletes included."""
        committed = self.log.max_rev(resource_id)
        return max(committed, self._cache.missing.get(resource_id, 0))

    # -- writes -------------------------------------------------------------

    def put_cached(self, res: Resource) -> None:
        """Make a newly created resource visible before its batch commits."""
        self._cache.put_new(res)

    def delete_cached(self, resource_id: str, rev: int) -> None:
        """Hide a resource whose delete (at *rev*) is staged (its links are cleared already)."""
        self._cache.hide(resource_id, rev)

    def commit(self, batches: Sequence[Batch]) -> None:
        """Write *batches* in one transaction; returns after it is committed.

        Every change record is written; links and documents are written as
        they are in memory now, once each however many batches touched them.
        One transaction for several requests' batches also writes each page
        they share (a list's row, its parents' rows) to the WAL only once.
        """
        db = self.db
        c = _collect(batches)
        db.execute("BEGIN")
        try:
            self.edges.write(db, c.cleared, c.edges)
            if c.deleted:
                gone = [(rid,) for rid in c.deleted]
                db.executemany("DELETE FROM resources WHERE id = ?", gone)
                db.executemany("DELETE FROM members WHERE resource_id = ?", gone)
            self.log.write(db, c.rows)
            for rid, latest in c.final.items():
                if latest is None:
                    continue
                members = c.members.get(rid, ())
                self._snapshots.write(db, latest, members, c.written.get(rid, 0), c.data.get(rid))
            db.execute("COMMIT")
        except BaseException:
            self.rollback()
            raise
        for latest in c.final.values():
            if latest is not None and isinstance(latest.doc, KeyedDoc):
                latest.doc.committed()
        self.commits_since_checkpoint += 1
        self.log.committed(c.rows)

    def rollback(self) -> None:
        """Roll back the open transaction, if there is one (after a failed commit)."""
        db = self.db
        if db.in_transaction:
            db.execute("ROLLBACK")

    def discard(self, ids: Iterable[str]) -> None:
        """Forget the cached state of *ids* after a failed commit; reload them as committed."""
        for rid in ids:
            self._cache.forget(rid)
            self.get(rid)

    # -- keyed documents ---------------------------------------------------------

    def _keyed(self, resource_id: str, head: dict[str, Any]) -> KeyedDoc:
        """The in-memory side of keyed document *resource_id* with *head* loaded."""

        def load(key: str) -> tuple[bool, Any]:
            return self._load_member(resource_id, key)

        def whole() -> Iterable[tuple[str, Any]]:
            rows = self.db.execute(
                "SELECT key, value FROM members WHERE resource_id = ?", (resource_id,)
            )
            return ((key, loads(value)[0]) for key, value in rows)

        return KeyedDoc(head, load, whole)

    def _load_member(self, resource_id: str, key: str) -> tuple[bool, Any]:
        """Fetch one member of a keyed document, and its links, from SQLite."""
        row = self.db.execute(
            "SELECT value FROM members WHERE resource_id = ? AND key = ?", (resource_id, key)
        ).fetchone()
        if row is None:
            return False, None
        self.edges.load(resource_id, member_links(key))
        return True, loads(row[0])[0]


@dataclass(slots=True)
class _Commit:
    """What a sequence of batches writes, each row once."""

    cleared: set[str] = field(default_factory=set)
    edges: dict[tuple[str, Path], None] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)
    #: Resource id → its latest state (None: deleted last).
    final: dict[str, Resource | None] = field(default_factory=dict)
    data: dict[str, bytes] = field(default_factory=dict)
    rows: list[ChangeRow] = field(default_factory=list)
    #: Change body bytes written per resource.
    written: dict[str, int] = field(default_factory=dict)
    #: Members of keyed documents each change names (top-level keys).
    members: dict[str, set[str]] = field(default_factory=dict)


def _collect(batches: Sequence[Batch]) -> _Commit:
    """Gather *batches* into what their transaction writes, in the order they were made."""
    c = _Commit()
    final, data, rows, written, members = c.final, c.data, c.rows, c.written, c.members
    for batch in batches:
        c.cleared |= batch.edges_cleared
        c.edges.update(dict.fromkeys(batch.edges_removed))
        c.edges.update(dict.fromkeys((p, path) for p, path, _, _ in batch.edges_set))
        for rid in batch.deleted:
            c.deleted.add(rid)
            final[rid] = None
            data.pop(rid, None)
        for rid, res in batch.saved.items():
            if rid not in batch.deleted:
                final[rid] = res
        data.update(batch.data)
        for ch in batch.changes:
            if isinstance(ch.body, dict):
                members.setdefault(ch.resource_id, set()).update(k for k in ch.body if is_member(k))
            # Not kept as they are: the change cache packs a copy of its own.
            body = None if ch.body is None else dumpb(ch.body)
            if body is not None:
                written[ch.resource_id] = written.get(ch.resource_id, 0) + len(body)
            children = dumpb(ch.children) if ch.children else None
            rows.append((ch.resource_id, ch.rev, ch.type, body, children))
    return c
