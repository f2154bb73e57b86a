"""The HTTP side of the client: one pooled :class:`httpx.AsyncClient`.

httpx is imported, and the pool made, on the first HTTP request: a client
on the WebSocket may never send one, and importing httpx (with its command
line's libraries, when they are installed) was about 45 ms, a quarter of
the imports of a service.

Owns the HTTP transport; may use ``_common`` and ``_response``, must not
import ``_client``, the framework or the server.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any

from ..exceptions import OADATimeout, OADATransportError, redact
from ._common import BaseURL, is_json_type, loads
from ._response import Response

if TYPE_CHECKING:
    import httpx

__all__ = ["ConnectFailed", "ConnectionLost", "HTTPTransport"]


class ConnectFailed(OADATransportError):
    """No connection could be made, so the request certainly never left."""


class ConnectionLost(OADATransportError):
    """The connection broke after the request was sent; it may have been applied."""


class HTTPTransport:
    """Send OADA requests over HTTP/1.1 with keep-alive connections."""

    def __init__(
        self,
        base: BaseURL,
        *,
        ssl_context: ssl.SSLContext,
        timeout: float,
        concurrency: int,
        transport: httpx.AsyncBaseTransport | None,
        user_agent: str,
    ) -> None:
        def pool() -> httpx.AsyncClient:
            import httpx

            return httpx.AsyncClient(
                base_url=base.http,
                transport=transport,
                verify=ssl_context,
                timeout=httpx.Timeout(timeout),
                limits=httpx.Limits(
                    max_connections=concurrency, max_keepalive_connections=concurrency
                ),
                headers={"user-agent": user_agent},
                # Redirects are answers (OADA only redirects /.well-known).
                follow_redirects=False,
            )

        self._new_pool = pool
        self._pool: httpx.AsyncClient | None = None

    def _client(self) -> httpx.AsyncClient:
        if self._pool is None:
            self._pool = self._new_pool()
        return self._pool

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()

    async def send(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        *,
        data: Any = None,
        body: bytes | None = None,
        token: str,
    ) -> tuple[Response, str | None]:
        """Send one request; return the response and its reason phrase.

        Raises :class:`ConnectFailed` when the request never left,
        :class:`OADATimeout` on a timeout and :class:`ConnectionLost` for any
        other transport failure.
        """
        client = self._client()
        import httpx

        try:
            answer = await client.request(method.upper(), path, headers=headers, content=body)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as error:
            raise ConnectFailed(
                redact(f"could not connect: {error!s}", token), method=method, path=path
            ) from None
        except httpx.TimeoutException as error:
            raise OADATimeout(
                redact(f"timed out: {type(error).__name__}", token), method=method, path=path
            ) from None
        except (httpx.TransportError, OSError) as error:
            raise ConnectionLost(
                redact(f"connection failed: {type(error).__name__}: {error!s}", token),
                method=method,
                path=path,
            ) from None
        response_headers = dict(answer.headers.items())
        content = answer.content
        value: Any = None
        if content:
            if is_json_type(response_headers.get("content-type")):
                try:
                    value = loads(content)
                except ValueError:
                    value = content
            else:
                value = content
        return Response(answer.status_code, response_headers, value), answer.reason_phrase
