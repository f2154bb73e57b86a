"""The client's request path: from a verb's arguments to a Response or an OADAError.

A request is checked and encoded once, up front (path, headers, JSON body),
so nothing malformed is ever sent. Each attempt then takes a concurrency
slot, travels over the WebSocket or HTTP, and has an error status turned
into its :class:`~oada_jobs.exceptions.OADAError`; a transient failure is
retried only when that cannot apply a write twice (:func:`retryable`).

Owns :class:`Requester`, one per client or clone: its token, whether it was
revoked, and the watches opened through it. It uses the shared
:class:`Connections` and must not import ``_client`` (nor the framework or
the server).
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, TypeVar
from weakref import WeakSet

from .._ksuid import ksuid
from .._retry import retry
from ..exceptions import (
    ClientClosed,
    OADAError,
    OADATimeout,
    OADATransportError,
    ServerError,
    TooManyRequests,
)
from . import _tracing
from ._common import dumps, new_request_id
from ._connections import ClientState, Connections
from ._http import ConnectFailed
from ._response import Response, status_error
from ._tree import choose_content_type, tree_put
from ._watch import Watch, WatchType

__all__ = ["Requester", "check_path", "retryable"]

logger = logging.getLogger("oada_jobs.client")

T = TypeVar("T")

_IDEMPOTENT_READS = frozenset({"get", "head"})
_BINARY = (bytes, bytearray, memoryview)
_BAD_PATH = re.compile(r"[?#\s\x00-\x1f\x7f]")


def check_path(path: Any) -> str:
    """*path* as an absolute OADA path; :class:`ValueError` for anything else."""
    if not isinstance(path, str) or not path.strip("/"):
        if path == "/" or path == "":
            raise ValueError("expected an OADA path like '/bookmarks/x', got the server root")
        raise ValueError(f"expected an OADA path like '/bookmarks/x', got {path!r}")
    if _BAD_PATH.search(path):
        raise ValueError(
            f"expected a path without query, fragment, whitespace or control characters, got {path!r}"
        )
    return path if path[0] == "/" else f"/{path}"


def retryable(error: BaseException, method: str) -> bool:
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


def _request_headers(
    token: str,
    headers: Mapping[str, str] | None,
    content_type: str | None,
    if_match: str | None,
) -> dict[str, str]:
    """The headers to send: the bearer token, the caller's (lower-cased), then ours."""
    request_headers = {"authorization": f"Bearer {token}"}
    if headers:
        for name, value in headers.items():
            if not isinstance(name, str) or not isinstance(value, str):
                raise ValueError(f"expected string header names and values, got {name!r}")
            request_headers[name.lower()] = value
    if content_type is not None:
        request_headers["content-type"] = content_type
    if if_match is not None:
        request_headers["if-match"] = if_match
    return request_headers


def _encode(
    method: str, path: str, headers: dict[str, str], data: Any, *, use_ws: bool
) -> tuple[bytes | None, str | None]:
    """The request as its transport takes it: ``(HTTP body, None)`` or ``(None, WS message)``.

    The WebSocket message is the JSON text of the request without its
    ``requestId``. Raises :class:`ValueError` for data that is not JSON.
    """
    has_data = method in ("put", "post")
    try:
        if use_ws:
            fields: dict[str, Any] = {"method": method, "path": path, "headers": headers}
            if has_data:
                fields["data"] = data
            return None, dumps(fields)
        if has_data:
            return (bytes(data) if isinstance(data, _BINARY) else dumps(data).encode()), None
        return None, None
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"expected JSON-serialisable data for {method.upper()} {path}, "
            f"got {type(data).__name__}: {error}"
        ) from None


class Requester:
    """One client's (or clone's) requests and watches on the shared connections.

    Every request and watch passes :meth:`check_open` (twice for a request:
    again once it has a concurrency slot), so a revoked clone sends nothing
    more; its watches end with :class:`ClientClosed`.
    """

    __slots__ = ("_connections", "_watches", "revoked", "token")

    def __init__(self, connections: Connections, token: str) -> None:
        self._connections = connections
        #: the bearer token; it never appears in errors, reprs or logs
        self.token = token
        self.revoked = False
        self._watches: WeakSet[Watch[Any]] = WeakSet()

    def check_open(self, method: str | None = None, path: str | None = None) -> None:
        """Raise :class:`ClientClosed` unless the client is open and not revoked."""
        if self.revoked:
            raise ClientClosed("the client was revoked", method=method, path=path)
        state = self._connections.state
        if state is ClientState.OPEN:
            return
        if state is ClientState.UNOPENED:
            raise ClientClosed(
                "the client is not open; use `async with OADAClient(...)`", method=method, path=path
            )
        raise ClientClosed("the client was closed", method=method, path=path)

    def revoke(self) -> None:
        """Refuse every further request and watch; end the open watches (once)."""
        if not self.revoked:
            self.revoked = True
            self.end_watches("the client was revoked")

    def end_watches(self, reason: str) -> None:
        """End every watch opened through this requester with :class:`ClientClosed`."""
        for watch in list(self._watches):
            watch.fail(ClientClosed(reason, path=watch.path))

    # -- requests -----------------------------------------------------------

    async def write(
        self,
        method: str,
        path: str,
        data: Any,
        content_type: str | None,
        tree: Mapping[str, Any] | None,
        headers: Mapping[str, str] | None,
        if_match: str | None,
    ) -> Response:
        """A PUT or POST of *data*: plain, or with *tree* a tree PUT (a POST at ``<path>/<ksuid>``)."""
        path = check_path(path)
        if tree is None:
            content_type = choose_content_type(path, data, content_type, None)
            return await self.send(
                method,
                path,
                data=data,
                content_type=content_type,
                headers=headers,
                if_match=if_match,
            )
        if method == "post":
            path = f"{path.rstrip('/')}/{ksuid()}"
        return await tree_put(
            self.send,
            path,
            data,
            tree,
            content_type=content_type,
            headers=headers,
            if_match=if_match,
        )

    async def send(
        self,
        method: str,
        path: str,
        *,
        data: Any = None,
        content_type: str | None = None,
        headers: Mapping[str, str] | None = None,
        if_match: str | None = None,
    ) -> Response:
        """Send one request, retried when that is safe; raise its error otherwise."""
        path = check_path(path)
        self.check_open(method, path)
        request_headers = _request_headers(self.token, headers, content_type, if_match)
        use_ws = self._connections.mode == "ws" and not isinstance(data, _BINARY)
        body, encoded = _encode(method, path, request_headers, data, use_ws=use_ws)

        async def attempt() -> Response:
            return await self._attempt(method, path, request_headers, body, encoded)

        if not _tracing.active():
            return await self._with_retries(attempt, method)
        transport = "websocket" if use_ws else "http"
        with _tracing.request_span(method, path, self._connections.base.http, transport) as span:
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
        body: bytes | None,
        encoded: str | None,
    ) -> Response:
        shared = self._connections
        assert shared.limiter is not None
        limiter = shared.limiter
        # (A free slot is taken without passing through the event loop.)
        await limiter.acquire()
        try:
            # Checked again here: a revoked clone sends nothing more, even
            # a request that was queued for a slot before the revocation.
            self.check_open(method, path)
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
                    token=self.token,
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
                        method, path, headers, body=body, token=self.token
                    )
            else:
                assert shared.http is not None
                response, reason = await shared.http.send(
                    method, path, headers, body=body, token=self.token
                )
        finally:
            limiter.release()
        if response.status >= 400:
            raise status_error(response, method=method, path=path, reason=reason, token=self.token)
        return response

    def _delay(self, error: BaseException | None, attempt: int) -> float:
        options = self._connections.options
        retry_after = getattr(error, "retry_after", None)
        if isinstance(retry_after, int | float):
            return min(float(retry_after), options.max_retry_after)
        return min(options.max_backoff, 0.1 * 2.0 ** (attempt - 1)) * (0.5 + random.random() / 2)

    async def _with_retries(self, attempt: Callable[[], Awaitable[T]], method: str) -> T:
        def may_retry(error: BaseException) -> bool:
            return isinstance(error, OADAError) and retryable(error, method)

        def retrying(error: BaseException, seconds: float) -> None:
            logger.debug("retrying %s after %s", method.upper(), type(error).__name__)

        return await retry(
            attempt,
            retryable=may_retry,
            delay=self._delay,
            retries=self._connections.options.retries,
            on_retry=retrying,
        )

    # -- watches ------------------------------------------------------------

    def watch(
        self,
        path: str,
        rev: int | None,
        kind: WatchType,
        initial_method: Literal["head", "get"],
        deadline: float | None,
    ) -> Watch[Any]:
        """A watch on *path* that opens and closes through this requester.

        :class:`Watch` refuses options it cannot have; *deadline* ``None``
        is the client's ``watch_deadline``.
        """
        return Watch(
            check_path(path),
            token=self.token,
            open=self._open_watch,
            close=self._close_watch,
            rev=rev,
            kind=kind,
            initial_method=initial_method,
            deadline=self._connections.options.watch_deadline if deadline is None else deadline,
        )

    async def _open_watch(self, watch: Watch[Any]) -> None:
        """Put *watch* on the shared WebSocket (retried like a GET) and remember it."""
        self.check_open("watch", watch.path)
        shared = self._connections
        ws = shared.ws
        assert ws is not None

        async def attempt() -> None:
            self.check_open("watch", watch.path)
            await ws.watches.open(watch, answer_within=shared.options.timeout)

        await self._with_retries(attempt, "get")
        self._watches.add(watch)
        if self.revoked or shared.state is not ClientState.OPEN:
            # Revoked or closed while the server was answering.
            watch.fail(ClientClosed("the client was revoked or closed", path=watch.path))

    async def _close_watch(self, watch: Watch[Any]) -> None:
        """Take *watch* off the WebSocket (the server is told, best effort)."""
        self._watches.discard(watch)
        ws = self._connections.ws
        if ws is not None:
            await ws.watches.close(watch)
