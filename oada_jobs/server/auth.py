"""Tokens, ownership and scopes for the embedded OADA server.

Three checks, in this order, on every authenticated request:

1. **Token** (:func:`token_from_header`): ``Authorization: Bearer <token>``
   looked up in :attr:`ServerConfig.tokens`; anything else is 401.
2. **Ownership** (:func:`may_access`): a user may read or write an existing
   resource when it is ``_meta._owner``, or when
   ``_meta._permissions["users/<sub>"]`` has ``"read": true`` /
   ``"write": true`` (``"owner": true`` grants both). Unlike the reference
   server, write grants are honoured. Resources that do not exist are
   readable and writable by anyone (anyone may create an unused id).
3. **Scope** (:func:`scope_allows`): the token's scopes must cover the stored
   ``_type`` of the resource reached. A scope is ``<scope type>:<read|write|all>``;
   ``all`` covers both. Each scope type names a list of media ranges:

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
   Unknown scope types grant nothing. Resources that do not exist skip the
   scope check.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase
from functools import lru_cache
from typing import Any

from oada_jobs.server.config import TokenInfo

__all__ = ["SCOPE_TYPES", "may_access", "scope_allows", "token_from_header"]


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
