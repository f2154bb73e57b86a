"""The resource graph: path resolution, merges, links, rev propagation, change arrays.

:class:`ResourceGraph` holds the OADA data semantics on top of the
:class:`~oada_jobs.server.store.Store`; :class:`~oada_jobs.server.core.OADACore`
adds routing, tokens, permissions, preconditions and response headers.

A write is prepared on a :class:`~oada_jobs.server.store.Batch`: the cached
documents are changed in place, each change gets a :class:`ChangeRecord`, and
:meth:`ResourceGraph.save` commits the batch in one SQLite transaction and
then calls the listeners of every changed resource.

Owns the resource graph; must not import the framework, the client or a
transport.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from oada_jobs.server.documents import (
    ChangeArray,
    array_index,
    copy_json,
    is_json_type,
    is_link_position,
    lookup,
    merge,
    nest,
)
from oada_jobs.server.edge import Reject
from oada_jobs.server.store import Batch, ChangeRecord, Path, Resource, Store, pointer

__all__ = ["ChangeListener", "Reject", "Resolved", "ResourceGraph"]

logger = logging.getLogger(__name__)

#: ``(resource_id, rev, change_array)``; called synchronously after commit.
#: Listeners must not mutate the array (it is shared) and must not block.
ChangeListener = Callable[[str, int, list[dict[str, Any]]], None]

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


class ResourceGraph:
    """OADA semantics over a :class:`Store`.

    ``max_depth`` bounds the nesting of written documents (counting the path
    inside the resource).
    """

    def __init__(self, store: Store, *, max_depth: int) -> None:
        self.store = store
        self.max_depth = max_depth
        self._listeners: dict[str, list[ChangeListener]] = {}

    # -- listeners and the change feed ------------------------------------------

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

    def changes_since(self, resource_id: str, rev: int) -> list[tuple[int, list[dict[str, Any]]]]:
        """Every ``(rev, change_array)`` of the live *resource_id* after *rev*, oldest first.

        Only its own history: nothing from before it was (re-)created. Of a
        deleted resource, the history of the last one, up to its delete.
        """
        return [
            (r, self.change_array(resource_id, r))
            for r in self.store.change_revs(resource_id, self._fence(resource_id, rev))
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
        return max(after, store.created_rev(resource_id, before=last) - 1)

    def first_rev(self, res: Resource) -> int:
        """The rev *res* was created at; its id's earlier revs belong to a deleted resource."""
        if not res.first_rev:
            res.first_rev = self.store.created_rev(res.id)
        return res.first_rev

    def history(self, res: Resource, after: int = 0) -> list[int]:
        """The revs of *res*'s own change records after *after* (committed ones)."""
        return self.store.change_revs(res.id, max(after, self.first_rev(res) - 1))

    def latest_history(self, res: Resource, limit: int) -> list[int]:
        """The last *limit* revs of :meth:`history`, oldest first."""
        return self.store.latest_change_revs(res.id, limit, self.first_rev(res) - 1)

    def changes_page(
        self, resource_id: str, after: int, limit: int
    ) -> list[tuple[int, list[dict[str, Any]]]]:
        """Up to *limit* ``(rev, change_array)`` of *resource_id* after *after*, oldest first.

        The live resource's own history only, as :meth:`changes_since`.
        """
        return [
            (rec.rev, self.assemble(rec))
            for rec in self.store.changes_after(resource_id, self._fence(resource_id, after), limit)
        ]

    def change_array(self, resource_id: str, rev: int) -> list[dict[str, Any]]:
        """The nested change array of *resource_id* at *rev*; ``[]`` if unknown.

        Rev 0 is a synthetic whole-resource delete, as on the reference server.
        """
        if rev == 0:
            return [{"resource_id": resource_id, "path": "", "body": None, "type": "delete"}]
        rec = self.store.change(resource_id, rev)
        return self.assemble(rec) if rec is not None else []

    def assemble(self, root: ChangeRecord) -> list[dict[str, Any]]:
        """The nested change array of *root*: its own change, then descendants by depth, rev."""
        store = self.store
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
                    child = store.change(child_id, child_rev)
                    if child is not None:
                        following.append((child, path + child_path))
            following.sort(key=lambda item: item[0].rev)
            level = following
            depth += 1
        return out

    # -- resolution -------------------------------------------------------------

    def resolve(self, resource_id: str, rest: Sequence[str]) -> Resolved:
        """Walk *rest* from *resource_id*, following links (protocol §1.3)."""
        store = self.store
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
                self.refuse_into_bytes(target.resource, path, headers)
                self.refuse_inside_array(target.resource, path, "written", headers)
            self._validate_body(resource_id, path, value, found, headers)
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
            self.refuse_into_bytes(target.resource, path, headers)
            self.refuse_inside_array(target.resource, path, "written", headers)
        self._validate_body(target.resource_id, path, value, found, headers)
        return found

    @staticmethod
    def refuse_into_bytes(res: Resource, path: Path, headers: dict[str, str]) -> None:
        """Raise :class:`Reject` (409) for a JSON merge into a resource holding bytes.

        Its content is its bytes: a merge would be acknowledged with a new
        rev and never be readable (GET answers the bytes, sub-paths 404).
        Its ``_meta`` takes JSON as any resource's does.
        """
        if res.data is None or is_json_type(res.type or "application/json"):
            return
        if path and path[0] == "_meta":
            return
        raise Reject(
            409,
            f"{res.id} holds {res.type} bytes, which JSON cannot be merged into;"
            f" PUT a {res.type} body at its root to replace them, or DELETE it first",
            headers,
        )

    @staticmethod
    def refuse_inside_array(
        res: Resource, path: Path, action: str, headers: dict[str, str]
    ) -> None:
        """Raise :class:`Reject` (409) if *path* in *res* goes into an existing array.

        A merge can only name object keys: written as nested objects, a
        write at ``list/0`` would turn the array into an object with a key
        ``"0"``, and an element cannot be removed as a key. Such writes and
        deletes are refused; the whole array is written instead.
        """
        node: Any = res.doc
        for i, key in enumerate(path):
            if isinstance(node, list):
                raise Reject(
                    409,
                    f"{pointer(path)} in {res.id} is inside the array at {pointer(path[:i])},"
                    f" and array elements cannot be {action} one by one;"
                    " PUT the whole array instead",
                    headers,
                )
            if not isinstance(node, dict) or key not in node:
                return
            node = node[key]

    def create(self, batch: Batch, user: str, resource_id: str, media_type: str) -> ChangeRecord:
        """Create an empty resource of *media_type* owned by *user*."""
        return self._apply(batch, user, resource_id, None, {}, media_type, None)

    def delete_key(self, batch: Batch, user: str, res: Resource, path: Path) -> ChangeRecord | None:
        """Remove the key at *path* (and its links); ``None`` if nothing is there (§2.3)."""
        parent = lookup(res.doc, path[:-1])
        if not isinstance(parent, dict) or path[-1] not in parent:
            return None
        del parent[path[-1]]
        self.store.remove_edges_under(batch, res.id, path, inclusive=True)
        return self.bump(batch, res, user, nest(path[:-1], {path[-1]: None}), "delete")

    def delete_resource(self, batch: Batch, res: Resource) -> ChangeRecord:
        """Delete a whole resource; incoming links stay and dangle (§2.3)."""
        store = self.store
        store.clear_edges(batch, res.id)
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
                parents = store.parents_of(rec.resource_id)
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

    def save(self, batches: Sequence[Batch]) -> None:
        """Commit *batches* in one transaction; :meth:`notify` their changes afterwards.

        On any error the transaction is rolled back and the error propagates:
        nothing was acknowledged, and the caller reloads what the batches touched.
        """
        self.store.commit(batches)

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

    # -- internals ----------------------------------------------------------------

    def _validate_body(
        self,
        resource_id: str,
        path: Path,
        value: Any,
        found: list[tuple[Path, dict[str, Any]]],
        headers: dict[str, str],
    ) -> None:
        if not path and not isinstance(value, dict):
            raise Reject(
                400,
                f"expected a JSON object at the root of {resource_id},"
                f" got {type(value).__name__ if value is not None else 'null'}",
                headers,
            )
        budget = self.max_depth - len(path)
        if budget < 1 or not self._scan(value, path, budget, found):
            raise Reject(
                400,
                f"the body is nested more than {self.max_depth} levels deep"
                " (counting the path inside the resource)",
                headers,
            )
        root = nest(path, value)
        if isinstance(root, dict):
            ident = root.get("_id", resource_id)
            if ident != resource_id:
                raise Reject(
                    422,
                    f"the body's _id {ident!r} does not match the resource written to,"
                    f" {resource_id!r}; to repoint a link, DELETE it first",
                    headers,
                )
            meta = root.get("_meta", {})
            if not isinstance(meta, dict):
                raise Reject(400, "_meta must be an object", headers)
            kind = root.get("_type", "")
            if not isinstance(kind, str):
                raise Reject(400, "_type must be a string", headers)

    def _scan(
        self, value: Any, path: Path, budget: int, found: list[tuple[Path, dict[str, Any]]]
    ) -> bool:
        """Check nesting depth and collect links; False when too deep."""
        if budget < 1:
            return False
        if isinstance(value, dict):
            if isinstance(value.get("_id"), str) and is_link_position(path):
                found.append((path, value))
                return all(
                    self._depth_ok(v, budget - 1)
                    for v in value.values()
                    if isinstance(v, (dict, list))
                )
            for k, v in value.items():
                if isinstance(v, (dict, list)) and not self._scan(v, (*path, k), budget - 1, found):
                    return False
            return True
        if isinstance(value, list):
            return all(self._depth_ok(v, budget - 1) for v in value if isinstance(v, (dict, list)))
        return True

    def _depth_ok(self, value: Any, budget: int) -> bool:
        if budget < 1:
            return False
        children = value.values() if isinstance(value, dict) else value
        return all(self._depth_ok(v, budget - 1) for v in children if isinstance(v, (dict, list)))

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
                        store.remove_edges_under(batch, resource_id, sub, inclusive=True)
                    else:
                        store.remove_edges_under(batch, resource_id, sub, inclusive=False)
                        store.set_edge(batch, resource_id, sub, value["_id"], "_rev" in value)
                    has_links = resource_id in store.links
                elif has_links and sub in store.links.get(resource_id, {}):
                    continue  # merging into an existing link object keeps the link
                else:
                    self._update_edges(batch, resource_id, sub, value, ignore_links)
                    has_links = resource_id in store.links
            elif has_links:
                store.remove_edges_under(batch, resource_id, sub, inclusive=True)
                has_links = resource_id in store.links
