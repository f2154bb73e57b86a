"""Configuration of the embedded OADA server.

Everything is keyword-only and validated by pydantic, so a typo in a test or
in ``oada-jobs serve`` options fails loudly at start-up instead of silently
serving with a default.

Owns :class:`ServerConfig` and its limits; must not import the framework or
the client.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = ["DEFAULT_TOKENS", "ServerConfig", "TokenInfo"]


class TokenInfo(BaseModel):
    """Who a bearer token stands for and what it may do.

    ``user`` is the user id (``users/<sub>``), written as ``_meta._owner`` of
    every resource the token creates. ``bookmarks`` and ``shares`` are the ids
    of the user's root resources, reserved for that user and created with the
    right ``_type`` when the server starts. ``scopes`` are OADA scope strings such as ``"all:all"`` or
    ``"oada.yield:read"`` (see :mod:`oada_jobs.server.auth`).

    >>> TokenInfo(user="users/alice", bookmarks="resources/alice_bm", scopes=["all:all"])
    ... # doctest: +SKIP
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    user: str = Field(pattern=r"^users/.+")
    bookmarks: str = Field(pattern=r"^resources/[^/]+$")
    shares: str | None = Field(default=None, pattern=r"^resources/[^/]+$")
    scopes: tuple[str, ...] = ("all:all",)

    @property
    def shares_id(self) -> str:
        """The shares resource id: ``shares`` or one derived from ``bookmarks``."""
        return self.shares or f"{self.bookmarks}_shares"


#: The development tokens: ``god`` (sam) and ``abc`` (frank, a second user for
#: permission tests). Both have ``all:all``; ownership still separates them.
DEFAULT_TOKENS: dict[str, TokenInfo] = {
    "god": TokenInfo(
        user="users/default:users_sam_321",
        bookmarks="resources/default:resources_bookmarks_321",
        shares="resources/default:resources_shares_321",
        scopes=("all:all",),
    ),
    "abc": TokenInfo(
        user="users/default:users_frank_123",
        bookmarks="resources/default:resources_bookmarks_123",
        shares="resources/default:resources_shares_123",
        scopes=("all:all",),
    ),
}


def _default_tokens() -> dict[str, TokenInfo]:
    return dict(DEFAULT_TOKENS)


class ServerConfig(BaseModel):
    """Settings of one embedded server.

    :ivar db: SQLite file path, or ``":memory:"`` (the default; gone on close).
    :ivar tokens: Bearer token → :class:`TokenInfo`. Defaults to :data:`DEFAULT_TOKENS`.
    :ivar quirks: ``"none"`` (default) behaves as the protocol recommends for an
        embedded server. ``"reference"`` imitates the reference OADA server
        where clients can observe a difference:

        * GET/HEAD of a missing ``/resources/<id>`` answers **403** instead
          of 404 (older reference servers did; @oada/client treats both as
          "missing");
        * rev propagation to parents through versioned links happens
          **after** the child write is acknowledged, in a task owned by the
          core's task group, instead of before the response. Parents still
          get their own revs and change records, and watchers are notified.
    :ivar max_body_bytes: Largest accepted request body; larger ones get 413. 20 MiB as the
        reference server.
    :ivar max_depth: Deepest accepted JSON nesting (objects and arrays, counting the path
        inside the resource); deeper bodies get 400, so a hostile body cannot
        exhaust the stack. At most 512: every JSON decoder and encoder the
        server uses stays well within Python's recursion limit there.
    :ivar max_body_items: Most JSON items a request body may hold (1,000,000), counted as its
        strings (object keys included) and the commas between members and
        elements; more get 413 before the body is decoded. Decoding,
        merging and storing a body takes time in proportion to its items,
        on the event loop every client shares: a 20 MiB body of a million
        keys held it for seconds. A table of 40,000 rows (4 MiB, 200,000
        items) is an ordinary OADA body; a million items take about 0.6 s.
    :ivar max_path_bytes: Longest accepted request path, in UTF-8 bytes; longer ones get 414
        (a WebSocket request's path is not bounded by any HTTP parser).
    :ivar ws_ping_interval: Seconds between WebSocket pings sent by the server (transport only).
    :ivar replay_slice: Seconds a WebSocket watch's replay (``x-oada-rev``) may hold the
        event loop before letting other requests be served; it is read
        from SQLite in pages and sent in slices of about this length, so a
        replay of a long history never stalls other clients for longer.
    :ivar document_cache_size: How many documents stay in memory between requests, least recently
        used dropped first (reloaded from SQLite when next used). 20,000 by
        default: lists, bookmarks and the jobs being run are used often and
        stay as objects; beyond the 2,000 used last a document is kept as its
        JSON bytes (a finished job about 1 KiB of memory).
    :ivar document_cache_bytes: Bytes of documents kept in memory between requests (32 MiB), counted
        as their encoded size plus 512 bytes each; documents over a
        sixteenth of it are dropped first, then the least recently used.
        Both this and ``document_cache_size`` hold. 0 keeps no document.
    :ivar change_cache_bytes: Bytes of change records kept in memory (16 MiB), counted the same
        way, large ones dropped first; watches and ``_meta/_changes`` read
        the others from SQLite.
    :ivar ws_send_buffer_bytes: Bytes a WebSocket may have waiting to be sent (queued by the server
        and in the transport's write buffer) before the peer is taken to be
        too slow and the socket is closed with code 1013 (32 MiB: room for a
        message of the largest body and what follows it while it is read).
    :ivar max_connections: Connections (HTTP and WebSocket) served at once (1,000). A new
        connection or request beyond it is answered 503 at once: each one may
        hold a request body (``max_body_bytes``) or a WebSocket frame being
        read, so this bounds what incoming data can take.
    :ivar ws_send_buffer_total_bytes: Bytes all WebSockets together may have waiting to be sent (256 MiB).
        Past it the sockets furthest behind are closed with code 1013, the
        largest first, until the sum is within it again.
    :ivar max_header_bytes: Bytes an HTTP request's line and headers may take (64 KiB); past it
        the request is answered 431 and its connection closed (the HTTP
        parser alone would take headers of any size).
    :ivar request_read_timeout: Seconds the server waits to receive an HTTP request whole (line,
        headers and body) from its first byte or from when the connection
        was made (60); past it the request is answered 408 and its
        connection closed, so a client trickling a request cannot hold a
        connection (one of ``max_connections``) for ever.
    :ivar max_changes_listed: Revs named by a ``/_meta/_changes`` listing (10,000): the most
        recent ones. A resource's history grows with every write and the
        listing is built in one pass of the event loop, so this bounds how
        long other clients wait for it; every rev stays readable at
        ``/_meta/_changes/<rev>`` and through a watch's replay.
    :ivar max_watches_per_socket: Watches one WebSocket may hold at once (1,000); a watch request
        beyond it is answered 429 under its requestId and makes no watch
        (nor runs the request it carries). Each watch holds memory for as
        long as it lasts, whether or not anything is sent on it.
    :ivar max_watches: Watches all WebSockets of the server may hold together (100,000);
        beyond it a watch request is answered 503 the same way.

    >>> ServerConfig(db="oada.sqlite3", quirks="reference")  # doctest: +SKIP
    """

    # Tokens are secrets: keep them out of reprs and validation errors.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    db: str = ":memory:"
    tokens: dict[str, TokenInfo] = Field(default_factory=_default_tokens, repr=False)
    quirks: Literal["none", "reference"] = "none"
    max_body_bytes: int = Field(default=20 * 1024 * 1024, gt=0)
    max_depth: int = Field(default=64, ge=2, le=512)
    max_body_items: int = Field(default=1_000_000, ge=100)
    max_path_bytes: int = Field(default=16 * 1024, ge=256)
    ws_ping_interval: float = Field(default=30.0, gt=0)
    replay_slice: float = Field(default=0.005, gt=0)
    document_cache_size: int = Field(default=20_000, ge=0)
    document_cache_bytes: int = Field(default=32 * 1024 * 1024, ge=0)
    change_cache_bytes: int = Field(default=16 * 1024 * 1024, ge=0)
    ws_send_buffer_bytes: int = Field(default=32 * 1024 * 1024, gt=0)
    max_connections: int = Field(default=1000, gt=0)
    ws_send_buffer_total_bytes: int = Field(default=256 * 1024 * 1024, gt=0)
    max_header_bytes: int = Field(default=64 * 1024, ge=1024)
    request_read_timeout: float = Field(default=60.0, gt=0)
    max_changes_listed: int = Field(default=10_000, gt=0)
    max_watches_per_socket: int = Field(default=1000, gt=0)
    max_watches: int = Field(default=100_000, gt=0)

    @field_validator("tokens", mode="before")
    @classmethod
    def _validate_tokens(cls, value: Any) -> dict[str, TokenInfo]:
        # Validated here so that an error names the token by position, never
        # by its (secret) text, which pydantic would put in the error location.
        if not isinstance(value, Mapping):
            raise ValueError(
                f"expected a mapping of token to TokenInfo, got {type(value).__name__}"
            )
        tokens: dict[str, TokenInfo] = {}
        for n, (token, info) in enumerate(value.items(), 1):
            if not isinstance(token, str) or not token.strip() or token != token.strip():
                raise ValueError(f"token #{n} must be a non-empty string without outer spaces")
            try:
                tokens[token] = (
                    info if isinstance(info, TokenInfo) else TokenInfo.model_validate(info)
                )
            except ValidationError as exc:
                reasons = "; ".join(
                    f"{'.'.join(str(p) for p in err['loc']) or 'value'}: {err['msg']}"
                    for err in exc.errors()
                )
                raise ValueError(f"token #{n}: {reasons}") from None
        return tokens

    @model_validator(mode="after")
    def _roots_are_own(self) -> ServerConfig:
        # A root id shared by two users would let each read the other's data.
        owners: dict[str, str] = {}
        for info in self.tokens.values():
            if info.bookmarks == info.shares_id:
                raise ValueError(f"{info.user} has {info.bookmarks} as both bookmarks and shares")
            for resource_id in (info.bookmarks, info.shares_id):
                owner = owners.setdefault(resource_id, info.user)
                if owner != info.user:
                    raise ValueError(
                        f"{resource_id} is configured as a root of both {owner} and"
                        f" {info.user}; each user needs bookmarks and shares of their own"
                    )
        return self
