"""What a client shares with its clones: options, connections, concurrency limit, state.

Owns :class:`Connections`: the validated options, the HTTP transport and the
WebSocket (made when the client opens, closed with it), the concurrency
limit, the transport requests take (``auto`` resolved on open) and the
:class:`ClientState`. It sends nothing itself, and must not import
``_client`` or ``_request`` (nor the framework or the server).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from contextlib import AsyncExitStack
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .._version import __version__
from ..exceptions import OADATransportError
from ._common import BaseURL
from ._http import HTTPTransport
from ._ws import WSConnection

if TYPE_CHECKING:
    import httpx

__all__ = ["ClientState", "Connection", "Connections", "Options"]

logger = logging.getLogger("oada_jobs.client")

Connection = Literal["ws", "http", "auto"]


class ClientState(StrEnum):
    """Where an :class:`OADAClient` is in its life."""

    #: constructed; ``async with`` has not opened it yet
    UNOPENED = "unopened"
    #: open: requests and watches are accepted
    OPEN = "open"
    #: closed (or, for a clone, revoked): everything raises ClientClosed
    CLOSED = "closed"


class Options(BaseModel):
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

    @classmethod
    def of_client(cls, *, user_agent: str | None, **options: Any) -> Options:
        """The options as the client was given them (``user_agent=None``: the default).

        Raises :class:`ValueError` naming the option that is wrong.
        """
        try:
            return cls(**options, **({"user_agent": user_agent} if user_agent else {}))
        except ValueError as error:
            raise ValueError(f"invalid OADAClient option: {error}") from None


class Connections:
    """Connections, limits and state shared by a client and all of its clones."""

    def __init__(
        self,
        base: BaseURL,
        options: Options,
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

    async def open(self) -> None:
        """Make the transports (and, for ``auto``, try the WebSocket); once only."""
        if self.state is not ClientState.UNOPENED:
            raise RuntimeError(f"an OADAClient can be opened once; this one is {self.state.value}")
        options = self.options
        self.limiter = asyncio.Semaphore(options.concurrency)
        async with AsyncExitStack() as stack:
            self.http = HTTPTransport(
                self.base,
                ssl_context=self.ssl_context,
                timeout=options.timeout,
                concurrency=options.concurrency,
                transport=self.transport,
                user_agent=options.user_agent,
            )
            stack.push_async_callback(self.http.aclose)
            self.ws = await stack.enter_async_context(
                WSConnection(
                    self.base,
                    ssl_context=self.ssl_context,
                    connect_timeout=options.connect_timeout,
                    max_backoff=options.max_backoff,
                    user_agent=options.user_agent,
                )
            )
            if options.connection == "auto":
                self.mode = await self._probe(self.ws)
            self.stack = stack.pop_all()
        self.state = ClientState.OPEN

    async def _probe(self, ws: WSConnection) -> Literal["ws", "http"]:
        """``auto``: the WebSocket if it opens, else HTTP (always HTTP with a *transport*)."""
        if self.transport is not None:
            return "http"
        try:
            await ws.connect()
        except OADATransportError as error:
            logger.info("no WebSocket at %s (%s); using HTTP", self.base.http, error)
            return "http"
        return "ws"

    async def aclose(self) -> None:
        """Close the transports; from now on the state is ``CLOSED``."""
        self.state = ClientState.CLOSED
        if self.stack is not None:
            await self.stack.aclose()
