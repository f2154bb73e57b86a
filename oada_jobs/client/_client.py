"""The async OADA client's public face: :class:`OADAClient`, one method per OADA verb.

Owns the client's public API: construction and its checks, opening and
closing, clones and revocation, and the verbs, which hand their requests to
the client's :class:`Requester` (``_request``) over the :class:`Connections`
it shares with its clones (``_connections``). Must not import the framework
or the server.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, overload

from ..exceptions import OADAError
from ._common import ClosesOnExit, make_ssl_context, parse_domain
from ._connections import ClientState, Connection, Connections, Options
from ._request import Requester, check_path
from ._response import Change, Response
from ._tree import path_exists, tree_get
from ._watch import Watch, WatchType

if TYPE_CHECKING:
    import httpx

__all__ = ["ClientState", "Connection", "OADAClient"]


def check_token(token: Any) -> str:
    if not isinstance(token, str) or not token:
        raise ValueError("expected the token as a non-empty string")
    if any(ch.isspace() or not ch.isprintable() for ch in token):
        # Never echo the token: say only what is wrong with it.
        raise ValueError("the token contains whitespace or control characters")
    return token


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
        token = check_token(token)
        options = Options.of_client(
            connection=connection,
            concurrency=concurrency,
            timeout=timeout,
            connect_timeout=connect_timeout,
            retries=retries,
            max_backoff=max_backoff,
            max_retry_after=max_retry_after,
            watch_deadline=watch_deadline,
            user_agent=user_agent,
        )
        self._shared = Connections(base, options, make_ssl_context(verify), transport)
        self._root = True
        self._requests = Requester(self._shared, token)

    # -- lifecycle ----------------------------------------------------------

    @property
    def state(self) -> ClientState:
        """The client's :class:`ClientState` (a revoked clone is ``CLOSED``)."""
        return ClientState.CLOSED if self._requests.revoked else self._shared.state

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
        if self._root:
            await self._shared.open()
        else:
            self._requests.check_open()
        return self

    async def aclose(self) -> None:
        """Close the client. On a clone this only revokes the clone."""
        if not self._root:
            self.revoke()
        elif self._shared.state is not ClientState.CLOSED:
            self._requests.end_watches("the client was closed")
            await self._shared.aclose()

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
        clone._shared = self._shared
        clone._root = False
        token = self._requests.token if token is None else check_token(token)
        clone._requests = Requester(self._shared, token)
        return clone

    def revoke(self) -> None:
        """Refuse every further request and watch with :class:`ClientClosed`.

        Synchronous and idempotent. Requests not yet sent (waiting for a
        concurrency slot or a connection) are refused; requests already on
        the wire may still complete. Watches opened through this client end
        with :class:`ClientClosed`.
        """
        self._requests.revoke()

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
            return await tree_get(self._requests.send, check_path(path), tree, headers=headers)
        return await self._requests.send("get", path, headers=headers, if_match=if_match)

    async def head(
        self,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        if_match: str | None = None,
    ) -> Response:
        """HEAD *path*: the headers (``rev``, ``etag``) without the body."""
        return await self._requests.send("head", path, headers=headers, if_match=if_match)

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
        return await self._requests.write("put", path, data, content_type, tree, headers, if_match)

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
        return await self._requests.write("post", path, data, content_type, tree, headers, None)

    async def delete(
        self,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        if_match: str | None = None,
    ) -> Response:
        """DELETE *path* (a key, a link, or a whole ``/resources/<id>``)."""
        return await self._requests.send("delete", path, headers=headers, if_match=if_match)

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
        exists, head = await path_exists(self._requests.send, path)
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
        return self._requests.watch(path, rev, type, initial_method, deadline)
