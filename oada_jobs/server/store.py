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
and :meth:`Store.parents_of` finds the versioned links of documents not in
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

Owns the SQLite store and its cache (pointers are built by
:mod:`oada_jobs._pointer`); must not import the framework, the client or a
transport. The file is longer than ~600 lines because the store's cache and
its replay must change together.
"""

from __future__ import annotations

import json
import sqlite3
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from oada_jobs import _pointer
from oada_jobs.server.cache import SizedLRU
from oada_jobs.server.dblock import DatabaseLock
from oada_jobs.server.documents import array_index, dumpb, dumpb_kept, merge
from oada_jobs.server.keyed import KeyedDoc, is_member

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

#: A key path inside a document, as a tuple of unescaped keys.
Path = tuple[str, ...]

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
#: What a cached entry weighs beyond its encoded size: the Python objects of
#: the entry itself (key, record or resource, the cache's own slot). Small
#: documents take more still (a 600-byte job about 3.8 KiB parsed); the count
#: limit ``document_cache_size`` bounds those.
ENTRY_BYTES = 512
_INSERT_CHANGE = (
    "INSERT OR REPLACE INTO changes (resource_id, rev, type, body, children) VALUES (?, ?, ?, ?, ?)"
)
#: WAL pages after which a commit checkpoints by itself: a backstop only;
#: normally :meth:`Store.checkpoint` runs in a worker thread long before.
_WAL_BACKSTOP_PAGES = 20_000
#: Change bytes any document may have after its snapshot before the snapshot
#: is rewritten (a larger document may have as many as its own size). Loading a
#: document with that much to replay (87 small changes) took 1.5 ms, a job
#: with two changes 0.09 ms (0.04 ms from a snapshot alone).
_SNAPSHOT_SLACK = 16 * 1024
#: A document is stored keyed (a row per top-level member, see
#: :mod:`oada_jobs.server.keyed`) once its snapshot is due to be rewritten at
#: this many bytes or more with at least :data:`KEYED_MEMBERS` members. Below
#: it, rewriting the whole snapshot now and then costs less than a row per
#: member; above it, the rewrite (and, evicted, the reload) of a long list
#: grows with the list and blocks the event loop: 60 ms at 100,000 links.
KEYED_BYTES = 64 * 1024
KEYED_MEMBERS = 256
#: Cached documents kept as objects: those used last (in-flight jobs, the
#: lists and their parents). The others in the cache are kept encoded and
#: decoded again when used (a job document in 10 µs, against 40 µs or more
#: from SQLite).
HOT_DOCUMENTS = 2_000


def _dumps(value: Any) -> bytes:
    return dumpb(value)


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


def _execute_rows(db: sqlite3.Connection, sql: str, rows: list[tuple[Any, ...]]) -> None:
    """``executemany()``, through ``execute()`` for a single row (the usual case; cheaper)."""
    if len(rows) == 1:
        db.execute(sql, rows[0])
    elif rows:
        db.executemany(sql, rows)


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
        # Cached documents: the :data:`HOT_DOCUMENTS` used last as objects
        # (Resource), the others encoded (see _ColdDocument).
        self._docs = SizedLRU[str, Resource | _ColdDocument](
            document_cache_bytes, max_entries=document_cache_size
        )
        # Ids of the documents cached as objects, least recently used first.
        self._hot: OrderedDict[str, None] = OrderedDict()
        # Documents used since the last trim(): measured again there.
        self._used: set[str] = set()
        # Ids known not to exist, so repeated misses skip SQLite, each with
        # the rev of its delete if that is staged and not yet committed (else 0).
        self._missing: dict[str, int] = {}
        self._missing_bytes = 0
        #: parent → {path → (child, versioned)}, for the documents in memory
        #: only (of a keyed document, the links in its head and in the members
        #: in memory): loaded with them and dropped with them.
        self.links: dict[str, dict[Path, tuple[str, bool]]] = {}
        #: child → {(parent, path)} for the versioned edges in :attr:`links`;
        #: :meth:`parents_of` adds those of documents not in memory.
        self.versioned_parents: dict[str, set[tuple[str, Path]]] = {}
        # Ids known to have no versioned link to them, stored or staged, so
        # rev propagation need not ask SQLite again (most are jobs); the
        # oldest are forgotten past _UNLINKED_IDS. A new versioned link to
        # one takes it out (_add_edge).
        self._unlinked: OrderedDict[str, None] = OrderedDict()
        # parent → {prefix → number of links at or below it}, so that writes
        # to documents with many links need not scan them all.
        self._under: dict[str, dict[Path, int]] = {}
        # Held while the file is open: one server per database file.
        self._lock = DatabaseLock(path) if path != ":memory:" else None
        # Change records as stored: (type, body, children), JSON bytes. Kept
        # encoded, they are no work for the garbage collector: as objects, the
        # 20,000 records of the default budget were a third of what each full
        # collection went through.
        self._changes = SizedLRU[tuple[str, int], _StoredChange](change_cache_bytes)
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
                    self._flush_snapshots()
                finally:
                    self._db.close()
                    self._db = None
        finally:
            if self._lock is not None:
                self._lock.release()
        self._docs.clear()
        self._hot.clear()
        self._used.clear()
        self._missing.clear()
        self._missing_bytes = 0
        self.links.clear()
        self.versioned_parents.clear()
        self._under.clear()
        self._unlinked.clear()
        self._changes.clear()

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the store is not open")
        return self._db

    # -- reads --------------------------------------------------------------

    def get(self, resource_id: str) -> Resource | None:
        """The cached resource, loading it from SQLite if it is not cached."""
        cached = self._docs.get(resource_id)
        if cached is not None:
            self._used.add(resource_id)
            if isinstance(cached, Resource):
                hot = self._hot
                if resource_id in hot:
                    hot.move_to_end(resource_id)
                else:  # a keyed document, never encoded
                    hot[resource_id] = None
                return cached
            return self._thaw(resource_id, cached)
        if resource_id in self._missing:
            return None
        db = self.db
        row = db.execute(
            "SELECT rev, doc, data FROM resources WHERE id = ?", (resource_id,)
        ).fetchone()
        if row is None:
            self._forget_missing(resource_id, 0)
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
            self._load_links(resource_id, _HEAD_LINKS)
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
            self._load_links(resource_id, _ALL_LINKS)
        meta = doc.get("_meta")
        if isinstance(meta, dict):
            meta["_changes"] = {"_id": f"{resource_id}/_meta/_changes", "_rev": doc.get("_rev")}
        res = Resource(resource_id, doc, data, snap_bytes=len(snapshot), pending_bytes=pending)
        self._docs.put(resource_id, res, _document_bytes(res))
        self._hot[resource_id] = None
        self._used.add(resource_id)
        return res

    def _thaw(self, resource_id: str, cold: _ColdDocument) -> Resource:
        """Make an encoded cached document an object again (the most recently used)."""
        encoded, data, snap_bytes, pending_bytes = cold
        res = Resource(
            resource_id, loads(encoded)[0], data, snap_bytes=snap_bytes, pending_bytes=pending_bytes
        )
        self._docs.replace(resource_id, res, _document_bytes(res))
        self._hot[resource_id] = None
        return res

    def _freeze_cold(self) -> None:
        """Encode the documents beyond the :data:`HOT_DOCUMENTS` used last."""
        docs, hot = self._docs, self._hot
        while len(hot) > HOT_DOCUMENTS:
            rid, _ = hot.popitem(last=False)
            res = docs.peek(rid)
            if not isinstance(res, Resource) or isinstance(res.doc, KeyedDoc):
                continue  # a keyed document's head is small: it stays
            encoded = dumpb_kept(res.doc)
            size = ENTRY_BYTES + len(encoded) + len(res.data or b"")
            docs.replace(rid, (encoded, res.data, res.snap_bytes, res.pending_bytes), size)

    @property
    def cached(self) -> list[str]:
        """Ids of the documents in memory, least recently used first."""
        return list(self._docs)

    @property
    def cached_changes(self) -> list[tuple[str, int]]:
        """``(resource_id, rev)`` of the change records in memory, least recently used first."""
        return list(self._changes)

    @property
    def document_bytes(self) -> int:
        """What the cached documents are accounted to weigh (see the module docstring)."""
        return self._docs.bytes

    @property
    def change_bytes(self) -> int:
        """What the cached change records are accounted to weigh."""
        return self._changes.bytes

    def trim(self) -> None:
        """Drop documents until the cache is within its budget in bytes and count.

        Every document used since the last trim is measured again first.
        Large documents go first, then the least recently used (see
        :class:`~oada_jobs.server.cache.SizedLRU`). Call it only when no
        uncommitted change is cached (no batch is staged): a dropped document
        is reloaded from SQLite as last committed. The ids known not to exist
        are forgotten here too once they take too many bytes.
        """
        docs = self._docs
        for rid in self._used:
            res = docs.peek(rid)
            if isinstance(res, Resource):
                if isinstance(res.doc, KeyedDoc) and res.doc.members_in_memory():
                    # Written: they are fetched again when next used.
                    res.doc.unload()
                    self._drop_links(rid, keep_head=True)
                docs.resize(rid, _document_bytes(res))
        self._used.clear()
        docs.evict(self._evicted)
        self._freeze_cold()
        # Not while anything is staged: a staged delete is hidden only here.
        if self._missing_bytes > _MISSING_CACHE_BYTES:
            self._missing.clear()
            self._missing_bytes = 0

    def put_cached(self, res: Resource) -> None:
        """Make a newly created resource visible before its batch commits."""
        # Measured in trim(), once the write has made the document.
        self._docs.put(res.id, res, ENTRY_BYTES)
        self._hot[res.id] = None
        self._used.add(res.id)
        if self._missing.pop(res.id, None) is not None:
            self._missing_bytes -= len(res.id)

    def parents_of(self, child: str) -> set[tuple[str, Path]]:
        """``(parent, path)`` of every versioned link to *child*, staged ones included.

        Links of documents in memory are known here; those of the others are
        read from SQLite (an index of versioned edges by child), except where
        the linking document (or keyed member) is in memory, which may have
        changed them since.
        """
        if child in self._unlinked:
            return set()
        found = set(self.versioned_parents.get(child, ()))
        for parent, text in self.db.execute(
            "SELECT parent, path FROM edges WHERE child = ? AND versioned = 1", (child,)
        ):
            path = unpointer(text)
            if (parent, path) not in found and not self._links_loaded(parent, path):
                found.add((parent, path))
        if not found:
            unlinked = self._unlinked
            unlinked[child] = None
            if len(unlinked) > _UNLINKED_IDS:
                unlinked.popitem(last=False)
        return found

    def _links_loaded(self, parent: str, path: Path) -> bool:
        """Whether the links of *parent* at *path* are in :attr:`links` (so memory decides)."""
        res = self._docs.peek(parent)
        if res is None:
            return False
        if not isinstance(res, Resource):
            return True  # encoded, its links stay loaded
        doc = res.doc
        if isinstance(doc, KeyedDoc) and path and is_member(path[0]):
            return doc.resident(path[0])
        return True

    def max_change_rev(self, resource_id: str) -> int:
        """Highest rev ever recorded for *resource_id* (0 if none), staged deletes included."""
        row = self.db.execute(
            "SELECT MAX(rev) FROM changes WHERE resource_id = ?", (resource_id,)
        ).fetchone()
        committed = int(row[0]) if row and row[0] is not None else 0
        return max(committed, self._missing.get(resource_id, 0))

    def change(self, resource_id: str, rev: int) -> ChangeRecord | None:
        """The change record of *resource_id* at *rev*, if there is one."""
        stored = self._changes.get((resource_id, rev))
        if stored is None:
            stored = self.db.execute(
                "SELECT type, body, children FROM changes WHERE resource_id = ? AND rev = ?",
                (resource_id, rev),
            ).fetchone()
            if stored is None:
                return None
            self._changes.put((resource_id, rev), stored, _stored_bytes(stored))
            self._changes.evict()
        return _decode(resource_id, rev, stored)

    def changes_after(self, resource_id: str, after: int, limit: int) -> list[ChangeRecord]:
        """Up to *limit* change records of *resource_id* after rev *after*, oldest first.

        One query for a page of a replay; the records are not kept in the
        change cache (a long replay would push out the recent ones).
        """
        out: list[ChangeRecord] = []
        for rev, kind, body, children in self.db.execute(
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
        row = self.db.execute(
            "SELECT MAX(rev) FROM changes"
            " WHERE resource_id = ? AND type = 'delete' AND body IS NULL AND rev < ?",
            (resource_id, before if before is not None else 1 << 62),
        ).fetchone()
        return int(row[0]) + 1 if row and row[0] is not None else 1

    def latest_change_revs(self, resource_id: str, limit: int, after: int = 0) -> list[int]:
        """The last *limit* revs with a change record for *resource_id* after *after*, oldest first."""
        revs = [
            r
            for (r,) in self.db.execute(
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
            for (r,) in self.db.execute(
                "SELECT rev FROM changes WHERE resource_id = ? AND rev > ? ORDER BY rev",
                (resource_id, after),
            )
        ]

    # -- writes -------------------------------------------------------------

    def set_edge(self, batch: Batch, parent: str, path: Path, child: str, versioned: bool) -> None:
        """Record a link at *path* in *parent* (replacing any link there)."""
        links = self.links.get(parent)
        old = links.get(path) if links else None
        if old == (child, versioned):
            return
        if old is not None:
            self._drop_edge(parent, path)
        self._add_edge(parent, path, child, versioned)
        batch.edges_set.append((parent, path, child, versioned))

    def remove_edges_under(self, batch: Batch, parent: str, path: Path, *, inclusive: bool) -> None:
        """Remove the links of *parent* at (if *inclusive*) or below *path*."""
        links = self.links.get(parent)
        if not links:
            return
        count = self._under[parent].get(path, 0)
        if not inclusive and path in links:
            count -= 1
        if count <= 0:
            return
        if inclusive and count == 1 and path in links:
            # The common case (deleting one link from a list of many): the
            # only link at or below *path* is *path* itself; no scan.
            self._drop_edge(parent, path)
            batch.edges_removed.append((parent, path))
            return
        n = len(path)
        doomed = [p for p in links if p[:n] == path and (len(p) > n or (inclusive and len(p) == n))]
        for p in doomed:
            self._drop_edge(parent, p)
            batch.edges_removed.append((parent, p))

    def clear_edges(self, batch: Batch, parent: str) -> None:
        """Remove every outgoing link of *parent*."""
        for p in list(self.links.get(parent, ())):
            self._drop_edge(parent, p)
        batch.edges_cleared.add(parent)

    def delete_cached(self, resource_id: str, rev: int) -> None:
        """Hide a resource whose delete (at *rev*) is staged (its links are cleared already)."""
        self._docs.pop(resource_id)
        self._hot.pop(resource_id, None)
        self._forget_missing(resource_id, rev)

    def commit(self, batches: Sequence[Batch]) -> None:
        """Write *batches* in one transaction; returns after it is committed.

        Every change record is written; links and documents are written as
        they are in memory now, once each however many batches touched them.
        One transaction for several requests' batches also writes each page
        they share (a list's row, its parents' rows) to the WAL only once.
        """
        db = self.db
        cleared: set[str] = set()
        edges: dict[tuple[str, Path], None] = {}
        deleted: set[str] = set()
        # Resource id → its latest state (None: deleted last).
        final: dict[str, Resource | None] = {}
        data: dict[str, bytes] = {}
        rows = []
        written: dict[str, int] = {}
        # Members of keyed documents each change names (top-level keys).
        members: dict[str, set[str]] = {}
        for batch in batches:
            cleared |= batch.edges_cleared
            edges.update(dict.fromkeys(batch.edges_removed))
            edges.update(dict.fromkeys((p, path) for p, path, _, _ in batch.edges_set))
            for rid in batch.deleted:
                deleted.add(rid)
                final[rid] = None
                data.pop(rid, None)
            for rid, res in batch.saved.items():
                if rid not in batch.deleted:
                    final[rid] = res
            data.update(batch.data)
            for c in batch.changes:
                if isinstance(c.body, dict):
                    members.setdefault(c.resource_id, set()).update(
                        k for k in c.body if is_member(k)
                    )
                # Kept in the change cache after the commit: compact bytes.
                body = None if c.body is None else dumpb_kept(c.body)
                if body is not None:
                    written[c.resource_id] = written.get(c.resource_id, 0) + len(body)
                children = dumpb_kept(c.children) if c.children else None
                rows.append((c.resource_id, c.rev, c.type, body, children))
        db.execute("BEGIN")
        try:
            self._write_edges(db, cleared, edges)
            if deleted:
                gone = [(rid,) for rid in deleted]
                db.executemany("DELETE FROM resources WHERE id = ?", gone)
                db.executemany("DELETE FROM members WHERE resource_id = ?", gone)
            _execute_rows(db, _INSERT_CHANGE, rows)
            for rid, latest in final.items():
                if latest is None:
                    continue
                if isinstance(latest.doc, KeyedDoc):
                    self._write_keyed(db, latest, members.get(rid, ()), data.get(rid))
                else:
                    self._write_doc(db, latest, written.get(rid, 0), data.get(rid))
            db.execute("COMMIT")
        except BaseException:
            self.rollback()
            raise
        for latest in final.values():
            if latest is not None and isinstance(latest.doc, KeyedDoc):
                latest.doc.committed()
        self.commits_since_checkpoint += 1
        changes = self._changes
        for rid, rev, kind, body, children in rows:
            stored = (kind, body, children)
            changes.put((rid, rev), stored, _stored_bytes(stored))
        changes.evict()

    def _write_edges(
        self, db: sqlite3.Connection, cleared: set[str], edges: dict[tuple[str, Path], None]
    ) -> None:
        """Write the links at *edges* as they are now, after dropping *cleared* parents' links."""
        for rid in cleared:
            db.execute("DELETE FROM edges WHERE parent = ?", (rid,))
        gone = []
        present = []
        for parent, path in edges:
            edge = self.links.get(parent, {}).get(path)
            if edge is None:
                gone.append((parent, pointer(path)))
            else:
                present.append((parent, pointer(path), edge[0], int(edge[1])))
        _execute_rows(db, "DELETE FROM edges WHERE parent = ? AND path = ?", gone)
        _execute_rows(
            db,
            "INSERT OR REPLACE INTO edges (parent, path, child, versioned) VALUES (?, ?, ?, ?)",
            present,
        )

    def _write_doc(
        self, db: sqlite3.Connection, res: Resource, written: int, data: bytes | None
    ) -> None:
        """Snapshot *res* (or only count *written* change bytes against its snapshot).

        A large JSON document with many members is made keyed instead (see
        :data:`KEYED_BYTES`). The bookkeeping is updated at once: should the
        transaction fail, the caller discards the resource anyway.
        """
        pending = res.pending_bytes + written
        if res.snap_bytes and pending <= max(res.snap_bytes, _SNAPSHOT_SLACK):
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

    def rollback(self) -> None:
        """Roll back the open transaction, if there is one (after a failed commit)."""
        db = self.db
        if db.in_transaction:
            db.execute("ROLLBACK")

    def discard(self, ids: Iterable[str]) -> None:
        """Forget the cached state of *ids* after a failed commit; reload them as committed."""
        for rid in ids:
            self._docs.pop(rid)
            self._hot.pop(rid, None)
            if self._missing.pop(rid, None) is not None:
                self._missing_bytes -= len(rid)
            self._drop_links(rid, keep_head=False)
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
        self._load_links(resource_id, _member_links(key))
        return True, loads(row[0])[0]

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
        self._write_head(db, res)

    def _write_keyed(
        self, db: sqlite3.Connection, res: Resource, keys: Iterable[str], data: bytes | None
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
        _execute_rows(db, "DELETE FROM members WHERE resource_id = ? AND key = ?", deletes)
        _execute_rows(
            db,
            "INSERT INTO members (resource_id, key, value) VALUES (?, ?, ?)"
            " ON CONFLICT (resource_id, key) DO UPDATE SET value = excluded.value",
            upserts,
        )
        self._write_head(db, res)
        if data is not None:
            db.execute("UPDATE resources SET data = ? WHERE id = ?", (data, res.id))

    @staticmethod
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

    # -- links of the documents in memory ------------------------------------------

    def _load_links(self, parent: str, where: tuple[str, tuple[str, ...]]) -> None:
        """Load the links of *parent* that *where* selects (see :func:`_member_links`)."""
        sql, args = where
        at = args[0] if args else None
        for text, child, versioned in self.db.execute(
            f"SELECT path, child, versioned FROM edges WHERE parent = ?{sql}", (parent, *args)
        ):
            if at is not None and text != at and not text.startswith(at + "/"):
                continue
            path = unpointer(text)
            if path not in self.links.get(parent, ()):
                self._add_edge(parent, path, child, bool(versioned))

    def _drop_links(self, parent: str, *, keep_head: bool) -> None:
        """Forget the links of *parent* in memory (with *keep_head*, those of members only)."""
        links = self.links.get(parent)
        if not links:
            return
        doomed = [p for p in links if not keep_head or (p and is_member(p[0]))]
        for path in doomed:
            self._drop_edge(parent, path)

    def _evicted(self, resource_id: str, res: Resource | _ColdDocument) -> None:
        self._hot.pop(resource_id, None)
        self._drop_links(resource_id, keep_head=False)

    # -- internals ----------------------------------------------------------

    def _flush_snapshots(self) -> None:
        """Snapshot every document with more than the slack logged since (faster reopen).

        Those are large documents only: a small one is reloaded from its few
        changes in well under a millisecond, and there may be very many.
        """
        stale: list[tuple[int, bytes, str]] = []
        for rid in self._docs:
            cached = self._docs.peek(rid)
            if isinstance(cached, Resource):
                if cached.pending_bytes > _SNAPSHOT_SLACK and not isinstance(cached.doc, KeyedDoc):
                    stale.append((cached.rev, _dumps(cached.doc), rid))
            elif cached is not None and cached[3] > _SNAPSHOT_SLACK:
                doc = loads(cached[0])[0]
                stale.append((doc.get("_rev", 0), cached[0], rid))
        if not stale:
            return
        db = self.db
        db.execute("BEGIN")
        try:
            db.executemany("UPDATE resources SET rev = ?, doc = ? WHERE id = ?", stale)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _add_edge(self, parent: str, path: Path, child: str, versioned: bool) -> None:
        self.links.setdefault(parent, {})[path] = (child, versioned)
        under = self._under.setdefault(parent, {})
        for n in range(len(path) + 1):
            prefix = path[:n]
            under[prefix] = under.get(prefix, 0) + 1
        if versioned:
            self.versioned_parents.setdefault(child, set()).add((parent, path))
            self._unlinked.pop(child, None)

    def _drop_edge(self, parent: str, path: Path) -> None:
        links = self.links.get(parent)
        if not links or path not in links:
            return
        child, versioned = links.pop(path)
        under = self._under[parent]
        for n in range(len(path) + 1):
            prefix = path[:n]
            left = under[prefix] - 1
            if left:
                under[prefix] = left
            else:
                del under[prefix]
        if not links:
            del self.links[parent]
            del self._under[parent]
        if versioned:
            parents = self.versioned_parents.get(child)
            if parents is not None:
                parents.discard((parent, path))
                if not parents:
                    del self.versioned_parents[child]

    def _forget_missing(self, resource_id: str, rev: int) -> None:
        """Remember that *resource_id* does not exist (deleted at *rev*, if staged)."""
        if resource_id not in self._missing:
            self._missing_bytes += len(resource_id)
        self._missing[resource_id] = rev


#: Ids :meth:`Store.parents_of` remembers to have no versioned link to them
#: (about 100 bytes each): every write of a job asked SQLite otherwise, a
#: tenth of the server's CPU per job.
_UNLINKED_IDS = 65_536

#: ``_load_links`` selections: every link; those in the head of a keyed
#: document (paths under a key starting with ``_``: ``/_`` up to ``/```).
_ALL_LINKS: tuple[str, tuple[str, ...]] = ("", ())
_HEAD_LINKS: tuple[str, tuple[str, ...]] = (" AND path >= '/_' AND path < '/`'", ())


def _member_links(key: str) -> tuple[str, tuple[str, ...]]:
    """The ``_load_links`` selection of the links in member *key*: at it or below it.

    One range of the primary key (an ``OR`` of two made SQLite read every
    link of the document): from the member's pointer up to the pointer with
    "0", the character after "/", appended. :meth:`Store._load_links` drops
    the siblings that range also holds (``/k-x`` for member ``k``).
    """
    at = "/" + escape_key(key)
    return " AND path >= ? AND path < ?", (at, at + "0")


#: A cached document not used lately, encoded: ``(JSON, binary data,
#: snap_bytes, pending_bytes)``. Bytes and numbers only, so the garbage
#: collector skips it: as objects, the 20,000 documents of the default cache
#: were most of what every full collection went through (200 ms and more).
_ColdDocument = tuple[bytes, bytes | None, int, int]

#: A change record as stored and cached: ``(type, body, children)``.
_StoredChange = tuple[str, bytes | None, bytes | None]


def _decode(resource_id: str, rev: int, stored: _StoredChange) -> ChangeRecord:
    """The change record of a stored (or cached) ``(type, body, children)``."""
    kind, body, children = stored
    return ChangeRecord(
        resource_id,
        rev,
        kind,
        loads(body)[0] if body else None,
        [(p, c, int(r)) for p, c, r in loads(children)[0]] if children else [],
    )


def _stored_bytes(stored: _StoredChange) -> int:
    """What a cached change record is accounted to weigh."""
    return ENTRY_BYTES + len(stored[1] or b"") + len(stored[2] or b"")


def _document_bytes(res: Resource) -> int:
    """What a cached document is accounted to weigh (see the module docstring)."""
    size = ENTRY_BYTES + res.snap_bytes + res.pending_bytes
    if res.data is not None:
        size += len(res.data)
    if res.root_json is not None:
        size += len(res.root_json)
    return size
