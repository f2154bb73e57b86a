"""Who may do what: tokens, reserved roots, ownership, scopes and bookkeeping.

Every request, by every method and transport (HTTP, WebSocket requests,
watch replays and every change a watch delivers), is judged by one function,
:func:`authorize`, for each resource it reads, writes, creates or deletes.
It refuses (403) when any of these fails, in this order:

1. **Reserved roots.** Each configured user's bookmarks and shares ids
   (:class:`Roots`) belong to that user alone: nobody else may create them,
   and a resource found there that is not owned by its user is used by
   nobody (it was planted; it is never adopted). Roots cannot be deleted.
2. **Ownership** (:func:`may_access`): an existing resource may be read or
   written by its ``_meta._owner``, or by a user granted ``"read": true`` /
   ``"write": true`` (``"owner": true`` grants both) in
   ``_meta._permissions["users/<sub>"]``. Unlike the reference server, write
   grants are honoured. An unused id may be created by anyone (reserved ones
   aside) and then belongs to its creator.
3. **Scope** (:func:`scope_allows`): the token's scopes must cover the
   resource's ``_type`` for reading, or for writing; a write that creates a
   resource or changes its ``_type`` must also be covered for the type it
   will have. A scope is ``<scope type>:<read|write|all>``; ``all`` covers
   both. Each scope type names a list of media ranges:

   ============================  ================================================
   scope type                    media types it covers
   ============================  ================================================
   ``all``                       everything (also resources without a ``_type``)
   ``oada.admin.user``           users, bookmarks, shares, ``application/json``
   ``oada.mirrors``              mirrors, ``application/json``
   ``oada.fields``               fields, field, farms, farm, growers, grower, ``application/json``
   ``oada.isoblue``              isoblue devices/datasets, ``application/json``
   ``oada.operations``           operations, operation, ``application/json``
   ``oada.rocks``                rocks, rock, ``application/json``
   ``oada.yield``                yield tiled maps, ``services``, ``service``, ``application/json``
   ``trellisfw``                 trellis documents, ``service.jobs``, ``service.job``, ``application/json``
   ============================  ================================================

   (``application/vnd.oada.<name>.1+json`` each; ``*`` in a range is a glob.)
   Unknown scope types grant nothing. Reading an id that does not exist
   needs no scope (the answer is 404).
4. **Bookkeeping** belongs to the server: the ``_meta`` keys in
   :data:`SERVER_META` cannot be written or deleted by anyone, at any depth,
   whether the request's path or its body reaches them; the root ``_id``,
   ``_rev``, ``_type`` and ``_meta`` cannot be deleted. A body may still
   carry ``_meta._id`` and ``_meta._rev`` as a read returned them (the
   server keeps its own values). ``_meta._permissions`` (sharing) may be
   changed by the owner only.

This module decides; it does not route, resolve paths or read the store.

Owns token lookup and the access decision; must not import the framework or
the client.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import lru_cache
from typing import Any

from oada_jobs.server.config import TokenInfo

__all__ = [
    "SCOPE_TYPES",
    "SERVER_META",
    "Access",
    "Roots",
    "authorize",
    "may_access",
    "scope_allows",
    "token_from_header",
]

#: ``_meta`` keys the server maintains; nobody may write or delete them.
SERVER_META = frozenset(
    {
        "_id",
        "_rev",
        "_type",
        "_owner",
        "_changes",
        "stats",
        "created",
        "createdBy",
        "modified",
        "modifiedBy",
    }
)
#: Root keys a resource cannot lose.
_ROOT_KEPT = frozenset({"_id", "_rev", "_type", "_meta"})


def _vnd(*names: str) -> tuple[str, ...]:
    return (*(f"application/vnd.oada.{n}.1+json" for n in names), "application/json")


#: Built-in scope types → the media ranges they cover (see the module docstring).
SCOPE_TYPES: dict[str, tuple[str, ...]] = {
    "all": ("*/*",),
    "oada.admin.user": _vnd("user", "users", "bookmarks", "shares"),
    "oada.mirrors": _vnd("mirrors", "mirror"),
    "oada.fields": _vnd("fields", "field", "farms", "farm", "growers", "grower"),
    "oada.isoblue": _vnd("isoblue", "isoblue.device", "isoblue.dataset", "isoblue.datasets"),
    "oada.operations": _vnd("operations", "operation"),
    "oada.rocks": _vnd("rocks", "rock"),
    "oada.yield": _vnd(
        "yield",
        "yield.tiled-maps",
        "yield.tiled-maps.dry-yield-map",
        "harvest",
        "as-harvested",
        "as-harvested.yield-moisture-dataset",
        "data-index",
        "data-index.geohash",
        "services",
        "service",
    ),
    "trellisfw": (
        "application/vnd.trellis*",
        "application/vnd.trellisfw*",
        *_vnd("service.jobs", "service.job", "services", "service"),
    ),
}


def token_from_header(
    authorization: str | None, tokens: Mapping[str, TokenInfo]
) -> TokenInfo | None:
    """The :class:`TokenInfo` for an ``Authorization`` header, or ``None`` (→ 401)."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return tokens.get(token.strip())


def may_access(meta: Mapping[str, Any], user: str, *, write: bool) -> bool:
    """Whether *user* may read (or *write*) a resource with this ``_meta``."""
    if meta.get("_owner") == user:
        return True
    perms = meta.get("_permissions")
    if not isinstance(perms, dict):
        return False
    grant = perms.get(user)
    if not isinstance(grant, dict):
        return False
    if grant.get("owner") is True:
        return True
    return grant.get("write" if write else "read") is True


@lru_cache(maxsize=1024)
def _scope_covers(scopes: tuple[str, ...], media_type: str | None, write: bool) -> bool:
    for scope in scopes:
        kind, _, perm = scope.partition(":")
        if perm != "all" and perm != ("write" if write else "read"):
            continue
        ranges = SCOPE_TYPES.get(kind)
        if ranges is None:
            continue
        if kind == "all":
            return True
        if media_type is None:
            continue
        if any(fnmatchcase(media_type, r) for r in ranges):
            return True
    return False


def scope_allows(scopes: Iterable[str], media_type: str | None, *, write: bool) -> bool:
    """Whether *scopes* cover a resource of *media_type* for reading (or *write*).

    >>> scope_allows(["oada.yield:read"], "application/vnd.oada.services.1+json", write=False)
    True
    """
    return _scope_covers(tuple(scopes), media_type, write)


class Roots:
    """The reserved root ids: each user's bookmarks and shares, and whose they are.

    :class:`~oada_jobs.server.config.ServerConfig` has made sure no id is
    configured for two users.
    """

    def __init__(self, tokens: Iterable[TokenInfo]) -> None:
        #: id → (user, "bookmarks" or "shares")
        self.reserved: dict[str, tuple[str, str]] = {}
        for info in tokens:
            self.reserved[info.bookmarks] = (info.user, "bookmarks")
            self.reserved[info.shares_id] = (info.user, "shares")


# Not frozen: a frozen dataclass's __init__ costs twice as much, and one is
# made for every request and for every change a watch delivers.
@dataclass(slots=True)
class Access:
    """What a request wants to do to one resource, for :func:`authorize` to judge.

    A read has only ``resource_id``, ``meta`` and ``type``. A write adds
    ``write=True`` and either ``body`` (a merge, nested from the resource
    root, with ``new_type`` when it creates the resource or changes its
    ``_type``) or ``deleted`` (a delete; ``()`` for the whole resource).
    """

    resource_id: str
    #: The stored ``_meta``; ``None`` when the resource does not exist.
    meta: Mapping[str, Any] | None
    #: The stored ``_type``.
    type: str | None = None
    write: bool = False
    #: The ``_type`` the resource will have, when the write creates or retypes it.
    new_type: str | None = None
    #: The merged body as seen from the resource root.
    body: Mapping[str, Any] | None = None
    #: The deleted path inside the resource (``()``: the resource itself).
    deleted: tuple[str, ...] | None = None
    #: The resource's current rev (0 when it does not exist).
    rev: int = 0
    #: How the request named it: ``resources``, ``bookmarks`` or ``shares``.
    via: str = "resources"
    #: ``(user, "bookmarks" | "shares")`` when the id is a user's root (:class:`Roots`).
    reserved_for: tuple[str | None, str | None] = (None, None)


def authorize(token: TokenInfo, access: Access) -> str | None:
    """Why *token* may not do *access* (answered 403), or ``None`` when it may.

    The one authorization decision of the server (see the module docstring).

    >>> authorize(token, Access("resources/x", None, write=True, new_type="text/plain"))
    ... # doctest: +SKIP
    """
    meta = access.meta
    user = token.user
    reserved_for, root = access.reserved_for
    if access.write and (access.via == "shares" or root == "shares"):
        # Shares are kept by the server (the reference server's rule too).
        return "User cannot modify their shares document"
    if meta is None:
        if not access.write or access.deleted is not None:
            return None  # reading or deleting nothing
        if reserved_for is not None and reserved_for != user:
            return f"{access.resource_id} is reserved for another user"
        if not scope_allows(token.scopes, access.new_type, write=True):
            return "Token does not have required scope"
        return _bookkeeping(access, owner=True)
    if reserved_for is not None and meta.get("_owner") != reserved_for:
        # Planted before its user came: never adopted, by anyone.
        if reserved_for == user:
            return (
                f"your {root} resource {access.resource_id} was created by another user;"
                " it is not used until an operator removes it"
            )
        return f"{access.resource_id} is reserved for another user"
    if not may_access(meta, user, write=access.write):
        kind = "write" if access.write else "read"
        return f"User does not have {kind} permission for this resource"
    if not scope_allows(token.scopes, access.type, write=access.write):
        return "Token does not have required scope"
    if (
        access.new_type is not None
        and access.new_type != access.type
        and not scope_allows(token.scopes, access.new_type, write=True)
    ):
        return "Token does not have required scope"
    if not access.write:
        return None
    if access.deleted == () and root is not None:
        return "a user's bookmarks and shares cannot be deleted"
    return _bookkeeping(access, owner=meta.get("_owner") == user)


def _bookkeeping(access: Access, *, owner: bool) -> str | None:
    """Why a write touches what the server keeps (or sharing, for a non-owner)."""
    deleted = access.deleted
    if deleted:
        if len(deleted) == 1 and deleted[0] in _ROOT_KEPT:
            return f"/{deleted[0]} is kept by the server and cannot be deleted"
        if deleted[0] == "_meta":
            return _meta_key(deleted[1], owner=owner, deleting=True)
        return None
    body = access.body
    meta = body.get("_meta") if body is not None else None
    if not isinstance(meta, Mapping):
        return None
    for key, value in meta.items():
        if key == "_id" and value == f"{access.resource_id}/_meta":
            continue  # as a read returned it
        if key == "_rev" and _is_rev(value) and value <= access.rev:
            continue
        refusal = _meta_key(key, owner=owner, deleting=False)
        if refusal is not None:
            return refusal
    return None


def _meta_key(key: str, *, owner: bool, deleting: bool) -> str | None:
    verb = "deleted" if deleting else "written"
    if key in SERVER_META:
        return f"/_meta/{key} is kept by the server and cannot be {verb}"
    if key == "_permissions" and not owner:
        return "only the owner may change /_meta/_permissions"
    return None


def _is_rev(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
