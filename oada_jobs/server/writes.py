"""Planning writes: PUT, POST and DELETE turned into the batch of one request.

:class:`Writer` takes a write the core has routed: it bounds and decodes
the body, resolves the target, authorizes every resource the write touches
(the target and, with ``X-OADA-Ensure-Link``, the fresh resource), checks
the preconditions and has the graph make the changes in one batch, which it
hands to the group commit. The answer carries the new rev and ETag.

Owns the order of a write's checks and the batch it makes; must not commit
(that is :mod:`oada_jobs.server.commits`), nor import the framework, the
client or a transport.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from oada_jobs.server.bodies import refuse_inside_array
from oada_jobs.server.commits import GroupCommit
from oada_jobs.server.config import ServerConfig, TokenInfo
from oada_jobs.server.documents import is_json_type, lookup, nest
from oada_jobs.server.edge import Reject, decode_json
from oada_jobs.server.graph import Resolved, ResourceGraph
from oada_jobs.server.guard import Guard
from oada_jobs.server.messages import CoreRequest, CoreResponse, check_preconditions, etag
from oada_jobs.server.store import Batch, ChangeRecord, Resource

__all__ = ["Writer"]


class Writer:
    """Turns PUT, POST and DELETE requests into staged batches.

    :param config: The body limits (``max_body_bytes``, ``max_depth``, ``max_body_items``).
    :param graph: Resolves paths and makes the changes.
    :param guard: Authorizes every resource a write touches.
    :param commits: Where a write's batch is made and staged.
    :param get: The cached resource of an id.
    :param new_key: A new resource key (for ``X-OADA-Ensure-Link``).
    """

    def __init__(
        self,
        config: ServerConfig,
        graph: ResourceGraph,
        guard: Guard,
        commits: GroupCommit,
        get: Callable[[str], Resource | None],
        new_key: Callable[[], str],
    ) -> None:
        self._config = config
        self._graph = graph
        self._guard = guard
        self._commits = commits
        self._get = get
        self._new_key = new_key

    def put(
        self,
        req: CoreRequest,
        token: TokenInfo,
        prefix: str,
        resource_id: str,
        rest: list[str],
        ensure_link: str | None,
    ) -> CoreResponse:
        media_type, value, data = self._body(req)
        ignore_links = req.headers.get("x-oada-ignore-links", "").strip().lower() == "true"
        target = self._graph.resolve(resource_id, rest)
        res = target.resource
        if ensure_link is None:
            new_id = None
            self._authorize_write(token, prefix, target, media_type, value, data)
        else:
            new_id = self._authorize_ensure_link(token, prefix, target, media_type, value, data)
        headers = target.location()
        rev = res.rev if res is not None else 0
        check_preconditions(req, target.resource_id, rev, headers)
        commits = self._commits
        with commits.batch() as batch:
            if ensure_link is None or new_id is None:
                rec = self._graph.write(
                    batch, token.user, target, media_type, value, data, ignore_links=ignore_links
                )
            else:
                body = (media_type, value, data)
                again = (resource_id, rest)
                rec = self._write_linked(
                    batch, token, target, again, headers, body, ignore_links, ensure_link, new_id
                )
            commits.commit(batch)
        headers["x-oada-rev"] = str(rec.rev)
        headers["etag"] = etag(rec.resource_id, rec.rev)
        return CoreResponse(201, headers)

    def _body(self, req: CoreRequest) -> tuple[str, Any, bytes | None]:
        """The media type of a write, and its JSON value or (not JSON) its bytes."""
        config = self._config
        body = req.body
        if len(body) > config.max_body_bytes:
            raise Reject(
                413,
                f"the body is {len(body)} bytes; at most {config.max_body_bytes} are accepted",
            )
        content_type = req.headers.get("content-type")
        if not content_type or not content_type.strip():
            raise Reject(400, "No content type specified")
        media_type = content_type.split(";", 1)[0].strip().lower()
        if is_json_type(media_type):
            value = decode_json(body, max_depth=config.max_depth, max_items=config.max_body_items)
            return media_type, value, None
        return media_type, None, body

    def _authorize_write(
        self,
        token: TokenInfo,
        prefix: str,
        target: Resolved,
        media_type: str,
        value: Any,
        data: bytes | None,
    ) -> None:
        """Authorize writing *value* (or *data*) at *target*."""
        res = target.resource
        merged = nest(target.leftover, value) if data is None else {}
        if data is not None:
            new_type: str | None = media_type
        else:
            new_type = _type_of(merged, media_type if res is None else None)
        self._authorize_at(token, prefix, target, new_type, merged)

    def _authorize_at(
        self, token: TokenInfo, prefix: str, target: Resolved, new_type: str | None, body: Any
    ) -> None:
        """Authorize writing *body* (of *new_type*, if it creates a resource) at *target*."""
        guard = self._guard
        guard.authorize(
            token,
            guard.access(
                target.resource_id,
                target.resource,
                via=prefix,
                write=True,
                new_type=new_type,
                body=body if isinstance(body, dict) else None,
            ),
        )

    def _authorize_ensure_link(
        self,
        token: TokenInfo,
        prefix: str,
        target: Resolved,
        media_type: str,
        value: Any,
        data: bytes | None,
    ) -> str:
        """Authorize the two writes of an ensured link; the fresh resource's new id."""
        new_id = f"resources/{self._new_key()}"
        link = nest(target.leftover, {"_id": new_id})
        link_type = "application/json" if target.resource is None else None
        self._authorize_at(token, prefix, target, link_type, link)
        guard = self._guard
        fresh_type = media_type if data is not None else _type_of(value, media_type)
        guard.authorize(
            token,
            guard.access(
                new_id,
                None,
                write=True,
                new_type=fresh_type,
                body=value if isinstance(value, dict) else None,
            ),
        )
        return new_id

    def _write_linked(
        self,
        batch: Batch,
        token: TokenInfo,
        target: Resolved,
        again: tuple[str, list[str]],
        headers: dict[str, str],
        body: tuple[str, Any, bytes | None],
        ignore_links: bool,
        ensure_link: str,
        new_id: str,
    ) -> ChangeRecord:
        """A fresh resource from the body, linked at the path; the link write's change (§2.4).

        The path is resolved *again* (``(resource_id, rest)``) once the fresh
        resource is written.
        """
        if not target.leftover:
            raise Reject(
                422,
                "X-OADA-Ensure-Link needs a path inside a resource to put the link at",
                headers,
            )
        link: dict[str, Any] = {"_id": new_id}
        if ensure_link == "versioned":
            link["_rev"] = 0
        # Refused once the fresh resource exists, the link would fail the
        # other writes of the pass with it; so it is checked first.
        graph = self._graph
        graph.check(target, link)
        media_type, value, data = body
        fresh = Resolved(new_id, None, [])
        graph.write(batch, token.user, fresh, media_type, value, data, ignore_links=ignore_links)
        target = graph.resolve(*again)
        return graph.write(batch, token.user, target, "application/json", link, None)

    def delete(
        self, req: CoreRequest, token: TokenInfo, prefix: str, resource_id: str, rest: list[str]
    ) -> CoreResponse:
        graph = self._graph
        r = graph.resolve(resource_id, rest)
        if r.ends_on_link and r.link is not None:
            # A path ending on a link deletes the link, not its target.
            parent_id, link_path = r.link
            r = Resolved(parent_id, self._get(parent_id), list(link_path))
        res = r.resource
        guard = self._guard
        guard.authorize(
            token,
            guard.access(r.resource_id, res, via=prefix, write=True, deleted=tuple(r.leftover)),
        )
        headers = r.location()
        if res is None:
            # Preconditions hold against rev 0, as for a PUT creating it.
            check_preconditions(req, r.resource_id, 0, headers)
            headers["x-oada-rev"] = "0"
            headers["etag"] = etag(r.resource_id, 0)
            return CoreResponse(204, headers)
        check_preconditions(req, res.id, res.rev, headers)
        commits = self._commits
        if not r.leftover:
            with commits.batch() as batch:
                graph.delete_resource(batch, res)
                commits.commit(batch)
            headers["x-oada-rev"] = "0"
            headers["etag"] = etag(res.id, 0)
            return CoreResponse(204, headers)
        path = tuple(r.leftover)
        parent = lookup(res.doc, path[:-1])
        if isinstance(parent, list):
            refuse_inside_array(res, path, "deleted", headers)
        with commits.batch() as batch:
            rec = graph.delete_key(batch, token.user, res, path)
            if rec is not None:
                commits.commit(batch)
        # Deleting nothing makes no phantom rev (unlike the reference server).
        rev = rec.rev if rec is not None else res.rev
        headers["x-oada-rev"] = str(rev)
        headers["etag"] = etag(res.id, rev)
        return CoreResponse(204, headers)


def _type_of(body: Any, default: str | None) -> str | None:
    """The ``_type`` a write of *body* gives its resource (*default* if it names none)."""
    kind = body.get("_type") if isinstance(body, dict) else None
    return kind if isinstance(kind, str) else default
