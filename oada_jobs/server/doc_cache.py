"""The documents the store keeps in memory, bounded in bytes and count.

:class:`DocumentCache` holds the most recently used documents: the
``hot`` ones used last as :class:`~oada_jobs.server.records.Resource`
objects, the others as their encoded JSON (bytes and numbers only, which
the garbage collector skips), and the ids known not to exist. It measures
again every document used since the last :meth:`DocumentCache.trim`, then
evicts beyond its budget; an evicted document's links are dropped with it.

Owns which documents are in memory and in which form; must not read or
write SQLite, nor import the framework, the client or a transport.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Protocol

from oada_jobs.server.cache import SizedLRU
from oada_jobs.server.documents import dumpb_kept
from oada_jobs.server.keyed import KeyedDoc, is_member
from oada_jobs.server.records import ENTRY_BYTES, Path, Resource, loads

__all__ = ["ColdDocument", "DocumentCache", "DropLinks", "document_bytes"]

#: A cached document not used lately, encoded: ``(JSON, binary data,
#: snap_bytes, pending_bytes)``. One tuple of bytes and numbers, which the
#: collector stops tracking once a collection has gone through it: as
#: objects, the 20,000 documents of the default cache were most of what every
#: full collection went through (200 ms and more).
ColdDocument = tuple[bytes, bytes | None, int, int]


class DropLinks(Protocol):
    """Forgets the links of *parent* in memory (with *keep_head*, those of its members only)."""

    def __call__(self, parent: str, *, keep_head: bool) -> None: ...


class DocumentCache:
    """The cached documents and the ids known not to exist.

    :param max_bytes: Budget of the documents (``document_cache_bytes``).
    :param max_entries: Most documents kept (``document_cache_size``).
    :param hot: Documents kept as objects, those used last.
    :param missing_bytes: Bytes of ids known not to exist kept before they are forgotten.
    :param drop_links: Forgets the links of a document in memory.
    """

    def __init__(
        self,
        *,
        max_bytes: int,
        max_entries: int,
        hot: int,
        missing_bytes: int,
        drop_links: DropLinks,
    ) -> None:
        self._hot_count = hot
        self._missing_limit = missing_bytes
        self._drop_links = drop_links
        # Cached documents: the `hot` used last as objects (Resource), the
        # others encoded (see ColdDocument).
        self.docs = SizedLRU[str, Resource | ColdDocument](max_bytes, max_entries=max_entries)
        # Ids of the documents cached as objects, least recently used first.
        self._hot: OrderedDict[str, None] = OrderedDict()
        # Documents used since the last trim(): measured again there.
        self._used: set[str] = set()
        # Ids known not to exist, so repeated misses skip SQLite, each with
        # the rev of its delete if that is staged and not yet committed (else 0).
        self.missing: dict[str, int] = {}
        self._missing_bytes = 0

    def __iter__(self) -> Iterator[str]:
        """Ids of the documents in memory, least recently used first."""
        return iter(self.docs)

    @property
    def bytes(self) -> int:
        """What the cached documents are accounted to weigh."""
        return self.docs.bytes

    def clear(self) -> None:
        self.docs.clear()
        self._hot.clear()
        self._used.clear()
        self.missing.clear()
        self._missing_bytes = 0

    def get(self, resource_id: str) -> Resource | None:
        """The cached document (now the most recently used), or None if it is not cached."""
        cached = self.docs.get(resource_id)
        if cached is None:
            return None
        self._used.add(resource_id)
        if isinstance(cached, Resource):
            hot = self._hot
            if resource_id in hot:
                hot.move_to_end(resource_id)
            else:  # a keyed document, never encoded
                hot[resource_id] = None
            return cached
        return self._thaw(resource_id, cached)

    def loaded(self, res: Resource) -> None:
        """Cache *res*, just loaded from SQLite (the most recently used)."""
        self.docs.put(res.id, res, document_bytes(res))
        self._hot[res.id] = None
        self._used.add(res.id)

    def put_new(self, res: Resource) -> None:
        """Cache a newly created resource before its batch commits."""
        # Measured in trim(), once the write has made the document.
        self.docs.put(res.id, res, ENTRY_BYTES)
        self._hot[res.id] = None
        self._used.add(res.id)
        if self.missing.pop(res.id, None) is not None:
            self._missing_bytes -= len(res.id)

    def hide(self, resource_id: str, rev: int) -> None:
        """Hide a resource whose delete (at *rev*) is staged."""
        self.docs.pop(resource_id)
        self._hot.pop(resource_id, None)
        self.note_missing(resource_id, rev)

    def forget(self, resource_id: str) -> None:
        """Drop what is cached of *resource_id*, its links and whether it is missing."""
        self.docs.pop(resource_id)
        self._hot.pop(resource_id, None)
        if self.missing.pop(resource_id, None) is not None:
            self._missing_bytes -= len(resource_id)
        self._drop_links(resource_id, keep_head=False)

    def note_missing(self, resource_id: str, rev: int) -> None:
        """Remember that *resource_id* does not exist (deleted at *rev*, if staged)."""
        if resource_id not in self.missing:
            self._missing_bytes += len(resource_id)
        self.missing[resource_id] = rev

    def links_loaded(self, parent: str, path: Path) -> bool:
        """Whether the links of *parent* at *path* are in memory (so memory decides)."""
        res = self.docs.peek(parent)
        if res is None:
            return False
        if not isinstance(res, Resource):
            return True  # encoded, its links stay loaded
        doc = res.doc
        if isinstance(doc, KeyedDoc) and path and is_member(path[0]):
            return doc.resident(path[0])
        return True

    def trim(self) -> None:
        """Drop documents until the cache is within its budget in bytes and count.

        Every document used since the last trim is measured again first.
        Large documents go first, then the least recently used (see
        :class:`~oada_jobs.server.cache.SizedLRU`). Call it only when no
        uncommitted change is cached (no batch is staged): a dropped document
        is reloaded from SQLite as last committed. The ids known not to exist
        are forgotten here too once they take too many bytes.
        """
        docs = self.docs
        for rid in self._used:
            res = docs.peek(rid)
            if isinstance(res, Resource):
                if isinstance(res.doc, KeyedDoc) and res.doc.members_in_memory():
                    # Written: they are fetched again when next used.
                    res.doc.unload()
                    self._drop_links(rid, keep_head=True)
                docs.resize(rid, document_bytes(res))
        self._used.clear()
        docs.evict(self._evicted)
        self._freeze_cold()
        # Not while anything is staged: a staged delete is hidden only here.
        if self._missing_bytes > self._missing_limit:
            self.missing.clear()
            self._missing_bytes = 0

    def _evicted(self, resource_id: str, res: Resource | ColdDocument) -> None:
        self._hot.pop(resource_id, None)
        self._drop_links(resource_id, keep_head=False)

    def _thaw(self, resource_id: str, cold: ColdDocument) -> Resource:
        """Make an encoded cached document an object again (the most recently used)."""
        encoded, data, snap_bytes, pending_bytes = cold
        res = Resource(
            resource_id, loads(encoded)[0], data, snap_bytes=snap_bytes, pending_bytes=pending_bytes
        )
        self.docs.replace(resource_id, res, document_bytes(res))
        self._hot[resource_id] = None
        return res

    def _freeze_cold(self) -> None:
        """Encode the documents beyond the `hot` used last."""
        docs, hot = self.docs, self._hot
        while len(hot) > self._hot_count:
            rid, _ = hot.popitem(last=False)
            res = docs.peek(rid)
            if not isinstance(res, Resource) or isinstance(res.doc, KeyedDoc):
                continue  # a keyed document's head is small: it stays
            encoded = dumpb_kept(res.doc)
            size = ENTRY_BYTES + len(encoded) + len(res.data or b"")
            docs.replace(rid, (encoded, res.data, res.snap_bytes, res.pending_bytes), size)


def document_bytes(res: Resource) -> int:
    """What a cached document is accounted to weigh (see the store's docstring)."""
    size = ENTRY_BYTES + res.snap_bytes + res.pending_bytes
    if res.data is not None:
        size += len(res.data)
    if res.root_json is not None:
        size += len(res.root_json)
    return size
