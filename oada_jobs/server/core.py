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
in :mod:`oada_jobs.server.graph`; this module adds the validation edge,
routing and tokens, and hands a routed request to its part: reads to
:mod:`oada_jobs.server.reads`, writes to :mod:`oada_jobs.server.writes`
(authorized through :mod:`oada_jobs.server.guard`), their commit to
:mod:`oada_jobs.server.commits`.

Owns request handling without a transport; must not import the framework,
the client or a transport.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from types import TracebackType
from typing import Any

import anyio
from anyio.abc import TaskGroup

from oada_jobs._ksuid import ksuid
from oada_jobs._pointer import unescape
from oada_jobs.server.auth import Roots, token_from_header
from oada_jobs.server.commits import Group, GroupCommit
from oada_jobs.server.config import ServerConfig
from oada_jobs.server.edge import Reject, admit
from oada_jobs.server.graph import ChangeListener, ResourceGraph
from oada_jobs.server.guard import Guard
from oada_jobs.server.messages import (
    CoreRequest,
    CoreResponse,
    error_response,
    unsaved,
)
from oada_jobs.server.reads import Reader, no_route, user_document, well_known
from oada_jobs.server.store import Batch, Store
from oada_jobs.server.writes import Writer

__all__ = [
    "ChangeListener",
    "CoreRequest",
    "CoreResponse",
    "CoreState",
    "OADACore",
    "error_response",
]

logger = logging.getLogger(__name__)

_METHODS = frozenset({"get", "head", "put", "post", "delete"})
_PREFIXES = frozenset({"resources", "bookmarks", "shares", "users", "authorizations"})
_ROOT_TYPES = {
    "bookmarks": "application/vnd.oada.bookmarks.1+json",
    "shares": "application/vnd.oada.shares.1+json",
}


class CoreState(enum.Enum):
    """Life cycle of an :class:`OADACore`."""

    #: Created, store not opened yet.
    UNOPENED = "unopened"
    #: Store open, serving requests.
    OPEN = "open"
    #: Closed; cannot be reopened.
    CLOSED = "closed"


def _new_key() -> str:
    """A new resource key (POST, X-OADA-Ensure-Link): time-ordered."""
    return ksuid()


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
        store = self._store = Store(
            config.db,
            document_cache_size=config.document_cache_size,
            document_cache_bytes=config.document_cache_bytes,
            change_cache_bytes=config.change_cache_bytes,
        )
        graph = self._graph = ResourceGraph(store, max_depth=config.max_depth)
        self._feed = graph.feed
        self._task_group: TaskGroup | None = None
        self._commits = GroupCommit(store, graph, deferred=config.quirks == "reference")
        self._roots = Roots(config.tokens.values())
        guard = self._guard = Guard(self._roots, store.get)
        self._reader = Reader(
            graph,
            graph.feed,
            guard,
            reference_quirks=config.quirks == "reference",
            max_changes_listed=config.max_changes_listed,
        )
        self._writer = Writer(config, graph, guard, self._commits, store.get, _new_key)

    @property
    def state(self) -> CoreState:
        """Where the core is in its life cycle."""
        return self._state

    @property
    def store(self) -> Store:
        """The underlying store (for tests and maintenance tools; do not write through it)."""
        return self._store

    @property
    def _checkpointed(self) -> anyio.Event:
        """Set (and replaced) after each background checkpoint; tests wait on it."""
        return self._commits.checkpointed

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
        task_group.start_soon(self._commits.run)
        if self._store.checkpoints:
            task_group.start_soon(self._commits.checkpoint_regularly)
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
            self._commits.flush()
            self._state = CoreState.CLOSED
            self._feed.clear_listeners()
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
                return unsaved()
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
            group.steps.append(lambda ok: answer(response if ok else unsaved()))

    def _serve(self, request: CoreRequest) -> tuple[CoreResponse, Group | None]:
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
        group = self._commits.group
        if group is None:
            self._store.trim()
        return response, group

    def subscribe(self, resource_id: str, listener: ChangeListener) -> Callable[[], None]:
        """Call *listener* after every committed change of *resource_id*.

        The change arrays are not filtered for anyone: a transport passes
        each through :meth:`watch_view` with its watcher's token.

        Returns a function that removes the listener (idempotent).
        """
        return self._feed.subscribe(resource_id, listener)

    def changes_since(self, resource_id: str, rev: int) -> list[tuple[int, list[dict[str, Any]]]]:
        """Every ``(rev, change_array)`` of *resource_id* after *rev*, oldest first."""
        return self._feed.changes_since(resource_id, rev)

    def changes_page(
        self, resource_id: str, after: int, limit: int
    ) -> list[tuple[int, list[dict[str, Any]]]]:
        """Up to *limit* ``(rev, change_array)`` of *resource_id* after *after*, oldest first.

        For replays in pages: one SQLite query each, so that a transport can
        let other requests run between pages of a long history.
        """
        return self._feed.changes_page(resource_id, after, limit)

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
            return self._guard.visible(token, resource_id, change)
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
        return self._feed.change_array(resource_id, rev)

    # -- routing ----------------------------------------------------------------

    def _dispatch(self, req: CoreRequest) -> CoreResponse:
        method = req.method.lower()
        raw = req.path
        if not raw.startswith("/"):
            raise no_route(method, raw)
        segments = _split_path(raw)
        if not segments or segments[0] not in _PREFIXES:
            if segments and segments[0] == ".well-known":
                return well_known(method, raw, segments, req.headers)
            raise no_route(method, raw)
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
            return user_document(method, raw, segments, token)
        if prefix == "resources":
            if len(segments) == 1:
                if method != "post":
                    raise Reject(404, "Not Found: name a resource, e.g. /resources/<id>")
                segments.append(_new_key())
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
            return self._reader.read(req, token, prefix, resource_id, rest, head=method == "head")
        if method == "delete":
            return self._writer.delete(req, token, prefix, resource_id, rest)
        if method == "post":
            rest.append(_new_key())
        return self._writer.put(req, token, prefix, resource_id, rest, ensure_link)

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
