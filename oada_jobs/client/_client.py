"""The async OADA client: requests, trees, watches, clones.

Owns :class:`OADAClient`, its shared connections and the request path
(retries, limits, auth); it is the only module of the client that knows the
client, and it must not import the framework or the server. The class and
the file are longer than the ~300 and ~600 lines kept to elsewhere, for one
reason: the client's public API is here, one method per OADA verb with its
docstring.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import ssl
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload
from weakref import WeakSet

from pydantic import BaseModel, ConfigDict, Field

from .._ksuid import ksuid
from .._retry import retry
from .._version import __version__
from ..exceptions import (
    ClientClosed,
    OADAError,
    OADATimeout,
    OADATransportError,
    ServerError,
    TooManyRequests,
)
from . import _tracing
from ._common import BaseURL, ClosesOnExit, dumps, make_ssl_context, new_request_id, parse_domain
from ._http import ConnectFailed, HTTPTransport
from ._response import Change, Response, status_error
from ._tree import choose_content_type, path_exists, tree_get, tree_put
from ._watch import Watch, WatchType
from ._ws import WSConnection

if TYPE_CHECKING:
    import httpx

__all__ = ["ClientState", "Connection", "OADAClient"]

logger = logging.getLogger("oada_jobs.client")

Connection = Literal["ws", "http", "auto"]

T = TypeVar("T")

_IDEMPOTENT_READS = frozenset({"get", "head"})
_BINARY = (bytes, bytearray, memoryview)


class ClientState(StrEnum):
    """Where an :class:`OADAClient` is in its life."""

    #: constructed; ``async with`` has not opened it yet
    UNOPENED = "unopened"
    #: open: requests and watches are accepted
    OPEN = "open"
    #: closed (or, for a clone, revoked): everything raises ClientClosed
    CLOSED = "closed"


class _Options(BaseModel):
    """The client's keyword options, validated once at construction."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    connection: Connection = "auto"
    concurrency: int = Field(default=10, ge=1)
    timeout: float = Field(default=30.0, gt=0)
    connect_timeout: float = Field(default=10.0, gt=0)
    retries: int = Field(default=5, ge=0)
    max_backoff: float = Field(default=5.0, gt=0)
    max_retry_after: float = Field(default=60.0, ge=0)
    watch_deadline: float = Field(default=120.0, gt=0)
    user_agent: str = f"oada-jobs/{__version__}"


class _Shared:
    """Connections, limits and state shared by a client and all of its clones."""

    def __init__(
        self,
        base: BaseURL,
        options: _Options,
        ssl_context: ssl.SSLContext,
        transport: httpx.AsyncBaseTransport | None,
    ) -> None:
        self.base = base
        self.options = options
        self.ssl_context = ssl_context
        self.transport = transport
        self.state = ClientState.UNOPENED
        self.mode: Literal["ws", "http"] = "http" if options.connection == "http" else "ws"
        #: Requests in flight (an asyncio semaphore: anyio's limiter tracks
        #: the borrowing task, which costs more than the rest of a free slot).
        self.limiter: asyncio.Semaphore | None = None
        self.http: HTTPTransport | None = None
        self.ws: WSConnection | None = None
        self.stack: AsyncExitStack | None = None


def check_token(token: Any) -> str:
    if not isinstance(token, str) or not token:
        raise ValueError("expected the token as a non-empty string")
    if any(ch.isspace() or not ch.isprintable() for ch in token):
        # Never echo the token: say only what is wrong with it.
        raise ValueError("the token contains whitespace or control characters")
    return token


_BAD_PATH = re.compile(r"[?#\s\x00-\x1f\x7f]")


def check_path(path: Any) -> str:
    if not isinstance(path, str) or not path.strip("/"):
        if path == "/" or path == "":
            raise ValueError("expected an OADA path like '/bookmarks/x', got the server root")
        raise ValueError(f"expected an OADA path like '/bookmarks/x', got {path!r}")
    if _BAD_PATH.search(path):
        raise ValueError(
            f"expected a path without query, fragment, whitespace or control characters, got {path!r}"
        )
    return path if path[0] == "/" else f"/{path}"


def _retryable(error: BaseException, method: str) -> bool:
    """Whether *error* may be retried without risking a write applied twice.

    - never sent (connection refused): always;
    - 429, and 503 (the server says it did not take the request): PUT,
      DELETE, GET and HEAD always; POST only when 503 carries Retry-After;
    - other transport failures and other 5xx: only GET and HEAD. A PUT is
      a deep merge, so replaying it would leave the same document, but it
      would also make a second rev and a second change for every watcher,
      and a replayed If-Match PUT fails with 412 after the first one
      landed; a DELETE replay is not a no-op on every server. So PUT and
      DELETE are not retried once they may have reached the server;
    - timeouts: never (the timeout is the caller's bound).
    """
    if isinstance(error, ConnectFailed):
        return True
    if isinstance(error, OADATimeout):
        return False
    if isinstance(error, OADATransportError):
        return method in _IDEMPOTENT_READS
    if isinstance(error, TooManyRequests):
        return True
    if isinstance(error, ServerError):
        if error.status == 503:
            return method != "post" or error.retry_after is not None
        return method in _IDEMPOTENT_READS
    return False


class OADAClient(ClosesOnExit):
    """An async client for one OADA server and token.

    >>> async with OADAClient("https://oada.example.org", token) as oada:  # doctest: +SKIP
    ...     response = await oada.get("/bookmarks")
    ...     print(response.data, response.rev)

    Parameters (all but *domain* and *token* keyword-only):

    domain
        ``https://host[:port]``, ``http://host[:port]`` or ``host[:port]``;
        without a scheme ``https`` is used, except ``localhost``,
        ``127.0.0.1`` and ``::1`` which get ``http``.
    token
        The bearer token. It never appears in errors, reprs or logs.
    connection
        ``"ws"``: every request over one multiplexed WebSocket. ``"http"``:
        requests over HTTP (keep-alive, up to *concurrency* connections), a
        WebSocket only for watches. ``"auto"`` (default): try the WebSocket
        when the client opens and use it if it works, else HTTP. With a
        *transport*, ``"auto"`` means HTTP.
    concurrency
        How many requests may be in flight at once (shared with clones).
    timeout
        Seconds one request attempt may take before :class:`OADATimeout`.
    transport
        An :class:`httpx.AsyncBaseTransport` for the HTTP side (tests pass
        ``httpx.MockTransport``).
    verify
        TLS verification: ``True``, ``False`` (development only), the path of
        a CA bundle (the embedded server's certificate) or an ``SSLContext``.
    retries
        How many times a transient failure is retried (see docs/client.md).
    watch_deadline
        Seconds a watch may stay disconnected before iterating it raises
        :class:`WatchLost`.

    Construction does no I/O and raises :class:`ValueError` for a malformed
    domain, token or option.
    """

    def __init__(
        self,
        domain: str,
        token: str,
        *,
        connection: Connection = "auto",
        concurrency: int = 10,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        verify: bool | str | os.PathLike[str] | ssl.SSLContext = True,
        retries: int = 5,
        max_backoff: float = 5.0,
        max_retry_after: float = 60.0,
        watch_deadline: float = 120.0,
        connect_timeout: float = 10.0,
        user_agent: str | None = None,
    ) -> None:
        base = parse_domain(domain)
        self._token = check_token(token)
        try:
            options = _Options(
                connection=connection,
                concurrency=concurrency,
                timeout=timeout,
                connect_timeout=connect_timeout,
                retries=retries,
                max_backoff=max_backoff,
                max_retry_after=max_retry_after,
                watch_deadline=watch_deadline,
                **({"user_agent": user_agent} if user_agent else {}),
            )
        except ValueError as error:
            raise ValueError(f"invalid OADAClient option: {error}") from None
        ssl_context = make_ssl_context(verify)
        self._shared = _Shared(base, options, ssl_context, transport)
        self._root = True
        self._revoked = False
        self._watches: WeakSet[Watch[Any]] = WeakSet()

    # -- lifecycle ----------------------------------------------------------

    @property
    def state(self) -> ClientState:
        """The client's :class:`ClientState` (a revoked clone is ``CLOSED``)."""
        return ClientState.CLOSED if self._revoked else self._shared.state

    @property
    def domain(self) -> str:
        """The server origin, e.g. ``https://oada.example.org``."""
        return self._shared.base.http

    @property
    def connection(self) -> Literal["ws", "http"]:
        """How requests travel: ``"ws"`` or ``"http"`` (``auto`` resolved on open)."""
        return self._shared.mode

    def __repr__(self) -> str:
        kind = "OADAClient" if self._root else "OADAClient clone"
        return f"<{kind} {self.domain} connection={self.connection} state={self.state.value}>"

    async def __aenter__(self) -> OADAClient:
        shared = self._shared
        if not self._root:
            self._check_open()
            return self
        if shared.state is not ClientState.UNOPENED:
            raise RuntimeError(
                f"an OADAClient can be opened once; this one is {shared.state.value}"
            )
        options = shared.options
        shared.limiter = asyncio.Semaphore(options.concurrency)
        async with AsyncExitStack() as stack:
            shared.http = HTTPTransport(
                shared.base,
                ssl_context=shared.ssl_context,
                timeout=options.timeout,
                concurrency=options.concurrency,
                transport=shared.transport,
                user_agent=options.user_agent,
            )
            stack.push_async_callback(shared.http.aclose)
            shared.ws = await stack.enter_async_context(
                WSConnection(
                    shared.base,
                    ssl_context=shared.ssl_context,
                    connect_timeout=options.connect_timeout,
                    max_backoff=options.max_backoff,
                    user_agent=options.user_agent,
                )
            )
            if options.connection == "auto":
                if shared.transport is not None:
                    shared.mode = "http"
                else:
                    try:
                        await shared.ws.connect()
                        shared.mode = "ws"
                    except OADATransportError as error:
                        logger.info("no WebSocket at %s (%s); using HTTP", self.domain, error)
                        shared.mode = "http"
            shared.stack = stack.pop_all()
        shared.state = ClientState.OPEN
        return self

    async def aclose(self) -> None:
        """Close the client. On a clone this only revokes the clone."""
        if not self._root:
            self.revoke()
            return
        shared = self._shared
        if shared.state is ClientState.CLOSED:
            return
        shared.state = ClientState.CLOSED
        self._end_watches("the client was closed")
        if shared.stack is not None:
            await shared.stack.aclose()

    def clone(self, token: str | None = None) -> OADAClient:
        """Another client on the same connections and concurrency limit.

        *token* replaces this client's token (``None`` keeps it). Closing or
        revoking the clone never closes the shared connections. Use it for
        a client scoped to one token or one job::

            scoped = oada.clone(queue_token)
            ...
            scoped.revoke()   # from now on it raises ClientClosed

        or ``async with oada.clone(token) as scoped: ...``, which revokes on
        exit.
        """
        clone = object.__new__(OADAClient)
        clone._token = self._token if token is None else check_token(token)
        clone._shared = self._shared
        clone._root = False
        clone._revoked = False
        clone._watches = WeakSet()
        return clone

    def revoke(self) -> None:
        """Refuse every further request and watch with :class:`ClientClosed`.

        Synchronous and idempotent. Requests not yet sent (waiting for a
        concurrency slot or a connection) are refused; requests already on
        the wire may still complete. Watches opened through this client end
        with :class:`ClientClosed`.
        """
        if self._revoked:
            return
        self._revoked = True
        self._end_watches("the client was revoked")

    def _end_watches(self, reason: str) -> None:
        for watch in list(self._watches):
            watch.fail(ClientClosed(reason, path=watch.path))

    def _check_open(self, method: str | None = None, path: str | None = None) -> None:
        if self._revoked:
            raise ClientClosed("the client was revoked", method=method, path=path)
        state = self._shared.state
        if state is ClientState.OPEN:
            return
        if state is ClientState.UNOPENED:
            raise ClientClosed(
                "the client is not open; use `async with OADAClient(...)`", method=method, path=path
            )
        raise ClientClosed("the client was closed", method=method, path=path)

    # -- requests -----------------------------------------------------------

    async def get(
        self,
        path: str,
        *,
        tree: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        if_match: str | None = None,
    ) -> Response:
        """GET *path*. With *tree*, also GET every linked resource the tree names below it
        and splice it into ``data`` (children that fail are logged and left as links)."""
        if tree is not None:
            return await tree_get(self._send, check_path(path), tree, headers=headers)
        return await self._send("get", path, headers=headers, if_match=if_match)

    async def head(
        self,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        if_match: str | None = None,
    ) -> Response:
        """HEAD *path*: the headers (``rev``, ``etag``) without the body."""
        return await self._send("head", path, headers=headers, if_match=if_match)

    async def put(
        self,
        path: str,
        data: Any,
        *,
        content_type: str | None = None,
        tree: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        if_match: str | None = None,
    ) -> Response:
        """Deep-merge *data* into *path*.

        With *tree*, first create and link every missing resource the tree
        puts on *path* (retried up to 5 times when a concurrent writer wins a
        race). The Content-Type is *content_type*, else ``data["_type"]``,
        else the tree node's ``_type``, else ``application/json``.
        *if_match* is an ETag exactly as received; a mismatch raises
        :class:`PreconditionFailed`.
        """
        path = check_path(path)
        if tree is not None:
            return await tree_put(
                self._send,
                path,
                data,
                tree,
                content_type=content_type,
                headers=headers,
                if_match=if_match,
            )
        return await self._write("put", path, data, content_type, headers, if_match)

    async def post(
        self,
        path: str,
        data: Any,
        *,
        content_type: str | None = None,
        tree: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        """Add *data* under a new time-ordered key below *path*.

        Without *tree* this is a POST (the server picks the key; read it from
        ``content_location``). With *tree* it is a tree PUT at
        ``<path>/<ksuid>``. A POST that may have reached the server is never
        retried.
        """
        path = check_path(path)
        if tree is not None:
            return await self.put(
                f"{path.rstrip('/')}/{ksuid()}",
                data,
                content_type=content_type,
                tree=tree,
                headers=headers,
            )
        return await self._write("post", path, data, content_type, headers, None)

    async def delete(
        self,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        if_match: str | None = None,
    ) -> Response:
        """DELETE *path* (a key, a link, or a whole ``/resources/<id>``)."""
        return await self._send("delete", path, headers=headers, if_match=if_match)

    async def ensure(
        self,
        path: str,
        data: Any,
        *,
        tree: Mapping[str, Any] | None = None,
        content_type: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        """Make sure *path* exists: HEAD it and, only when missing, PUT *data* (with *tree*).

        Returns the HEAD response when it exists, else the PUT response.
        """
        path = check_path(path)
        exists, head = await path_exists(self._send, path)
        if exists and head is not None:
            return head
        return await self.put(path, data, content_type=content_type, tree=tree, headers=headers)

    async def create_resource(self, data: Any, *, content_type: str | None = None) -> str:
        """POST *data* to ``/resources`` and return the new ``resources/<id>``."""
        response = await self.post("/resources", data, content_type=content_type)
        resource_id = response.resource_id
        if resource_id is None:
            raise OADAError(
                "the server did not say where it created the resource (no Content-Location)",
                method="post",
                path="/resources",
                status=response.status,
            )
        return resource_id

    # -- watches ------------------------------------------------------------

    @overload
    def watch(
        self,
        path: str,
        *,
        rev: int | None = None,
        type: Literal["single"] = "single",
        initial_method: Literal["head", "get"] = "head",
        deadline: float | None = None,
    ) -> Watch[Change]: ...

    @overload
    def watch(
        self,
        path: str,
        *,
        rev: int | None = None,
        type: Literal["tree"],
        initial_method: Literal["head", "get"] = "head",
        deadline: float | None = None,
    ) -> Watch[list[Change]]: ...

    def watch(
        self,
        path: str,
        *,
        rev: int | None = None,
        type: WatchType = "single",
        initial_method: Literal["head", "get"] = "head",
        deadline: float | None = None,
    ) -> Watch[Change] | Watch[list[Change]]:
        """Watch the resource at *path*; use the result as ``async with`` and iterate it.

        *rev*: replay every change after this rev first, then go live.
        *type*: ``"single"`` yields each :class:`Change`, ``"tree"`` each
        change array. *initial_method* ``"get"`` puts the current body in
        ``watch.response.data``. *deadline* overrides ``watch_deadline``.

        >>> async with oada.watch("/bookmarks/x", rev=5) as changes:  # doctest: +SKIP
        ...     async for change in changes:
        ...         print(change.path, change.type, change.rev)
        """
        path = check_path(path)
        if type not in ("single", "tree"):
            raise ValueError(f"expected type 'single' or 'tree', got {type!r}")
        if initial_method not in ("head", "get"):
            raise ValueError(f"expected initial_method 'head' or 'get', got {initial_method!r}")
        if rev is not None and (not isinstance(rev, int) or isinstance(rev, bool) or rev < 0):
            raise ValueError(f"expected rev as an integer >= 0 or None, got {rev!r}")
        if deadline is not None and not deadline > 0:
            raise ValueError(f"expected a deadline > 0 seconds, got {deadline!r}")
        return Watch(
            path,
            token=self._token,
            open=self._open_watch,
            close=self._close_watch,
            rev=rev,
            kind=type,
            initial_method=initial_method,
            deadline=deadline or self._shared.options.watch_deadline,
        )

    async def _open_watch(self, watch: Watch[Any]) -> None:
        self._check_open("watch", watch.path)
        ws = self._shared.ws
        assert ws is not None

        async def attempt() -> None:
            self._check_open("watch", watch.path)
            await ws.watches.open(watch, answer_within=self._shared.options.timeout)

        await self._with_retries(attempt, "get")
        self._watches.add(watch)
        if self.state is not ClientState.OPEN:
            # Revoked or closed while the server was answering.
            watch.fail(ClientClosed("the client was revoked or closed", path=watch.path))

    async def _close_watch(self, watch: Watch[Any]) -> None:
        self._watches.discard(watch)
        ws = self._shared.ws
        if ws is not None:
            await ws.watches.close(watch)

    # -- the request path ---------------------------------------------------

    async def _write(
        self,
        method: str,
        path: str,
        data: Any,
        content_type: str | None,
        headers: Mapping[str, str] | None,
        if_match: str | None,
    ) -> Response:
        """A plain (tree-less) PUT or POST with the content type chosen for *data*."""
        return await self._send(
            method,
            path,
            data=data,
            content_type=choose_content_type(path, data, content_type, None),
            headers=headers,
            if_match=if_match,
        )

    async def _send(
        self,
        method: str,
        path: str,
        *,
        data: Any = None,
        content_type: str | None = None,
        headers: Mapping[str, str] | None = None,
        if_match: str | None = None,
    ) -> Response:
        path = check_path(path)
        self._check_open(method, path)
        request_headers = {"authorization": f"Bearer {self._token}"}
        if headers:
            for name, value in headers.items():
                if not isinstance(name, str) or not isinstance(value, str):
                    raise ValueError(f"expected string header names and values, got {name!r}")
                request_headers[name.lower()] = value
        if content_type is not None:
            request_headers["content-type"] = content_type
        if if_match is not None:
            request_headers["if-match"] = if_match
        binary = isinstance(data, _BINARY)
        has_data = method in ("put", "post")
        use_ws = self._shared.mode == "ws" and not binary
        body: bytes | None = None
        encoded: str | None = None
        try:
            if use_ws:
                fields: dict[str, Any] = {
                    "method": method,
                    "path": path,
                    "headers": request_headers,
                }
                if has_data:
                    fields["data"] = data
                encoded = dumps(fields)
            elif has_data:
                body = bytes(data) if binary else dumps(data).encode()
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"expected JSON-serialisable data for {method.upper()} {path}, "
                f"got {type(data).__name__}: {error}"
            ) from None

        async def attempt() -> Response:
            return await self._attempt(method, path, request_headers, data, body, encoded)

        if not _tracing.active():
            return await self._with_retries(attempt, method)
        transport = "websocket" if use_ws else "http"
        with _tracing.request_span(method, path, self.domain, transport) as span:
            try:
                response = await self._with_retries(attempt, method)
            except OADAError as error:
                if error.status is not None:
                    _tracing.set_status(span, error.status)
                raise
            _tracing.set_status(span, response.status)
            return response

    async def _attempt(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        data: Any,
        body: bytes | None,
        encoded: str | None,
    ) -> Response:
        shared = self._shared
        assert shared.limiter is not None
        limiter = shared.limiter
        # (A free slot is taken without passing through the event loop.)
        await limiter.acquire()
        try:
            # Checked again here: a revoked clone sends nothing more, even
            # a request that was queued for a slot before the revocation.
            self._check_open(method, path)
            reason: str | None
            if encoded is not None:
                assert shared.ws is not None
                message: dict[str, Any] = {
                    "requestId": new_request_id(),
                    "method": method,
                    "path": path,
                }
                response, reason, _ = await shared.ws.roundtrip(
                    message,
                    answer_within=shared.options.timeout,
                    token=self._token,
                    encoded=encoded,
                )
                if (
                    response.status == 400
                    and method == "get"
                    and reason is not None
                    and "binary" in reason.lower()
                ):
                    # Binary bodies cannot travel over the WebSocket.
                    assert shared.http is not None
                    response, reason = await shared.http.send(
                        method, path, headers, body=body, token=self._token
                    )
            else:
                assert shared.http is not None
                response, reason = await shared.http.send(
                    method, path, headers, body=body, token=self._token
                )
        finally:
            limiter.release()
        if response.status >= 400:
            raise status_error(response, method=method, path=path, reason=reason, token=self._token)
        return response

    def _delay(self, error: BaseException | None, attempt: int) -> float:
        options = self._shared.options
        retry_after = getattr(error, "retry_after", None)
        if isinstance(retry_after, int | float):
            return min(float(retry_after), options.max_retry_after)
        return min(options.max_backoff, 0.1 * 2.0 ** (attempt - 1)) * (0.5 + random.random() / 2)

    async def _with_retries(self, attempt: Callable[[], Awaitable[T]], method: str) -> T:
        def retryable(error: BaseException) -> bool:
            return isinstance(error, OADAError) and _retryable(error, method)

        def retrying(error: BaseException, seconds: float) -> None:
            logger.debug("retrying %s after %s", method.upper(), type(error).__name__)

        return await retry(
            attempt,
            retryable=retryable,
            delay=self._delay,
            retries=self._shared.options.retries,
            on_retry=retrying,
        )
