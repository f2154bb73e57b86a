"""The transport-independent core of the embedded OADA server.

:class:`OADACore` takes a :class:`CoreRequest` (method, raw path, lower-case
headers, body bytes) and returns a :class:`CoreResponse`. It never raises for
a bad request: every error is a JSON body ``{"statusCode", "error",
"message"}``. Transports (HTTP, WebSocket) only translate to and from these
two dataclasses and implement watches on top of :meth:`OADACore.subscribe`
and :meth:`OADACore.changes_since`.

Everything runs on the event loop thread. A request is applied to the cached
documents without any ``await`` between reading a document and changing it,
so the event loop itself serialises writes: ``If-Match`` is a compare-and-swap.

Writes are committed in groups (group commit): the first one staged wakes a
background task, which waits one more event-loop pass and then commits
everything staged by then in one SQLite transaction. Every request
served while writes are staged, reads included, is answered only after that
commit, since it may have seen them; if the commit fails, all of them get a
500 and the cached state is reloaded from disk.

Watchers learn about changes through :data:`ChangeListener` callbacks, called
synchronously after each commit, once per changed resource (rev-graph parents
included), with that resource's nested change array (protocol §4.1). When a
resource is deleted as a whole its listeners receive
``[{"resource_id": id, "path": "", "body": None, "type": "delete"}]``; that is
the last change they get, and transports should then drop those watches.

The data semantics (resolution, merges, links, rev graph, change arrays) live
in :mod:`oada_jobs.server.graph`; this module adds routing, tokens,
permissions, preconditions and response headers.

Owns request handling without a transport; must not import the framework,
the client or a transport. The file is longer than ~600 lines because every
method's preconditions, headers and answers are decided here, in one place.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
from anyio.abc import TaskGroup

from oada_jobs._ksuid import ksuid
from oada_jobs._pointer import unescape
from oada_jobs.server.auth import Access, Roots, authorize, token_from_header
from oada_jobs.server.config import ServerConfig, TokenInfo
from oada_jobs.server.documents import (
    MISSING,
    dumpb,
    dumpb_kept,
    dumps,
    is_json_type,
    lookup,
    nest,
)
from oada_jobs.server.edge import Reject, admit, decode_json, parse_rev
from oada_jobs.server.graph import ChangeListener, Resolved, ResourceGraph
from oada_jobs.server.store import Batch, ChangeRecord, Path, Resource, Store

__all__ = [
    "ChangeListener",
    "CoreRequest",
    "CoreResponse",
    "CoreState",
    "OADACore",
    "error_response",
]

logger = logging.getLogger(__name__)

#: Seconds between background WAL checkpoints (when anything was written).
CHECKPOINT_INTERVAL = 0.25

_METHODS = frozenset({"get", "head", "put", "post", "delete"})
_PREFIXES = frozenset({"resources", "bookmarks", "shares", "users", "authorizations"})
_META_TYPE = "application/vnd.oada.meta+json"
_ROOT_TYPES = {
    "bookmarks": "application/vnd.oada.bookmarks.1+json",
    "shares": "application/vnd.oada.shares.1+json",
}
_JSON_HEADERS = {"content-type": "application/json"}
_NOT_RESERVED: tuple[str | None, str | None] = (None, None)


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


@dataclass(eq=False, slots=True)
class _Group:
    """Writes staged together, committed in one transaction."""

    #: Batches to commit (and then notify) and answers to give, in the order
    #: they were made; an answer is called with whether the commit succeeded.
    steps: list[Batch | Callable[[bool], None]] = field(default_factory=list)
    #: Changes whose rev-graph bumps follow the commit (quirks="reference").
    unpropagated: list[list[ChangeRecord]] = field(default_factory=list)
    #: Set once the group is committed or has failed.
    done: anyio.Event = field(default_factory=anyio.Event)
    ok: bool = False
    #: Set once its transaction is committed (its answers then say so).
    committed: bool = False
    #: How many of ``steps`` were handled; each is handled once.
    settled: int = 0


def _unsaved() -> CoreResponse:
    return error_response(500, "the write could not be saved; nothing was changed")


def error_response(
    status: int, message: str, headers: Mapping[str, str] | None = None
) -> CoreResponse:
    """A fastify-style JSON error response."""
    body = dumpb({"statusCode": status, "error": HTTPStatus(status).phrase, "message": message})
    out = dict(headers) if headers else {}
    out["content-type"] = "application/json"
    return CoreResponse(status, out, body)


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

    Raises ``Reject`` for segments that could be read as navigation:
    empty segments in the middle (``//``), ``.`` and ``..``.
    """
    segments = raw[1:].split("/")
    # Trailing slashes are ignored.
    while segments and segments[-1] == "":
        segments.pop()
    out = []
    for seg in segments:
        if seg in ("", ".", ".."):
            raise Reject(400, f"invalid path {raw!r}: empty, '.' and '..' segments are not allowed")
        out.append(unescape(seg))
    return out


class OADACore:
    """The OADA resource server without a transport.

    Use it as an async context manager: entering opens the store, leaving
    commits what is staged (and the rev propagation it starts in
    ``quirks="reference"`` mode) and closes it. Enter and leave it in the same
    task; it cannot be reopened.

    >>> async with OADACore(ServerConfig()) as core:  # doctest: +SKIP
    ...     r = await core.handle(CoreRequest("get", "/bookmarks", {"authorization": "Bearer god"}))
    ...     r.status
    200
    """

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._state = CoreState.UNOPENED
        self._store = Store(
            config.db,
            document_cache_size=config.document_cache_size,
            document_cache_bytes=config.document_cache_bytes,
            change_cache_bytes=config.change_cache_bytes,
        )
        self._graph = ResourceGraph(self._store, max_depth=config.max_depth)
        self._task_group: TaskGroup | None = None
        self._deferred = config.quirks == "reference"
        # The writes staged for the next commit, and the event that wakes the
        # task committing them.
        self._group: _Group | None = None
        self._group_started = anyio.Event()
        # Committed changes whose rev-graph bumps follow in the next group
        # (quirks="reference").
        self._unpropagated: list[list[ChangeRecord]] = []
        # Set (and replaced) after each background checkpoint; tests wait on it.
        self._checkpointed = anyio.Event()
        self._roots = Roots(config.tokens.values())

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
        try:
            self._create_roots()
        except BaseException:
            self._state = CoreState.CLOSED
            self._store.close()
            raise
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        task_group.start_soon(self._commit_groups)
        if self._store.checkpoints:
            task_group.start_soon(self._checkpoint_regularly)
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
                # Both background tasks would run forever; a checkpoint in
                # progress finishes first.
                task_group.cancel_scope.cancel()
                await task_group.__aexit__(exc_type, exc, tb)
        finally:
            # What is staged, and the rev propagation each commit may stage
            # after it, is committed before the store closes.
            while self._group is not None or self._unpropagated:
                self._commit_group()
            self._state = CoreState.CLOSED
            self._graph.clear_listeners()
            self._store.close()

    # -- public API -------------------------------------------------------------

    async def handle(self, request: CoreRequest) -> CoreResponse:
        """Serve one request; never raises for a bad request.

        Errors come back as JSON ``{"statusCode", "error", "message"}``. The
        answer comes once the writes it may depend on are committed.
        """
        response, group = self._serve(request)
        if group is not None:
            await group.done.wait()
            if not group.ok:
                return _unsaved()
        return response

    def submit(self, request: CoreRequest, answer: Callable[[CoreResponse], None]) -> None:
        """Serve one request and call *answer* with the response, as :meth:`handle` would.

        *answer* is called at once, or once the writes the response may
        depend on are committed. Answers are given in the order the requests
        were submitted, each right after the change notifications of its own
        writes, so a transport can pipeline requests without awaiting each.
        """
        response, group = self._serve(request)
        if group is None:
            answer(response)
        else:
            group.steps.append(lambda ok: answer(response if ok else _unsaved()))

    def _serve(self, request: CoreRequest) -> tuple[CoreResponse, _Group | None]:
        """The response, and the staged writes it must wait for (``None``: none)."""
        if self._state is not CoreState.OPEN:
            return error_response(503, "the server is not running"), None
        try:
            # The validation edge first: nothing below sees a string that is
            # not UTF-8 text, a control character in a path or header, or a
            # malformed rev.
            headers = admit(
                request.method,
                request.path,
                request.headers,
                max_path_bytes=self.config.max_path_bytes,
                max_header_bytes=self.config.max_header_bytes,
            )
            request = CoreRequest(request.method, request.path, headers, request.body)
            response = self._dispatch(request)
        except Reject as exc:
            response = error_response(exc.status, exc.message, exc.headers)
        except Exception:
            logger.exception("%s %s failed", request.method.upper(), request.path)
            response = error_response(500, "Internal Server Error")
        group = self._group
        if group is None:
            self._store.trim()
        return response, group

    def subscribe(self, resource_id: str, listener: ChangeListener) -> Callable[[], None]:
        """Call *listener* after every committed change of *resource_id*.

        The change arrays are not filtered for anyone: a transport passes
        each through :meth:`watch_view` with its watcher's token.

        Returns a function that removes the listener (idempotent).
        """
        return self._graph.subscribe(resource_id, listener)

    def changes_since(self, resource_id: str, rev: int) -> list[tuple[int, list[dict[str, Any]]]]:
        """Every ``(rev, change_array)`` of *resource_id* after *rev*, oldest first."""
        return self._graph.changes_since(resource_id, rev)

    def changes_page(
        self, resource_id: str, after: int, limit: int
    ) -> list[tuple[int, list[dict[str, Any]]]]:
        """Up to *limit* ``(rev, change_array)`` of *resource_id* after *after*, oldest first.

        For replays in pages: one SQLite query each, so that a transport can
        let other requests run between pages of a long history.
        """
        return self._graph.changes_page(resource_id, after, limit)

    def watch_view(
        self, authorization: str | None, resource_id: str, change: list[dict[str, Any]]
    ) -> list[dict[str, Any]] | None:
        """What of *change* to *resource_id* the bearer of *authorization* may see now.

        ``None`` when they may not read *resource_id* (any more): the watch
        must end. Otherwise *change* without the nested changes of resources
        they may not read. Watches pass every change they deliver or replay
        through this, so a watch is authorized as every request is.
        """
        token = token_from_header(authorization, self.config.tokens)
        if token is None:
            return None
        try:
            return self._visible(token, resource_id, change)
        except Reject:
            return None

    def current_rev(self, resource_id: str) -> int:
        """The resource's ``_rev``, 0 when it does not exist."""
        res = self._store.get(resource_id)
        return res.rev if res is not None else 0

    def change_array(self, resource_id: str, rev: int) -> list[dict[str, Any]]:
        """The nested change array of *resource_id* at *rev* (§4.1); ``[]`` if unknown.

        Rev 0 is a synthetic whole-resource delete, as on the reference server.
        """
        return self._graph.change_array(resource_id, rev)

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
            raise Reject(
                405,
                f"method {method.upper()} is not supported",
                {"allow": "GET, HEAD, PUT, POST, DELETE"},
            )
        headers = req.headers
        token = token_from_header(headers.get("authorization"), self.config.tokens)
        if token is None:
            raise Reject(401, "Unauthorized: a valid bearer token is required")

        ensure_link = headers.get("x-oada-ensure-link")
        if ensure_link is not None:
            if method not in ("put", "post"):
                raise Reject(
                    400, f"X-OADA-Ensure-Link is only allowed on PUT and POST, not {method.upper()}"
                )
            if ensure_link not in ("versioned", "unversioned"):
                raise Reject(400, "Unsupported value for X-OADA-Ensure-Link")

        prefix = segments[0]
        if prefix in ("users", "authorizations"):
            return self._users(method, raw, segments, token)
        if prefix == "resources":
            if len(segments) == 1:
                if method != "post":
                    raise Reject(404, "Not Found: name a resource, e.g. /resources/<id>")
                segments.append(ksuid())
                method = "put"
            key = segments[1]
            if "/" in key:
                raise Reject(400, f"invalid resource id {key!r}")
            resource_id = f"resources/{key}"
            rest = segments[2:]
        else:
            resource_id = token.bookmarks if prefix == "bookmarks" else token.shares_id
            rest = segments[1:]

        if method in ("get", "head"):
            return self._read(req, token, prefix, resource_id, rest, head=method == "head")
        if method == "delete":
            return self._delete(req, token, prefix, resource_id, rest)
        if method == "post":
            rest.append(ksuid())
        return self._put(req, token, prefix, resource_id, rest, ensure_link)

    @staticmethod
    def _no_route(method: str, raw: str) -> Reject:
        return Reject(404, f"Route {method.upper()}:{raw} not found")

    def _well_known(
        self, method: str, raw: str, segments: list[str], headers: Mapping[str, str]
    ) -> CoreResponse:
        names = ("oada-configuration", "openid-configuration", "oauth-authorization-server")
        if len(segments) != 2 or segments[1] not in names:
            raise self._no_route(method, raw)
        if method not in ("get", "head"):
            raise Reject(405, f"method {method.upper()} is not supported", {"allow": "GET, HEAD"})
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
            raise Reject(404, f"Not Found: {raw}")
        if method not in ("get", "head"):
            raise Reject(
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
        r = self._graph.resolve(resource_id, rest)
        res = r.resource
        self._authorize(token, self._access(r.resource_id, res, via=prefix))
        headers = r.location()
        if res is None:
            if self.config.quirks == "reference" and prefix == "resources":
                raise Reject(403, "User does not have read permission for this resource", headers)
            raise Reject(404, "Not Found", headers)
        rev = res.rev
        etag = _etag(res.id, rev)
        headers["x-oada-rev"] = str(rev)
        headers["etag"] = etag
        headers["vary"] = "Accept"
        if_match = req.headers.get("if-match")
        if if_match is not None and not _etag_matches(if_match, res.id, rev):
            raise Reject(412, "If-Match header does not match current resource _rev", headers)
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
            body = self._meta_body(token, res, leftover, headers)
        else:
            if res.data is not None and not is_json_type(media_type) and leftover != ["_rev"]:
                raise Reject(
                    404,
                    f"{media_type} resources have no sub-paths; GET the resource itself",
                    headers,
                )
            value = lookup(res.doc, leftover)
            if value is MISSING or value is None:
                raise Reject(404, "Not Found", headers)
            body = dumpb(value)
        accept = req.headers.get("accept")
        if accept and not _accepts(accept, media_type):
            raise Reject(406, f"cannot produce {media_type} for Accept: {accept}", headers)
        headers["content-type"] = media_type
        return CoreResponse(200, headers, b"" if head else body)

    @staticmethod
    def _root_json(res: Resource) -> bytes:
        cached = res.root_json
        if cached is None:
            body = res.whole()
            body["_meta"] = {"_id": f"{res.id}/_meta", "_rev": res.rev}
            cached = res.root_json = dumpb_kept(body)
        return cached

    def _meta_body(
        self, token: TokenInfo, res: Resource, leftover: list[str], headers: dict[str, str]
    ) -> bytes:
        if len(leftover) >= 2 and leftover[1] == "_changes":
            if len(leftover) == 2:
                return self._changes_listing(res)
            rev_text = leftover[2]
            # A key without digits is just not there; one with digits must
            # be a rev the store can look up.
            if len(leftover) == 3 and any(c.isdigit() for c in rev_text):
                rev = parse_rev(rev_text, "the rev after _meta/_changes/")
                if rev and rev < self._graph.first_rev(res):
                    # An earlier resource with this id: not this one's history.
                    raise Reject(404, "Not Found", headers)
                return dumpb(self._visible(token, res.id, self.change_array(res.id, rev)))
            raise Reject(404, "Not Found", headers)
        value = lookup(res.doc, leftover)
        if value is MISSING or value is None:
            raise Reject(404, "Not Found", headers)
        return dumpb(value)

    def _changes_listing(self, res: Resource) -> bytes:
        """``{"<rev>": {"_rev", "_id"}, ...}`` for the last ``max_changes_listed`` revs.

        A resource's history grows with every write, and this is built in
        one pass of the event loop: bounding it bounds how long other
        clients wait (older revs stay readable one by one). Written as text
        directly, the id escaped once: the same JSON as encoding the
        mapping, several times faster.
        """
        revs = self._graph.latest_history(res, self.config.max_changes_listed)
        prefix = dumps(f"{res.id}/_meta/_changes/")[:-1]
        items = ",".join([f'"{r}":{{"_rev":{r},"_id":{prefix}{r}"}}' for r in revs])
        return f"{{{items}}}".encode()

    # -- writes -----------------------------------------------------------------

    def _access(
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
        """What a request does to *resource_id* (now *res*), for :meth:`_authorize`."""
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

    def _visible(
        self, token: TokenInfo, resource_id: str, change: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """*change* without what *token* may not read; 403 if it may not read *resource_id*."""
        store = self._store
        self._authorize(token, self._access(resource_id, store.get(resource_id)))
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
            child = store.get(child_id) if isinstance(child_id, str) else None
            # A nested change whose resource is gone is hidden too: who may
            # have read it can no longer be told.
            if child is None or authorize(token, self._access(child.id, child)) is not None:
                hidden.append(path)
                continue
            out.append(entry)
        # Nothing hidden: the very array, which every socket shares (encoded once).
        return out if len(out) < len(change) else change

    @staticmethod
    def _authorize(token: TokenInfo, access: Access) -> None:
        """Raise 403 unless :func:`~oada_jobs.server.auth.authorize` allows *access*.

        Every read, write, create, delete and watch goes through here.
        """
        refusal = authorize(token, access)
        if refusal is not None:
            raise Reject(403, refusal)

    def _check_preconditions(
        self, req: CoreRequest, resource_id: str, rev: int, headers: dict[str, str]
    ) -> None:
        if_match = req.headers.get("if-match")
        if if_match is not None and not _etag_matches(if_match, resource_id, rev):
            raise Reject(412, "If-Match header does not match current resource _rev", headers)
        if_none = req.headers.get("if-none-match")
        if if_none is not None and _etag_matches(if_none, resource_id, rev):
            raise Reject(412, "If-None-Match header contains current resource _rev", headers)

    def _put(
        self,
        req: CoreRequest,
        token: TokenInfo,
        prefix: str,
        resource_id: str,
        rest: list[str],
        ensure_link: str | None,
    ) -> CoreResponse:
        body = req.body
        if len(body) > self.config.max_body_bytes:
            raise Reject(
                413,
                f"the body is {len(body)} bytes; at most {self.config.max_body_bytes} are accepted",
            )
        content_type = req.headers.get("content-type")
        if not content_type or not content_type.strip():
            raise Reject(400, "No content type specified")
        media_type = content_type.split(";", 1)[0].strip().lower()
        value: Any = None
        data: bytes | None = None
        if is_json_type(media_type):
            value = decode_json(
                body, max_depth=self.config.max_depth, max_items=self.config.max_body_items
            )
        else:
            data = body
        ignore_links = req.headers.get("x-oada-ignore-links", "").strip().lower() == "true"

        target = self._graph.resolve(resource_id, rest)
        res = target.resource
        new_id: str | None = None
        if ensure_link is None:
            merged = nest(target.leftover, value) if data is None else {}
            if data is not None:
                new_type: str | None = media_type
            else:
                new_type = _type_of(merged, media_type if res is None else None)
            self._authorize(
                token,
                self._access(
                    target.resource_id,
                    res,
                    via=prefix,
                    write=True,
                    new_type=new_type,
                    body=merged if isinstance(merged, dict) else None,
                ),
            )
        else:
            # Two writes: a fresh resource from the body, and a link to it.
            new_id = f"resources/{ksuid()}"
            link = nest(target.leftover, {"_id": new_id})
            self._authorize(
                token,
                self._access(
                    target.resource_id,
                    res,
                    via=prefix,
                    write=True,
                    new_type="application/json" if res is None else None,
                    body=link if isinstance(link, dict) else None,
                ),
            )
            fresh_type = media_type if data is not None else _type_of(value, media_type)
            self._authorize(
                token,
                self._access(
                    new_id,
                    None,
                    write=True,
                    new_type=fresh_type,
                    body=value if isinstance(value, dict) else None,
                ),
            )
        headers = target.location()
        rev = res.rev if res is not None else 0
        self._check_preconditions(req, target.resource_id, rev, headers)
        with self._batch() as batch:
            rec = self._put_batch(
                batch,
                token,
                target,
                resource_id,
                rest,
                headers,
                media_type,
                value,
                data,
                ignore_links,
                ensure_link,
                new_id,
            )
            self._commit(batch)
        headers["x-oada-rev"] = str(rec.rev)
        headers["etag"] = _etag(rec.resource_id, rec.rev)
        return CoreResponse(201, headers)

    def _put_batch(
        self,
        batch: Batch,
        token: TokenInfo,
        target: Resolved,
        resource_id: str,
        rest: list[str],
        headers: dict[str, str],
        media_type: str,
        value: Any,
        data: bytes | None,
        ignore_links: bool,
        ensure_link: str | None,
        new_id: str | None,
    ) -> ChangeRecord:
        if ensure_link is None or new_id is None:
            rec = self._graph.write(
                batch, token.user, target, media_type, value, data, ignore_links=ignore_links
            )
        else:
            # A fresh resource from the body, linked at the path; the answer
            # is the link write's (§2.4).
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
            self._graph.check(target, link)
            fresh = Resolved(new_id, None, [])
            self._graph.write(
                batch, token.user, fresh, media_type, value, data, ignore_links=ignore_links
            )
            target = self._graph.resolve(resource_id, rest)
            rec = self._graph.write(batch, token.user, target, "application/json", link, None)
        return rec

    def _delete(
        self, req: CoreRequest, token: TokenInfo, prefix: str, resource_id: str, rest: list[str]
    ) -> CoreResponse:
        r = self._graph.resolve(resource_id, rest)
        if r.ends_on_link and r.link is not None:
            # A path ending on a link deletes the link, not its target.
            parent_id, link_path = r.link
            r = Resolved(parent_id, self._store.get(parent_id), list(link_path))
        res = r.resource
        self._authorize(
            token,
            self._access(r.resource_id, res, via=prefix, write=True, deleted=tuple(r.leftover)),
        )
        headers = r.location()
        if res is None:
            # Preconditions hold against rev 0, as for a PUT creating it.
            self._check_preconditions(req, r.resource_id, 0, headers)
            headers["x-oada-rev"] = "0"
            headers["etag"] = _etag(r.resource_id, 0)
            return CoreResponse(204, headers)
        self._check_preconditions(req, res.id, res.rev, headers)
        if not r.leftover:
            with self._batch() as batch:
                self._graph.delete_resource(batch, res)
                self._commit(batch)
            headers["x-oada-rev"] = "0"
            headers["etag"] = _etag(res.id, 0)
            return CoreResponse(204, headers)
        path = tuple(r.leftover)
        parent = lookup(res.doc, path[:-1])
        if isinstance(parent, list):
            self._graph.refuse_inside_array(res, path, "deleted", headers)
        with self._batch() as batch:
            rec = self._graph.delete_key(batch, token.user, res, path)
            if rec is not None:
                self._commit(batch)
        # Deleting nothing makes no phantom rev (unlike the reference server).
        rev = rec.rev if rec is not None else res.rev
        headers["x-oada-rev"] = str(rev)
        headers["etag"] = _etag(res.id, rev)
        return CoreResponse(204, headers)

    # -- commit and rev propagation -------------------------------------------------

    @contextmanager
    def _batch(self) -> Iterator[Batch]:
        """A batch whose cached changes are dropped if it fails before it is staged.

        The staged writes of the open group may be among the cached changes it
        drops, so they are dropped too, and their requests fail.
        """
        batch = Batch()
        try:
            yield batch
        except BaseException:
            touched = batch.touched()
            group = self._group
            if touched and group is not None:
                self._group = None
                for step in group.steps:
                    if isinstance(step, Batch):
                        touched |= step.touched()
                self._store.discard(touched)
                self._settle(group, ok=False)
            elif touched:
                self._store.discard(touched)
            raise

    def _commit(self, batch: Batch) -> None:
        """Propagate (or, deferred, note what to propagate) and stage *batch*."""
        roots = list(batch.changes)
        if not self._deferred:
            self._graph.propagate(batch, roots)
        group = self._stage(batch)
        if self._deferred:
            group.unpropagated.append(roots)

    def _stage(self, batch: Batch) -> _Group:
        """Add *batch* to the open group (started, and its commit scheduled, if new)."""
        group = self._group
        if group is None:
            group = self._group = _Group()
            self._group_started.set()
        group.steps.append(batch)
        return group

    async def _commit_groups(self) -> None:
        """Commit each group two event-loop passes after its first write.

        This task must outlive any failure: :meth:`_commit_group` never
        raises, so a failed commit fails only the requests it held.
        """
        while True:
            await self._group_started.wait()
            # Requests read from a socket in one pass are served in the next,
            # by the connections' reader tasks; committing a pass later lets
            # those requests' writes join this transaction rather than start
            # the next. Under load that about halves the transactions
            # (docs/server.md).
            await anyio.lowlevel.checkpoint()
            self._group_started = anyio.Event()
            self._commit_group()

    def _commit_group(self) -> None:
        """Commit the open group; on any failure, :meth:`_recover` instead of raising."""
        group: _Group | None = None
        try:
            unpropagated, self._unpropagated = self._unpropagated, []
            for roots in unpropagated:
                self._propagate_later(roots)
            group, self._group = self._group, None
            if group is None:
                return
            batches = [step for step in group.steps if isinstance(step, Batch)]
            self._graph.save(batches)
            group.committed = True
            self._settle(group, ok=True)
            if self._group is None:
                self._store.trim()
        except Exception:
            logger.exception("the group commit failed; its requests are answered with 500")
            self._recover(group)

    def _recover(self, group: _Group | None) -> None:
        """Leave the store and caches as on disk after a failed commit, and answer *group*.

        Whatever failed (SQLite, an encoder, a bug), the transaction is rolled
        back and the documents the group touched are reloaded from disk when
        next used; its requests that were not answered yet get a 500, unless
        the transaction was already committed. Later groups commit as usual.
        """
        try:
            self._store.rollback()
            if group is not None and not group.committed:
                touched: set[str] = set()
                for step in group.steps:
                    if isinstance(step, Batch):
                        touched |= step.touched()
                self._store.discard(touched)
        except Exception:
            logger.exception("reloading the cached state after a failed commit failed")
        if group is not None:
            self._settle(group, ok=group.committed)
        if self._group is not None or self._unpropagated:
            # Writes staged meanwhile still get their commit.
            self._group_started.set()

    def _settle(self, group: _Group, *, ok: bool) -> None:
        """Notify watchers of a committed group and give its answers, in order.

        Never raises: a failing notification or answer is logged, and the
        steps after it are still handled (each exactly once, even when this
        is called again for the same group after a failure).
        """
        group.ok = ok
        steps = group.steps
        while group.settled < len(steps):
            step = steps[group.settled]
            group.settled += 1
            try:
                if not isinstance(step, Batch):
                    step(ok)
                elif ok:
                    self._graph.notify(step.changes)
            except Exception:
                logger.exception("answering a request or notifying its watchers failed")
        group.done.set()
        if ok and group.unpropagated:
            self._unpropagated.extend(group.unpropagated)
            group.unpropagated = []
            self._group_started.set()

    def _propagate_later(self, roots: list[ChangeRecord]) -> None:
        """Stage the rev-graph bumps caused by *roots*, committed in the previous group."""
        store = self._store
        if not any(store.parents_of(rec.resource_id) for rec in roots):
            return
        try:
            with self._batch() as batch:
                self._graph.propagate(batch, roots)
                if batch.changes:
                    self._stage(batch)
        except Exception:
            logger.exception("rev propagation failed")

    async def _checkpoint_regularly(self) -> None:
        """Checkpoint the store's WAL in a worker thread while writes come in."""
        store = self._store
        while True:
            await anyio.sleep(CHECKPOINT_INTERVAL)
            if not store.commits_since_checkpoint:
                continue
            store.commits_since_checkpoint = 0
            try:
                await anyio.to_thread.run_sync(store.checkpoint)
            except Exception:
                # Commits still checkpoint by themselves past the backstop.
                logger.exception("background WAL checkpoint failed")
            done, self._checkpointed = self._checkpointed, anyio.Event()
            done.set()

    # -- users' root resources ----------------------------------------------------

    def _create_roots(self) -> None:
        """Create every configured user's bookmarks and shares that do not exist yet.

        Done before any request is served, so nobody can create one first. A
        resource already there that its user does not own is left unused
        (every request to it is refused) and reported.
        """
        batch = Batch()
        for resource_id, (user, kind) in self._roots.reserved.items():
            res = self._store.get(resource_id)
            if res is None:
                self._graph.create(batch, user, resource_id, _ROOT_TYPES[kind])
            elif res.meta.get("_owner") != user:
                logger.error(
                    "%s is %s's %s but is owned by %r: it is not used;"
                    " delete it from the database or configure another id",
                    resource_id,
                    user,
                    kind,
                    res.meta.get("_owner"),
                )
        if batch.changes:
            self._graph.save([batch])


def _type_of(body: Any, default: str | None) -> str | None:
    """The ``_type`` a write of *body* gives its resource (*default* if it names none)."""
    kind = body.get("_type") if isinstance(body, dict) else None
    return kind if isinstance(kind, str) else default
