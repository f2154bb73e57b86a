"""The link graph of the documents in memory, and its rows in the ``edges`` table.

:class:`LinkIndex` knows the links of the documents the store has in
memory (of a keyed document, those of its head and of the members in
memory): loaded with them, dropped with them, changed in place by writes
and written back by a commit. It finds the versioned links to a resource
(rev propagation) in memory and, for the documents not in memory, through
the index of versioned edges by child.

Owns the links in memory and the ``edges`` rows; must not load or cache a
document, nor import the framework, the client or a transport.
"""

from __future__ import annotations

import sqlite3
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from oada_jobs.server.keyed import is_member
from oada_jobs.server.records import Batch, Path, escape_key, pointer, unpointer

__all__ = ["ALL_LINKS", "HEAD_LINKS", "LinkIndex", "execute_rows", "member_links"]

#: Ids :meth:`LinkIndex.parents_of` remembers to have no versioned link to
#: them (about 100 bytes each): every write of a job asked SQLite otherwise,
#: a tenth of the server's CPU per job.
_UNLINKED_IDS = 65_536

#: :meth:`LinkIndex.load` selections: every link; those in the head of a keyed
#: document (paths under a key starting with ``_``: ``/_`` up to ``/```).
ALL_LINKS: tuple[str, tuple[str, ...]] = ("", ())
HEAD_LINKS: tuple[str, tuple[str, ...]] = (" AND path >= '/_' AND path < '/`'", ())


def member_links(key: str) -> tuple[str, tuple[str, ...]]:
    """The :meth:`LinkIndex.load` selection of the links in member *key*: at it or below it.

    One range of the primary key (an ``OR`` of two made SQLite read every
    link of the document): from the member's pointer up to the pointer with
    "0", the character after "/", appended. :meth:`LinkIndex.load` drops
    the siblings that range also holds (``/k-x`` for member ``k``).
    """
    at = "/" + escape_key(key)
    return " AND path >= ? AND path < ?", (at, at + "0")


def execute_rows(db: sqlite3.Connection, sql: str, rows: list[tuple[Any, ...]]) -> None:
    """``executemany()``, through ``execute()`` for a single row (the usual case; cheaper)."""
    if len(rows) == 1:
        db.execute(sql, rows[0])
    elif rows:
        db.executemany(sql, rows)


class LinkIndex:
    """The links of the documents in memory.

    :param db: The store's connection, as it is now.
    :param loaded: Whether the links of a parent at a path are in memory
        (so memory decides, not SQLite).
    """

    def __init__(
        self,
        db: Callable[[], sqlite3.Connection],
        loaded: Callable[[str, Path], bool],
    ) -> None:
        self._db = db
        self._loaded = loaded
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
        # one takes it out (_add).
        self._unlinked: OrderedDict[str, None] = OrderedDict()
        # parent → {prefix → number of links at or below it}, so that writes
        # to documents with many links need not scan them all.
        self._under: dict[str, dict[Path, int]] = {}

    def clear(self) -> None:
        """Forget every link in memory (the store closed)."""
        self.links.clear()
        self.versioned_parents.clear()
        self._under.clear()
        self._unlinked.clear()

    # -- loading and dropping with the documents ---------------------------------

    def load(self, parent: str, where: tuple[str, tuple[str, ...]]) -> None:
        """Load the links of *parent* that *where* selects (see :func:`member_links`)."""
        sql, args = where
        at = args[0] if args else None
        for text, child, versioned in self._db().execute(
            f"SELECT path, child, versioned FROM edges WHERE parent = ?{sql}", (parent, *args)
        ):
            if at is not None and text != at and not text.startswith(at + "/"):
                continue
            path = unpointer(text)
            if path not in self.links.get(parent, ()):
                self._add(parent, path, child, bool(versioned))

    def drop(self, parent: str, *, keep_head: bool) -> None:
        """Forget the links of *parent* in memory (with *keep_head*, those of members only)."""
        links = self.links.get(parent)
        if not links:
            return
        doomed = [p for p in links if not keep_head or (p and is_member(p[0]))]
        for path in doomed:
            self._drop_edge(parent, path)

    # -- versioned links to a resource ---------------------------------------------

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
        for parent, text in self._db().execute(
            "SELECT parent, path FROM edges WHERE child = ? AND versioned = 1", (child,)
        ):
            path = unpointer(text)
            if (parent, path) not in found and not self._loaded(parent, path):
                found.add((parent, path))
        if not found:
            unlinked = self._unlinked
            unlinked[child] = None
            if len(unlinked) > _UNLINKED_IDS:
                unlinked.popitem(last=False)
        return found

    # -- writes -----------------------------------------------------------------

    def set_edge(self, batch: Batch, parent: str, path: Path, child: str, versioned: bool) -> None:
        """Record a link at *path* in *parent* (replacing any link there)."""
        links = self.links.get(parent)
        old = links.get(path) if links else None
        if old == (child, versioned):
            return
        if old is not None:
            self._drop_edge(parent, path)
        self._add(parent, path, child, versioned)
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

    def write(
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
        execute_rows(db, "DELETE FROM edges WHERE parent = ? AND path = ?", gone)
        execute_rows(
            db,
            "INSERT OR REPLACE INTO edges (parent, path, child, versioned) VALUES (?, ?, ?, ?)",
            present,
        )

    # -- internals ----------------------------------------------------------

    def _add(self, parent: str, path: Path, child: str, versioned: bool) -> None:
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
