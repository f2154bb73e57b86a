"""The transport-independent core of the embedded OADA server.

:class:`OADACore` takes a :class:`CoreRequest` (method, raw path, lower-case
headers, body bytes) and returns a :class:`CoreResponse`. It never raises for
a bad request: every error is a JSON body ``{"statusCode", "error",
"message"}``. Transports (HTTP, WebSocket) only translate to and from these
two dataclasses and implement watches on top of :meth:`OADACore.subscribe`
and :meth:`OADACore.changes_since`.

Everything runs on the event loop thread. A request is served without any
``await`` between reading a document and committing its new state, so the
event loop itself serialises writes: ``If-Match`` is a compare-and-swap.

Watchers learn about changes through :data:`ChangeListener` callbacks, called
synchronously after each commit, once per changed resource (rev-graph parents
included), with that resource's nested change array (protocol §4.1). When a
resource is deleted as a whole its listeners receive
``[{"resource_id": id, "path": "", "body": None, "type": "delete"}]``; that is
the last change they get, and transports should then drop those watches.
"""

from __future__ import annotations

import enum
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any

import anyio
from anyio.abc import TaskGroup

from oada_jobs._ksuid import ksuid
from oada_jobs.server.auth import may_access, scope_allows, token_from_header
from oada_jobs.server.config import ServerConfig, TokenInfo
from oada_jobs.server.documents import (
    MISSING,
    BadDocument,
    copy_json,
    dumpb,
    is_json_type,
    is_link_position,
    lookup,
    merge,
    nest,
    parse_json,
)
from oada_jobs.server.store import Batch, ChangeRecord, Path, Resource, Store, pointer

__all__ = ["ChangeListener", "CoreRequest", "CoreResponse", "CoreState", "OADACore"]

logger = logging.getLogger(__name__)

#: ``(resource_id, rev, change_array)``; called synchronously after commit.
#: Listeners must not mutate the array (it is shared) and must not block.
ChangeListener = Callable[[str, int, list[dict[str, Any]]], None]

_METHODS = frozenset({"get", "head", "put", "post", "delete"})
_PREFIXES = frozenset({"resources", "bookmarks", "shares", "users", "authorizations"})
_META_TYPE = "application/vnd.oada.meta+json"
_BOOKMARKS_TYPE = "application/vnd.oada.bookmarks.1+json"
_SHARES_TYPE = "application/vnd.oada.shares.1+json"
_SYSTEM_USER = "system/rev_graph_update"
_JSON_HEADERS = {"content-type": "application/json"}
# Keys whose removal would break the resource's bookkeeping.
_UNDELETABLE: frozenset[Path] = frozenset(
    {
        ("_id",),
        ("_rev",),
        ("_type",),
        ("_meta",),
        ("_meta", "_id"),
        ("_meta", "_rev"),
        ("_meta", "_type"),
        ("_meta", "_changes"),
    }
)


@dataclass(frozen=True, slots=True)
class CoreRequest:
    """One request as the core sees it."""

    #: Lower-case method: ``get head put post delete``.
    method: str
    #: Raw request path without the query string, not percent-decoded.
    path: str
    #: Lower-case header names.
    headers: Mapping[str, str]
    body: bytes = b""


@dataclass(slots=True)
class CoreResponse:
    """One answer: lower-case header names, string values, no empty values."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    #: JSON text for JSON answers, raw bytes for binary resources.
    body: bytes = b""


class CoreState(enum.Enum):
    """Life cycle of an :class:`OADACore`."""

    #: Created, store not opened yet.
    UNOPENED = "unopened"
    #: Store open, serving requests.
    OPEN = "open"
    #: Closed; cannot be reopened.
    CLOSED = "closed"


class _Reject(Exception):
    """Internal: ends a request with an error response; never leaves :meth:`OADACore.handle`."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def error_response(
    status: int, message: str, headers: Mapping[str, str] | None = None
) -> CoreResponse:
    """A fastify-style JSON error response."""
    body = dumpb({"statusCode": status, "error": HTTPStatus(status).phrase, "message": message})
    out = dict(headers) if headers else {}
    out["content-type"] = "application/json"
    return CoreResponse(status, out, body)


@dataclass(slots=True)
class _Resolved:
    """Where a request path lands (protocol §1.3)."""

    resource_id: str
    resource: Resource | None
    leftover: list[str]
    #: ``(parent_id, path)`` of the last link followed, if any.
    link: tuple[str, Path] | None = None
    #: The path ended exactly on that link.
    ends_on_link: bool = False

    def location(self) -> dict[str, str]:
        leftover = pointer(self.leftover)
        headers = {"content-location": f"/{self.resource_id}{leftover}"}
        if leftover:
            headers["x-oada-path-leftover"] = leftover
        return headers


def _etag(resource_id: str, rev: int) -> str:
    return f'"{resource_id.removeprefix("resources/")}/{rev}"'


def _etag_matches(header: str, resource_id: str, rev: int) -> bool:
    """Whether any ETag in *header* names *rev* (and *resource_id*, if it has an id).

    Items are ``"<key>/<rev>"``, ``W/"<key>/<rev>"`` or ``"<rev>"``; id-less
    items match any resource (the reference server mishandles those).
    """
    for raw in header.split(","):
        item = raw.strip()
        if item.startswith("W/"):
            item = item[2:]
        if len(item) >= 2 and item[0] == item[-1] == '"':
            item = item[1:-1]
        ident, slash, rev_text = item.rpartition("/")
        try:
            item_rev = int(rev_text)
        except ValueError:
            continue
        if item_rev == rev and (not slash or f"resources/{ident}" == resource_id):
            return True
    return False


def _accepts(accept: str, media_type: str) -> bool:
    """Whether an ``Accept`` header allows *media_type* (or plain JSON for JSON types)."""
    major = media_type.split("/", 1)[0]
    for raw in accept.split(","):
        item = raw.split(";", 1)[0].strip().lower()
        if item in ("*/*", "*", media_type, f"{major}/*", ""):
            return True
        if is_json_type(media_type) and item in ("application/json", "application/*"):
            return True
    return False


def _split_path(raw: str) -> list[str]:
    """Split a raw request path into unescaped segments (JSON pointer rules).

    Raises ``_Reject`` for segments that could be read as navigation:
    empty segments in the middle (``//``), ``.`` and ``..``.
    """
    segments = raw[1:].split("/")
    # Trailing slashes are ignored.
    while segments and segments[-1] == "":
        segments.pop()
    out = []
    for seg in segments:
        if seg in ("", ".", ".."):
            raise _Reject(
                400, f"invalid path {raw!r}: empty, '.' and '..' segments are not allowed"
            )
        out.append(seg.replace("~1", "/").replace("~0", "~") if "~" in seg else seg)
    return out


class OADACore:
    """The OADA resource server without a transport.

    Use it as an async context manager: entering opens the store, leaving
    closes it (and waits for pending rev propagation in ``quirks="reference"``
    mode). It cannot be reopened.

    >>> async with OADACore(ServerConfig()) as core:  # doctest: +SKIP
    ...     r = await core.handle(CoreRequest("get", "/bookmarks", {"authorization": "Bearer god"}))
    ...     r.status
    200
    """

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._state = CoreState.UNOPENED
        self._store = Store(config.db)
        self._listeners: dict[str, list[ChangeListener]] = {}
        self._task_group: TaskGroup | None = None
        self._deferred = config.quirks == "reference"

    @property
    def state(self) -> CoreState:
        """Where the core is in its life cycle."""
        return self._state

    @property
    def store(self) -> Store:
        """The underlying store (for tests and maintenance tools; do not write through it)."""
        return self._store

    async def __aenter__(self) -> OADACore:
        if self._state is not CoreState.UNOPENED:
            raise RuntimeError(f"OADACore cannot be opened when {self._state.value}")
        self._store.open()
        if self._deferred:
            task_group = anyio.create_task_group()
            await task_group.__aenter__()
            self._task_group = task_group
        self._state = CoreState.OPEN
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._task_group is not None:
                task_group, self._task_group = self._task_group, None
                await task_group.__aexit__(exc_type, exc, tb)
        finally:
            self._state = CoreState.CLOSED
            self._listeners.clear()
            self._store.close()

    # -- public API -----------------------------------------------------------

    async def handle(self, request: CoreRequest) -> CoreResponse:
        """Serve one request; never raises for a bad request.

        Errors come back as JSON ``{"statusCode", "error", "message"}``.
        """
        if self._state is not CoreState.OPEN:
            return error_response(503, "the server is not running")
        try:
            return self._dispatch(request)
        except _Reject as exc:
            return error_response(exc.status, exc.message, exc.headers)
        except Exception:
            logger.exception("%s %s failed", request.method.upper(), request.path)
            return error_response(500, "Internal Server Error")

    def subscribe(self, resource_id: str, listener: ChangeListener) -> Callable[[], None]:
        """Call *listener* after every committed change of *resource_id*.

        Returns a function that removes the listener (idempotent).
        """
        self._listeners.setdefault(resource_id, []).append(listener)

        def unsubscribe() -> None:
            listeners = self._listeners.get(resource_id)
            if listeners and listener in listeners:
                listeners.remove(listener)
                if not listeners:
                    del self._listeners[resource_id]

        return unsubscribe

    def changes_since(self, resource_id: str, rev: int) -> list[tuple[int, list[dict[str, Any]]]]:
        """Every ``(rev, change_array)`` of *resource_id* after *rev*, oldest first."""
        return [
            (r, self.change_array(resource_id, r))
            for r in self._store.change_revs(resource_id, rev)
        ]

    def current_rev(self, resource_id: str) -> int:
        """The resource's ``_rev``, 0 when it does not exist."""
        res = self._store.get(resource_id)
        return res.rev if res is not None else 0

    def change_array(self, resource_id: str, rev: int) -> list[dict[str, Any]]:
        """The nested change array of *resource_id* at *rev* (§4.1); ``[]`` if unknown.

        Rev 0 is a synthetic whole-resource delete, as on the reference server.
        """
        if rev == 0:
            return [{"resource_id": resource_id, "path": "", "body": None, "type": "delete"}]
        rec = self._store.change(resource_id, rev)
        return self._assemble(rec) if rec is not None else []

    # -- routing ----------------------------------------------------------------

    def _dispatch(self, req: CoreRequest) -> CoreResponse:
        method = req.method.lower()
        raw = req.path
        if not raw.startswith("/"):
            raise self._no_route(method, raw)
        segments = _split_path(raw)
        if not segments or segments[0] not in _PREFIXES:
            if segments and segments[0] == ".well-known":
                return self._well_known(method, raw, segments, req.headers)
            raise self._no_route(method, raw)
        if method not in _METHODS:
            raise _Reject(
                405,
                f"method {method.upper()} is not supported",
                {"allow": "GET, HEAD, PUT, POST, DELETE"},
            )
        headers = req.headers
        token = token_from_header(headers.get("authorization"), self.config.tokens)
        if token is None:
            raise _Reject(401, "Unauthorized: a valid bearer token is required")
        self._ensure_roots(token)

        ensure_link = headers.get("x-oada-ensure-link")
        if ensure_link is not None:
            if method not in ("put", "post"):
                raise _Reject(
                    400, f"X-OADA-Ensure-Link is only allowed on PUT and POST, not {method.upper()}"
                )
            if ensure_link not in ("versioned", "unversioned"):
                raise _Reject(400, "Unsupported value for X-OADA-Ensure-Link")

        prefix = segments[0]
        if prefix in ("users", "authorizations"):
            return self._users(method, raw, segments, token)
        if prefix == "resources":
            if len(segments) == 1:
                if method != "post":
                    raise _Reject(404, "Not Found: name a resource, e.g. /resources/<id>")
                segments.append(ksuid())
                method = "put"
            key = segments[1]
            if "/" in key:
                raise _Reject(400, f"invalid resource id {key!r}")
            resource_id = f"resources/{key}"
            rest = segments[2:]
        else:
            resource_id = token.bookmarks if prefix == "bookmarks" else token.shares_id
            rest = segments[1:]

        if method in ("get", "head"):
            return self._read(req, token, prefix, resource_id, rest, head=method == "head")
        if prefix == "shares":
            raise _Reject(403, "writes under /shares are not allowed")
        if method == "delete":
            if prefix == "bookmarks" and not rest:
                raise _Reject(403, "the bookmarks resource cannot be deleted")
            return self._delete(req, token, resource_id, rest)
        if method == "post":
            rest.append(ksuid())
        return self._put(req, token, resource_id, rest, ensure_link)

    @staticmethod
    def _no_route(method: str, raw: str) -> _Reject:
        return _Reject(404, f"Route {method.upper()}:{raw} not found")

    def _well_known(
        self, method: str, raw: str, segments: list[str], headers: Mapping[str, str]
    ) -> CoreResponse:
        names = ("oada-configuration", "openid-configuration", "oauth-authorization-server")
        if len(segments) != 2 or segments[1] not in names:
            raise self._no_route(method, raw)
        if method not in ("get", "head"):
            raise _Reject(405, f"method {method.upper()} is not supported", {"allow": "GET, HEAD"})
        scheme = headers.get("x-forwarded-proto") or "https"
        host = headers.get("host") or "localhost"
        base = f"{scheme}://{host}"
        doc = {
            "well_known_version": "1.1.0",
            "oada_version": "0.1.0",
            "oada_base_uri": base,
            "issuer": base,
            "authorization_endpoint": f"{base}/oadaauth/auth",
            "token_endpoint": f"{base}/oadaauth/token",
            "registration_endpoint": f"{base}/oadaauth/register",
            "token_endpoint_auth_signing_alg_values_supported": ["RS256"],
            "scopes_supported": [{"name": "oada.all.1", "read+write": True}],
        }
        body = b"" if method == "head" else dumpb(doc)
        return CoreResponse(200, dict(_JSON_HEADERS), body)

    def _users(self, method: str, raw: str, segments: list[str], token: TokenInfo) -> CoreResponse:
        if segments[0] != "users" or segments[1:] != ["me"]:
            raise _Reject(404, f"Not Found: {raw}")
        if method not in ("get", "head"):
            raise _Reject(
                405,
                f"method {method.upper()} is not supported on /users/me",
                {"allow": "GET, HEAD"},
            )
        doc = {
            "_id": token.user,
            "username": token.user.removeprefix("users/"),
            "bookmarks": {"_id": token.bookmarks},
            "shares": {"_id": token.shares_id},
        }
        headers = {
            "content-type": "application/vnd.oada.user.1+json",
            "content-location": f"/{token.user}",
        }
        return CoreResponse(200, headers, b"" if method == "head" else dumpb(doc))

    # -- path resolution --------------------------------------------------------

    def _resolve(self, resource_id: str, rest: Sequence[str]) -> _Resolved:
        """Walk *rest* from *resource_id*, following links (protocol §1.3)."""
        store = self._store
        res = store.get(resource_id)
        start = 0
        link: tuple[str, Path] | None = None
        i = 0
        n = len(rest)
        while res is not None and i < n:
            links = store.links.get(res.id)
            node: Any = res.doc
            jumped = False
            while i < n:
                key = rest[i]
                if isinstance(node, dict) and key in node:
                    node = node[key]
                elif (
                    isinstance(node, list)
                    and key.isascii()
                    and key.isdigit()
                    and int(key) < len(node)
                ):
                    node = node[int(key)]
                else:
                    break
                i += 1
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
        leftover = list(rest[start:])
        return _Resolved(
            resource_id,
            res,
            leftover,
            link,
            ends_on_link=link is not None and start == n,
        )

    def _authorize(self, token: TokenInfo, res: Resource | None, *, write: bool) -> None:
        if res is None:
            return
        if not may_access(res.meta, token.user, write=write):
            kind = "write" if write else "read"
            raise _Reject(403, f"User does not have {kind} permission for this resource")
        if not scope_allows(token.scopes, res.type, write=write):
            raise _Reject(403, "Token does not have required scope")

    # -- reads ------------------------------------------------------------------

    def _read(
        self,
        req: CoreRequest,
        token: TokenInfo,
        prefix: str,
        resource_id: str,
        rest: list[str],
        *,
        head: bool,
    ) -> CoreResponse:
        r = self._resolve(resource_id, rest)
        res = r.resource
        headers = r.location()
        if res is None:
            if self.config.quirks == "reference" and prefix == "resources":
                raise _Reject(403, "User does not have read permission for this resource", headers)
            raise _Reject(404, "Not Found", headers)
        self._authorize(token, res, write=False)
        rev = res.rev
        etag = _etag(res.id, rev)
        headers["x-oada-rev"] = str(rev)
        headers["etag"] = etag
        headers["vary"] = "Accept"
        if_match = req.headers.get("if-match")
        if if_match is not None and not _etag_matches(if_match, res.id, rev):
            raise _Reject(412, "If-Match header does not match current resource _rev", headers)
        if_none = req.headers.get("if-none-match")
        if if_none is not None and _etag_matches(if_none, res.id, rev):
            return CoreResponse(304, headers)

        leftover = r.leftover
        media_type = res.type or "application/json"
        body: bytes
        if not leftover:
            if res.data is not None and not is_json_type(media_type):
                body = res.data
            else:
                body = self._root_json(res)
        elif leftover[0] == "_meta":
            media_type = _META_TYPE
            body = self._meta_body(res, leftover, headers)
        else:
            if res.data is not None and not is_json_type(media_type) and leftover != ["_rev"]:
                raise _Reject(501, "sub-paths of binary resources cannot be read", headers)
            value = lookup(res.doc, leftover)
            if value is MISSING or value is None:
                raise _Reject(404, "Not Found", headers)
            body = dumpb(value)
        accept = req.headers.get("accept")
        if accept and not _accepts(accept, media_type):
            raise _Reject(406, f"cannot produce {media_type} for Accept: {accept}", headers)
        headers["content-type"] = media_type
        return CoreResponse(200, headers, b"" if head else body)

    @staticmethod
    def _root_json(res: Resource) -> bytes:
        cached = res.root_json
        if cached is None:
            body = dict(res.doc)
            body["_meta"] = {"_id": f"{res.id}/_meta", "_rev": res.rev}
            cached = res.root_json = dumpb(body)
        return cached

    def _meta_body(self, res: Resource, leftover: list[str], headers: dict[str, str]) -> bytes:
        if len(leftover) >= 2 and leftover[1] == "_changes":
            if len(leftover) == 2:
                return dumpb(
                    {
                        str(r): {"_rev": r, "_id": f"{res.id}/_meta/_changes/{r}"}
                        for r in self._store.change_revs(res.id)
                    }
                )
            rev_text = leftover[2]
            if len(leftover) == 3 and rev_text.isascii() and rev_text.isdigit():
                return dumpb(self.change_array(res.id, int(rev_text)))
            raise _Reject(404, "Not Found", headers)
        value = lookup(res.doc, leftover)
        if value is MISSING or value is None:
            raise _Reject(404, "Not Found", headers)
        return dumpb(value)

    # -- writes -----------------------------------------------------------------

    def _check_preconditions(
        self, req: CoreRequest, resource_id: str, rev: int, headers: dict[str, str]
    ) -> None:
        if_match = req.headers.get("if-match")
        if if_match is not None and not _etag_matches(if_match, resource_id, rev):
            raise _Reject(412, "If-Match header does not match current resource _rev", headers)
        if_none = req.headers.get("if-none-match")
        if if_none is not None and _etag_matches(if_none, resource_id, rev):
            raise _Reject(412, "If-None-Match header contains current resource _rev", headers)

    def _put(
        self,
        req: CoreRequest,
        token: TokenInfo,
        resource_id: str,
        rest: list[str],
        ensure_link: str | None,
    ) -> CoreResponse:
        body = req.body
        if len(body) > self.config.max_body_bytes:
            raise _Reject(
                413,
                f"the body is {len(body)} bytes; at most {self.config.max_body_bytes} are accepted",
            )
        content_type = req.headers.get("content-type")
        if not content_type or not content_type.strip():
            raise _Reject(400, "No content type specified")
        media_type = content_type.split(";", 1)[0].strip().lower()
        value: Any = None
        data: bytes | None = None
        if is_json_type(media_type):
            try:
                value = parse_json(body)
            except BadDocument as exc:
                raise _Reject(400, str(exc)) from None
        else:
            data = body
        ignore_links = req.headers.get("x-oada-ignore-links", "").strip().lower() == "true"

        if ensure_link is not None:
            # Make a fresh resource from the body, then link it at the path.
            new_id = f"resources/{ksuid()}"
            self._write(req, token, new_id, [], media_type, value, data, ignore_links, check=False)
            link: dict[str, Any] = {"_id": new_id}
            if ensure_link == "versioned":
                link["_rev"] = 0
            return self._write(
                req, token, resource_id, rest, "application/json", link, None, False, check=True
            )
        return self._write(
            req, token, resource_id, rest, media_type, value, data, ignore_links, check=True
        )

    def _write(
        self,
        req: CoreRequest,
        token: TokenInfo,
        resource_id: str,
        rest: list[str],
        media_type: str,
        value: Any,
        data: bytes | None,
        ignore_links: bool,
        *,
        check: bool,
    ) -> CoreResponse:
        r = self._resolve(resource_id, rest)
        res = r.resource
        headers = r.location()
        self._authorize(token, res, write=True)
        if check:
            self._check_preconditions(req, r.resource_id, res.rev if res else 0, headers)
        leftover = r.leftover
        if data is not None and leftover:
            raise _Reject(
                400,
                f"a {media_type} body can only be written at a resource root,"
                f" e.g. PUT /resources/<id>; got {pointer(leftover)} inside {r.resource_id}",
                headers,
            )
        path = tuple(leftover)
        found: list[tuple[Path, dict[str, Any]]] = []
        if data is None:
            self._validate_body(r.resource_id, path, value, found, headers)
            if not ignore_links:
                store = self._store
                for _, link in found:
                    if "_rev" in link:
                        target = store.get(link["_id"])
                        link["_rev"] = target.rev if target is not None else 0
        batch = Batch()
        fragment = nest(path, value) if data is None else {}
        rec = self._apply(batch, token.user, r.resource_id, res, fragment, media_type, data)
        if data is None and (found or r.resource_id in self._store.links):
            self._update_edges(batch, r.resource_id, (), fragment, ignore_links)
        self._commit(batch, [rec])
        headers["x-oada-rev"] = str(rec.rev)
        headers["etag"] = _etag(r.resource_id, rec.rev)
        return CoreResponse(201, headers)

    def _validate_body(
        self,
        resource_id: str,
        path: Path,
        value: Any,
        found: list[tuple[Path, dict[str, Any]]],
        headers: dict[str, str],
    ) -> None:
        if not path and not isinstance(value, dict):
            raise _Reject(
                400,
                f"expected a JSON object at the root of {resource_id},"
                f" got {type(value).__name__ if value is not None else 'null'}",
                headers,
            )
        budget = self.config.max_depth - len(path)
        if budget < 1 or not self._scan(value, path, budget, found):
            raise _Reject(
                400,
                f"the body is nested more than {self.config.max_depth} levels deep"
                " (counting the path inside the resource)",
                headers,
            )
        root = nest(path, value)
        if isinstance(root, dict):
            ident = root.get("_id", resource_id)
            if ident != resource_id:
                raise _Reject(
                    422,
                    f"the body's _id {ident!r} does not match the resource written to,"
                    f" {resource_id!r}; to repoint a link, DELETE it first",
                    headers,
                )
            meta = root.get("_meta", {})
            if not isinstance(meta, dict):
                raise _Reject(400, "_meta must be an object", headers)
            kind = root.get("_type", "")
            if not isinstance(kind, str):
                raise _Reject(400, "_type must be a string", headers)

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
        store = self._store
        change = dict(fragment)
        user_meta = change.get("_meta")
        if res is None:
            rev = store.max_change_rev(resource_id) + 1
            kind = change.get("_type") if isinstance(change.get("_type"), str) else media_type
            meta = dict(user_meta) if isinstance(user_meta, dict) else {}
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
            change["_meta"] = meta
            change["_rev"] = rev
            res = Resource(resource_id, {"_id": resource_id})
            store.put_cached(res)
        else:
            rev = res.rev + 1
            meta = dict(user_meta) if isinstance(user_meta, dict) else {}
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
        store = self._store
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

    # -- deletes ----------------------------------------------------------------

    def _delete(
        self, req: CoreRequest, token: TokenInfo, resource_id: str, rest: list[str]
    ) -> CoreResponse:
        r = self._resolve(resource_id, rest)
        if r.ends_on_link and r.link is not None:
            # A path ending on a link deletes the link, not its target.
            parent_id, link_path = r.link
            r = _Resolved(parent_id, self._store.get(parent_id), list(link_path))
        res = r.resource
        headers = r.location()
        if res is None:
            headers["x-oada-rev"] = "0"
            headers["etag"] = _etag(r.resource_id, 0)
            return CoreResponse(204, headers)
        self._authorize(token, res, write=True)
        self._check_preconditions(req, res.id, res.rev, headers)
        if not r.leftover:
            return self._delete_resource(res, headers)
        path = tuple(r.leftover)
        if path in _UNDELETABLE:
            raise _Reject(
                400, f"{pointer(path)} is kept by the server and cannot be deleted", headers
            )
        parent = lookup(res.doc, path[:-1])
        if not isinstance(parent, dict) or path[-1] not in parent:
            # Nothing to delete: no phantom rev (unlike the reference server).
            headers["x-oada-rev"] = str(res.rev)
            headers["etag"] = _etag(res.id, res.rev)
            return CoreResponse(204, headers)
        batch = Batch()
        del parent[path[-1]]
        self._store.remove_edges_under(batch, res.id, path, inclusive=True)
        rec = self._bump(batch, res, token.user, nest(path[:-1], {path[-1]: None}), "delete")
        self._commit(batch, [rec])
        headers["x-oada-rev"] = str(rec.rev)
        headers["etag"] = _etag(res.id, rec.rev)
        return CoreResponse(204, headers)

    def _delete_resource(self, res: Resource, headers: dict[str, str]) -> CoreResponse:
        batch = Batch()
        store = self._store
        store.clear_edges(batch, res.id)
        batch.deleted.add(res.id)
        store.delete_cached(res.id)
        rec = ChangeRecord(res.id, res.rev + 1, "delete", None)
        batch.changes.append(rec)
        self._commit(batch, [rec])
        headers["x-oada-rev"] = "0"
        headers["etag"] = _etag(res.id, 0)
        return CoreResponse(204, headers)

    def _bump(
        self, batch: Batch, res: Resource, user: str, fragment: dict[str, Any], kind: str
    ) -> ChangeRecord:
        """Record a change whose effect on ``res.doc`` was already applied."""
        rev = res.rev + 1
        now = time.time()
        change = dict(fragment)
        change["_meta"] = {"modifiedBy": user, "modified": now, "_rev": rev}
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

    # -- rev graph, commit, notification ----------------------------------------

    def _propagate(self, batch: Batch, roots: list[ChangeRecord]) -> None:
        """Bump every parent holding a versioned link to a changed resource (§3).

        Breadth first; each parent write carries its own rev and points at the
        child changes that caused it. A resource is never bumped again by a
        change it caused itself (the cause chain), so cycles end.
        """
        store = self._store
        level: list[tuple[ChangeRecord, frozenset[str]]] = [
            (rec, frozenset((rec.resource_id,))) for rec in roots
        ]
        while level:
            groups: dict[str, tuple[list[tuple[Path, ChangeRecord]], set[str]]] = {}
            for rec, chain in level:
                parents = store.versioned_parents.get(rec.resource_id)
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
                for path, child in items:
                    child_rev = 0 if child.body is None else child.rev
                    link = lookup(parent.doc, path)
                    if not isinstance(link, dict):
                        continue
                    current = link.get("_rev")
                    if child_rev and isinstance(current, int) and current >= child_rev:
                        # Linked after this change (deferred propagation):
                        # the link already names this rev or a newer one.
                        continue
                    link["_rev"] = child_rev
                    merge(fragment, nest(path, {"_rev": child_rev}))
                    children.append((pointer(path), child.resource_id, child.rev))
                if not children:
                    continue
                rec = self._bump(batch, parent, _SYSTEM_USER, fragment, "merge")
                rec.children = children
                causes.add(parent_id)
                level.append((rec, frozenset(causes)))

    def _commit(self, batch: Batch, roots: list[ChangeRecord]) -> None:
        """Propagate (unless deferred), commit, then notify listeners."""
        if not self._deferred:
            self._propagate(batch, roots)
        self._save(batch)
        if self._deferred and self._task_group is not None:
            self._task_group.start_soon(self._propagate_later, roots)

    async def _propagate_later(self, roots: list[ChangeRecord]) -> None:
        if self._state is not CoreState.OPEN:
            return
        batch = Batch()
        self._propagate(batch, roots)
        if batch.changes:
            try:
                self._save(batch)
            except Exception:
                logger.exception("rev propagation failed")

    def _save(self, batch: Batch) -> None:
        try:
            self._store.commit(batch)
        except sqlite3.Error:
            self._store.discard(batch.touched())
            raise
        self._notify(batch.changes)

    def _notify(self, changes: list[ChangeRecord]) -> None:
        listeners = self._listeners
        if not listeners:
            return
        for rec in changes:
            subscribed = listeners.get(rec.resource_id)
            if not subscribed:
                continue
            array = self._assemble(rec)
            for listener in list(subscribed):
                try:
                    listener(rec.resource_id, rec.rev, array)
                except Exception:
                    logger.exception("change listener for %s failed", rec.resource_id)

    def _assemble(self, root: ChangeRecord) -> list[dict[str, Any]]:
        """The nested change array of *root*: its own change, then descendants by depth."""
        store = self._store
        out: list[dict[str, Any]] = []
        level: list[tuple[ChangeRecord, str]] = [(root, "")]
        depth = 0
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

    # -- users' root resources ----------------------------------------------------

    def _ensure_roots(self, token: TokenInfo) -> None:
        """Create the token user's bookmarks and shares on first use."""
        store = self._store
        for resource_id, kind in (
            (token.bookmarks, _BOOKMARKS_TYPE),
            (token.shares_id, _SHARES_TYPE),
        ):
            if store.get(resource_id) is None:
                batch = Batch()
                rec = self._apply(batch, token.user, resource_id, None, {}, kind, None)
                self._commit(batch, [rec])
