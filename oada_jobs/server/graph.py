"""The resource graph: path resolution, merges, links, rev propagation, change arrays.

:class:`ResourceGraph` holds the OADA data semantics on top of the
:class:`~oada_jobs.server.store.Store`; :class:`~oada_jobs.server.core.OADACore`
adds routing, tokens, permissions, preconditions and response headers.

A write is prepared on a :class:`~oada_jobs.server.store.Batch`: the cached
documents are changed in place, each change gets a :class:`ChangeRecord`, and
:meth:`ResourceGraph.save` commits the batch in one SQLite transaction and
then calls the listeners of every changed resource.

The change feed (listeners, change arrays, history) is
:mod:`oada_jobs.server.feed`, the checks of a body before it is written
:mod:`oada_jobs.server.bodies`.

Owns the resource graph; must not import the framework, the client or a
transport.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from oada_jobs.server.bodies import refuse_inside_array, refuse_into_bytes, validate_body
from oada_jobs.server.documents import array_index, copy_json, is_link_position, lookup, merge, nest
from oada_jobs.server.edge import Reject
from oada_jobs.server.feed import ChangeFeed, ChangeListener
from oada_jobs.server.store import Batch, ChangeRecord, Path, Resource, Store, pointer

__all__ = ["ChangeListener", "Reject", "Resolved", "ResourceGraph", "resolve"]

#: The user recorded as ``modifiedBy`` on rev-graph bumps (as the reference server).
SYSTEM_USER = "system/rev_graph_update"


@dataclass(slots=True)
class Resolved:
    """Where a request path lands (protocol §1.3)."""

    #: The last resource reached (it may not exist).
    resource_id: str
    resource: Resource | None
    #: Keys left inside that resource.
    leftover: list[str]
    #: ``(parent_id, path)`` of the last link followed, if any.
    link: tuple[str, Path] | None = None
    #: The path ended exactly on that link.
    ends_on_link: bool = False

    def location(self) -> dict[str, str]:
        """``content-location`` and (when not empty) ``x-oada-path-leftover``."""
        leftover = pointer(self.leftover)
        headers = {"content-location": f"/{self.resource_id}{leftover}"}
        if leftover:
            headers["x-oada-path-leftover"] = leftover
        return headers


def resolve(store: Store, resource_id: str, rest: Sequence[str]) -> Resolved:
    """Walk *rest* from *resource_id*, following links (protocol §1.3)."""
    res = store.get(resource_id)
    start = 0
    link: tuple[str, Path] | None = None
    i = 0
    n = len(rest)
    while res is not None and i < n:
        node: Any = res.doc
        jumped = False
        while i < n:
            key = rest[i]
            if isinstance(node, dict) and key in node:
                node = node[key]
            elif isinstance(node, list) and (index := array_index(key, len(node))) is not None:
                node = node[index]
            else:
                break
            i += 1
            # Looking a key up may have loaded its links (a keyed document's member).
            links = store.links.get(res.id)
            if links:
                path = tuple(rest[start:i])
                target = links.get(path)
                if target is not None:
                    link = (res.id, path)
                    resource_id = target[0]
                    res = store.get(resource_id)
                    start = i
                    jumped = True
                    break
        if not jumped:
            break
    return Resolved(
        resource_id,
        res,
        list(rest[start:]),
        link,
        ends_on_link=link is not None and start == n,
    )


class ResourceGraph:
    """OADA semantics over a :class:`Store`.

    ``max_depth`` bounds the nesting of written documents (counting the path
    inside the resource).
    """

    def __init__(self, store: Store, *, max_depth: int) -> None:
        self.store = store
        self.max_depth = max_depth
        #: The listeners of committed changes and the change history.
        self.feed = ChangeFeed(store)

    # -- resolution -------------------------------------------------------------

    def resolve(self, resource_id: str, rest: Sequence[str]) -> Resolved:
        """Walk *rest* from *resource_id*, following links (protocol §1.3)."""
        return resolve(self.store, resource_id, rest)

    # -- writes -----------------------------------------------------------------

    def write(
        self,
        batch: Batch,
        user: str,
        target: Resolved,
        media_type: str,
        value: Any,
        data: bytes | None,
        *,
        ignore_links: bool = False,
    ) -> ChangeRecord:
        """Merge a PUT body (*value*, or binary *data*) at *target* (§2.1).

        Raises :class:`Reject` for bodies that cannot be stored; nothing has
        changed then.
        """
        headers = target.location()
        resource_id = target.resource_id
        path = tuple(target.leftover)
        if data is not None and path:
            raise Reject(
                400,
                f"a {media_type} body can only be written at a resource root,"
                f" e.g. PUT /resources/<id>; got {pointer(path)} inside {resource_id}",
                headers,
            )
        found: list[tuple[Path, dict[str, Any]]] = []
        if data is None:
            if target.resource is not None:
                refuse_into_bytes(target.resource, path, headers)
                refuse_inside_array(target.resource, path, "written", headers)
            validate_body(resource_id, path, value, found, headers, self.max_depth)
            if not ignore_links:
                store = self.store
                for _, link in found:
                    if "_rev" in link:
                        linked = store.get(link["_id"])
                        link["_rev"] = linked.rev if linked is not None else 0
        fragment = nest(path, value) if data is None else {}
        rec = self._apply(batch, user, resource_id, target.resource, fragment, media_type, data)
        if data is None and (found or resource_id in self.store.links):
            self._update_edges(batch, resource_id, (), fragment, ignore_links)
        return rec

    def check(self, target: Resolved, value: Any) -> list[tuple[Path, dict[str, Any]]]:
        """Raise :class:`Reject` if :meth:`write` would refuse JSON *value* at *target*.

        Returns the links found in *value*, with their paths.
        """
        found: list[tuple[Path, dict[str, Any]]] = []
        path = tuple(target.leftover)
        headers = target.location()
        if target.resource is not None:
            refuse_into_bytes(target.resource, path, headers)
            refuse_inside_array(target.resource, path, "written", headers)
        validate_body(target.resource_id, path, value, found, headers, self.max_depth)
        return found

    def create(self, batch: Batch, user: str, resource_id: str, media_type: str) -> ChangeRecord:
        """Create an empty resource of *media_type* owned by *user*."""
        return self._apply(batch, user, resource_id, None, {}, media_type, None)

    def delete_key(self, batch: Batch, user: str, res: Resource, path: Path) -> ChangeRecord | None:
        """Remove the key at *path* (and its links); ``None`` if nothing is there (§2.3)."""
        parent = lookup(res.doc, path[:-1])
        if not isinstance(parent, dict) or path[-1] not in parent:
            return None
        del parent[path[-1]]
        self.store.edges.remove_edges_under(batch, res.id, path, inclusive=True)
        return self.bump(batch, res, user, nest(path[:-1], {path[-1]: None}), "delete")

    def delete_resource(self, batch: Batch, res: Resource) -> ChangeRecord:
        """Delete a whole resource; incoming links stay and dangle (§2.3)."""
        store = self.store
        store.edges.clear_edges(batch, res.id)
        batch.deleted.add(res.id)
        rec = ChangeRecord(res.id, res.rev + 1, "delete", None)
        store.delete_cached(res.id, rec.rev)
        batch.changes.append(rec)
        return rec

    def bump(
        self, batch: Batch, res: Resource, user: str, fragment: dict[str, Any], kind: str
    ) -> ChangeRecord:
        """Record a change whose effect on ``res.doc`` was already applied."""
        rev = res.rev + 1
        now = time.time()
        change = dict(fragment)
        # The fragment may itself reach into _meta (e.g. deleting
        # _meta/watchPersists/<name>): keep that next to the bookkeeping.
        user_meta = change.get("_meta")
        meta_change = dict(user_meta) if isinstance(user_meta, dict) else {}
        meta_change.update({"modifiedBy": user, "modified": now, "_rev": rev})
        change["_meta"] = meta_change
        change["_rev"] = rev
        doc = res.doc
        doc["_rev"] = rev
        meta = doc["_meta"]
        meta["modifiedBy"] = user
        meta["modified"] = now
        meta["_rev"] = rev
        meta["_changes"] = {"_id": f"{res.id}/_meta/_changes", "_rev": rev}
        res.root_json = None
        batch.saved[res.id] = res
        rec = ChangeRecord(res.id, rev, kind, change)
        batch.changes.append(rec)
        return rec

    def propagate(self, batch: Batch, roots: list[ChangeRecord]) -> None:
        """Bump every parent holding a versioned link to a changed resource (§3).

        Breadth first; each parent write carries its own rev and points at the
        child changes that caused it. A resource is never bumped again by a
        change it caused itself (the cause chain), so cycles end. Changes to
        several children of one parent in the same round make one parent write.
        """
        store = self.store
        level: list[tuple[ChangeRecord, frozenset[str]]] = [
            (rec, frozenset((rec.resource_id,))) for rec in roots
        ]
        while level:
            groups: dict[str, tuple[list[tuple[Path, ChangeRecord]], set[str]]] = {}
            for rec, chain in level:
                parents = store.edges.parents_of(rec.resource_id)
                if not parents:
                    continue
                for parent_id, path in sorted(parents):
                    if parent_id in chain:
                        continue
                    items, causes = groups.setdefault(parent_id, ([], set()))
                    items.append((path, rec))
                    causes.update(chain)
            level = []
            for parent_id, (items, causes) in groups.items():
                parent = store.get(parent_id)
                if parent is None:
                    continue
                fragment: dict[str, Any] = {}
                children: list[tuple[str, str, int]] = []
                changed = False
                for path, child in items:
                    child_rev = 0 if child.body is None else child.rev
                    link = lookup(parent.doc, path)
                    if not isinstance(link, dict):
                        continue
                    current = link.get("_rev")
                    if (
                        child_rev
                        and isinstance(current, int)
                        and child_rev <= current <= self._rev_now(child.resource_id)
                    ):
                        # Linked after this change (deferred propagation):
                        # the link already names this rev or a newer one. (A
                        # rev the child never had was written by a client.)
                        continue
                    link["_rev"] = child_rev
                    merge(fragment, nest(path, {"_rev": child_rev}))
                    changed = True
                    # Nested for every reader; who may see it is decided
                    # when it is read (OADACore.watch_view).
                    children.append((pointer(path), child.resource_id, child.rev))
                if not changed:
                    continue
                rec = self.bump(batch, parent, SYSTEM_USER, fragment, "merge")
                rec.children = children
                causes.add(parent_id)
                level.append((rec, frozenset(causes)))

    def _rev_now(self, resource_id: str) -> int:
        res = self.store.get(resource_id)
        return res.rev if res is not None else 0

    def notify(self, changes: list[ChangeRecord]) -> None:
        """Call the listeners of every resource in *changes* (committed ones only)."""
        self.feed.notify(changes)

    def save(self, batches: Sequence[Batch]) -> None:
        """Commit *batches* in one transaction; :meth:`notify` their changes afterwards.

        On any error the transaction is rolled back and the error propagates:
        nothing was acknowledged, and the caller reloads what the batches touched.
        """
        self.store.commit(batches)

    # -- internals ----------------------------------------------------------------

    def _apply(
        self,
        batch: Batch,
        user: str,
        resource_id: str,
        res: Resource | None,
        fragment: dict[str, Any],
        media_type: str,
        data: bytes | None,
    ) -> ChangeRecord:
        """Merge *fragment* into the resource (creating it), recording the change."""
        now = time.time()
        store = self.store
        change = dict(fragment)
        user_meta = change.get("_meta")
        meta = dict(user_meta) if isinstance(user_meta, dict) else {}
        if res is None:
            rev = store.max_change_rev(resource_id) + 1
            kind = change.get("_type") if isinstance(change.get("_type"), str) else media_type
            meta.update(
                {
                    "_id": f"{resource_id}/_meta",
                    "_type": kind,
                    "_owner": user,
                    "stats": {"createdBy": user, "created": now},
                    "modifiedBy": user,
                    "modified": now,
                    "_rev": rev,
                    "_changes": {"_id": f"{resource_id}/_meta/_changes", "_rev": rev},
                }
            )
            change["_type"] = kind
            res = Resource(resource_id, {"_id": resource_id}, first_rev=rev)
            store.put_cached(res)
            # Saved from now on, so that a failure below drops it again.
            batch.saved[resource_id] = res
        else:
            rev = res.rev + 1
            meta.update({"modifiedBy": user, "modified": now, "_rev": rev})
            kind = change.get("_type")
            if data is not None:
                kind = change["_type"] = media_type
            if isinstance(kind, str):
                meta["_type"] = kind
        change["_meta"] = meta
        change["_rev"] = rev
        if data is not None:
            res.data = data
            batch.data[resource_id] = data
        # The document gets its own decoded copy so later merges never alter
        # the recorded change body.
        merge(res.doc, copy_json(change))
        res.doc["_meta"]["_changes"] = {"_id": f"{resource_id}/_meta/_changes", "_rev": rev}
        res.root_json = None
        batch.saved[resource_id] = res
        rec = ChangeRecord(resource_id, rev, "merge", change)
        batch.changes.append(rec)
        return rec

    def _update_edges(
        self,
        batch: Batch,
        resource_id: str,
        path: Path,
        fragment: dict[str, Any],
        ignore_links: bool,
    ) -> None:
        """Bring the link graph in line with a merged *fragment*."""
        store = self.store
        has_links = resource_id in store.links
        for key, value in fragment.items():
            sub = (*path, key)
            if isinstance(value, dict):
                if isinstance(value.get("_id"), str) and is_link_position(sub):
                    if ignore_links:
                        store.edges.remove_edges_under(batch, resource_id, sub, inclusive=True)
                    else:
                        store.edges.remove_edges_under(batch, resource_id, sub, inclusive=False)
                        store.edges.set_edge(batch, resource_id, sub, value["_id"], "_rev" in value)
                    has_links = resource_id in store.links
                elif has_links and sub in store.links.get(resource_id, {}):
                    continue  # merging into an existing link object keeps the link
                else:
                    self._update_edges(batch, resource_id, sub, value, ignore_links)
                    has_links = resource_id in store.links
            elif has_links:
                store.edges.remove_edges_under(batch, resource_id, sub, inclusive=True)
                has_links = resource_id in store.links
