"""The change feed: listeners of committed changes, and each resource's history.

:class:`ChangeFeed` calls the listeners of a resource after each committed
change with its nested change array (protocol §4.1), assembled once and
shared by all of them, and reads a resource's history back: its own only,
nothing from before its id was last (re-)created.

Owns the listeners and the assembly of change arrays; must not change a
document, nor import the framework, the client or a transport.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from oada_jobs.server.documents import ChangeArray
from oada_jobs.server.store import ChangeRecord, Resource, Store

__all__ = ["ChangeFeed", "ChangeListener"]

# The resource graph's logger: the feed is its part.
logger = logging.getLogger("oada_jobs.server.graph")

#: ``(resource_id, rev, change_array)``; called synchronously after commit.
#: Listeners must not mutate the array (it is shared) and must not block.
ChangeListener = Callable[[str, int, list[dict[str, Any]]], None]


class ChangeFeed:
    """The listeners and the change history of the resources of a store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._listeners: dict[str, list[ChangeListener]] = {}

    def subscribe(self, resource_id: str, listener: ChangeListener) -> Callable[[], None]:
        """Call *listener* after every committed change of *resource_id*."""
        self._listeners.setdefault(resource_id, []).append(listener)

        def unsubscribe() -> None:
            listeners = self._listeners.get(resource_id)
            if listeners and listener in listeners:
                listeners.remove(listener)
                if not listeners:
                    del self._listeners[resource_id]

        return unsubscribe

    def clear_listeners(self) -> None:
        self._listeners.clear()

    def notify(self, changes: list[ChangeRecord]) -> None:
        """Call the listeners of every resource in *changes* (committed ones only)."""
        listeners = self._listeners
        if not listeners:
            return
        for rec in changes:
            subscribed = listeners.get(rec.resource_id)
            if not subscribed:
                continue
            # Shared by every listener, and encoded once for all of them.
            array = ChangeArray(self.assemble(rec))
            for listener in list(subscribed):
                try:
                    listener(rec.resource_id, rec.rev, array)
                except Exception:
                    logger.exception("change listener for %s failed", rec.resource_id)

    def changes_since(self, resource_id: str, rev: int) -> list[tuple[int, list[dict[str, Any]]]]:
        """Every ``(rev, change_array)`` of the live *resource_id* after *rev*, oldest first.

        Only its own history: nothing from before it was (re-)created. Of a
        deleted resource, the history of the last one, up to its delete.
        """
        return [
            (r, self.change_array(resource_id, r))
            for r in self.store.log.change_revs(resource_id, self._fence(resource_id, rev))
        ]

    def _fence(self, resource_id: str, after: int) -> int:
        """*after*, raised to just before the (last) resource of that id was created."""
        store = self.store
        res = store.get(resource_id)
        if res is not None:
            return max(after, self.first_rev(res) - 1)
        # Deleted (its delete may still be on its way to the database): the
        # last resource's history runs from its creation to that delete.
        last = store.max_change_rev(resource_id)
        return max(after, store.log.created_rev(resource_id, before=last) - 1)

    def first_rev(self, res: Resource) -> int:
        """The rev *res* was created at; its id's earlier revs belong to a deleted resource."""
        if not res.first_rev:
            res.first_rev = self.store.log.created_rev(res.id)
        return res.first_rev

    def history(self, res: Resource, after: int = 0) -> list[int]:
        """The revs of *res*'s own change records after *after* (committed ones)."""
        return self.store.log.change_revs(res.id, max(after, self.first_rev(res) - 1))

    def latest_history(self, res: Resource, limit: int) -> list[int]:
        """The last *limit* revs of :meth:`history`, oldest first."""
        return self.store.log.latest_change_revs(res.id, limit, self.first_rev(res) - 1)

    def changes_page(
        self, resource_id: str, after: int, limit: int
    ) -> list[tuple[int, list[dict[str, Any]]]]:
        """Up to *limit* ``(rev, change_array)`` of *resource_id* after *after*, oldest first.

        The live resource's own history only, as :meth:`changes_since`.
        """
        return [
            (rec.rev, self.assemble(rec))
            for rec in self.store.log.changes_after(
                resource_id, self._fence(resource_id, after), limit
            )
        ]

    def change_array(self, resource_id: str, rev: int) -> list[dict[str, Any]]:
        """The nested change array of *resource_id* at *rev*; ``[]`` if unknown.

        Rev 0 is a synthetic whole-resource delete, as on the reference server.
        """
        if rev == 0:
            return [{"resource_id": resource_id, "path": "", "body": None, "type": "delete"}]
        rec = self.store.log.change(resource_id, rev)
        return self.assemble(rec) if rec is not None else []

    def assemble(self, root: ChangeRecord) -> list[dict[str, Any]]:
        """The nested change array of *root*: its own change, then descendants by depth, rev."""
        log = self.store.log
        out: list[dict[str, Any]] = []
        level: list[tuple[ChangeRecord, str]] = [(root, "")]
        depth = 0
        # Child pointers only go to earlier changes, so this ends; the depth
        # bound is a guard against a corrupted database.
        while level and depth < 256:
            following: list[tuple[ChangeRecord, str]] = []
            for rec, path in level:
                out.append(
                    {
                        "resource_id": rec.resource_id,
                        "path": path,
                        "body": rec.body,
                        "type": rec.type,
                    }
                )
                for child_path, child_id, child_rev in rec.children:
                    child = log.change(child_id, child_rev)
                    if child is not None:
                        following.append((child, path + child_path))
            following.sort(key=lambda item: item[0].rev)
            level = following
            depth += 1
        return out
