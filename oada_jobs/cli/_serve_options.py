"""The options of ``oada-jobs serve``: one typer declaration each, help text and
bounds included, so the command's signature reads as a list of names.

Owns these declarations, the ``--quirks`` values and the defaults taken from
:class:`~oada_jobs.server.config.ServerConfig`. Must not run anything: the
command itself is :mod:`oada_jobs.cli.serve`.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from oada_jobs.server.config import ServerConfig

__all__ = [
    "TOKENS_ENV",
    "ChangeCacheBytesOption",
    "DbOption",
    "DocumentCacheBytesOption",
    "DocumentCacheSizeOption",
    "HostOption",
    "LogLevelOption",
    "MaxBodyBytesOption",
    "MaxBodyItemsOption",
    "MaxChangesListedOption",
    "MaxConnectionsOption",
    "MaxDepthOption",
    "MaxHeaderBytesOption",
    "MaxPathBytesOption",
    "MaxWatchesOption",
    "MaxWatchesPerSocketOption",
    "PortOption",
    "Quirks",
    "QuirksOption",
    "ReplaySliceOption",
    "RequestReadTimeoutOption",
    "TlsCertOption",
    "TlsDirOption",
    "TlsKeyOption",
    "TlsSelfSignedOption",
    "TokensFileOption",
    "TokensOption",
    "WsBufferBytesOption",
    "WsBufferTotalBytesOption",
    "WsPingIntervalOption",
]

#: Environment variable with whitespace-separated tokens (keeps them out of `ps`).
TOKENS_ENV = "OADA_JOBS_SERVE_TOKENS"

#: The server's own default of each limit: the options show and keep them.
DEFAULT: dict[str, Any] = {name: field.default for name, field in ServerConfig.model_fields.items()}


class Quirks(StrEnum):
    """Values of ``--quirks``."""

    #: Behave as the protocol recommends for an embedded server.
    none = "none"
    #: Imitate the reference server where clients can see a difference.
    reference = "reference"


HostOption = Annotated[str, typer.Option(help="Interface to listen on.")]
PortOption = Annotated[int, typer.Option(min=0, max=65535, help="TCP port (0 picks a free one).")]
DbOption = Annotated[
    str, typer.Option(help='SQLite database file, or ":memory:" for a throw-away one.')
]
TokensOption = Annotated[
    list[str] | None,
    typer.Option(
        "--token",
        envvar=TOKENS_ENV,
        help="Accept this bearer token for the default user with scope all:all "
        "(repeatable). Default: the development tokens god and abc.",
        show_default=False,
    ),
]
TokensFileOption = Annotated[
    Path | None,
    typer.Option(
        help='JSON file {"<token>": {"user": "users/x", "bookmarks": "resources/x_bm", '
        '"scopes": ["all:all"]}} for several users (added to --token).',
        exists=True,
        dir_okay=False,
    ),
]
QuirksOption = Annotated[
    Quirks, typer.Option(help="'reference' imitates the reference OADA server's quirks.")
]
TlsCertOption = Annotated[
    Path | None, typer.Option(help="PEM certificate (chain) for HTTPS/WSS.", exists=True)
]
TlsKeyOption = Annotated[
    Path | None, typer.Option(help="PEM private key for --tls-cert.", exists=True)
]
TlsSelfSignedOption = Annotated[
    bool,
    typer.Option(
        help="Serve HTTPS/WSS with a generated development certificate "
        "(its CA file is printed; trust it in clients)."
    ),
]
TlsDirOption = Annotated[
    Path | None,
    typer.Option(help="Where --tls-self-signed writes its files (default: a temp dir)."),
]
MaxBodyBytesOption = Annotated[
    int, typer.Option(min=1, help="Largest accepted request body; larger ones get 413.")
]
MaxDepthOption = Annotated[
    int,
    typer.Option(
        min=2, max=512, help="Deepest accepted JSON nesting (counting the path); deeper: 400."
    ),
]
MaxBodyItemsOption = Annotated[
    int,
    typer.Option(
        min=100,
        help="Most JSON items (strings and commas between values) in a body; more: 413.",
    ),
]
MaxPathBytesOption = Annotated[
    int, typer.Option(min=256, help="Longest accepted request path in bytes; longer: 414.")
]
ReplaySliceOption = Annotated[
    float,
    typer.Option(
        min=0.0001,
        help="Seconds a watch's replay (x-oada-rev) runs before other requests get a turn.",
    ),
]
WsPingIntervalOption = Annotated[
    float, typer.Option(min=0.01, help="Seconds between WebSocket keepalive pings.")
]
DocumentCacheSizeOption = Annotated[
    int,
    typer.Option(
        min=0,
        help="Documents kept in memory between requests, least recently used dropped "
        "first (reloaded from the database when used again).",
    ),
]
DocumentCacheBytesOption = Annotated[
    int,
    typer.Option(
        min=0,
        help="Bytes of documents kept in memory between requests (encoded size plus "
        "512 bytes each); large ones dropped first, then the least recently used.",
    ),
]
ChangeCacheBytesOption = Annotated[
    int,
    typer.Option(
        min=0,
        help="Bytes of change records kept in memory (the rest is read from the database).",
    ),
]
WsBufferBytesOption = Annotated[
    int,
    typer.Option(
        min=1,
        help="Bytes a WebSocket may have waiting to be sent before it is closed "
        "as too slow (code 1013).",
    ),
]
WsBufferTotalBytesOption = Annotated[
    int,
    typer.Option(
        min=1,
        help="Bytes all WebSockets together may have waiting to be sent; past it the "
        "ones furthest behind are closed (code 1013).",
    ),
]
MaxConnectionsOption = Annotated[
    int,
    typer.Option(
        min=1,
        help="Connections served at once; more are answered 503.",
    ),
]
MaxHeaderBytesOption = Annotated[
    int,
    typer.Option(min=1024, help="Bytes of an HTTP request's line and headers; more: 431."),
]
RequestReadTimeoutOption = Annotated[
    float,
    typer.Option(
        min=0.001,
        help="Seconds to receive an HTTP request whole (headers and body); then 408.",
    ),
]
MaxChangesListedOption = Annotated[
    int,
    typer.Option(min=1, help="Revs (the latest) a /_meta/_changes listing names."),
]
MaxWatchesPerSocketOption = Annotated[
    int,
    typer.Option(min=1, help="Watches one WebSocket may hold at once; more are refused (429)."),
]
MaxWatchesOption = Annotated[
    int,
    typer.Option(min=1, help="Watches all WebSockets may hold together; more are refused (503)."),
]
LogLevelOption = Annotated[str, typer.Option(help="Python log level.")]
