"""What a request does to a resource, put to the one authorization point.

:class:`Guard` describes a read, write, create, delete or watched change as
an :class:`~oada_jobs.server.auth.Access` and puts it to
:func:`~oada_jobs.server.auth.authorize`; every method and transport goes
through it, and a refusal is a 403. It also filters a change array down to
what a token may read.

Owns the description of an access and the watch view; must not decide an
access itself (that is :mod:`oada_jobs.server.auth`), nor import the
framework, the client or a transport.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from oada_jobs.server.auth import Access, Roots, authorize
from oada_jobs.server.config import TokenInfo
from oada_jobs.server.edge import Reject
from oada_jobs.server.store import Path, Resource

__all__ = ["Guard"]

_NOT_RESERVED: tuple[str | None, str | None] = (None, None)


class Guard:
    """The accesses of requests, authorized in one place.

    :param roots: The users' reserved root resources.
    :param get: The cached resource of an id (``None``: it does not exist).
    """

    def __init__(self, roots: Roots, get: Callable[[str], Resource | None]) -> None:
        self._roots = roots
        self._get = get

    def access(
        self,
        resource_id: str,
        res: Resource | None,
        *,
        via: str = "resources",
        write: bool = False,
        new_type: str | None = None,
        body: Mapping[str, Any] | None = None,
        deleted: Path | None = None,
    ) -> Access:
        """What a request does to *resource_id* (now *res*), for :meth:`authorize`."""
        return Access(
            resource_id,
            res.meta if res is not None else None,
            res.type if res is not None else None,
            write=write,
            new_type=new_type,
            body=body,
            deleted=deleted,
            rev=res.rev if res is not None else 0,
            via=via,
            reserved_for=self._roots.reserved.get(resource_id, _NOT_RESERVED),
        )

    @staticmethod
    def authorize(token: TokenInfo, access: Access) -> None:
        """Raise 403 unless :func:`~oada_jobs.server.auth.authorize` allows *access*.

        Every read, write, create, delete and watch goes through here.
        """
        refusal = authorize(token, access)
        if refusal is not None:
            raise Reject(403, refusal)

    def visible(
        self, token: TokenInfo, resource_id: str, change: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """*change* without what *token* may not read; 403 if it may not read *resource_id*."""
        get = self._get
        self.authorize(token, self.access(resource_id, get(resource_id)))
        if len(change) <= 1:
            return change
        out: list[dict[str, Any]] = []
        hidden: list[str] = []
        for entry in change:
            child_id = entry.get("resource_id")
            path = entry.get("path")
            if child_id == resource_id or not isinstance(path, str):
                out.append(entry)
                continue
            if any(path == p or path.startswith(p + "/") for p in hidden):
                continue
            child = get(child_id) if isinstance(child_id, str) else None
            # A nested change whose resource is gone is hidden too: who may
            # have read it can no longer be told.
            if child is None or authorize(token, self.access(child.id, child)) is not None:
                hidden.append(path)
                continue
            out.append(entry)
        # Nothing hidden: the very array, which every socket shares (encoded once).
        return out if len(out) < len(change) else change
